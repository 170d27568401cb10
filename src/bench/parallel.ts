/**
 * The `parallel` suite: the worker pool (Iommu.create({ workers: N })) against the inline engine.
 *
 *   - map_sg / unmap_sg of 1,048,576, 262,144 and 65,536 4K entries, at workers 0, 1 and 2, in ns per
 *     4K page, of four lists: contiguous (one run), scattered (one run per entry), and runs of 2 MiB
 *     (512 contiguous 4K entries at 2M-aligned phys) on a default-bitmap domain (each run is one 2M
 *     block) and on a 4K-only domain (each run is 512 leaves);
 *   - map() / unmap() of 4 GiB (1,048,576 4K pages) in one call on a 4K-only domain;
 *   - speed-ups workers N vs inline, as per-repetition ratios: every group runs its worker counts
 *     round-robin within each repetition, on one Iommu per worker count created once and reused;
 *   - tiny calls (1 and 16 pages, never parallel) with and without a pool;
 *   - what limits the speed-up here: the round trip of a no-op piscina task, memory bandwidth with 1
 *     and 2 threads, and table-page allocation with 1 and 2 threads.
 *
 * Every timed call is checked (bytes returned, sampled translations, block sizes), so a broken
 * parallel engine cannot produce a fast number.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { Iommu, SgTable, type Domain } from '../index.js';
import { TableAccounts } from '../pgtable/account.js';
import { TableMemory } from '../pgtable/memory.js';
import { PARALLEL_MIN_PAGES } from '../core/parallel.js';
import { BITMAP_4K, IOVA_BASE, PROT, verifyMapped, verifyUnmapped } from './core.js';
import { Ctl, OP_ALLOC, OP_CHASE, allocRound, allocator, chase, chaseCycles, touch } from './fill-worker.js';
import { median, type BenchContext, type Measurement, type Suite, type Target, type Timer } from './harness.js';
import { PAGE, RUN_2M, contiguousPhys, countRuns, mixedPhys, scatteredPhys, toSgTable } from './sglists.js';

export const WORKER_COUNTS = [0, 1, 2] as const;
/** List sizes in 4K entries; targets apply from 256Ki on. */
export const SIZES = [2 ** 20, 2 ** 18, 2 ** 16] as const;
const TARGET_MIN_PAGES = 2 ** 18;
/** How long the suite waits for a pool's workers to start (ParallelEngine.whenReady). */
const READY_TIMEOUT_MS = 30_000;
const BIG_PAGES = 2 ** 20;
const TABLE_MEMORY = 256 * 2 ** 20;
const PHYS_CONTIG = 2 ** 36;
const PHYS_MIXED = 2 ** 37;
const PHYS_SCATTER = 2 ** 40;
const SEED = 0x9a7a11e1;

export const TARGET_SPEEDUP: Target = { min: 1.8, source: 'issue 3: 2 workers >= 1.8x inline on >= 256K pages' };
export const TARGET_NS_PER_PAGE_2W: Target = { max: 2.5, source: 'issue 3: <= 2.5 ns per 4K page with 2 workers' };
export const TARGET_TINY: Target = { max: 1.1, source: 'issue 3: tiny calls no slower than inline by more than 10%' };

/** Calls per sample of the tiny-call loops. */
const TINY_CALLS = 10_000;
const TINY_REPS = 11;
const RT_CALLS = 2_000;
const BW_BYTES = 64 * 2 ** 20;
const BW_PASSES = 4;

function fail(msg: string): never {
  throw new Error(`bench: wrong result: ${msg}`);
}

const sizeLabel = (pages: number): string => (pages >= 2 ** 20 ? `${pages / 2 ** 20}Mi` : `${pages / 2 ** 10}Ki`);

export interface ParCase {
  /** e.g. "scattered 1Mi x 4K" or "2M runs 1Mi x 4K, default bitmap". */
  key: string;
  /** The list's shape, without the size: "contiguous", "scattered", "2M runs, default bitmap", ... */
  shape: string;
  pages: number;
  phys: Float64Array;
  sg: SgTable;
  /** pgsizeBitmap of the domain, or undefined for the granule's default (4K | 2M | 1G). */
  bitmap: number | undefined;
  /** The leaf size every page must be mapped with. */
  leaf: number;
}

/** The keys of the four lists of one size: contiguous, scattered, 2M runs on default and 4K-only bitmaps. */
function listKeys(pages: number): [string, string, string, string] {
  const s = sizeLabel(pages);
  return [`contiguous ${s} x 4K`, `scattered ${s} x 4K`, `2M runs ${s} x 4K, default bitmap`, `2M runs ${s} x 4K, 4K-only`];
}

