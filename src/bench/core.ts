/**
 * The `core` suite: the single-threaded engine (Iommu.create({ workers: 0 })). With no pool, every
 * call runs inline on the calling thread, including those of >= PARALLEL_MIN_PAGES pages that an Iommu
 * with workers (the default since the pool exists) would cut into chunks; the `parallel` suite
 * measures those.
 *
 *   - map_sg / unmap_sg of 1,048,576 physically contiguous 4K pages (one run) and of 262,144 scattered
 *     4K segments (262,144 runs) on a 4K-only domain, in ns per page, for an SgTable and for a plain
 *     array, on a fresh domain (tables allocated by the call) and on one whose tables already exist;
 *   - table memory per mapped 4K page, and the process memory deltas (no per-page JS objects);
 *   - latency of tiny calls: map() of one 4K page, unmap() of it, and iovaToPhys();
 *   - the cost of building the sg lists (untimed everywhere else).
 *
 * Every timed result is checked (bytes returned, sampled translations), so a broken engine cannot
 * produce a fast number.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Iommu, Prot, type Domain, type SgEntry, type SgTable } from '../index.js';
import { gc, type BenchContext, type Suite, type Timer } from './harness.js';
import { PAGE, contiguousPhys, countRuns, scatteredPhys, toArray, toSgTable } from './sglists.js';
import { mulberry32 } from '../util/rng.js';

/** 1,048,576 contiguous pages = 4 GiB of IOVA and of physical memory. */
export const CONTIG_PAGES = 2 ** 20;
/** 262,144 scattered pages = 1 GiB of IOVA. */
export const SCATTER_PAGES = 2 ** 18;
/** 1 GiB-aligned, so that 4 GiB of IOVA needs exactly 4 level-2 tables. */
export const IOVA_BASE = 2 ** 32;
const PHYS_CONTIG = 2 ** 36;
const PHYS_SCATTER = 2 ** 40;
const SEED = 0x10bb0d;
export const PROT = Prot.READ | Prot.WRITE;
export const BITMAP_4K = 0x1000;
/** Table memory of the Iommu the timing groups share (domains are freed after every step). */
const TABLE_MEMORY = 256 * 2 ** 20;

/** Calls per sample of the latency loops. */
const LATENCY_CALLS = 20_000;
const LOOKUP_CALLS = 2 ** 20;

export const TARGET_NS_PER_PAGE = { max: 5, source: 'issue: <= 5 ns per page mapped' };
export const TARGET_BYTES_PER_PAGE = { max: 8.1, source: 'issue: <= 8.1 bytes of table memory per mapped 4K page' };

function fail(msg: string): never {
  throw new Error(`bench: wrong result: ${msg}`);
}

/** Spot-checks ~256 pages of a mapping made by map_sg of `phys` (one 4K page each) at iova. */
export function verifyMapped(dom: Domain, iova: number, phys: Float64Array): void {
  const step = Math.max(1, Math.floor(phys.length / 256));
  for (let i = 0; i < phys.length; i += step) {
    const got = dom.iovaToPhys(iova + i * PAGE + 123);
    if (got !== phys[i]! + 123) fail(`iovaToPhys(${iova + i * PAGE + 123}) = ${got}, expected ${phys[i]! + 123}`);
  }
  const lastPage = phys.length - 1;
  if (dom.iovaToPhys(iova + lastPage * PAGE) !== phys[lastPage]) fail('last page not mapped');
  if (dom.iovaToPhys(iova + phys.length * PAGE) !== null) fail('page after the list is mapped');
}

export function verifyUnmapped(dom: Domain, iova: number, pages: number): void {
  if (dom.iovaToPhys(iova) !== null || dom.iovaToPhys(iova + (pages - 1) * PAGE) !== null) fail('unmap_sg left pages mapped');
}

export interface Lists {
  label: string;
  /** Key fragment used in measurement names. */
  key: string;
  pages: number;
  phys: Float64Array;
  sgTable: SgTable;
  array: SgEntry[];
}

/** The lists, without their plain-array form yet (built after the memory readings, see run()). */
export function buildLists(): { contig: Lists; scatter: Lists } {
  const cphys = contiguousPhys(CONTIG_PAGES, PHYS_CONTIG);
  const sphys = scatteredPhys(SCATTER_PAGES, PHYS_SCATTER, SEED);
  if (countRuns(cphys) !== 1) fail('contiguous list does not form one run');
  if (countRuns(sphys) !== SCATTER_PAGES) fail('scattered list has merging entries');
  return {
    contig: { label: 'contiguous', key: 'contiguous 1Mi x 4K', pages: CONTIG_PAGES, phys: cphys, sgTable: toSgTable(cphys), array: [] },
    scatter: { label: 'scattered', key: 'scattered 256Ki x 4K', pages: SCATTER_PAGES, phys: sphys, sgTable: toSgTable(sphys), array: [] },
  };
}

