/**
 * The `iotlb` suite (issue 4): devices' translations and what invalidation batching saves.
 *
 *   - translate() throughput on one thread: IOTLB hits (a working set the IOTLB holds), and misses —
 *     a working set larger than the IOTLB, walked in a cycle so every access misses — once with the
 *     walk cache holding every last-level table (the walk reads one level) and once with one
 *     last-level table per page and more of them than the walk cache holds (a full walk);
 *   - batching: map_sg of N scattered 4K segments and unmap_sg of them (one invalidation batch each)
 *     against the per-segment fallback (map() of each segment on the same invalidateOnMap domain, then
 *     unmap() of each: one batch per call), in syncs and commands per round (stats().iotlb), in
 *     modelled time (Iommu.create's invalidationCost) and in wall time.
 *
 * Every timed translate is compared with its expected physical address, and the IOTLB counters must
 * show exactly the hits and misses the case is about; every batching round is checked by a device
 * that reads every segment after the map and must fault on it after the unmap (strict invalidation).
 */
import { FaultError, Iommu, Prot, SgTable, type Domain } from '../index.js';
import type { BenchContext, Measurement, Suite, Timer } from './harness.js';
import { PAGE, scatteredPhys } from './sglists.js';
import { mulberry32 } from '../util/rng.js';

const PROT = Prot.READ | Prot.WRITE;
const SEED = 0x10715b;
const IOVA_BASE = 2 ** 32;
const PHYS_BASE = 2 ** 40;
const BITMAP_4K = 0x1000;
const REGION_2M = 2 * 2 ** 20;
/** IOTLB size of every Iommu here: the library's default. */
const IOTLB_ENTRIES = 4096;

/**
 * The modelled cost of invalidation on this suite's Iommu (ns): an assumed SMMUv3-like queue where a
 * CMD_SYNC round trip costs 1 µs and each TLBI command 100 ns. Illustrative, not measured hardware.
 */
export const INVALIDATION_COST = { perSync: 1000, perCommand: 100 } as const;

/** Issue 4: >= 10 million translate hits per second on one thread. */
export const TARGET_HITS_PER_S = { min: 10, source: 'issue 4: >= 10 million translate hits per second, one thread' };

interface Sizes {
  /** Translates per timed sample: hits, and misses (each a walk: some µs). */
  hitTranslates: number;
  missTranslates: number;
  /** Working set of the hit case (fits the IOTLB). */
  hitPages: number;
  /** Working set of the miss cases (4x the IOTLB). */
  missPages: number;
  /** Segments per map_sg in the batching comparison. */
  segments: readonly number[];
}

const FULL: Sizes = { hitTranslates: 2 ** 20, missTranslates: 2 ** 17, hitPages: 1024, missPages: 4 * IOTLB_ENTRIES, segments: [16, 256, 4096] };
const QUICK: Sizes = { hitTranslates: 2 ** 16, missTranslates: 2 ** 13, hitPages: 1024, missPages: 2 * IOTLB_ENTRIES, segments: [16, 256] };

function fail(msg: string): never {
  throw new Error(`bench: wrong result: ${msg}`);
}

const kLabel = (n: number): string => (n >= 1024 ? `${n / 1024}Ki` : String(n));

/** Names of the translate measurements, for the steps, ratios, targets and docs. */
export function translateNames(s: Sizes) {
  const leafTables = s.missPages / 512;
  return {
    hit: `translate, IOTLB hit (${kLabel(s.hitPages)} pages)`,
    walkHit: `translate, IOTLB miss, walk-cache hit (${kLabel(s.missPages)} pages in ${leafTables} leaf tables)`,
    fullWalk: `translate, IOTLB miss, full walk (${kLabel(s.missPages)} pages, a leaf table each)`,
  };
}

interface TranslateCase {
  name: string;
  iommu: Iommu;
  device: number;
  iovas: Float64Array;
  expected: Float64Array;
  /** Counter deltas one timed loop must show. */
  hits: number;
  walkHits: number;
}