function buildCases(): ParCase[] {
  const max = SIZES[0];
  const contig = contiguousPhys(max, PHYS_CONTIG);
  const scatter = scatteredPhys(max, PHYS_SCATTER, SEED);
  const mixed = mixedPhys(max, PHYS_MIXED, SEED + 1);
  const out: ParCase[] = [];
  for (const pages of SIZES) {
    const c = contig.subarray(0, pages);
    const sc = scatter.subarray(0, pages);
    const m = mixed.subarray(0, pages);
    if (countRuns(c) !== 1) fail('contiguous list does not form one run');
    if (countRuns(sc) !== pages) fail('scattered list has merging entries');
    if (countRuns(m) !== pages / (RUN_2M / PAGE)) fail('2M-run list does not form pages/512 runs');
    const mixedSg = toSgTable(m);
    const key = listKeys(pages);
    out.push(
      { key: key[0], shape: 'contiguous', pages, phys: c, sg: toSgTable(c), bitmap: BITMAP_4K, leaf: PAGE },
      { key: key[1], shape: 'scattered', pages, phys: sc, sg: toSgTable(sc), bitmap: BITMAP_4K, leaf: PAGE },
      { key: key[2], shape: '2M runs, default bitmap', pages, phys: m, sg: mixedSg, bitmap: undefined, leaf: RUN_2M },
      { key: key[3], shape: '2M runs, 4K-only', pages, phys: m, sg: mixedSg, bitmap: BITMAP_4K, leaf: PAGE },
    );
  }
  return out;
}

/** Measurement names, shared by the steps, the ratios, the targets and the docs. */
export function parNames(key: string, w: number) {
  return {
    mapNew: `map_sg ${key}, workers ${w}, new tables`,
    mapPresent: `map_sg ${key}, workers ${w}, tables present`,
    unmap: `unmap_sg ${key}, workers ${w}`,
    threadFaster: `map_sg ${key}, workers ${w}, tables present: the faster thread, inside its chunks`,
    threadSlower: `map_sg ${key}, workers ${w}, tables present: the slower thread, inside its chunks`,
    threadSkew: `map_sg ${key}, workers ${w}, tables present: the slower thread's time per page / the faster's, inside the call`,
    threadCeiling: `map_sg ${key}, workers ${w}, tables present: best speed-up those two threads allow (1 + faster / slower)`,
  };
}

export const bigKey = '4 GiB (1Mi x 4K) in one call, 4K-only';
export function bigNames(w: number) {
  return {
    mapNew: `map() ${bigKey}, workers ${w}, new tables`,
    mapPresent: `map() ${bigKey}, workers ${w}, tables present`,
    unmap: `unmap() ${bigKey}, workers ${w}`,
  };
}

function allocDomain(iommu: Iommu, bitmap: number | undefined): Domain {
  return bitmap === undefined ? iommu.allocDomain() : iommu.allocDomain({ pgsizeBitmap: bitmap });
}

/** Checks the leaf size at the first page and at each run's start for a few runs. */
function verifyLeaf(dom: Domain, c: ParCase): void {
  for (const off of [0, c.pages * PAGE - PAGE, Math.floor(c.pages / 3) * PAGE]) {
    const l = dom.lookup(IOVA_BASE + off);
    if (!l || l.pageSize !== c.leaf) fail(`${c.key}: leaf at +${off} is ${l?.pageSize}, expected ${c.leaf}`);
  }
}

/** map_sg on a fresh domain (new tables), unmap_sg, map_sg again (tables present), unmap_sg; each checked. */
async function sgRound(iommu: Iommu, c: ParCase, t: Timer | null, names: ReturnType<typeof parNames>): Promise<void> {
  const dom = allocDomain(iommu, c.bitmap);
  const bytes = c.pages * PAGE;
  const time = <T>(name: string, fn: () => Promise<T>): Promise<T> => (t ? t.time(name, c.pages, fn, 'ns/page') : fn());
  for (const mapName of [names.mapNew, names.mapPresent]) {
    const mapped = await time(mapName, () => dom.mapSg(IOVA_BASE, c.sg, PROT));
    if (mapped !== bytes) fail(`${mapName} returned ${mapped}`);
    if (t && mapName === names.mapPresent) recordThreads(iommu, t, names);
    verifyMapped(dom, IOVA_BASE, c.phys);
    verifyLeaf(dom, c);
    const unmapped = await time(names.unmap, () => dom.unmapSg(IOVA_BASE, c.sg));
    if (unmapped !== bytes) fail(`${names.unmap} returned ${unmapped}`);
    verifyUnmapped(dom, IOVA_BASE, c.pages);
  }
  await dom.free();
}

