/**
 * Helpers for the tests of the parallel engine: Iommus with and without a pool, big scatter-gather
 * lists (deterministic, from a seeded generator), dumps of a domain's tables read straight from
 * shared memory (independent of src/), a recorder of invalidation batches, and a reference model of
 * the leaves a list maps (from reference.ts's iommu_pgsize transcription).
 */
import type { ExecutionContext } from 'ava';
import { Iommu, SgTable, type Domain, type InvalidationCommand } from '../../src/index.js';
import { PARALLEL_MIN_PAGES } from '../../src/core/parallel.js';
import type { StandbyHelper } from '../../src/pool/standby.js';
import type { ChunkTask } from '../../src/pool/tasks.js';
import { leafDescriptor, leavesFor } from './reference.js';
import { rng } from './rng.js';

export { rng };

export { PARALLEL_MIN_PAGES };

export const K4 = 0x1000;
export const M2 = 0x20_0000;
export const G1 = 0x4000_0000;

/**
 * An Iommu with `workers` threads, closed when the test ends. Its pool takes every map of
 * PARALLEL_MIN_PAGES entries or pages (not only those whose estimated work pays for it), so that the
 * parallel path is tested with lists of a convenient size.
 */
export async function makeIommu(t: ExecutionContext, workers: number, tableMemoryBytes?: number, callerRuns = true): Promise<Iommu> {
  const iommu = await Iommu.create(tableMemoryBytes === undefined ? { workers, callerRuns } : { workers, tableMemoryBytes, callerRuns });
  if (iommu.parallel) iommu.parallel.bySizeOnly = true;
  t.teardown(() => iommu.close());
  return iommu;
}

/**
 * Counts the tasks of each kind the pool is given while `call` runs: piscina tasks, and the jobs
 * handed to standby helpers (a map job counts as a 'map' task; starting a helper as a 'standby' one).
 */
export async function tasksOf(iommu: Iommu, call: () => Promise<unknown>): Promise<Record<string, number>> {
  if (!iommu.parallel) throw new Error('no parallel engine');
  type Pool = { run: (t: ChunkTask, ...rest: unknown[]) => Promise<unknown>; standby: (i: number) => StandbyHelper };
  const pool = (iommu.parallel as unknown as { pool: Pool }).pool;
  const { run, standby } = pool;
  const counts: Record<string, number> = {};
  const count = (kind: string): void => void (counts[kind] = (counts[kind] ?? 0) + 1);
  const sends = new Map<StandbyHelper, StandbyHelper['send']>();
  pool.run = (task: ChunkTask, ...rest: unknown[]) => {
    count(task.kind);
    return run.call(pool, task, ...rest);
  };
  pool.standby = (i: number) => {
    const helper = standby.call(pool, i);
    if (!sends.has(helper)) {
      const send = helper.send;
      sends.set(helper, send);
      helper.send = (job) => {
        count((job as ChunkTask).kind);
        send.call(helper, job);
      };
    }
    return helper;
  };
  try {
    await call();
  } finally {
    pool.run = run;
    pool.standby = standby;
    for (const [helper, send] of sends) helper.send = send;
  }
  return counts;
}

