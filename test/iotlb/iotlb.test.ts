/**
 * The IOTLB as devices and callers see it through stats(): hits and misses, capacity and eviction,
 * the walk cache (walkHits) and its invalidation when a table page is freed, sync/command counting
 * and the invalidation cost model (SEMANTICS §6, src/iotlb/iotlb.ts).
 */
import test, { type ExecutionContext } from 'ava';
import { Iommu, Prot, SgTable, type Domain } from '../../src/index.js';
import { throwsWith } from '../helpers/errno.js';
import { faults, tlbCounters } from '../helpers/faults.js';
import { G1, K4, M2, setup } from '../helpers/fixtures.js';

const RW = Prot.READ | Prot.WRITE;

async function iommuWith(t: ExecutionContext, opts: Parameters<typeof Iommu.create>[0]): Promise<Iommu> {
  const iommu = await Iommu.create({ workers: 0, ...opts });
  t.teardown(() => iommu.close());
  return iommu;
}

/** Counters and modelled time, for before/after deltas. */
function snap(iommu: Iommu): { syncs: number; invalidations: number; ns: number } {
  const s = iommu.stats().iotlb;
  return { syncs: s.syncs, invalidations: s.invalidations, ns: s.modelledNs };
}

function delta(a: ReturnType<typeof snap>, b: ReturnType<typeof snap>): ReturnType<typeof snap> {
  return { syncs: b.syncs - a.syncs, invalidations: b.invalidations - a.invalidations, ns: b.ns - a.ns };
}

/**
 * The byte offset (in the table memory) of the table at `level` that holds iova's entry, reading the
 * descriptors by the ARM rules (4K granule: 9 bits a level); -1 if the walk stops before it.
 */
function tableOf(dom: Domain, iova: number, level: number): number {
  const pt = dom.pageTable();
  const mem = new DataView(pt.memory);
  let table = pt.root;
  for (let l = pt.startLevel; l < level; l++) {
    const shift = 12 + 9 * (3 - l);
    const index = Math.floor(iova / 2 ** shift) % 512;
    const desc = mem.getBigUint64(table + index * 8, true);
    if ((desc & 3n) !== 3n) return -1;
    table = Number(desc & 0xffff_ffff_f000n);
  }
  return table;
}

// ---------------------------------------------------------------------------------------------
// Hits, misses, capacity and eviction
// ---------------------------------------------------------------------------------------------

test('a first translate misses and caches; the next one of the same leaf hits', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0x10_0000, 2 * K4, RW);
  await dom.map(M2, 0x40_0000, M2, RW);
  iommu.attachDevice(1, dom);
  t.like(tlbCounters(iommu), { hits: 0, misses: 0, entries: 0 });
  iommu.translate(1, 0, 'read');
  t.like(tlbCounters(iommu), { hits: 0, misses: 1, entries: 1 });
  iommu.translate(1, 0xfff, 'write');
  t.like(tlbCounters(iommu), { hits: 1, misses: 1, entries: 1 });
  iommu.translate(1, K4, 'read'); // another page: a miss
  t.like(tlbCounters(iommu), { hits: 1, misses: 2, entries: 2 });
  // A 2M block is one entry: anywhere in it hits after the first.
  iommu.translate(1, M2 + 0x1234, 'read');
  iommu.translate(1, M2 + 0x1f_f000, 'read');
  iommu.translate(1, M2 + 0x10_0000, 'write');
  t.like(tlbCounters(iommu), { hits: 3, misses: 3, entries: 3 });
  // Faults that walk and find nothing cache nothing.
  faults(t, iommu, 1, 2 * K4, 'read', 'translation');
  faults(t, iommu, 1, 2 * K4, 'read', 'translation');
  t.like(tlbCounters(iommu), { hits: 3, misses: 3, entries: 3 });
});