/**
 * How fast each of the two threads of the pool's last map call mapped, per page, inside its chunks
 * (ParallelEngine.lastProfile), and how much slower one was than the other. Against the inline
 * ns/page, the first say what running two at once cost each thread; a host whose two vCPUs run
 * unequally bounds the speed-up at 1 + faster / slower, whatever the engine does. The rest of a
 * pooled call's time is outside the chunks: planning, handing over, waiting, collecting. Nothing is
 * recorded for a call that one thread mapped alone.
 */
function recordThreads(iommu: Iommu, t: Timer, names: ReturnType<typeof parNames>): void {
  const profile = iommu.parallel?.lastProfile;
  if (iommu.parallel) iommu.parallel.lastProfile = null;
  if (!profile || profile.length < 2) return;
  const nsPerPage = profile.map((p) => (p.busyMs * 1e6 * PAGE) / p.bytes);
  const faster = Math.min(...nsPerPage);
  const slower = Math.max(...nsPerPage);
  t.record(names.threadFaster, 1, faster, 'ns/page');
  t.record(names.threadSlower, 1, slower, 'ns/page');
  t.record(names.threadSkew, 1, slower / faster, 'x');
}

/** map() / unmap() of 4 GiB of one physical run in one call each, 4K-only. */
async function bigRound(iommu: Iommu, t: Timer | null, names: ReturnType<typeof bigNames>): Promise<void> {
  const dom = iommu.allocDomain({ pgsizeBitmap: BITMAP_4K });
  const bytes = BIG_PAGES * PAGE;
  const time = <T>(name: string, fn: () => Promise<T>): Promise<T> => (t ? t.time(name, BIG_PAGES, fn, 'ns/page') : fn());
  for (const mapName of [names.mapNew, names.mapPresent]) {
    await time(mapName, () => dom.map(IOVA_BASE, PHYS_CONTIG, bytes, PROT));
    for (let i = 0; i < BIG_PAGES; i += BIG_PAGES / 256 - 1) {
      if (dom.iovaToPhys(IOVA_BASE + i * PAGE + 7) !== PHYS_CONTIG + i * PAGE + 7) fail(`${mapName}: page ${i}`);
    }
    if (dom.lookup(IOVA_BASE + bytes - PAGE)?.pageSize !== PAGE) fail(`${mapName}: last page`);
    const unmapped = await time(names.unmap, () => dom.unmap(IOVA_BASE, bytes));
    if (unmapped !== bytes) fail(`${names.unmap} returned ${unmapped}`);
    verifyUnmapped(dom, IOVA_BASE, BIG_PAGES);
  }
  await dom.free();
}

/** Speed-ups (workers 0 time / workers w time, per repetition) and the targets of one set of names. */
function speedups(ctx: BenchContext, group: string, label: string, names: (w: number) => Record<'mapNew' | 'mapPresent' | 'unmap', string>, pages: number): void {
  const inline = names(0);
  const targeted = pages >= TARGET_MIN_PAGES;
  for (const w of WORKER_COUNTS.slice(1)) {
    const n = names(w);
    for (const op of ['mapNew', 'mapPresent', 'unmap'] as const) {
      const name = speedupName(label, op, w);
      ctx.pairedRatio(group, name, inline[op], n[op], `per repetition: time at workers 0 / time at workers ${w} (same repetition, same list)`);
      if (targeted && w === 2) {
        ctx.target(name, TARGET_SPEEDUP);
        ctx.target(n[op], TARGET_NS_PER_PAGE_2W);
      }
    }
  }
}

type Op = 'mapNew' | 'mapPresent' | 'unmap';
const opLabel = (op: Op): string => (op === 'mapNew' ? 'map, new tables' : op === 'mapPresent' ? 'map, tables present' : 'unmap');

export function speedupName(label: string, op: Op, w: number): string {
  return `speed-up ${label}, ${opLabel(op)}, workers ${w} vs 0`;
}

/**
 * The scaling results as chart points: the median speed-up over inline of each list (and of the
 * 4 GiB map()/unmap()) at each worker count, per operation; workers 0 is 1 by definition.
 */