/** Names of the map_sg/unmap_sg measurements, shared by the steps, ratios and the docs. */
export function sgNames(key: string, form: 'SgTable' | 'array') {
  return {
    mapNew: `map_sg ${key}, ${form}, new tables`,
    mapPresent: `map_sg ${key}, ${form}, tables present`,
    unmap: `unmap_sg ${key}, ${form}`,
  };
}

/**
 * One step per sg form. A step maps on a fresh domain (the call allocates its tables), unmaps, maps
 * again (tables kept by unmap, as io-pgtable-arm keeps them), unmaps, and frees the domain.
 */
function sgSteps(iommu: Iommu, lists: Lists) {
  return (['SgTable', 'array'] as const).map((form) => ({
    name: `${lists.label}, ${form}`,
    run: async (t: Timer) => {
      const sg = form === 'SgTable' ? lists.sgTable : lists.array;
      const n = sgNames(lists.key, form);
      const bytes = lists.pages * PAGE;
      const dom = iommu.allocDomain({ pgsizeBitmap: BITMAP_4K });
      for (const mapName of [n.mapNew, n.mapPresent]) {
        const mapped = await t.time(mapName, lists.pages, () => dom.mapSg(IOVA_BASE, sg, PROT), 'ns/page');
        if (mapped !== bytes) fail(`${mapName} returned ${mapped}`);
        verifyMapped(dom, IOVA_BASE, lists.phys);
        const unmapped = await t.time(n.unmap, lists.pages, () => dom.unmapSg(IOVA_BASE, sg), 'ns/page');
        if (unmapped !== bytes) fail(`${n.unmap} returned ${unmapped}`);
        verifyUnmapped(dom, IOVA_BASE, lists.pages);
      }
      if (form === 'SgTable' && lists.pages === CONTIG_PAGES) {
        // The same 4 GiB with map()/unmap() in one call each: the table work without the sg list walk.
        const phys0 = lists.phys[0]!;
        await t.time(mapOneCallName, lists.pages, () => dom.map(IOVA_BASE, phys0, bytes, PROT), 'ns/page');
        if (dom.iovaToPhys(IOVA_BASE + bytes - PAGE) !== phys0 + bytes - PAGE) fail('map() of 4 GiB');
        const unmapped = await t.time(unmapOneCallName, lists.pages, () => dom.unmap(IOVA_BASE, bytes), 'ns/page');
        if (unmapped !== bytes) fail(`unmap() of 4 GiB returned ${unmapped}`);
      }
      await dom.free();
    },
  }));
}

const mapOneCallName = 'map() of the same 4 GiB in one call (no sg list), tables present';
const unmapOneCallName = 'unmap() of the same 4 GiB in one call (no sg list)';

/** Table memory and process memory of one map_sg, on an Iommu of its own (fresh shared memory). */
async function memoryReadings(ctx: BenchContext, lists: Lists): Promise<void> {
  const group = 'memory';
  if (!ctx.selected(group, lists.label)) return;
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 64 * 2 ** 20 });
  const dom = iommu.allocDomain({ pgsizeBitmap: BITMAP_4K });
  gc?.();
  gc?.();
  const mu0 = process.memoryUsage();
  const t0 = iommu.stats().tables;
  const mapped = await dom.mapSg(IOVA_BASE, lists.sgTable, PROT);
  gc?.();
  gc?.();
  const mu1 = process.memoryUsage();
  const t1 = iommu.stats().tables;
  if (mapped !== lists.pages * PAGE) fail(`memory map_sg returned ${mapped}`);
  verifyMapped(dom, IOVA_BASE, lists.phys);
  const n = lists.pages;
  const tablePages = t1.pages - t0.pages;
  const leafTables = Math.ceil(n / 512);
  ctx.reading(group, `table memory per mapped page, ${lists.key}`, 'B/page', (t1.bytes - t0.bytes) / n, n, {
    target: TARGET_BYTES_PER_PAGE,
    note:
      `stats().tables.bytes delta ${t1.bytes - t0.bytes} B over ${n} pages: ${tablePages} table pages ` +
      `(${leafTables} leaf tables of 512 descriptors + ${tablePages - leafTables} upper-level); the root existed before`,
  });
  const delta = (k: keyof NodeJS.MemoryUsage) => mu1[k] - mu0[k];
  ctx.reading(group, `heapUsed delta per mapped page, ${lists.key}`, 'B/page', delta('heapUsed') / n, n, {
    note: `process.memoryUsage().heapUsed after GC: ${delta('heapUsed')} B in all (JS objects kept alive by the mapping)`,
  });
  ctx.reading(group, `rss delta per mapped page, ${lists.key}`, 'B/page', delta('rss') / n, n, {
    note: `rss after GC: ${delta('rss')} B in all (table pages touched in the shared buffer, plus noise)`,
  });
  ctx.reading(group, `external+arrayBuffers delta per mapped page, ${lists.key}`, 'B/page', (delta('external') + delta('arrayBuffers')) / n, n, {
    note: `external ${delta('external')} B, arrayBuffers ${delta('arrayBuffers')} B (V8 does not count a growable SharedArrayBuffer's grown bytes here; rss does)`,
  });
  await dom.unmapSg(IOVA_BASE, lists.sgTable);
  await dom.free();
  await iommu.close();
}