/**
 * A domain with `pages` 4K pages at scattered phys, page i at iovaOf(i), a device attached, and an
 * access sequence of `count` iovas that cycles through one random permutation of the pages (so a
 * working set larger than the IOTLB misses every time under its oldest-first eviction).
 */
async function translateCase(name: string, pages: number, count: number, iovaOf: (i: number) => number, seed: number): Promise<TranslateCase> {
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 256 * 2 ** 20, iotlbEntries: IOTLB_ENTRIES });
  const dom = iommu.allocDomain({ pgsizeBitmap: BITMAP_4K });
  const phys = scatteredPhys(pages, PHYS_BASE, seed);
  for (let i = 0; i < pages; i++) await dom.map(iovaOf(i), phys[i]!, PAGE, PROT);
  iommu.attachDevice(1, dom);
  const rand = mulberry32(seed + 1);
  const perm = Array.from({ length: pages }, (_, i) => i);
  for (let i = pages - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const iovas = new Float64Array(count);
  const expected = new Float64Array(count);
  for (let k = 0; k < count; k++) {
    const p = perm[k % pages]!;
    const off = Math.floor(rand() * PAGE);
    iovas[k] = iovaOf(p) + off;
    expected[k] = phys[p]! + off;
  }
  return { name, iommu, device: 1, iovas, expected, hits: 0, walkHits: 0 };
}

async function translateCases(s: Sizes): Promise<TranslateCase[]> {
  const n = translateNames(s);
  const hit = await translateCase(n.hit, s.hitPages, s.hitTranslates, (i) => IOVA_BASE + i * PAGE, SEED);
  hit.hits = s.hitTranslates;
  const walkHit = await translateCase(n.walkHit, s.missPages, s.missTranslates, (i) => IOVA_BASE + i * PAGE, SEED + 2);
  walkHit.walkHits = s.missTranslates;
  // Page i alone in its 2 MiB region (at a varying offset in it): one last-level table per page.
  const fullWalk = await translateCase(n.fullWalk, s.missPages, s.missTranslates, (i) => IOVA_BASE + i * REGION_2M + (i % 512) * PAGE, SEED + 4);
  return [hit, walkHit, fullWalk];
}

function translateStep(c: TranslateCase) {
  return {
    name: c.name,
    run: async (t: Timer) => {
      const { iommu, device, iovas, expected } = c;
      const n = iovas.length;
      // Prime the walk cache (and, for hits, the IOTLB) exactly as the timed loop left it last time.
      for (let k = Math.max(0, n - 2 * IOTLB_ENTRIES); k < n; k++) iommu.translate(device, iovas[k]!, 'read');
      const before = iommu.stats().iotlb;
      let wrong = 0;
      await t.time(c.name, n, () => {
        for (let k = 0; k < n; k++) if (iommu.translate(device, iovas[k]!, 'read') !== expected[k]) wrong++;
      }, 'ns/translate');
      const after = iommu.stats().iotlb;
      if (wrong !== 0) fail(`${c.name}: ${wrong} translations wrong`);
      const hits = after.hits - before.hits;
      const walkHits = after.walkHits - before.walkHits;
      if (hits !== c.hits || walkHits !== c.walkHits || after.hits + after.misses - before.hits - before.misses !== n) {
        fail(`${c.name}: ${hits} IOTLB hits and ${walkHits} walk-cache hits in ${n} translates, expected ${c.hits} and ${c.walkHits}`);
      }
    },
  };
}

// --- batching -----------------------------------------------------------------------------------------

export const STRATEGIES = { batched: 'map_sg + one batch', perSegment: 'per-segment map/unmap' } as const;
type Strategy = keyof typeof STRATEGIES;

/** Names of the batching measurements for N segments. */
export function batchNames(segments: number, s: Strategy) {
  const what = `batching ${segments} x 4K, ${STRATEGIES[s]}`;
  return {
    map: `${what}: map wall`,
    unmap: `${what}: unmap wall`,
    syncs: `${what}: syncs per round`,
    commands: `${what}: invalidation commands per round`,
    modelled: `${what}: modelled invalidation time per round`,
  };
}