export function scalingPoints(ms: readonly Measurement[]): { list: string; op: string; workers: number; speedup: number }[] {
  const byName = new Map(ms.filter((m) => m.suite === 'parallel').map((m) => [m.name, m]));
  const out: { list: string; op: string; workers: number; speedup: number }[] = [];
  const labels = [...SIZES.flatMap(listKeys), `map()/unmap() ${bigKey}`];
  for (const list of labels) {
    for (const op of ['mapNew', 'mapPresent', 'unmap'] as const) {
      const what = opLabel(op);
      const points = WORKER_COUNTS.slice(1).flatMap((w) => {
        const m = byName.get(speedupName(list, op, w));
        return m ? [{ list, op: what, workers: w, speedup: m.median }] : [];
      });
      if (points.length > 0) out.push({ list, op: what, workers: 0, speedup: 1 }, ...points);
    }
  }
  return out;
}

// --- tiny calls ------------------------------------------------------------------------------------

export const TINY_CASES = ['map() 1 page', 'unmap() 1 page', 'map() 16 pages', 'unmap() 16 pages', 'map_sg 1 entry', 'unmap_sg 1 entry', 'map_sg 16 scattered entries', 'unmap_sg 16 scattered entries'] as const;
export const tinyName = (c: string, w: number): string => `${c}, workers ${w}`;
export const tinyRatioName = (c: string): string => `${c}: workers 2 / workers 0`;

async function tinyStep(t: Timer, dom: Domain, w: number, one: SgTable, sixteen: SgTable): Promise<void> {
  const base = IOVA_BASE;
  const phys = 2 ** 38;
  const stride = 16 * PAGE;
  const n = TINY_CALLS;
  let total = 0;
  await t.time(tinyName('map() 1 page', w), n, async () => {
    for (let i = 0; i < n; i++) await dom.map(base + i * stride, phys + 2 * i * stride, PAGE, PROT);
  });
  if (dom.iovaToPhys(base + (n - 1) * stride) !== phys + 2 * (n - 1) * stride) fail('tiny map()');
  await t.time(tinyName('unmap() 1 page', w), n, async () => {
    for (let i = 0; i < n; i++) total += await dom.unmap(base + i * stride, PAGE);
  });
  await t.time(tinyName('map() 16 pages', w), n, async () => {
    for (let i = 0; i < n; i++) await dom.map(base + i * stride, phys + 2 * i * stride, stride, PROT);
  });
  if (dom.iovaToPhys(base + (n - 1) * stride + stride - 1) !== phys + 2 * (n - 1) * stride + stride - 1) fail('tiny map() 16');
  await t.time(tinyName('unmap() 16 pages', w), n, async () => {
    for (let i = 0; i < n; i++) total += await dom.unmap(base + i * stride, stride);
  });
  await t.time(tinyName('map_sg 1 entry', w), n, async () => {
    for (let i = 0; i < n; i++) total += await dom.mapSg(base + i * stride, one, PROT);
  });
  await t.time(tinyName('unmap_sg 1 entry', w), n, async () => {
    for (let i = 0; i < n; i++) total += await dom.unmapSg(base + i * stride, one);
  });
  await t.time(tinyName('map_sg 16 scattered entries', w), n, async () => {
    for (let i = 0; i < n; i++) total += await dom.mapSg(base + i * stride, sixteen, PROT);
  });
  if (dom.iovaToPhys(base + (n - 1) * stride + 15 * PAGE) !== sixteen.get(15)!.phys) fail('tiny map_sg 16');
  await t.time(tinyName('unmap_sg 16 scattered entries', w), n, async () => {
    for (let i = 0; i < n; i++) total += await dom.unmapSg(base + i * stride, sixteen);
  });
  const expected = 3 * n * (PAGE + stride);
  if (total !== expected) fail(`tiny calls total ${total}, expected ${expected}`);
  if (dom.iovaToPhys(base) !== null) fail('tiny calls left pages mapped');
}

// --- limits: piscina round trip, memory bandwidth -------------------------------------------------------

export const RT_NAMES = {
  one: 'no-op task, one at a time (round trip)',
  two: '2 no-op tasks at once (per batch)',
  four: '4 no-op tasks at once (per batch; a 2-worker call has 4 chunks)',
  shaped: 'no-op task shaped like a map chunk (SharedArrayBuffers, result arrays), one at a time',
  firstStart: '2 tasks at once: dispatch to the start of the first (median of 250)',
  secondStart: '2 tasks at once: dispatch to the start of the second (median of 250)',
  idleRoundTrip: 'after 5 ms idle: no-op round trip (median of 30)',
  idleFirstStart: 'after 5 ms idle, 2 tasks at once: dispatch to the start of the first (median of 30)',
  idleSecondStart: 'after 5 ms idle, 2 tasks at once: dispatch to the start of the second (median of 30)',
};
const IDLE_MS = 5;
const IDLE_CALLS = 30;