/**
 * Transient JS allocation per operation, measured by src/bench/alloc-probe.ts in a child process
 * whose young generation is big enough that no GC runs inside a measured region.
 */
function allocationReadings(ctx: BenchContext): void {
  const group = 'allocation (transient)';
  if (!ctx.selected(group, 'alloc-probe')) return;
  const probe = fileURLToPath(new URL('./alloc-probe.js', import.meta.url));
  const r = spawnSync(process.execPath, ['--max-semi-space-size=256', '--min-semi-space-size=256', probe], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.status !== 0) {
    ctx.options.log(`  alloc-probe failed (status ${r.status}): ${r.stderr}`);
    return;
  }
  const lines = r.stdout.trim().split('\n');
  const result = JSON.parse(lines[lines.length - 1]!) as Record<string, number>;
  for (const [key, value] of Object.entries(result)) {
    const [name, unit] = key.split(', ');
    ctx.reading(group, `JS heap allocated: ${name}`, unit!, value, 1, {
      note: 'bytes of short-lived JS objects (incl. boxed doubles) per op; min of 5 runs in a child process without GC (JIT-dependent)',
    });
  }
}

export const coreSuite: Suite = {
  name: 'core',
  description: 'single-thread engine: map_sg/unmap_sg ns per page, table memory per page, tiny-call latency',
  async run(ctx: BenchContext): Promise<void> {
    const log = ctx.options.log;
    log('  building sg lists (untimed) ...');
    const { contig, scatter } = buildLists();

    // --- memory, first: a small, clean heap, each reading on fresh shared memory ---------------------
    if (ctx.selected('memory', 'contiguous') || ctx.selected('memory', 'scattered')) {
      // Compile map_sg before the readings, so that the heap delta holds no code or type feedback.
      const warm = await Iommu.create({ workers: 0, tableMemoryBytes: 64 * 2 ** 20 });
      for (let r = 0; r < 3; r++) {
        for (const lists of [contig, scatter]) {
          const d = warm.allocDomain({ pgsizeBitmap: BITMAP_4K });
          await d.mapSg(IOVA_BASE, lists.sgTable, PROT);
          await d.unmapSg(IOVA_BASE, lists.sgTable);
          await d.free();
        }
      }
      await warm.close();
      await memoryReadings(ctx, contig);
      await memoryReadings(ctx, scatter);
    }

    allocationReadings(ctx);

    contig.array = toArray(contig.phys);
    scatter.array = toArray(scatter.phys);
    const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: TABLE_MEMORY });

    await ctx.group({ name: 'map_sg contiguous', steps: sgSteps(iommu, contig) });
    await ctx.group({ name: 'map_sg scattered', steps: sgSteps(iommu, scatter) });

    // --- latency of tiny calls -------------------------------------------------------------------
    const lat = iommu.allocDomain({ pgsizeBitmap: BITMAP_4K });
    const LAT_IOVA = IOVA_BASE;
    const LAT_PHYS = 2 ** 38;
    const PAIR_IOVA = 2 ** 40;
    await ctx.group({
      name: 'latency',
      steps: [
        {
          name: 'map, unmap one 4K page per call',
          run: async (t) => {
            await t.time('map() one 4K page', LATENCY_CALLS, async () => {
              for (let i = 0; i < LATENCY_CALLS; i++) await lat.map(LAT_IOVA + i * PAGE, LAT_PHYS + 2 * i * PAGE, PAGE, PROT);
            });
            if (lat.iovaToPhys(LAT_IOVA + (LATENCY_CALLS - 1) * PAGE) !== LAT_PHYS + 2 * (LATENCY_CALLS - 1) * PAGE) fail('map()');
            let total = 0;
            await t.time('unmap() one 4K page', LATENCY_CALLS, async () => {
              for (let i = 0; i < LATENCY_CALLS; i++) total += await lat.unmap(LAT_IOVA + i * PAGE, PAGE);
            });
            if (total !== LATENCY_CALLS * PAGE) fail(`unmap() total ${total}`);
          },
        },
        {
          name: 'map+unmap pair',
          run: async (t) => {
            let total = 0;
            await t.time('map()+unmap() of the same 4K page', LATENCY_CALLS, async () => {
              for (let i = 0; i < LATENCY_CALLS; i++) {
                await lat.map(PAIR_IOVA, LAT_PHYS, PAGE, PROT);
                total += await lat.unmap(PAIR_IOVA, PAGE);
              }
            });
            if (total !== LATENCY_CALLS * PAGE) fail(`map+unmap total ${total}`);
          },
        },
      ],
    });

    // iovaToPhys at random mapped iovas of the scattered mapping (a full 4-level walk each).
    if (ctx.selected('latency', 'iovaToPhys')) {
      const look = iommu.allocDomain({ pgsizeBitmap: BITMAP_4K });
      await look.mapSg(IOVA_BASE, scatter.sgTable, PROT);
      const rand = mulberry32(SEED + 1);
      const iovas = new Float64Array(LOOKUP_CALLS);
      const expected = new Float64Array(LOOKUP_CALLS);
      for (let i = 0; i < LOOKUP_CALLS; i++) {
        const page = Math.floor(rand() * SCATTER_PAGES);
        const off = Math.floor(rand() * PAGE);
        iovas[i] = IOVA_BASE + page * PAGE + off;
        expected[i] = scatter.phys[page]! + off;
      }
      await ctx.group({
        name: 'latency',
        steps: [
          {
            name: 'iovaToPhys',
            run: async (t) => {
              let wrong = 0;
              await t.time('iovaToPhys() of a mapped 4K page, random iova', LOOKUP_CALLS, () => {
                for (let i = 0; i < LOOKUP_CALLS; i++) if (look.iovaToPhys(iovas[i]!) !== expected[i]) wrong++;
              });
              if (wrong !== 0) fail(`iovaToPhys wrong ${wrong} times`);
            },
          },
        ],
      });
      await look.free();
    }
    await lat.free();

    // --- building the sg lists (the caller's cost, outside map_sg) ------------------------------------
    await ctx.group({
      name: 'sg build',
      steps: [
        {
          name: 'SgTable push',
          run: async (t) => {
            const sg = await t.time('build SgTable, 1Mi x push(phys, 4K)', CONTIG_PAGES, () => toSgTable(contig.phys), 'ns/entry');
            if (sg.length !== CONTIG_PAGES) fail('SgTable length');
          },
        },
        {
          name: 'array of objects',
          run: async (t) => {
            const a = await t.time('build array, 1Mi x { phys, length }', CONTIG_PAGES, () => toArray(contig.phys), 'ns/entry');
            if (a.length !== CONTIG_PAGES) fail('array length');
          },
        },
      ],
    });

    await iommu.close();

    // --- ratios of medians measured in this run ------------------------------------------------------
    const c = sgNames(contig.key, 'SgTable');
    const ca = sgNames(contig.key, 'array');
    const s = sgNames(scatter.key, 'SgTable');
    const sa = sgNames(scatter.key, 'array');
    ctx.ratio('ratios', 'ratio map_sg scattered / contiguous (SgTable, new tables)', s.mapNew, c.mapNew);
    ctx.ratio('ratios', 'ratio unmap_sg scattered / contiguous (SgTable)', s.unmap, c.unmap);
    ctx.ratio('ratios', 'ratio map_sg array / SgTable (contiguous, new tables)', ca.mapNew, c.mapNew);
    ctx.ratio('ratios', 'ratio map_sg array / SgTable (scattered, new tables)', sa.mapNew, s.mapNew);
    ctx.ratio('ratios', 'ratio map_sg new tables / tables present (contiguous, SgTable)', c.mapNew, c.mapPresent);
    ctx.ratio('ratios', 'ratio map_sg new tables / tables present (scattered, SgTable)', s.mapNew, s.mapPresent);
    ctx.ratio('ratios', 'ratio map_sg / map() in one call (contiguous, SgTable, tables present)', c.mapPresent, mapOneCallName);

    // --- targets ---------------------------------------------------------------------------------------
    for (const name of [c.mapNew, c.mapPresent, s.mapNew, s.mapPresent]) ctx.target(name, TARGET_NS_PER_PAGE);
  },
};