const batchGroup = (segments: number): string => `batching ${segments} x 4K segments`;

interface BatchCounts {
  syncs: number;
  commands: number;
  modelledNs: number;
}

/**
 * One round: map the segments (one way or the other), let the device read each, unmap, and check the
 * device now faults on them. Map and unmap are timed; the counter deltas of the round are returned.
 */
async function batchRound(t: Timer, iommu: Iommu, dom: Domain, device: number, sg: SgTable, phys: Float64Array, s: Strategy): Promise<BatchCounts> {
  const n = phys.length;
  const names = batchNames(n, s);
  const before = iommu.stats().iotlb;
  if (s === 'batched') {
    const mapped = await t.time(names.map, n, () => dom.mapSg(IOVA_BASE, sg, PROT), 'ns/segment');
    if (mapped !== n * PAGE) fail(`${names.map} returned ${mapped}`);
  } else {
    await t.time(names.map, n, async () => {
      for (let i = 0; i < n; i++) await dom.map(IOVA_BASE + i * PAGE, phys[i]!, PAGE, PROT);
    }, 'ns/segment');
  }
  for (let i = 0; i < n; i++) {
    if (iommu.translate(device, IOVA_BASE + i * PAGE + 8, 'read') !== phys[i]! + 8) fail(`${names.map}: segment ${i} translates wrong`);
  }
  let unmapped = 0;
  if (s === 'batched') {
    unmapped = await t.time(names.unmap, n, () => dom.unmapSg(IOVA_BASE, sg), 'ns/segment');
  } else {
    await t.time(names.unmap, n, async () => {
      for (let i = 0; i < n; i++) unmapped += await dom.unmap(IOVA_BASE + i * PAGE, PAGE);
    }, 'ns/segment');
  }
  if (unmapped !== n * PAGE) fail(`${names.unmap} unmapped ${unmapped}`);
  const after = iommu.stats().iotlb;
  for (const i of [0, n - 1]) {
    try {
      iommu.translate(device, IOVA_BASE + i * PAGE, 'read');
      fail(`${names.unmap}: the device still translates segment ${i} after unmap (stale IOTLB)`);
    } catch (e) {
      if (!(e instanceof FaultError) || e.fault.reason !== 'translation') throw e;
    }
  }
  return { syncs: after.syncs - before.syncs, commands: after.invalidations - before.invalidations, modelledNs: after.modelledNs - before.modelledNs };
}

async function batching(ctx: BenchContext, segments: number): Promise<void> {
  const group = batchGroup(segments);
  const strategies = (Object.keys(STRATEGIES) as Strategy[]).filter((s) => ctx.selected(group, STRATEGIES[s]));
  if (strategies.length === 0) return;
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 64 * 2 ** 20, invalidationCost: { ...INVALIDATION_COST } });
  const phys = scatteredPhys(segments, PHYS_BASE, SEED + segments);
  const sg = new SgTable(segments);
  for (let i = 0; i < segments; i++) sg.push(phys[i]!, PAGE);
  // Both on invalidateOnMap domains (hardware that needs an invalidation after map, as the seed's).
  const doms = new Map(strategies.map((s, i) => [s, { dom: iommu.allocDomain({ invalidateOnMap: true }), device: i + 1 }]));
  for (const { dom, device } of doms.values()) iommu.attachDevice(device, dom);
  const counts = new Map<Strategy, BatchCounts>();
  await ctx.group({
    name: group,
    steps: strategies.map((s) => ({
      name: STRATEGIES[s],
      run: async (t: Timer) => {
        const { dom, device } = doms.get(s)!;
        const c = await batchRound(t, iommu, dom, device, sg, phys, s);
        const expected = s === 'batched' ? 2 : 2 * segments;
        if (c.syncs !== expected) fail(`${STRATEGIES[s]} of ${segments} segments: ${c.syncs} syncs, expected ${expected}`);
        counts.set(s, c);
      },
    })),
  });
  await iommu.close();
  for (const [s, c] of counts) {
    const n = batchNames(segments, s);
    ctx.reading(group, n.syncs, 'syncs', c.syncs, 1, { kind: 'count', note: 'stats().iotlb.syncs per round (map, then unmap)' });
    ctx.reading(group, n.commands, 'commands', c.commands, 1, { kind: 'count', note: 'stats().iotlb.invalidations per round' });
    ctx.reading(group, n.modelled, 'µs', c.modelledNs / 1000, 1, {
      kind: 'count',
      note: `stats().iotlb.modelledNs per round, at ${INVALIDATION_COST.perSync} ns per sync + ${INVALIDATION_COST.perCommand} ns per command`,
    });
  }
  const b = batchNames(segments, 'batched');
  const p = batchNames(segments, 'perSegment');
  const ratios = 'ratios: per-segment / batched';
  ctx.pairedRatio(ratios, `${segments} segments: map wall, per-segment / batched`, p.map, b.map);
  ctx.pairedRatio(ratios, `${segments} segments: unmap wall, per-segment / batched`, p.unmap, b.unmap);
  ctx.ratio(ratios, `${segments} segments: syncs, per-segment / batched`, p.syncs, b.syncs);
  ctx.ratio(ratios, `${segments} segments: modelled invalidation time, per-segment / batched`, p.modelled, b.modelled);
}