async function roundTrip(ctx: BenchContext): Promise<void> {
  const pool = new Piscina({
    filename: new URL('./noop-worker.js', import.meta.url).href,
    minThreads: 2,
    maxThreads: 2,
    idleTimeout: Infinity,
    concurrentTasksPerWorker: 1,
  });
  const sab = new SharedArrayBuffer(4096);
  const shaped = {
    kind: 'map',
    table: { format: 'arm-lpae-s1', granule: 4096, ias: 48, oas: 48, root: 4096, pgsizeBitmap: 0x40201000 },
    sg: sab,
    first: 0,
    end: 262144,
    spanStart: 2 ** 32,
    spanEnd: 2 ** 32 + 2 ** 30,
    head: [2 ** 32, 2 ** 36, 2 ** 32],
    tail: null,
    prot: 3,
    journal: sab,
    journalOffset: 0,
  };
  const calls = RT_CALLS;
  await ctx.group({
    name: 'limit: piscina round trip',
    reps: 7,
    warmup: 2,
    steps: [
      {
        name: 'one',
        run: async (t) => {
          let s = 0;
          await t.time(RT_NAMES.one, calls, async () => {
            for (let i = 0; i < calls; i++) s += (await pool.run(null)) as number;
          });
          if (s !== 0) fail('noop');
        },
      },
      {
        name: 'two',
        run: async (t) => {
          await t.time(RT_NAMES.two, calls / 2, async () => {
            for (let i = 0; i < calls / 2; i++) await Promise.all([pool.run(null), pool.run(null)]);
          });
        },
      },
      {
        name: 'four',
        run: async (t) => {
          await t.time(RT_NAMES.four, calls / 4, async () => {
            for (let i = 0; i < calls / 4; i++) await Promise.all([pool.run(null), pool.run(null), pool.run(null), pool.run(null)]);
          });
        },
      },
      {
        name: 'shaped',
        run: async (t) => {
          let s = 0;
          await t.time(RT_NAMES.shaped, calls, async () => {
            for (let i = 0; i < calls; i++) s += ((await pool.run(shaped)) as { ok: boolean }).ok ? 1 : 0;
          });
          if (s !== calls) fail('shaped noop');
        },
      },
      {
        // How long until each of two tasks dispatched together starts running in its worker: the
        // second needs the other core (and, on this VM, the scheduler to put it there).
        name: 'wake-up',
        run: async (t) => {
          const n = 250;
          const first: number[] = [];
          const second: number[] = [];
          for (let i = 0; i < n; i++) {
            const t0 = Number(process.hrtime.bigint());
            const [a, b] = (await Promise.all([pool.run('stamp'), pool.run('stamp')])) as [number, number];
            first.push(Math.min(a, b) - t0);
            second.push(Math.max(a, b) - t0);
          }
          t.record(RT_NAMES.firstStart, 1, median(first), 'ns');
          t.record(RT_NAMES.secondStart, 1, median(second), 'ns');
        },
      },
      {
        // The same after the pool (and, on this VM, the vCPUs) sat idle for 5 ms, as between two
        // calls, or while the main thread waits for a chunk.
        name: 'after idle',
        run: async (t) => {
          const rt: number[] = [];
          const first: number[] = [];
          const second: number[] = [];
          for (let i = 0; i < IDLE_CALLS; i++) {
            await sleep(IDLE_MS);
            let t0 = Number(process.hrtime.bigint());
            await pool.run(null);
            rt.push(Number(process.hrtime.bigint()) - t0);
            await sleep(IDLE_MS);
            t0 = Number(process.hrtime.bigint());
            const [a, b] = (await Promise.all([pool.run('stamp'), pool.run('stamp')])) as [number, number];
            first.push(Math.min(a, b) - t0);
            second.push(Math.max(a, b) - t0);
          }
          t.record(RT_NAMES.idleRoundTrip, 1, median(rt), 'ns');
          t.record(RT_NAMES.idleFirstStart, 1, median(first), 'ns');
          t.record(RT_NAMES.idleSecondStart, 1, median(second), 'ns');
        },
      },
    ],
  });
  await pool.destroy();
}