test('capacity: with iotlbEntries 4, a fifth page evicts the oldest; kept ones hit, the evicted one misses', async (t) => {
  const iommu = await iommuWith(t, { iotlbEntries: 4 });
  const dom = iommu.allocDomain();
  await dom.map(0x10_0000, 0x80_0000, 8 * K4, RW);
  iommu.attachDevice(1, dom);
  const page = (i: number): number => 0x10_0000 + i * K4;
  for (let i = 0; i < 4; i++) iommu.translate(1, page(i), 'read');
  t.like(tlbCounters(iommu), { misses: 4, evictions: 0, entries: 4 });
  t.is(iommu.translate(1, page(4), 'read'), 0x80_0000 + 4 * K4);
  t.like(tlbCounters(iommu), { misses: 5, hits: 0, evictions: 1, entries: 4 });
  // Pages 1..4 are kept: all hits (hits do not change what is evicted next).
  for (const i of [4, 1, 2, 3]) t.is(iommu.translate(1, page(i) + 8, 'write'), 0x80_0000 + i * K4 + 8);
  t.like(tlbCounters(iommu), { misses: 5, hits: 4, evictions: 1, entries: 4 });
  // Page 0 was evicted: it misses (and evicts the next oldest, page 1).
  t.is(iommu.translate(1, page(0), 'read'), 0x80_0000);
  t.like(tlbCounters(iommu), { misses: 6, hits: 4, evictions: 2, entries: 4 });
  iommu.translate(1, page(0), 'read');
  t.like(tlbCounters(iommu), { misses: 6, hits: 5 });
  iommu.translate(1, page(1), 'read');
  t.like(tlbCounters(iommu), { misses: 7, hits: 5, evictions: 3, entries: 4 });
});

test('capacity: entries never exceed iotlbEntries, across domains', async (t) => {
  const iommu = await iommuWith(t, { iotlbEntries: 16 });
  const a = iommu.allocDomain();
  const b = iommu.allocDomain();
  await a.map(0, 0x100_0000, 64 * K4, RW);
  await b.map(0, 0x200_0000, 64 * K4, RW);
  iommu.attachDevice(1, a);
  iommu.attachDevice(2, b);
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 64; i++) {
      t.is(iommu.translate(1 + (i % 2), i * K4, 'read'), (i % 2 ? 0x200_0000 : 0x100_0000) + i * K4);
      t.true(iommu.stats().iotlb.entries <= 16);
    }
  }
  const s = tlbCounters(iommu);
  t.is(s.entries, 16);
  t.is(s.misses, 128, 'FIFO over 64 distinct leaves with room for 16: every access misses');
  t.is(s.evictions, 128 - 16);
});