/** The batching results as chart points: one per (segments, strategy, metric). */
export function batchingPoints(ms: readonly Measurement[]): { segments: number; strategy: string; metric: string; value: number }[] {
  const byName = new Map(ms.filter((m) => m.suite === 'iotlb').map((m) => [m.name, m]));
  const out: { segments: number; strategy: string; metric: string; value: number }[] = [];
  for (const segments of [...new Set([...QUICK.segments, ...FULL.segments])].sort((x, y) => x - y)) {
    for (const s of Object.keys(STRATEGIES) as Strategy[]) {
      const n = batchNames(segments, s);
      const get = (name: string) => byName.get(name)?.median;
      const syncs = get(n.syncs);
      const modelled = get(n.modelled);
      const map = get(n.map);
      const unmap = get(n.unmap);
      const strategy = STRATEGIES[s];
      if (syncs !== undefined) out.push({ segments, strategy, metric: 'syncs per round', value: syncs });
      if (modelled !== undefined) out.push({ segments, strategy, metric: 'modelled invalidation µs per round', value: modelled });
      if (map !== undefined && unmap !== undefined) out.push({ segments, strategy, metric: 'wall µs per round (map + unmap)', value: ((map + unmap) * segments) / 1000 });
    }
  }
  return out;
}

export const iotlbSuite: Suite = {
  name: 'iotlb',
  description: 'devices: translate throughput with IOTLB hits and misses; invalidation batching vs per-segment fallback',
  async run(ctx: BenchContext): Promise<void> {
    const s = ctx.options.quick ? QUICK : FULL;
    const n = translateNames(s);
    const selected = [n.hit, n.walkHit, n.fullWalk].some((name) => ctx.selected('translate', name));
    if (selected) {
      ctx.options.log('  mapping the translate working sets (untimed) ...');
      const cases = await translateCases(s);
      await ctx.group({ name: 'translate', steps: cases.map(translateStep) });
      for (const c of cases) await c.iommu.close();
      const g = 'translate';
      ctx.derived(g, 'translate, IOTLB hit: millions per second', 'M/s', n.hit, (ns) => 1000 / ns, 'from the hit case: 1000 / (ns per translate)');
      ctx.target('translate, IOTLB hit: millions per second', TARGET_HITS_PER_S);
      ctx.pairedRatio(g, 'ratio translate miss (walk-cache hit) / hit', n.walkHit, n.hit);
      ctx.pairedRatio(g, 'ratio translate miss (full walk) / hit', n.fullWalk, n.hit);
    }
    for (const segments of s.segments) await batching(ctx, segments);
  },
};