export const BW_NAMES = {
  fill1: 'Float64Array fill of 64 MiB, 1 thread',
  fill2: 'Float64Array fill of 64 MiB, 2 threads (main + 1 worker, half each)',
  sum1: 'Float64Array sum of 64 MiB, 1 thread',
  sum2: 'Float64Array sum of 64 MiB, 2 threads (main + 1 worker, half each)',
  spin1: 'CPU only: 8Mi steps of an integer recurrence, 1 thread',
  spin2: 'CPU only: 8Mi steps of an integer recurrence, 2 threads (main + 1 worker, half each)',
};

/** Table pages allocated (and freed) per pass of the allocation limit, and the memory they come from. */
const ALLOC_PAGES = 4096;
const ALLOC_MEMORY = 64 * 2 ** 20;

export const ALLOC_NAMES = {
  one: 'table pages: allocate (zeroed, charged) and free 4Ki 4K pages, 1 thread',
  two: 'table pages: allocate (zeroed, charged) and free 4Ki 4K pages, 2 threads (main + 1 worker, half each)',
  scaling: 'table pages: 2 threads / 1 thread throughput',
};

/** Links per pass of the latency limit (one thread follows all, two threads half each), and the cycles' size. */
const CHASE_STEPS = 2 ** 18;
const CHASE_ENTRIES = 16 * 2 ** 20; // 64 MiB: two cycles of 32 MiB, past the caches

export const CHASE_NAMES = {
  one: 'dependent loads over a random 32 MiB cycle, 1 thread',
  two: 'dependent loads over a random 32 MiB cycle, 2 threads (main + 1 worker, a cycle and half the loads each)',
  scaling: 'dependent loads: 2 threads / 1 thread throughput',
  ceiling: 'dependent loads: best 2-thread speed-up over 1 thread on the faster vCPU (1 + faster / slower)',
};

export const BW_SCALING = {
  fill: 'fill: 2 threads / 1 thread throughput',
  sum: 'sum: 2 threads / 1 thread throughput',
  spin: 'CPU only: 2 threads / 1 thread throughput (the ceiling of any speed-up right now)',
};

/** With 2 threads, each doing the same half: the slower half's time / the faster half's (1 = even). */
export const BW_SKEW = [
  'fill, 2 threads: slower half / faster half (time)',
  'sum, 2 threads: slower half / faster half (time)',
  'CPU only, 2 threads: slower half / faster half (time)',
  'table pages, 2 threads: slower half / faster half (time)',
  'dependent loads, 2 threads: slower half / faster half (time)',
];

