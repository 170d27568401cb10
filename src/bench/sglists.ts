/**
 * Scatter-gather lists for the benchmarks, built once, outside every timed region.
 */
import { SgTable, type SgEntry } from '../index.js';
import { mulberry32 } from '../util/rng.js';

export const PAGE = 4096;

/** `pages` 4K entries whose physical addresses are consecutive from `physBase`: one run for map_sg. */
export function contiguousPhys(pages: number, physBase: number): Float64Array {
  const phys = new Float64Array(pages);
  for (let i = 0; i < pages; i++) phys[i] = physBase + i * PAGE;
  return phys;
}

/**
 * `pages` distinct 4K physical pages in random order, no two of them adjacent anywhere in the list
 * (only even frame numbers are drawn), so that every entry is a run of its own for map_sg.
 * Frames are drawn from 2^frameBits even frames starting at physBase.
 */
export function scatteredPhys(pages: number, physBase: number, seed: number, frameBits = 24): Float64Array {
  const space = 2 ** frameBits;
  if (pages > space / 4) throw new Error('bench: frame space too small for a sparse random draw');
  const rand = mulberry32(seed);
  const used = new Uint8Array(space);
  const phys = new Float64Array(pages);
  for (let i = 0; i < pages; ) {
    const k = Math.floor(rand() * space);
    if (used[k]) continue;
    used[k] = 1;
    phys[i++] = physBase + 2 * k * PAGE;
  }
  return phys;
}

/** The fast form: an SgTable (segments in a SharedArrayBuffer), sized up front. */
export function toSgTable(phys: Float64Array, length = PAGE): SgTable {
  const sg = new SgTable(phys.length);
  for (let i = 0; i < phys.length; i++) sg.push(phys[i]!, length);
  return sg;
}

/** The plain form: an array of { phys, length } objects. */
export function toArray(phys: Float64Array, length = PAGE): SgEntry[] {
  const out: SgEntry[] = new Array<SgEntry>(phys.length);
  for (let i = 0; i < phys.length; i++) out[i] = { phys: phys[i]!, length };
  return out;
}

/** Number of runs map_sg will form (entries merge while phys continues the current run). */
export function countRuns(phys: Float64Array, length = PAGE): number {
  let runs = phys.length > 0 ? 1 : 0;
  for (let i = 1; i < phys.length; i++) if (phys[i] !== phys[i - 1]! + length) runs++;
  return runs;
}

/** 2 MiB: the level-2 block size of the 4K granule. */
export const RUN_2M = 2 * 2 ** 20;

/**
 * `pages` 4K entries in runs of 512 (2 MiB physically contiguous each), every run at a distinct,
 * random, 2M-aligned physical address with no two runs adjacent (only even 2M frames are drawn), so
 * map_sg forms exactly pages / 512 runs; mapped at a 2M-aligned IOVA each run can be one 2M block.
 */
export function mixedPhys(pages: number, physBase: number, seed: number, frameBits = 16): Float64Array {
  const perRun = RUN_2M / PAGE;
  if (pages % perRun !== 0) throw new Error('bench: mixed list must be whole 2 MiB runs');
  const runs = scatteredPhys(pages / perRun, 0, seed, frameBits);
  const phys = new Float64Array(pages);
  for (let r = 0; r < runs.length; r++) {
    // scatteredPhys drew even frame k as 2 * k * PAGE; reuse k as an even 2M frame.
    const base = physBase + (runs[r]! / PAGE) * RUN_2M;
    for (let i = 0; i < perRun; i++) phys[r * perRun + i] = base + i * PAGE;
  }
  return phys;
}