test('iotlbEntries: 1 works; 0, negatives, fractions and non-numbers are EINVAL', async (t) => {
  const iommu = await iommuWith(t, { iotlbEntries: 1 });
  const dom = iommu.allocDomain();
  await dom.map(0, 0x1000, 2 * K4, RW);
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0, 'read');
  iommu.translate(1, 0, 'read');
  iommu.translate(1, K4, 'read');
  t.like(tlbCounters(iommu), { hits: 1, misses: 2, entries: 1, evictions: 1 });
  for (const v of [0, -1, 1.5, NaN, '4', null]) {
    const err = await t.throwsAsync(() => Iommu.create({ workers: 0, iotlbEntries: v as number }));
    t.is((err as { code?: string } | undefined)?.code, 'EINVAL', `iotlbEntries ${String(v)}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Walk cache
// ---------------------------------------------------------------------------------------------

test('walk cache: a miss in a 2M region whose last-level table is cached counts a walkHit', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x20_0000, 0x100_0000, 8 * K4, RW); // region 1
  await dom.map(0x40_0000, 0x200_0000, 2 * K4, RW); // region 2
  await dom.map(G1, 0x4000_0000, M2, RW); // a block: no last-level table
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0x20_0000, 'read');
  t.like(tlbCounters(iommu), { misses: 1, walkHits: 0 });
  iommu.translate(1, 0x20_1000, 'read');
  t.like(tlbCounters(iommu), { misses: 2, walkHits: 1 });
  iommu.translate(1, 0x20_7000, 'write');
  t.like(tlbCounters(iommu), { misses: 3, walkHits: 2 });
  // A leaf hit does not touch the walk cache.
  iommu.translate(1, 0x20_1000, 'read');
  t.like(tlbCounters(iommu), { hits: 1, misses: 3, walkHits: 2 });
  // Another region: its own table, not cached yet.
  iommu.translate(1, 0x40_0000, 'read');
  t.like(tlbCounters(iommu), { misses: 4, walkHits: 2 });
  iommu.translate(1, 0x40_1000, 'read');
  t.like(tlbCounters(iommu), { misses: 5, walkHits: 3 });
  // A hole in a cached region walks from the cached table (and faults).
  faults(t, iommu, 1, 0x20_8000, 'read', 'translation');
  t.like(tlbCounters(iommu), { misses: 5, walkHits: 4 });
  // A block: a walk ending above the last level caches no table.
  iommu.translate(1, G1, 'read');
  faults(t, iommu, 1, G1 + M2, 'read', 'translation');
  t.like(tlbCounters(iommu), { misses: 6, walkHits: 4 });

  // Walk entries are tagged by domain: the same region of another domain does not hit them.
  const other = iommu.allocDomain();
  await other.map(0x20_0000, 0x300_0000, 2 * K4, RW);
  iommu.attachDevice(2, other);
  t.is(iommu.translate(2, 0x20_0000, 'read'), 0x300_0000);
  t.like(tlbCounters(iommu), { misses: 7, walkHits: 4 });
  t.is(iommu.translate(2, 0x20_1000, 'read'), 0x300_1000);
  t.like(tlbCounters(iommu), { misses: 8, walkHits: 5 });
});

test('walk cache: a strict unmap (leaf-size invalidation) keeps walk entries; flushIotlbAll drops them', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x20_0000, 0x100_0000, 4 * K4, RW);
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0x20_0000, 'read');
  await dom.unmap(0x20_0000, K4);
  faults(t, iommu, 1, 0x20_0000, 'read', 'translation');
  iommu.translate(1, 0x20_1000, 'read');
  t.like(tlbCounters(iommu), { misses: 2, walkHits: 2 }, 'both walks after the unmap started from the cached table');
  dom.flushIotlbAll();
  iommu.translate(1, 0x20_2000, 'read');
  t.like(tlbCounters(iommu), { misses: 3, walkHits: 2, entries: 1 });
});

test('walk cache: a map on an invalidateOnMap domain (range without leaf size) drops walk entries in its range', async (t) => {
  const { iommu, dom } = await setup(t, { invalidateOnMap: true });
  await dom.map(0x20_0000, 0x100_0000, K4, RW);
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0x20_0000, 'read');
  await dom.map(0x20_1000, 0x100_1000, K4, RW);
  iommu.translate(1, 0x20_1000, 'read');
  t.like(tlbCounters(iommu), { misses: 2, walkHits: 0 });
  // A map elsewhere leaves this region's walk entry alone.
  await dom.map(0x80_0000, 0x200_0000, K4, RW);
  faults(t, iommu, 1, 0x20_2000, 'read', 'translation');
  t.like(tlbCounters(iommu), { walkHits: 1 });
});

test('walk cache: a block that replaces a table drops the walks through it at once: devices reach the block, no batch is counted', async (t) => {
  const { iommu, dom } = await setup(t); // no invalidateOnMap
  const region = 0x60_0000;
  await dom.map(region + 5 * K4, 0x900_0000, K4, RW);
  iommu.attachDevice(1, dom);
  t.is(iommu.translate(1, region + 5 * K4, 'read'), 0x900_0000); // walk entry for the region's table
  const old = tableOf(dom, region, 3);
  t.true(old > 0);
  t.is(await dom.unmap(region + 5 * K4, K4), K4);
  const pages0 = iommu.stats().tables.pages;

  // The now-empty table is replaced by a 2M block. As io-pgtable-arm does (tlb_flush_walk), the walk
  // cache entry through it goes before the map returns, and only then is the page freed.
  const s0 = snap(iommu);
  await dom.map(region, 0x4000_0000, M2, RW);
  t.deepEqual(delta(s0, snap(iommu)), { syncs: 0, invalidations: 0, ns: 0 }, 'a map on a normal domain counts no batch');
  t.is(tableOf(dom, region, 3), -1, 'the table is unlinked');
  t.is(iommu.stats().tables.pages, pages0 - 1, 'and freed');
  const wh = iommu.stats().iotlb.walkHits;
  t.is(iommu.translate(1, region + 5 * K4, 'read'), 0x4000_0000 + 5 * K4, 'the device reaches the new block at once');
  t.is(iommu.translate(1, region + M2 - 1, 'write'), 0x4000_0000 + M2 - 1);
  t.is(iommu.stats().iotlb.walkHits, wh, 'no walk through the old table');

  // The freed page may be reused at once: no walk entry points at it any more.
  const other = iommu.allocDomain();
  await other.map(region, 0x700_0000, K4, RW);
  iommu.attachDevice(2, other);
  t.is(iommu.translate(2, region, 'read'), 0x700_0000);
  t.is(iommu.translate(1, region + 5 * K4, 'read'), 0x4000_0000 + 5 * K4);
  const pages1 = iommu.stats().tables.pages;
  dom.iotlbSync();
  t.is(iommu.stats().tables.pages, pages1, 'nothing was left for the next batch');
});

const REPLACE_CASES = [
  { name: '16K granule, 32M block', granule: 16384 as const, block: 0x200_0000, page: 0x4000, freed: 1 },
  { name: '64K granule, 512M block', granule: 65536 as const, block: 0x2000_0000, page: 0x1_0000, freed: 1 },
  { name: '4K granule, 1G block over a level-2 table and its level-3 table', granule: 4096 as const, block: G1, page: K4, freed: 2 },
];

for (const c of REPLACE_CASES) {
  test(`walk cache: ${c.name} replacing empty tables: no stale walk, pages freed by the map`, async (t) => {
    const { iommu, dom } = await setup(t, { granule: c.granule });
    const region = 3 * c.block;
    // A leaf some way into the region, in the last-level table of a sub-region that is not the first.
    const leaf = region + 5 * (c.block === G1 ? M2 : c.page) + c.page;
    await dom.map(leaf, 0x100_0000, c.page, RW);
    iommu.attachDevice(1, dom);
    t.is(iommu.translate(1, leaf, 'read'), 0x100_0000);
    await dom.unmap(leaf, c.page);
    const pages0 = iommu.stats().tables.pages;
    await dom.map(region, 4 * c.block, c.block, RW);
    t.is(dom.iovaToPhys(leaf), 4 * c.block + (leaf - region));
    t.is(iommu.stats().tables.pages, pages0 - c.freed);
    const wh = iommu.stats().iotlb.walkHits;
    t.is(iommu.translate(1, leaf, 'write'), 4 * c.block + (leaf - region));
    t.is(iommu.stats().iotlb.walkHits, wh, 'not walked from the old table');
  });
}

test('walk cache: flushIotlbAll after a block replaced a table has nothing of it left to free', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x20_0000, 0x100_0000, K4, RW);
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0x20_0000, 'read');
  await dom.unmap(0x20_0000, K4);
  const pages0 = iommu.stats().tables.pages;
  await dom.map(0x20_0000, 0x4000_0000, M2, RW);
  t.is(iommu.stats().tables.pages, pages0 - 1);
  t.is(iommu.translate(1, 0x20_0000, 'read'), 0x4000_0000);
  dom.flushIotlbAll();
  t.is(iommu.stats().tables.pages, pages0 - 1);
  t.is(iommu.translate(1, 0x20_0000, 'read'), 0x4000_0000);
});

test('walk cache: on an invalidateOnMap domain the block map itself issues the walk invalidation and frees the page', async (t) => {
  const { iommu, dom } = await setup(t, { invalidateOnMap: true });
  await dom.map(0x20_0000, 0x100_0000, K4, RW);
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0x20_0000, 'read');
  await dom.unmap(0x20_0000, K4);
  const pages0 = iommu.stats().tables.pages;
  const s0 = snap(iommu);
  await dom.map(0x20_0000, 0x4000_0000, M2, RW);
  t.is(delta(s0, snap(iommu)).syncs, 1);
  t.is(iommu.stats().tables.pages, pages0 - 1);
  t.is(iommu.translate(1, 0x20_1000, 'read'), 0x4000_1000);
});

test('walk cache: freeing a domain whose blocks replaced tables returns every page', async (t) => {
  const { iommu } = await setup(t);
  const base = iommu.stats().tables.pages;
  const dom = iommu.allocDomain();
  await dom.map(0x20_0000, 0x100_0000, K4, RW);
  iommu.attachDevice(1, dom);
  iommu.translate(1, 0x20_0000, 'read');
  await dom.unmap(0x20_0000, K4);
  await dom.map(0x20_0000, 0x4000_0000, M2, RW);
  t.true(iommu.stats().tables.pages > base);
  await dom.free();
  t.is(iommu.stats().tables.pages, base);
  t.is(iommu.stats().iotlb.entries, 0);
  faults(t, iommu, 1, 0x20_0000, 'read', 'no-domain');
});
// ---------------------------------------------------------------------------------------------
// Syncs and commands
// ---------------------------------------------------------------------------------------------

test('syncs: one per strict unmap/unmapSg, none when deferred, one per iotlbSync; maps only on invalidateOnMap', async (t) => {
  const { iommu, dom } = await setup(t);
  const iom = iommu.allocDomain({ invalidateOnMap: true });
  let s = snap(iommu);
  const step = (): ReturnType<typeof snap> => {
    const now = snap(iommu);
    const d = delta(s, now);
    s = now;
    return d;
  };
  await dom.map(0, 0x100_0000, 16 * K4, RW);
  t.is(step().syncs, 0, 'map');
  await dom.mapSg(M2, [{ phys: 0x200_0000, length: K4 }], RW);
  t.is(step().syncs, 0, 'mapSg');
  await dom.unmap(0, 4 * K4);
  t.like(step(), { syncs: 1, invalidations: 1 }, 'unmap of 4 contiguous pages: one command');
  await dom.unmapSg(4 * K4, [{ phys: 0, length: 4 * K4 }]);
  t.like(step(), { syncs: 1, invalidations: 1 });
  await dom.unmapSg(8 * K4, [{ phys: 0, length: 2 * K4 }], { deferInvalidate: true });
  await dom.unmapSg(10 * K4, [{ phys: 0, length: 2 * K4 }], { deferInvalidate: true });
  await dom.unmapSg(14 * K4, [{ phys: 0, length: 2 * K4 }], { deferInvalidate: true });
  t.is(step().syncs, 0, 'deferred');
  dom.iotlbSync();
  t.like(step(), { syncs: 1, invalidations: 2 }, 'one batch: the adjacent ranges merged, the disjoint one is its own command');
  await iom.map(0, 0x100_0000, 4 * K4, RW);
  t.like(step(), { syncs: 1, invalidations: 1 }, 'invalidateOnMap map');
  await iom.mapSg(M2, [{ phys: 0x200_0000, length: K4 }], RW, { deferInvalidate: true });
  t.is(step().syncs, 0);
  iom.iotlbSync();
  t.like(step(), { syncs: 1, invalidations: 1 });
  // An unmap of 0 bytes (a hole) is still one sync, with nothing in it.
  await dom.unmap(G1, K4);
  t.like(step(), { syncs: 1, invalidations: 0 });
});

test('syncs: a failed map that wrote something is rolled back in one batch (even when deferring); one that wrote nothing, none', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  await dom.map(2 * K4, 0x50_0000, K4, RW);
  let s = snap(iommu);
  // Writes pages 0 and 1, fails at page 2 (EEXIST): the rollback is invalidated.
  await t.throwsAsync(() => dom.map(0, 0x10_0000, 3 * K4, RW), { instanceOf: Error });
  t.like(delta(s, snap(iommu)), { syncs: 1, invalidations: 1 });
  t.is(dom.iovaToPhys(0), null);
  faults(t, iommu, 1, 0, 'read', 'translation');
  s = snap(iommu);
  await t.throwsAsync(() => dom.mapSg(0, [{ phys: 0x10_0000, length: 3 * K4 }], RW, { deferInvalidate: true }));
  t.like(delta(s, snap(iommu)), { syncs: 1, invalidations: 1 });
  // Fails at its first page: nothing written, nothing to invalidate.
  s = snap(iommu);
  await t.throwsAsync(() => dom.map(2 * K4, 0x10_0000, 2 * K4, RW));
  t.like(delta(s, snap(iommu)), { syncs: 0, invalidations: 0 });
  // Argument errors issue nothing either.
  await t.throwsAsync(() => dom.unmap(0x800, K4));
  await t.throwsAsync(() => dom.unmapSg(0, [{ phys: 0, length: 0x800 }]));
  t.like(delta(s, snap(iommu)), { syncs: 0, invalidations: 0 });
  t.is(iommu.translate(1, 2 * K4, 'read'), 0x50_0000);
});

// ---------------------------------------------------------------------------------------------
// Cost model
// ---------------------------------------------------------------------------------------------

const COST = { perSync: 1000, perCommand: 100 };

test('cost model: modelledNs grows by exactly perSync + perCommand x commands per sync', async (t) => {
  const iommu = await iommuWith(t, { invalidationCost: COST });
  const dom = iommu.allocDomain();
  t.is(iommu.stats().iotlb.modelledNs, 0);
  // 4K pages up to 2M, a 2M block, 4K pages after: unmapping it all is three commands (leaf size changes).
  await dom.map(M2 - 2 * K4, 0x4000_0000 - 2 * K4, 2 * K4 + M2 + 2 * K4, RW);
  t.is(iommu.stats().iotlb.modelledNs, 0, 'a map on a plain domain issues nothing');
  let s = snap(iommu);
  t.is(await dom.unmap(M2 - 2 * K4, 2 * K4 + M2 + 2 * K4), 2 * K4 + M2 + 2 * K4);
  let d = delta(s, snap(iommu));
  t.deepEqual(d, { syncs: 1, invalidations: 3, ns: 1000 + 300 });

  // flushIotlbAll: one command.
  s = snap(iommu);
  dom.flushIotlbAll();
  t.deepEqual(delta(s, snap(iommu)), { syncs: 1, invalidations: 1, ns: 1100 });

  // Two disjoint deferred unmaps, then one sync: one batch of two commands.
  await dom.map(0, 0x10_0000, 8 * K4, RW);
  s = snap(iommu);
  await dom.unmapSg(0, [{ phys: 0x10_0000, length: K4 }], { deferInvalidate: true });
  await dom.unmapSg(4 * K4, [{ phys: 0x10_4000, length: K4 }], { deferInvalidate: true });
  t.deepEqual(delta(s, snap(iommu)), { syncs: 0, invalidations: 0, ns: 0 });
  dom.iotlbSync();
  d = delta(s, snap(iommu));
  t.deepEqual(d, { syncs: 1, invalidations: 2, ns: 1000 + 200 });

  // The invariant over everything so far.
  const all = iommu.stats().iotlb;
  t.is(all.modelledNs, 1000 * all.syncs + 100 * all.invalidations);
});

test('cost model: without invalidationCost nothing is modelled; bad costs are EINVAL', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0, K4, RW);
  await dom.unmap(0, K4);
  t.is(iommu.stats().iotlb.syncs, 1);
  t.is(iommu.stats().iotlb.modelledNs, 0);
  for (const bad of [{ perSync: -1, perCommand: 0 }, { perSync: 1.5, perCommand: 0 }, { perSync: 0, perCommand: 'x' }, { perSync: 1, bogus: 1 }, 'cheap', 5]) {
    const err = await t.throwsAsync(() => Iommu.create({ workers: 0, invalidationCost: bad as typeof COST }));
    t.is((err as { code?: string } | undefined)?.code, 'EINVAL', `invalidationCost ${JSON.stringify(bad)}`);
  }
});

const SEGMENTS = [
  { phys: 0x100_0000, length: K4 },
  { phys: 0x230_0000, length: 2 * K4 },
  { phys: 0x111_0000, length: K4 },
  { phys: 0x3a0_0000, length: 3 * K4 },
  { phys: 0x150_0000, length: K4 },
  { phys: 0x270_0000, length: 2 * K4 },
  { phys: 0x190_0000, length: K4 },
  { phys: 0x2f0_0000, length: K4 },
];
const SG_BYTES = SEGMENTS.reduce((n, s) => n + s.length, 0);

/** map_sg + unmap_sg (one batch each where any) vs map + unmap per segment, each unmap with its own sync. */
async function batchedVsPerSegment(t: ExecutionContext, invalidateOnMap: boolean) {
  const iommu = await iommuWith(t, { invalidationCost: COST });
  const dom = iommu.allocDomain({ invalidateOnMap });
  iommu.attachDevice(1, dom);
  const iova = 0x4000_0000;

  let s = snap(iommu);
  t.is(await dom.mapSg(iova, SgTable.from(SEGMENTS), RW), SG_BYTES);
  let off = 0;
  for (const seg of SEGMENTS) {
    t.is(iommu.translate(1, iova + off, 'read'), seg.phys);
    off += seg.length;
  }
  t.is(await dom.unmapSg(iova, SEGMENTS), SG_BYTES);
  const batched = delta(s, snap(iommu));
  faults(t, iommu, 1, iova, 'read', 'translation');

  s = snap(iommu);
  off = 0;
  for (const seg of SEGMENTS) {
    await dom.map(iova + off, seg.phys, seg.length, RW);
    off += seg.length;
  }
  off = 0;
  for (const seg of SEGMENTS) {
    t.is(iommu.translate(1, iova + off, 'write'), seg.phys);
    t.is(await dom.unmap(iova + off, seg.length), seg.length);
    off += seg.length;
  }
  const perSegment = delta(s, snap(iommu));
  faults(t, iommu, 1, iova, 'read', 'translation');
  return { batched, perSegment };
}

test('cost model: map_sg + one batch is cheaper than the per-segment fallback', async (t) => {
  const n = SEGMENTS.length;
  const { batched, perSegment } = await batchedVsPerSegment(t, false);
  // Batched: the unmap_sg's single batch; its pages are contiguous 4K leaves: one command.
  t.deepEqual(batched, { syncs: 1, invalidations: 1, ns: 1100 });
  // Per segment: one sync and one command per unmap.
  t.deepEqual(perSegment, { syncs: n, invalidations: n, ns: n * 1100 });
  t.true(batched.ns < perSegment.ns);
});

test('cost model: on an invalidateOnMap domain map_sg is one batch too, vs one per segment', async (t) => {
  const n = SEGMENTS.length;
  const { batched, perSegment } = await batchedVsPerSegment(t, true);
  t.deepEqual(batched, { syncs: 2, invalidations: 2, ns: 2 * 1100 });
  t.deepEqual(perSegment, { syncs: 2 * n, invalidations: 2 * n, ns: 2 * n * 1100 });
  t.true(batched.ns < perSegment.ns);
  t.true(batched.syncs < perSegment.syncs);
});

test('stats: a fresh Iommu reports zeroed IOTLB counters and fault counts', async (t) => {
  const iommu = await iommuWith(t, {});
  const s = iommu.stats();
  t.like(s.iotlb, { invalidations: 0, syncs: 0, hits: 0, misses: 0, walkHits: 0, evictions: 0, entries: 0, modelledNs: 0 });
  t.is(s.devices, 0);
  t.is(s.faults.total, 0);
  throwsWith(t, () => iommu.translate(0, 0, 'read' as const), 'EFAULT');
});

// ---------------------------------------------------------------------------------------------
// Global invalidation, and commands by kind
// ---------------------------------------------------------------------------------------------

test('invalidateAll: one batch of one global command drops every domain\'s translations, stale ones too', async (t) => {
  const iommu = await iommuWith(t, {});
  const a = iommu.allocDomain();
  const b = iommu.allocDomain({ format: 'arm-lpae-s2' });
  await a.map(0, 0x10_0000, M2, RW);
  await b.map(G1, 0x80_0000, K4, RW);
  iommu.attachDevice(1, a);
  iommu.attachDevice(2, b);
  iommu.translate(1, 0x1234, 'read');
  iommu.translate(2, G1, 'write');
  t.like(tlbCounters(iommu), { entries: 2 });
  // A deferred unmap: device 1 still reaches the old block through its cached entry.
  t.is(await a.unmapSg(0, SgTable.from([{ phys: 0x10_0000, length: M2 }]), { deferInvalidate: true }), M2);
  t.is(iommu.translate(1, 0x1234, 'read'), 0x10_1234, 'stale until an invalidation');
  const before = snap(iommu);
  const kinds = iommu.stats().iotlb.commands;
  iommu.invalidateAll();
  t.deepEqual(delta(before, snap(iommu)), { syncs: 1, invalidations: 1, ns: 0 });
  t.deepEqual(iommu.stats().iotlb.commands, { ...kinds, global: kinds.global + 1 });
  t.like(tlbCounters(iommu), { entries: 0 });
  faults(t, iommu, 1, 0x1234, 'read', 'translation', 'the stale translation is gone');
  const misses = tlbCounters(iommu).misses;
  t.is(iommu.translate(2, G1 + 8, 'read'), 0x80_0008, 'the other domain walks its tables again');
  t.is(tlbCounters(iommu).misses, misses + 1);
  // The deferred batch is still issued by iotlbSync, and frees what it holds.
  a.iotlbSync();
  await iommu.close();
  t.throws(() => iommu.invalidateAll(), { code: 'ENODEV' });
});

test('commands by kind add up to invalidations: range (unmap), walk (a table freed), domain (flushIotlbAll), global', async (t) => {
  const iommu = await iommuWith(t, {});
  const dom = iommu.allocDomain({ invalidateOnMap: true }); // so the block map has a batch of its own
  await dom.map(0, 0x10_0000, 4 * K4, RW);
  await dom.unmap(0, 4 * K4);
  await dom.map(0, 0x20_0000, M2, RW); // the 2M block replaces the now empty last-level table
  await dom.unmap(0, M2);
  dom.flushIotlbAll();
  iommu.invalidateAll();
  const s = iommu.stats().iotlb;
  t.true(s.commands.range >= 2, `range ${s.commands.range}`);
  t.true(s.commands.walk >= 1, `walk ${s.commands.walk}`);
  t.is(s.commands.domain, 1);
  t.is(s.commands.global, 1);
  t.is(s.commands.range + s.commands.walk + s.commands.domain + s.commands.global, s.invalidations);
});