async function bandwidth(ctx: BenchContext): Promise<void> {
  const data = new Float64Array(new SharedArrayBuffer(BW_BYTES));
  const ctl = new Int32Array(new SharedArrayBuffer(64));
  const times = new Float64Array(new SharedArrayBuffer(16));
  const memory = TableMemory.create(ALLOC_MEMORY);
  const tables = { memory: memory.sab, stacks: memory.stacksSab, accounts: TableAccounts.create().sab };
  const ownAlloc = allocator(tables);
  const next = chaseCycles(CHASE_ENTRIES, 0x5eed);
  const worker = new Worker(fileURLToPath(new URL('./fill-worker.js', import.meta.url)), {
    workerData: { data: data.buffer, control: ctl.buffer, times: times.buffer, tables, chase: next.buffer },
  });
  const len = data.length;
  data.fill(1); // touch every page once, outside the timing
  let sink = 0;
  let gen = 0;
  /** The work of one pass of `op`: elements, pages or loads. */
  const totalOf = (op: number): number => (op === OP_ALLOC ? ALLOC_PAGES : op === OP_CHASE ? CHASE_STEPS : len);
  /**
   * One pass of `op`: [0, split) on this thread, [split, total) on the worker (if split < total).
   * Returns how much longer the slower of the two parts took than the faster (1 with one thread).
   */
  const pass = (op: number, split: number): number => {
    const done = Atomics.load(ctl, Ctl.Done);
    const total = totalOf(op);
    if (split < total) {
      ctl[Ctl.First] = split;
      ctl[Ctl.End] = total;
      ctl[Ctl.Op] = op;
      Atomics.store(ctl, Ctl.Generation, ++gen);
      Atomics.notify(ctl, Ctl.Generation);
    }
    const t0 = Number(process.hrtime.bigint());
    if (op === OP_ALLOC) sink += allocRound(ownAlloc, split);
    else if (op === OP_CHASE) sink += chase(next, 0, split);
    else sink += touch(data, 0, split, op, gen);
    const mine = Number(process.hrtime.bigint()) - t0;
    if (split >= total) return 1;
    while (Atomics.load(ctl, Ctl.Done) === done) Atomics.wait(ctl, Ctl.Done, done, 1000);
    const theirs = times[1]! - times[0]!;
    return Math.max(mine, theirs) / Math.min(mine, theirs);
  };
  const step = (name: string, op: number, split: number) => ({
    name,
    run: async (t: Timer) => {
      // Memory ops in ns per MiB touched; the CPU-only op in ns per Mi steps (one step per element).
      const ops =
        op === OP_ALLOC ? ALLOC_PAGES * BW_PASSES : op === OP_CHASE ? CHASE_STEPS * BW_PASSES : op === 2 ? (len * BW_PASSES) / 2 ** 20 : (BW_BYTES * BW_PASSES) / 2 ** 20;
      const skew: number[] = [];
      await t.time(name, ops, () => {
        for (let p = 0; p < BW_PASSES; p++) skew.push(pass(op, split));
      }, op === OP_ALLOC ? 'ns/page' : op === OP_CHASE ? 'ns/load' : op === 2 ? 'ns/Mi steps' : 'ns/MiB');
      if (split < totalOf(op)) t.record(`${BW_SKEW[op]!}`, 1, median(skew), 'x');
    },
  });
  await ctx.group({
    name: 'limit: memory bandwidth',
    reps: 7,
    warmup: 2,
    steps: [
      step(BW_NAMES.fill1, 0, len),
      step(BW_NAMES.fill2, 0, len / 2),
      step(BW_NAMES.sum1, 1, len),
      step(BW_NAMES.sum2, 1, len / 2),
      step(BW_NAMES.spin1, 2, len),
      step(BW_NAMES.spin2, 2, len / 2),
    ],
  });
  if (sink === -1) fail('sum');
  const g = 'limit: memory bandwidth';
  for (const n of [BW_NAMES.fill1, BW_NAMES.fill2, BW_NAMES.sum1, BW_NAMES.sum2]) {
    ctx.derived(g, `${n}, GB/s`, 'GB/s', n, (nsPerMiB) => 2 ** 20 / nsPerMiB, 'bytes per ns = GB/s (10^9 B/s)');
  }
  ctx.pairedRatio(g, BW_SCALING.fill, BW_NAMES.fill1, BW_NAMES.fill2);
  ctx.pairedRatio(g, BW_SCALING.sum, BW_NAMES.sum1, BW_NAMES.sum2);
  ctx.pairedRatio(g, BW_SCALING.spin, BW_NAMES.spin1, BW_NAMES.spin2);
  // Table pages, as the map path takes them (allocPage: charge, the allocator's lock, zeroing): how
  // far two threads that need new tables at once get past one.
  const ga = 'limit: table-page allocation';
  await ctx.group({ name: ga, reps: 7, warmup: 2, steps: [step(ALLOC_NAMES.one, OP_ALLOC, ALLOC_PAGES), step(ALLOC_NAMES.two, OP_ALLOC, ALLOC_PAGES / 2)] });
  ctx.pairedRatio(ga, ALLOC_NAMES.scaling, ALLOC_NAMES.one, ALLOC_NAMES.two);
  if (memory.pagesInUse !== 0) fail('allocation limit left pages allocated');
  // Memory latency on each thread: on this VM one vCPU has been measured at about twice the other's
  // (its memory is remote), which caps any two-thread speed-up of the map loop whatever the engine does.
  const gl = 'limit: memory latency';
  await ctx.group({ name: gl, reps: 7, warmup: 2, steps: [step(CHASE_NAMES.one, OP_CHASE, CHASE_STEPS), step(CHASE_NAMES.two, OP_CHASE, CHASE_STEPS / 2)] });
  ctx.pairedRatio(gl, CHASE_NAMES.scaling, CHASE_NAMES.one, CHASE_NAMES.two);
  ctx.derived(gl, CHASE_NAMES.ceiling, 'x', BW_SKEW[OP_CHASE]!, (skew) => 1 + 1 / skew, 'from the skew: the faster thread does 1, the slower 1/skew');
  ctl[Ctl.Op] = -1;
  Atomics.store(ctl, Ctl.Generation, ++gen);
  Atomics.notify(ctl, Ctl.Generation);
  await worker.terminate();
}

// --- the suite --------------------------------------------------------------------------------------------