/** An integer in [lo, hi]. */
export function randInt(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

// -------------------------------------------------------------------------------------------------
// Lists
// -------------------------------------------------------------------------------------------------

export interface Seg {
  phys: number;
  length: number;
}

/** A list as plain segments (for models) and as an SgTable (for the engine). */
export interface BigList {
  name: string;
  segs: Seg[];
  table: SgTable;
  bytes: number;
}

export function bigList(name: string, segs: Seg[]): BigList {
  const table = new SgTable(segs.length);
  let bytes = 0;
  for (const s of segs) {
    table.push(s.phys, s.length);
    bytes += s.length;
  }
  return { name, segs, table, bytes };
}

/** n entries of `page` bytes, physically contiguous from phys0: one run. */
export function contiguousSegs(n: number, page: number, phys0: number): Seg[] {
  return Array.from({ length: n }, (_, i) => ({ phys: phys0 + i * page, length: page }));
}

/** n entries of one page at distinct, random, never adjacent frames (every entry is a run of its own). */
export function scatteredSegs(n: number, page: number, seed: number): Seg[] {
  const r = rng(seed);
  const seen = new Set<number>();
  const out: Seg[] = [];
  while (out.length < n) {
    const f = randInt(r, 0, 2 ** 22) * 2; // even frames: two entries are never physically adjacent
    if (seen.has(f)) continue;
    seen.add(f);
    out.push({ phys: f * page, length: page });
  }
  return out;
}

/**
 * Runs of random lengths (1..maxRun entries of one page each). About a third of the runs are long and
 * placed so that their phys agrees with their IOVA modulo `block` (the granule's second leaf size), so
 * that blocks appear inside them. `iova` is where the list will be mapped.
 */
export function runSegs(n: number, page: number, block: number, iova: number, seed: number, maxRun = 600): Seg[] {
  const r = rng(seed);
  const out: Seg[] = [];
  let at = iova;
  let region = 1;
  while (out.length < n) {
    const blocky = r() < 0.35;
    const len = Math.min(n - out.length, blocky ? randInt(r, (block / page) * 2, (block / page) * 3) : randInt(r, 1, maxRun));
    // Each run in a region of its own (64 GiB apart), so no two runs merge.
    const base = region++ * 2 ** 36;
    const phys = blocky ? base + (at % block) : base + randInt(r, 0, 1000) * page;
    for (let k = 0; k < len; k++) out.push({ phys: phys + k * page, length: page });
    at += len * page;
  }
  return out;
}

/**
 * Segments of mixed lengths (one page, a few pages, a half page in pairs that merge into whole pages,
 * a block) forming long physically contiguous runs that cross the chunk boundaries of 1, 2 and 4
 * chunks; every run agrees with its IOVA modulo `block`, so runs hold blocks too. Besides, around each
 * boundary of 4 chunks, a pair of half-page entries is split by the boundary.
 */
export function mixedSegs(n: number, page: number, block: number, iova: number, seed: number): Seg[] {
  const r = rng(seed);
  const bounds = new Set([1, 2, 3].map((c) => Math.round((c * n) / 4)));
  const out: Seg[] = [];
  let at = iova;
  let region = 1;
  let phys = 0;
  let left = 0;
  while (out.length < n) {
    if (left === 0) {
      left = randInt(r, 3000, 12000); // entries in this run
      phys = region++ * 2 ** 36 + (at % block);
    }
    let len: number;
    if (bounds.has(out.length + 1)) len = -1; // a half-page pair split by the boundary
    else {
      const pick = r();
      len = pick < 0.6 ? page : pick < 0.85 ? page * randInt(r, 2, 8) : pick < 0.95 ? -1 : block;
      // A pair elsewhere must not step over a boundary's designated pair, nor past the end.
      if (len === -1 && (bounds.has(out.length + 2) || out.length + 2 > n)) len = page;
    }
    if (len === -1) {
      const half = page / 2;
      out.push({ phys, length: half }, { phys: phys + half, length: half });
      phys += page;
      at += page;
      left = Math.max(0, left - 2);
      continue;
    }
    out.push({ phys, length: len });
    phys += len;
    at += len;
    left--;
  }
  return out;
}

/**
 * One physically contiguous run of n entries of mixed lengths (1 to maxPages pages); phys agrees with
 * iova modulo 1 GiB.
 */
export function giantRunSegs(n: number, page: number, iova: number, seed: number, maxPages = 64): Seg[] {
  const r = rng(seed);
  const out: Seg[] = [];
  let phys = 2 ** 40 + (iova % G1);
  for (let i = 0; i < n; i++) {
    const len = page * (r() < 0.8 ? 1 : randInt(r, 2, maxPages));
    out.push({ phys, length: len });
    phys += len;
  }
  return out;
}

/** Total bytes before each of the boundaries of `k` chunks of n entries (as parallel.ts cuts them). */
export function chunkOffsets(segs: Seg[], k: number): number[] {
  const n = segs.length;
  const bounds = Array.from({ length: k + 1 }, (_, c) => Math.round((c * n) / k));
  const prefix: number[] = [0];
  for (const s of segs) prefix.push(prefix[prefix.length - 1]! + s.length);
  return bounds.map((b) => prefix[b]!);
}

// -------------------------------------------------------------------------------------------------
// Reading the tables
// -------------------------------------------------------------------------------------------------

/** Valid descriptors reachable from the root, read from shared memory by the ARM rules. */
export interface Descriptor {
  level: number;
  iova: number;
  size: number;
  leaf: boolean;
  /** The 64-bit descriptor as 16 hex digits. */
  hex: string;
  /** Output address (leaf) or next table's offset (table). */
  addr: number;
}

export function descriptors(dom: Domain): Descriptor[] {
  const pt = dom.pageTable();
  const view = new DataView(pt.memory);
  const g = Math.log2(pt.granule);
  const bits = g - 3;
  const out: Descriptor[] = [];
  const visit = (table: number, level: number, base: number): void => {
    const shift = g + (3 - level) * bits;
    const entries = 2 ** (level === pt.startLevel ? pt.ias - shift : bits);
    const size = 2 ** shift;
    for (let i = 0; i < entries; i++) {
      const lo = view.getUint32(table + i * 8, true);
      if ((lo & 1) === 0) continue;
      const hi = view.getUint32(table + i * 8 + 4, true);
      const iova = base + i * size;
      const addrBits = (hi & 0xffff) * 2 ** 32 + (lo >>> 0);
      const hex = (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
      if (level < 3 && (lo & 3) === 3) {
        const next = addrBits - (addrBits % pt.granule);
        out.push({ level, iova, size, leaf: false, hex, addr: next });
        visit(next, level + 1, iova);
        continue;
      }
      out.push({ level, iova, size, leaf: true, hex, addr: addrBits - (addrBits % size) });
    }
  };
  visit(pt.root, pt.startLevel, 0);
  return out;
}

/** Every leaf as "iova size descriptor" (hex), in IOVA order: what two engines must agree on. */
export function leafDump(dom: Domain): string[] {
  return descriptors(dom)
    .filter((d) => d.leaf)
    .map((d) => `${d.iova.toString(16)} ${d.size.toString(16)} ${d.hex}`);
}

/** Every valid descriptor, tables (with their offsets) included: the whole state of a domain. */
export function fullDump(dom: Domain): string[] {
  return descriptors(dom).map((d) => `L${d.level} ${d.iova.toString(16)} ${d.hex}`);
}

/** Compares two dumps, reporting the first difference rather than a diff of 100k lines. */
export function sameDump(t: ExecutionContext, actual: string[], expected: string[], what: string): boolean {
  if (actual.length === expected.length) {
    let i = 0;
    while (i < actual.length && actual[i] === expected[i]) i++;
    if (i === actual.length) {
      t.pass();
      return true;
    }
    t.fail(`${what}: entry ${i} of ${actual.length} differs: got "${actual[i]}", expected "${expected[i]}"`);
    return false;
  }
  const n = Math.min(actual.length, expected.length);
  let i = 0;
  while (i < n && actual[i] === expected[i]) i++;
  t.fail(`${what}: ${actual.length} entries, expected ${expected.length}; first difference at ${i}: got "${actual[i]}", expected "${expected[i]}"`);
  return false;
}

// -------------------------------------------------------------------------------------------------
// Invalidation batches
// -------------------------------------------------------------------------------------------------

/** Records the commands of every invalidation batch the Iommu issues (wrapping its IOTLB's sync). */
export function recordSyncs(iommu: Iommu): InvalidationCommand[][] {
  const batches: InvalidationCommand[][] = [];
  const iotlb = iommu.iotlb;
  const sync = iotlb.sync.bind(iotlb);
  iotlb.sync = (owner, gather) => {
    gather.close();
    batches.push(gather.commands.map((c) => ({ ...c })));
    sync(owner, gather);
  };
  return batches;
}

// -------------------------------------------------------------------------------------------------
// Reference model
// -------------------------------------------------------------------------------------------------

export interface ModelLeaf {
  iova: number;
  phys: number;
  size: number;
  prot: number;
}

/** The runs of a list (iommu_map_sg's merge), as [iova, phys, length]. */
export function runsOf(iova: number, segs: Seg[]): [number, number, number][] {
  const runs: [number, number, number][] = [];
  let at = iova;
  for (const s of segs) {
    const last = runs[runs.length - 1];
    if (last && last[1] + last[2] === s.phys) last[2] += s.length;
    else runs.push([at, s.phys, s.length]);
    at += s.length;
  }
  return runs;
}

/** The leaves a successful map_sg of `segs` at iova writes (SEMANTICS §1, §4). */
export function modelLeaves(bitmap: number, iova: number, segs: Seg[], prot: number): ModelLeaf[] {
  const out: ModelLeaf[] = [];
  for (const [at, phys, len] of runsOf(iova, segs)) {
    for (const l of leavesFor(bitmap, at, phys, len)) out.push({ iova: l.iova, phys: l.paddr, size: l.size, prot });
  }
  return out;
}

/** Model leaves as leafDump lines (stage 1, 4K/16K/64K: a leaf at the last level is a page). */
export function modelDump(leaves: ModelLeaf[], lastLevelSize: number, stage2 = false): string[] {
  return [...leaves]
    .sort((a, b) => a.iova - b.iova)
    .map((l) => {
      const d = leafDescriptor(stage2, l.prot, BigInt(l.phys), l.size === lastLevelSize);
      return `${l.iova.toString(16)} ${l.size.toString(16)} ${d.toString(16).padStart(16, '0')}`;
    });
}

/** The phys a successful map_sg of `segs` at iova gives each address: a lookup by binary search. */
export function physOracle(iova: number, segs: Seg[]): (a: number) => number | null {
  const starts: number[] = [];
  const phys: number[] = [];
  let at = iova;
  for (const s of segs) {
    starts.push(at);
    phys.push(s.phys);
    at += s.length;
  }
  const end = at;
  return (a) => {
    if (a < iova || a >= end) return null;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= a) lo = mid;
      else hi = mid - 1;
    }
    return phys[lo]! + (a - starts[lo]!);
  };
}

/** Waits for the next turn of the event loop (lets worker messages in). */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