export const parallelSuite: Suite = {
  name: 'parallel',
  description: 'worker pool: map_sg/unmap_sg and map()/unmap() at workers 0/1/2, speed-ups, tiny calls, limits',
  async run(ctx: BenchContext): Promise<void> {
    const log = ctx.options.log;
    if (SIZES.some((p) => p < PARALLEL_MIN_PAGES)) fail(`a list below PARALLEL_MIN_PAGES (${PARALLEL_MIN_PAGES}) would not go parallel`);
    log('  building sg lists (untimed) ...');
    const cases = buildCases();
    const iommus = new Map<number, Iommu>();
    for (const w of WORKER_COUNTS) iommus.set(w, await Iommu.create({ workers: w, tableMemoryBytes: TABLE_MEMORY }));
    // Until its workers have started, a pool's Iommu maps inline: what is timed here is the pool.
    for (const [w, i] of iommus) if (i.parallel && !(await i.parallel.whenReady(READY_TIMEOUT_MS))) log(`  warning: the ${w}-worker pool has not started after ${READY_TIMEOUT_MS / 1000} s; its calls run inline`);
    for (const i of iommus.values()) if (i.parallel) i.parallel.profiling = true;
    const iommu = (w: number): Iommu => iommus.get(w)!;

    const sgSelected = cases.filter((c) => WORKER_COUNTS.some((w) => ctx.selected(c.key, `workers ${w}`)));
    const bigSelected = WORKER_COUNTS.some((w) => ctx.selected(bigKey, `workers ${w}`));

    // Warm up every configuration (main thread and each pool's workers compile the map loop and
    // walks for every list shape) before any group times anything.
    log('  warming up every configuration ...');
    for (let r = 0; r < 2; r++) {
      for (const w of WORKER_COUNTS) {
        for (const c of sgSelected) await sgRound(iommu(w), c, null, parNames(c.key, w));
        if (bigSelected) await bigRound(iommu(w), null, bigNames(w));
      }
    }

    for (const c of cases) {
      await ctx.group({
        name: c.key,
        steps: WORKER_COUNTS.map((w) => ({ name: `workers ${w}`, run: (t: Timer) => sgRound(iommu(w), c, t, parNames(c.key, w)) })),
      });
    }
    await ctx.group({
      name: bigKey,
      steps: WORKER_COUNTS.map((w) => ({ name: `workers ${w}`, run: (t: Timer) => bigRound(iommu(w), t, bigNames(w)) })),
    });

    // Tiny calls: the same loops on the inline Iommu and on the 2-worker one, round-robin.
    const one = new SgTable(1).push(2 ** 39, PAGE);
    const sixteen = toSgTable(scatteredPhys(16, 2 ** 39, SEED + 2, 16));
    const tinyW = [0, 2];
    const tinyDoms = new Map(tinyW.map((w) => [w, iommu(w).allocDomain({ pgsizeBitmap: BITMAP_4K })]));
    await ctx.group({
      name: 'tiny calls',
      reps: Math.max(ctx.options.reps, TINY_REPS),
      steps: tinyW.map((w) => ({ name: `workers ${w}`, run: (t: Timer) => tinyStep(t, tinyDoms.get(w)!, w, one, sixteen) })),
    });
    for (const d of tinyDoms.values()) await d.free();
    for (const i of iommus.values()) await i.close();

    if (ctx.selected('limit: piscina round trip', 'one') || ctx.selected('limit: piscina round trip', 'two')) await roundTrip(ctx);
    if (ctx.selected('limit: memory bandwidth', 'fill') || ctx.selected('limit: table-page allocation', ALLOC_NAMES.one)) await bandwidth(ctx);

    // --- speed-ups and targets, from this run -----------------------------------------------------------
    for (const c of cases) speedups(ctx, 'speed-ups', c.key, (w) => parNames(c.key, w), c.pages);
    for (const c of cases) {
      for (const w of WORKER_COUNTS.slice(1)) {
        const n = parNames(c.key, w);
        ctx.derived('speed-ups', n.threadCeiling, 'x', n.threadSkew, (skew) => 1 + 1 / skew, `from (${n.threadSkew}), per repetition`);
      }
    }
    speedups(ctx, 'speed-ups', `map()/unmap() ${bigKey}`, bigNames, BIG_PAGES);
    for (const c of TINY_CASES) {
      const name = tinyRatioName(c);
      ctx.pairedRatio('tiny calls: pool / inline', name, tinyName(c, 2), tinyName(c, 0));
      ctx.target(name, TARGET_TINY);
    }
  },
};
