import { spawnSync } from 'node:child_process';
import test from 'ava';
import { Iommu, IommuError, Prot, SgTable, type Domain } from '../../src/index.js';
import { rejectsWith, throwsWith } from '../helpers/errno.js';
import { G1, K16, K4, K64, M2, M32, M512, leavesOf, setup } from '../helpers/fixtures.js';
import { armWalk } from '../helpers/walker.js';

const RW = Prot.READ | Prot.WRITE;

// ---------------------------------------------------------------------------------------------
// map: argument checks, in SEMANTICS §2 order
// ---------------------------------------------------------------------------------------------

test('map: prot without READ or WRITE is EINVAL', async (t) => {
  const { dom } = await setup(t);
  for (const prot of [0, Prot.CACHE, Prot.NOEXEC, Prot.MMIO, Prot.PRIV, Prot.CACHE | Prot.NOEXEC | Prot.MMIO | Prot.PRIV]) {
    await rejectsWith(t, () => dom.map(0x1000, 0x1000, 0x1000, prot), 'EINVAL', `prot ${prot}`);
  }
  t.is(dom.iovaToPhys(0x1000), null);
});

test('map: unknown or malformed prot is EINVAL', async (t) => {
  const { dom } = await setup(t);
  for (const prot of [0x40, 0x41, 0x43, 0x80 | RW, 2 ** 31 | 1, -1, 1.5, NaN]) {
    await rejectsWith(t, () => dom.map(0x1000, 0x1000, 0x1000, prot), 'EINVAL', `prot ${prot}`);
  }
  for (const prot of ['1', 1n, undefined, null, {}]) {
    await rejectsWith(t, () => dom.map(0x1000, 0x1000, 0x1000, prot as unknown as number), 'EINVAL', `prot ${String(prot)}`);
  }
  t.is(dom.iovaToPhys(0x1000), null);
});

test('map: iova, paddr or size not aligned to the smallest page size is EINVAL', async (t) => {
  const { dom } = await setup(t);
  await rejectsWith(t, () => dom.map(0x1800, 0x1000, 0x1000, RW), 'EINVAL');
  await rejectsWith(t, () => dom.map(0x1000, 0x1001, 0x1000, RW), 'EINVAL');
  await rejectsWith(t, () => dom.map(0x1000, 0x1000, 0x1200, RW), 'EINVAL');
  await rejectsWith(t, () => dom.map(0x1000, 0x1000, 0x800, RW), 'EINVAL');
  t.is(dom.iovaToPhys(0x1000), null);
  // Alignment is to the smallest size of the domain's bitmap: 16K here.
  const { dom: d16 } = await setup(t, { granule: 16384 });
  await rejectsWith(t, () => d16.map(0x1000, 0, 0x4000, RW), 'EINVAL');
  await rejectsWith(t, () => d16.map(0x4000, 0x2000, 0x4000, RW), 'EINVAL');
  await rejectsWith(t, () => d16.map(0x4000, 0x4000, 0x1000, RW), 'EINVAL');
  await d16.map(0x4000, 0x8000, 0x4000, RW);
  t.is(d16.iovaToPhys(0x4123), 0x8123);
});

test('map: size 0 is EINVAL', async (t) => {
  const { dom } = await setup(t);
  await rejectsWith(t, () => dom.map(0x1000, 0x1000, 0, RW), 'EINVAL');
  await rejectsWith(t, () => dom.map(0, 0, 0, RW), 'EINVAL');
});

test('map: a range beyond 2^ias or 2^oas is ERANGE; one ending exactly there succeeds', async (t) => {
  const { iommu, dom } = await setup(t);
  await rejectsWith(t, () => dom.map(2 ** 48 - K4, 0, 2 * K4, RW), 'ERANGE');
  await rejectsWith(t, () => dom.map(2 ** 48, 0, K4, RW), 'ERANGE');
  await rejectsWith(t, () => dom.map(0, 2 ** 48 - K4, 2 * K4, RW), 'ERANGE');
  await rejectsWith(t, () => dom.map(0, 2 ** 50, K4, RW), 'ERANGE');
  await dom.map(2 ** 48 - K4, 2 ** 48 - K4, K4, RW);
  t.is(dom.iovaToPhys(2 ** 48 - 1), 2 ** 48 - 1);
  const small = iommu.allocDomain({ ias: 32, oas: 40 });
  await rejectsWith(t, () => small.map(2 ** 32 - K4, 0, 2 * K4, RW), 'ERANGE');
  await rejectsWith(t, () => small.map(0, 2 ** 40, K4, RW), 'ERANGE');
  await rejectsWith(t, () => small.map(0, 2 ** 40 - K4, 2 * K4, RW), 'ERANGE');
  await small.map(2 ** 32 - M2, 2 ** 40 - M2, M2, RW);
  t.is(small.iovaToPhys(2 ** 32 - 1), 2 ** 40 - 1);
  t.is(small.lookup(2 ** 32 - 1)?.pageSize, M2);
});

test('map: the checks run in SEMANTICS order (prot, alignment, size, range)', async (t) => {
  const { dom } = await setup(t);
  // prot before range: a bad prot on an out-of-range call is EINVAL, not ERANGE.
  await rejectsWith(t, () => dom.map(2 ** 48, 0, K4, Prot.CACHE), 'EINVAL');
  await rejectsWith(t, () => dom.map(0, 2 ** 49, K4, 0x40 | RW), 'EINVAL');
  // alignment before range.
  await rejectsWith(t, () => dom.map(2 ** 48 - 0x800, 0, K4, RW), 'EINVAL');
  await rejectsWith(t, () => dom.map(2 ** 48, 0x800, K4, RW), 'EINVAL');
  // size 0 before range.
  await rejectsWith(t, () => dom.map(2 ** 48 + K4, 0, 0, RW), 'EINVAL');
  // and all of them before the overlap check.
  await dom.map(0x10_0000, 0x10_0000, K4, RW);
  await rejectsWith(t, () => dom.map(0x10_0000, 0, K4, Prot.CACHE), 'EINVAL');
  await rejectsWith(t, () => dom.map(0x10_0000, 0x800, K4, RW), 'EINVAL');
  await rejectsWith(t, () => dom.map(0x10_0000, 0, 0, RW), 'EINVAL');
});

/** Values that are not addresses: each is EINVAL or ERANGE (CONTRACT §2). */
const BAD_ADDRESSES: [unknown, 'EINVAL' | 'ERANGE'][] = [
  [-1, 'EINVAL'],
  [-4096, 'EINVAL'],
  [4096.5, 'EINVAL'],
  [NaN, 'EINVAL'],
  [undefined, 'EINVAL'],
  [null, 'EINVAL'],
  ['4096', 'EINVAL'],
  [4096n, 'EINVAL'],
  [{}, 'EINVAL'],
  [2 ** 53, 'ERANGE'],
  [2 ** 60, 'ERANGE'],
  [Infinity, 'ERANGE'],
];

test('map/unmap: negative, fractional, NaN, missing, string, bigint arguments are EINVAL; >= 2^53 is ERANGE', async (t) => {
  const { iommu, dom } = await setup(t);
  const n = (v: unknown) => v as number;
  for (const [bad, code] of BAD_ADDRESSES) {
    const what = typeof bad === 'bigint' ? `${bad}n` : String(bad);
    await rejectsWith(t, () => dom.map(n(bad), 0x1000, 0x1000, RW), code, `map iova ${what}`);
    await rejectsWith(t, () => dom.map(0x1000, n(bad), 0x1000, RW), code, `map paddr ${what}`);
    await rejectsWith(t, () => dom.map(0x1000, 0x1000, n(bad), RW), code, `map size ${what}`);
    await rejectsWith(t, () => dom.unmap(n(bad), 0x1000), code, `unmap iova ${what}`);
    await rejectsWith(t, () => dom.unmap(0x1000, n(bad)), code, `unmap size ${what}`);
    await rejectsWith(t, () => dom.mapSg(n(bad), [{ phys: 0, length: K4 }], RW), code, `mapSg iova ${what}`);
    await rejectsWith(t, () => dom.mapSg(0, [{ phys: n(bad), length: K4 }], RW), code, `mapSg phys ${what}`);
    await rejectsWith(t, () => dom.unmapSg(n(bad), [{ phys: 0, length: K4 }]), code, `unmapSg iova ${what}`);
    throwsWith(t, () => dom.iovaToPhys(n(bad)), code, `iovaToPhys ${what}`);
    throwsWith(t, () => dom.lookup(n(bad)), code, `lookup ${what}`);
  }
  // Missing arguments altogether.
  const loose = dom as unknown as { map(...a: unknown[]): Promise<void>; unmap(...a: unknown[]): Promise<number> };
  await rejectsWith(t, () => loose.map(), 'EINVAL');
  await rejectsWith(t, () => loose.map(0x1000, 0x1000), 'EINVAL');
  await rejectsWith(t, () => loose.map(0x1000, 0x1000, 0x1000), 'EINVAL');
  await rejectsWith(t, () => loose.unmap(0x1000), 'EINVAL');
  t.is(iommu.stats().tables.pages, 1, 'nothing was allocated');
});

test('mapSg/unmapSg: malformed lists and options are EINVAL', async (t) => {
  const { dom } = await setup(t);
  const sg = (v: unknown) => v as { phys: number; length: number }[];
  for (const bad of [undefined, null, 42, 'sg', { phys: 0, length: K4 }, [null], [42], [{ phys: 0 }], [{ length: K4 }], [{ phys: 0, length: 0 }], [{ phys: 0, length: -K4 }], [{ phys: 0, length: 4096.5 }]]) {
    await rejectsWith(t, () => dom.mapSg(0, sg(bad), RW), 'EINVAL', JSON.stringify(bad) ?? 'undefined');
    await rejectsWith(t, () => dom.unmapSg(0, sg(bad)), 'EINVAL', JSON.stringify(bad) ?? 'undefined');
  }
  await rejectsWith(t, () => dom.mapSg(0, [{ phys: 0, length: K4 }], 0), 'EINVAL');
  await rejectsWith(t, () => dom.mapSg(0, [{ phys: 0, length: K4 }], RW, { deferInvalidate: 1 as unknown as boolean }), 'EINVAL');
  await rejectsWith(t, () => dom.mapSg(0, [{ phys: 0, length: K4 }], RW, { defer: true } as unknown as object), 'EINVAL');
  await rejectsWith(t, () => dom.unmapSg(0, [{ phys: 0, length: K4 }], 'yes' as unknown as object), 'EINVAL');
  t.is(dom.iovaToPhys(0), null);
});

// ---------------------------------------------------------------------------------------------
// map: overlap and block replacement
// ---------------------------------------------------------------------------------------------

test('map: overlap is EEXIST and nothing is changed', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x4000_0000 + 4 * K4, 0x9000_0000, K4, RW);
  const pages = iommu.stats().tables.pages;
  // A range that writes three pages before reaching the mapped one.
  await rejectsWith(t, () => dom.map(0x4000_0000 + K4, 0x7000_0000, 8 * K4, Prot.READ), 'EEXIST');
  for (let i = 0; i < 10; i++) t.is(dom.iovaToPhys(0x4000_0000 + i * K4), i === 4 ? 0x9000_0000 : null, `page ${i}`);
  t.is(dom.lookup(0x4000_0000 + 4 * K4)?.prot, RW, 'the existing leaf keeps its prot');
  t.is(iommu.stats().tables.pages, pages);
  // A 2M block over a table that still maps a page: EEXIST.
  await rejectsWith(t, () => dom.map(0x4000_0000, 0x8000_0000, M2, RW), 'EEXIST');
  t.is(dom.lookup(0x4000_0000 + 4 * K4)?.pageSize, K4);
  // A 1G block over it: EEXIST.
  await rejectsWith(t, () => dom.map(0x4000_0000, 0x8000_0000, G1, RW), 'EEXIST');
  // A page inside an existing block: EEXIST.
  await dom.map(0x8000_0000, 0x1_0000_0000, M2, RW);
  const pagesWithBlock = iommu.stats().tables.pages;
  t.is(pagesWithBlock, pages + 1, 'a level-2 table for the block');
  await rejectsWith(t, () => dom.map(0x8000_0000 + 5 * K4, 0, K4, RW), 'EEXIST');
  await rejectsWith(t, () => dom.map(0x8000_0000 - M2, 0x2_0000_0000, 2 * M2, RW), 'EEXIST');
  t.is(dom.iovaToPhys(0x8000_0000 - M2), null, 'the part before the block was rolled back');
  t.is(dom.lookup(0x8000_0000 + 5 * K4)?.phys, 0x1_0000_0000 + 5 * K4);
  t.is(iommu.stats().tables.pages, pagesWithBlock);
  // Identical re-map: EEXIST too.
  await rejectsWith(t, () => dom.map(0x8000_0000, 0x1_0000_0000, M2, RW), 'EEXIST');
});

test('map: a block replaces an empty table, whose page is released at once; no batch is counted', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x4020_0000 + 3 * K4, 0x5000_0000, K4, RW);
  t.is(iommu.stats().tables.pages, 4, 'root + level 1 + level 2 + level 3');
  t.is(await dom.unmap(0x4020_0000 + 3 * K4, K4), K4);
  t.is(iommu.stats().tables.pages, 4, 'unmap keeps tables');
  const before = iommu.stats().iotlb;
  await dom.map(0x4020_0000, 0x6000_0000, M2, RW);
  t.deepEqual(leavesOf(dom, 0x4020_0000, M2), [{ iova: 0x4020_0000, phys: 0x6000_0000, pageSize: M2 }]);
  t.deepEqual(iommu.stats().iotlb, before, 'a map on a normal domain counts no batch (its walk invalidation is part of the map)');
  t.is(iommu.stats().tables.pages, 3, 'the replaced table is freed by the map');
  const syncs = iommu.stats().iotlb.syncs;
  dom.iotlbSync();
  t.is(iommu.stats().iotlb.syncs, syncs + 1);
  t.is(iommu.stats().tables.pages, 3, 'nothing was left for the next batch');
  // The same for a 1G block over an empty level-2 table that itself holds an empty level-3 table.
  await dom.map(0x8000_0000 + M2 + K4, 0x5000_0000, K4, RW);
  await dom.unmap(0x8000_0000 + M2 + K4, K4);
  const pages = iommu.stats().tables.pages;
  await dom.map(0x8000_0000, 0x1_0000_0000, G1, RW);
  t.is(dom.lookup(0x8000_0000 + M2 + K4)?.pageSize, G1);
  t.is(iommu.stats().tables.pages, pages - 2);
});

test('map: a block does not replace a table that still maps something, even far from the block start', async (t) => {
  const { dom } = await setup(t);
  await dom.map(0x4020_0000 + 511 * K4, 0x5000_0000, K4, RW);
  await rejectsWith(t, () => dom.map(0x4000_0000, 0x6000_0000, 2 * M2, RW), 'EEXIST');
  t.is(dom.iovaToPhys(0x4000_0000), null, 'the first block of the call was rolled back');
  t.is(dom.iovaToPhys(0x4020_0000 + 511 * K4), 0x5000_0000);
});

test('map: a failed map that had replaced an empty table puts the table back', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x4000_0000 + K4, 0x5000_0000, K4, RW);
  await dom.unmap(0x4000_0000 + K4, K4);
  await dom.map(0x4040_0000, 0x5000_0000, K4, RW); // blocks the second 2M of the next call
  const pages = iommu.stats().tables.pages;
  await rejectsWith(t, () => dom.map(0x4000_0000, 0x6000_0000, 4 * M2, RW), 'EEXIST');
  t.is(dom.iovaToPhys(0x4000_0000), null);
  t.is(dom.iovaToPhys(0x4020_0000), null);
  dom.iotlbSync();
  t.is(iommu.stats().tables.pages, pages, 'nothing parked, nothing lost');
  // The restored empty table still works as a table.
  await dom.map(0x4000_0000 + 7 * K4, 0x7000_0000, K4, RW);
  t.is(dom.lookup(0x4000_0000 + 7 * K4)?.pageSize, K4);
  t.is(iommu.stats().tables.pages, pages);
});

// ---------------------------------------------------------------------------------------------
// unmap
// ---------------------------------------------------------------------------------------------

test('unmap: returns the bytes unmapped and stops at the first hole', async (t) => {
  const { dom } = await setup(t);
  await dom.map(0x10_0000, 0x50_0000, 4 * K4, RW);
  await dom.map(0x10_0000 + 5 * K4, 0x60_0000, 2 * K4, RW);
  t.is(await dom.unmap(0x10_0000, 16 * K4), 4 * K4);
  t.is(dom.iovaToPhys(0x10_0000 + 3 * K4), null);
  t.is(dom.iovaToPhys(0x10_0000 + 5 * K4), 0x60_0000, 'beyond the hole is untouched');
  t.is(await dom.unmap(0x10_0000, K4), 0, 'a hole at iova: nothing');
  t.is(await dom.unmap(0x10_0000 + 5 * K4, K4), K4, 'stops after size bytes');
  t.is(dom.iovaToPhys(0x10_0000 + 6 * K4), 0x60_1000);
  t.is(await dom.unmap(0x10_0000 + 6 * K4, 0), 0, 'size 0 unmaps nothing');
  t.is(dom.iovaToPhys(0x10_0000 + 6 * K4), 0x60_1000);
});

test('the four-slot steps of map and unmap stop at the exact slot, wherever it falls (starts and holes at 0..9)', async (t) => {
  // Slot checks and clears take four slots a turn, then one at a time: every offset of the start
  // within a step, and of the slot in the way, must give what one slot at a time gives.
  const { dom } = await setup(t);
  const base = 0x4000_0000; // a 2 MiB-aligned last-level table of its own
  for (let start = 0; start < 5; start++) {
    for (let at = start; at < start + 10; at++) {
      const lo = base + start * K4;
      // map: a page already mapped at slot `at` makes a 16-page map from `start` fail, and leaves nothing.
      await dom.map(base + at * K4, 0x7000_0000, K4, RW);
      await rejectsWith(t, () => dom.map(lo, 0x8000_0000, 16 * K4, RW), 'EEXIST');
      for (let p = start; p < start + 16; p++) t.is(dom.iovaToPhys(base + p * K4), p === at ? 0x7000_0000 : null, `map ${start}/${at}: page ${p}`);
      t.is(await dom.unmap(base + at * K4, K4), K4);
      // unmap: pages [start, start + 16) but a hole at `at` stop there, and keep what lies beyond.
      await dom.map(lo, 0x8000_0000, 16 * K4, RW);
      t.is(await dom.unmap(base + at * K4, K4), K4);
      t.is(await dom.unmap(lo, 16 * K4), (at - start) * K4, `unmap ${start}/${at}`);
      for (let p = at + 1; p < start + 16; p++) t.is(dom.iovaToPhys(base + p * K4), 0x8000_0000 + (p - start) * K4, `beyond the hole ${start}/${at}: page ${p}`);
      t.is(await dom.unmap(base + (at + 1) * K4, (start + 15 - at) * K4), (start + 15 - at) * K4);
      t.is(dom.iovaToPhys(lo), null);
    }
  }
});

test('unmap: a large leaf whose first byte is reached goes whole (result can exceed size)', async (t) => {
  const { dom } = await setup(t);
  await dom.map(0x4000_0000 - 2 * K4, 0x8000_0000 - 2 * K4, 2 * K4 + M2, RW);
  t.deepEqual(
    leavesOf(dom, 0x4000_0000 - 2 * K4, 2 * K4 + M2).map((l) => l.pageSize),
    [K4, K4, M2],
  );
  t.is(await dom.unmap(0x4000_0000 - K4, 2 * K4), K4 + M2);
  t.is(dom.iovaToPhys(0x4000_0000 + M2 - 1), null);
  t.is(dom.iovaToPhys(0x4000_0000 - 2 * K4), 0x8000_0000 - 2 * K4);
  await dom.map(G1 * 4, G1 * 8, G1, RW);
  t.is(await dom.unmap(G1 * 4, K4), G1);
  t.is(dom.iovaToPhys(G1 * 4 + 12345 * K4), null);
});

test('unmap: iova inside a large leaf removes nothing of it', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x4000_0000, 0x8000_0000, M2, RW);
  const syncs = iommu.stats().iotlb.syncs;
  t.is(await dom.unmap(0x4000_0000 + K4, K4), 0);
  t.is(await dom.unmap(0x4000_0000 + M2 - K4, 2 * M2), 0);
  t.is(dom.lookup(0x4000_0000 + K4)?.pageSize, M2);
  t.is(iommu.stats().iotlb.syncs, syncs + 2, 'still one sync per unmap');
  // Reached from below, the walk arrives at the block's first byte: then the block goes whole.
  await dom.map(0x4000_0000 - K4, 0x7000_0000, K4, RW);
  t.is(await dom.unmap(0x4000_0000 - K4, 2 * K4), K4 + M2);
});

test('unmap: misaligned iova or size is EINVAL; beyond 2^ias is ERANGE', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x10_0000, 0x10_0000, 2 * K4, RW);
  const syncs = iommu.stats().iotlb.syncs;
  await rejectsWith(t, () => dom.unmap(0x10_0800, K4), 'EINVAL');
  await rejectsWith(t, () => dom.unmap(0x10_0000, 0x1800), 'EINVAL');
  await rejectsWith(t, () => dom.unmap(2 ** 48 - K4, 2 * K4), 'ERANGE');
  await rejectsWith(t, () => dom.unmapSg(2 ** 48 - K4, [{ phys: 0, length: 2 * K4 }]), 'ERANGE');
  await rejectsWith(t, () => dom.unmapSg(0x10_0000, [{ phys: 0, length: 0x1800 }]), 'EINVAL');
  t.is(dom.iovaToPhys(0x10_1000), 0x10_1000);
  t.is(iommu.stats().iotlb.syncs, syncs, 'a rejected unmap issues nothing');
  const { dom: d16 } = await setup(t, { granule: 16384 });
  await rejectsWith(t, () => d16.unmap(K4, K16), 'EINVAL');
  await rejectsWith(t, () => d16.unmap(K16, K4), 'EINVAL');
  t.is(await d16.unmap(K16, K16), 0);
});

// ---------------------------------------------------------------------------------------------
// map_sg / unmap_sg
// ---------------------------------------------------------------------------------------------

test('mapSg: physically contiguous entries merge into one run (and so can use a block)', async (t) => {
  const { dom } = await setup(t);
  const sg = [
    { phys: 0x8000_0000, length: 0x8_0000 },
    { phys: 0x8008_0000, length: 0x10_0000 },
    { phys: 0x8018_0000, length: 0x8_0000 },
  ];
  t.is(await dom.mapSg(0x4000_0000, sg, RW), M2);
  t.deepEqual(leavesOf(dom, 0x4000_0000, M2), [{ iova: 0x4000_0000, phys: 0x8000_0000, pageSize: M2 }]);
});

test('mapSg: runs are mapped back to back from iova and the result is the bytes mapped', async (t) => {
  const { dom } = await setup(t);
  const sg = [
    { phys: 0x7000_0000, length: K4 },
    { phys: 0x9000_0000, length: 3 * K4 },
    { phys: 0x9000_3000, length: K4 }, // merges with the previous
    { phys: 0x1000, length: 2 * K4 },
  ];
  t.is(await dom.mapSg(0x10_0000, sg, Prot.READ), 7 * K4);
  const want = [0x7000_0000, 0x9000_0000, 0x9000_1000, 0x9000_2000, 0x9000_3000, 0x1000, 0x2000];
  want.forEach((phys, i) => t.is(dom.iovaToPhys(0x10_0000 + i * K4 + 0x10), phys + 0x10, `page ${i}`));
  t.is(dom.iovaToPhys(0x10_0000 + 7 * K4), null);
  t.is(dom.lookup(0x10_0000)?.prot, Prot.READ);
});

test('mapSg: a misaligned late run rolls back the whole call', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0x1234_5000, K4, RW);
  const pages = iommu.stats().tables.pages;
  const sg = [
    { phys: 0x8000_0000, length: M2 }, // a block
    { phys: 0x1_0000_0000, length: 5 * K4 }, // pages in a new table
    { phys: 0x2_0000_0800, length: K4 }, // misaligned
  ];
  await rejectsWith(t, () => dom.mapSg(0x4000_0000, sg, RW), 'EINVAL');
  t.is(dom.iovaToPhys(0x4000_0000), null);
  t.is(dom.iovaToPhys(0x4000_0000 + M2), null);
  t.is(dom.iovaToPhys(0x4000_0000 + M2 + 4 * K4), null);
  t.is(iommu.stats().tables.pages, pages, 'tables.pages back to the baseline');
  t.is(dom.iovaToPhys(0), 0x1234_5000);
  // A misaligned length in a late run, likewise.
  const sg2 = [{ phys: 0x8000_0000, length: M2 }, { phys: 0x3_0000_0000, length: 0x1800 }];
  await rejectsWith(t, () => dom.mapSg(0x4000_0000, sg2, RW), 'EINVAL');
  t.is(dom.iovaToPhys(0x4000_0000), null);
  t.is(iommu.stats().tables.pages, pages);
});

test('mapSg: an overlap in a late run rolls back every earlier run', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x4000_0000 + M2 + 8 * K4, 0x5555_5000, K4, RW);
  const pages = iommu.stats().tables.pages;
  const sg = [
    { phys: 0x8000_0000, length: M2 },
    { phys: 0x1_0000_0000, length: 4 * K4 },
    { phys: 0x2_0000_0000, length: 16 * K4 }, // reaches the mapped page
  ];
  await rejectsWith(t, () => dom.mapSg(0x4000_0000, sg, RW), 'EEXIST');
  for (let a = 0x4000_0000; a < 0x4000_0000 + M2 + 20 * K4; a += K4) {
    t.is(dom.iovaToPhys(a), a === 0x4000_0000 + M2 + 8 * K4 ? 0x5555_5000 : null);
  }
  t.is(iommu.stats().tables.pages, pages);
  // The same list on free IOVA succeeds.
  t.is(await dom.mapSg(0x8000_0000, sg, RW), M2 + 20 * K4);
});

test('mapSg: a run beyond 2^ias is ERANGE and rolls back', async (t) => {
  const { iommu, dom } = await setup(t, { ias: 32 });
  const pages = iommu.stats().tables.pages;
  const sg = [
    { phys: 0x8000_0000, length: M2 },
    { phys: 0x1_0000_0000, length: M2 },
  ];
  await rejectsWith(t, () => dom.mapSg(2 ** 32 - M2, sg, RW), 'ERANGE');
  t.is(dom.iovaToPhys(2 ** 32 - M2), null);
  t.is(iommu.stats().tables.pages, pages);
});

test('mapSg/unmapSg: an empty list maps and unmaps nothing and returns 0', async (t) => {
  const { iommu, dom } = await setup(t);
  t.is(await dom.mapSg(0x1000, [], RW), 0);
  t.is(await dom.mapSg(0x1000, new SgTable(), RW), 0);
  t.is(iommu.stats().tables.pages, 1);
  await dom.map(0x1000, 0x1000, K4, RW);
  t.is(await dom.unmapSg(0x1000, []), 0);
  t.is(await dom.unmapSg(0x1000, new SgTable()), 0);
  t.is(dom.iovaToPhys(0x1000), 0x1000);
});

test('unmapSg: unmaps [iova, iova + sum of lengths), whatever the phys', async (t) => {
  const { dom } = await setup(t);
  await dom.map(0x10_0000, 0x80_0000, 10 * K4, RW);
  const sg = [
    { phys: 0xdead_0000, length: K4 },
    { phys: 0x1000, length: 2 * K4 },
    { phys: 0x7000, length: 3 * K4 },
  ];
  t.is(await dom.unmapSg(0x10_0000 + K4, sg), 6 * K4);
  t.is(dom.iovaToPhys(0x10_0000), 0x80_0000);
  for (let i = 1; i <= 6; i++) t.is(dom.iovaToPhys(0x10_0000 + i * K4), null);
  t.is(dom.iovaToPhys(0x10_0000 + 7 * K4), 0x80_7000);
  t.is(await dom.unmapSg(0x10_0000 + 7 * K4, SgTable.from([{ phys: 0, length: 8 * K4 }])), 3 * K4, 'stops at the hole');
});

test('mapSg/unmapSg: SgTable and array forms give identical results', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  const a = iommu.allocDomain();
  const b = iommu.allocDomain();
  const entries = [
    { phys: 0x8000_0000, length: 0x10_0000 },
    { phys: 0x8010_0000, length: 0x10_0000 }, // merges: a 2M block
    { phys: 0x1000, length: 3 * K4 },
    { phys: 0x9_0000_0000, length: M2 + K4 },
    { phys: 0x9_0020_1000, length: K4 },
  ];
  const table = SgTable.from(entries);
  t.is(await a.mapSg(0x4000_0000, entries, RW), await b.mapSg(0x4000_0000, table, RW));
  const total = entries.reduce((s, e) => s + e.length, 0);
  t.deepEqual(leavesOf(a, 0x4000_0000, total), leavesOf(b, 0x4000_0000, total));
  t.is(leavesOf(a, 0x4000_0000, total)[0]!.pageSize, M2);
  // Failures are identical too.
  const clash = [{ phys: 0, length: K4 }, ...entries];
  const ea = await t.throwsAsync(() => a.mapSg(0x4000_0000 - K4, clash, RW), { instanceOf: IommuError });
  const eb = await t.throwsAsync(() => b.mapSg(0x4000_0000 - K4, SgTable.from(clash), RW), { instanceOf: IommuError });
  t.is(ea?.code, 'EEXIST');
  t.is(eb?.code, 'EEXIST');
  t.is(await a.unmapSg(0x4000_0000, entries.slice(0, 3)), await b.unmapSg(0x4000_0000, SgTable.from(entries.slice(0, 3))));
  t.deepEqual(leavesOf(a, 0x4000_0000 + M2 + 3 * K4, M2 + 2 * K4), leavesOf(b, 0x4000_0000 + M2 + 3 * K4, M2 + 2 * K4));
  t.is(a.iovaToPhys(0x4000_0000), null);
  t.is(b.iovaToPhys(0x4000_0000), null);
});

test('SgTable: push validates segments, grows past its capacity, and from() copies entries', (t) => {
  const sg = new SgTable(1);
  t.is(sg.length, 0);
  for (let i = 0; i < 100; i++) sg.push(0x1000 * i, 0x1000 + i * 0x1000);
  t.is(sg.length, 100);
  const all = [...sg];
  t.is(all.length, 100);
  t.deepEqual(all[0], { phys: 0, length: 0x1000 });
  t.deepEqual(all[99], { phys: 0x63000, length: 0x64000 });
  t.deepEqual(sg.get(42), { phys: 42 * 0x1000, length: 43 * 0x1000 });
  t.is(sg.get(100), undefined);
  for (const [phys, length, code] of [
    [0, 0, 'EINVAL'],
    [0, -4096, 'EINVAL'],
    [0, 4096.5, 'EINVAL'],
    [0, NaN, 'EINVAL'],
    [-1, 4096, 'EINVAL'],
    [0.5, 4096, 'EINVAL'],
    [2 ** 53, 4096, 'ERANGE'],
    [0, 2 ** 53, 'ERANGE'],
  ] as const) {
    throwsWith(t, () => sg.push(phys, length), code, `push(${phys}, ${length})`);
  }
  throwsWith(t, () => sg.push('1' as unknown as number, 4096), 'EINVAL');
  t.is(sg.length, 100, 'a rejected push adds nothing');
  const from = SgTable.from([{ phys: 0x5000, length: 0x2000 }, { phys: 0x9000, length: 0x1000 }]);
  t.is(from.length, 2);
  t.deepEqual([...from], [{ phys: 0x5000, length: 0x2000 }, { phys: 0x9000, length: 0x1000 }]);
  t.is(SgTable.from([]).length, 0);
  throwsWith(t, () => SgTable.from([{ phys: 0, length: 0 }]), 'EINVAL');
  throwsWith(t, () => SgTable.from([null as unknown as { phys: number; length: number }]), 'EINVAL');
  // The segments live in shared memory, and from() accepts any iterable, an SgTable included.
  t.true(sg.shared.buffer instanceof SharedArrayBuffer);
  t.is(sg.shared.count, 100);
  t.deepEqual([...SgTable.from(sg)], all);
  t.deepEqual([...SgTable.from(new Set([{ phys: 0x1000, length: 0x1000 }]))], [{ phys: 0x1000, length: 0x1000 }]);
});

// ---------------------------------------------------------------------------------------------
// invalidation counts
// ---------------------------------------------------------------------------------------------

test('syncs: +1 per unmap/unmapSg, +0 per map/mapSg on a normal domain', async (t) => {
  const { iommu, dom } = await setup(t);
  const s = () => iommu.stats().iotlb.syncs;
  const s0 = s();
  await dom.map(0x10_0000, 0x10_0000, 4 * K4, RW);
  await dom.mapSg(0x20_0000, [{ phys: 0, length: K4 }, { phys: 0x5000, length: K4 }], RW);
  t.is(s(), s0);
  await dom.unmap(0x10_0000, K4);
  t.is(s(), s0 + 1);
  await dom.unmap(0x30_0000, K4); // nothing there: still one sync
  t.is(s(), s0 + 2);
  await dom.unmapSg(0x20_0000, [{ phys: 0, length: 2 * K4 }]);
  t.is(s(), s0 + 3);
  const inv = iommu.stats().iotlb.invalidations;
  await dom.unmap(0x10_0000 + K4, 3 * K4);
  t.is(iommu.stats().iotlb.invalidations, inv + 1, 'three contiguous pages: one command');
});

test('syncs: +1 per map/mapSg on an invalidateOnMap domain', async (t) => {
  const { iommu, dom } = await setup(t, { invalidateOnMap: true });
  t.true(dom.invalidateOnMap);
  const st = () => iommu.stats().iotlb;
  const s0 = st();
  await dom.map(0x10_0000, 0x10_0000, 4 * K4, RW);
  t.is(st().syncs, s0.syncs + 1);
  t.true(st().invalidations > s0.invalidations);
  await dom.mapSg(0x20_0000, [{ phys: 0, length: K4 }, { phys: 0x5000, length: K4 }, { phys: 0x9000, length: K4 }], RW);
  t.is(st().syncs, s0.syncs + 2, 'one batch for the whole mapSg');
  await dom.unmap(0x10_0000, 4 * K4);
  t.is(st().syncs, s0.syncs + 3);
  // Deferred: nothing until iotlbSync().
  await dom.mapSg(0x30_0000, [{ phys: 0, length: K4 }], RW, { deferInvalidate: true });
  t.is(st().syncs, s0.syncs + 3);
  dom.iotlbSync();
  t.is(st().syncs, s0.syncs + 4);
});

test('deferInvalidate: syncs unchanged until iotlbSync(), which adds exactly one', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x10_0000, 0x10_0000, 16 * K4, RW);
  await dom.map(0x4000_0000, 0x8000_0000, M2, RW);
  const before = iommu.stats().iotlb;
  t.is(await dom.unmapSg(0x10_0000, [{ phys: 0, length: 4 * K4 }], { deferInvalidate: true }), 4 * K4);
  t.is(await dom.unmapSg(0x10_8000, [{ phys: 0, length: 4 * K4 }], { deferInvalidate: true }), 4 * K4);
  t.is(await dom.unmapSg(0x4000_0000, SgTable.from([{ phys: 0, length: M2 }]), { deferInvalidate: true }), M2);
  t.is(await dom.mapSg(0x50_0000, [{ phys: 0, length: K4 }], RW, { deferInvalidate: true }), K4);
  t.deepEqual(iommu.stats().iotlb, before);
  t.is(dom.iovaToPhys(0x10_0000), null, 'the leaves are gone at once');
  dom.iotlbSync();
  const after = iommu.stats().iotlb;
  t.is(after.syncs, before.syncs + 1);
  t.is(after.invalidations, before.invalidations + 3, 'two disjoint 4K ranges and one 2M range');
  dom.iotlbSync();
  t.is(iommu.stats().iotlb.syncs, before.syncs + 2, 'an empty iotlbSync is still a batch');
  t.is(iommu.stats().iotlb.invalidations, after.invalidations);
  // deferInvalidate: false is the normal behaviour.
  await dom.unmapSg(0x10_4000, [{ phys: 0, length: K4 }], { deferInvalidate: false });
  t.is(iommu.stats().iotlb.syncs, before.syncs + 3);
});

test('flushIotlbAll: one sync with one command, and it takes over what was deferred', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x10_0000, 0x10_0000, 16 * K4, RW);
  await dom.unmapSg(0x10_0000, [{ phys: 0, length: K4 }], { deferInvalidate: true });
  await dom.unmapSg(0x10_8000, [{ phys: 0, length: K4 }], { deferInvalidate: true });
  const before = iommu.stats().iotlb;
  dom.flushIotlbAll();
  const after = iommu.stats().iotlb;
  t.is(after.syncs, before.syncs + 1);
  t.is(after.invalidations, before.invalidations + 1);
  dom.iotlbSync();
  t.is(iommu.stats().iotlb.invalidations, after.invalidations, 'nothing was left deferred');
});

// ---------------------------------------------------------------------------------------------
// reading
// ---------------------------------------------------------------------------------------------

test('lookup and iovaToPhys: phys, page size and prot; null where unmapped or beyond ias', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x4000_0000, 0x1_8000_0000, M2, Prot.READ | Prot.CACHE);
  await dom.map(0x4020_0000, 0x2000, K4, Prot.WRITE | Prot.NOEXEC);
  t.deepEqual(dom.lookup(0x4000_0000 + 0x1234_5), { phys: 0x1_8001_2345, pageSize: M2, prot: Prot.READ | Prot.CACHE });
  t.deepEqual(dom.lookup(0x4020_0fff), { phys: 0x2fff, pageSize: K4, prot: Prot.READ | Prot.WRITE | Prot.NOEXEC });
  t.is(dom.iovaToPhys(0x4020_1000), null);
  t.is(dom.lookup(0x4020_1000), null);
  t.is(dom.iovaToPhys(0), null);
  t.is(dom.iovaToPhys(2 ** 48), null);
  t.is(dom.iovaToPhys(2 ** 53 - 1), null);
  const small = iommu.allocDomain({ ias: 32 });
  await small.map(0, 0x5000, K4, RW);
  t.is(small.iovaToPhys(2 ** 32), null, 'an iova beyond ias does not alias iova 0');
  t.is(small.iovaToPhys(2 ** 33 + 0x10), null);
  t.is(small.lookup(2 ** 40), null);
  t.is(small.iovaToPhys(0x10), 0x5010);
  // Physical address 0 is a real answer, not "unmapped".
  await dom.map(0x7000_0000, 0, K4, RW);
  t.is(dom.iovaToPhys(0x7000_0000), 0);
});

test('pageTable() describes the tables', async (t) => {
  const { iommu, dom } = await setup(t, { format: 'arm-lpae-s2', granule: 16384, ias: 40, oas: 44 });
  const pt = dom.pageTable();
  t.true(pt.memory instanceof SharedArrayBuffer);
  t.is(pt.format, 'arm-lpae-s2');
  t.is(pt.granule, 16384);
  t.is(pt.ias, 40);
  t.is(pt.oas, 44);
  t.is(pt.startLevel, 1); // ceil((40 - 14) / 11) = 3 levels
  t.is(pt.root % 16384, 0);
  t.is(iommu.allocDomain().pageTable().memory, pt.memory, 'one table memory per Iommu');
});

// ---------------------------------------------------------------------------------------------
// lifecycle
// ---------------------------------------------------------------------------------------------

test('free(): every table page comes back, and later calls on the domain reject ENOENT', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  const d1 = iommu.allocDomain();
  const d2 = iommu.allocDomain({ granule: 65536, format: 'arm-lpae-s2' });
  t.true(Number.isInteger(d1.id) && d1.id > 0);
  t.not(d1.id, d2.id);
  t.is(iommu.stats().domains, 2);
  await d1.map(0x10_0000, 0x10_0000, 64 * K4, RW);
  await d1.map(0x40_0000_0000, 0x1_0000_0000, G1 + M2 + K4, RW);
  await d1.map(0x4020_0000 + K4, 0, K4, RW);
  await d1.unmap(0x4020_0000 + K4, K4);
  await d1.map(0x4020_0000, 0, M2, RW); // parks the replaced table until a sync
  await d2.map(0, 0, M512 + K64, RW);
  t.true(iommu.stats().tables.pages > 8);
  await d1.free();
  t.is(iommu.stats().domains, 1);
  await d2.free();
  t.is(iommu.stats().domains, 0);
  t.deepEqual(iommu.stats().tables, { pages: 0, bytes: 0 });
  for (const d of [d1, d2]) {
    await rejectsWith(t, () => d.map(0, 0, K64, RW), 'ENOENT');
    await rejectsWith(t, () => d.unmap(0, K64), 'ENOENT');
    await rejectsWith(t, () => d.mapSg(0, [{ phys: 0, length: K64 }], RW), 'ENOENT');
    await rejectsWith(t, () => d.unmapSg(0, [{ phys: 0, length: K64 }]), 'ENOENT');
    await rejectsWith(t, () => d.free(), 'ENOENT');
    throwsWith(t, () => d.iovaToPhys(0), 'ENOENT');
    throwsWith(t, () => d.lookup(0), 'ENOENT');
    throwsWith(t, () => d.iotlbSync(), 'ENOENT');
    throwsWith(t, () => d.flushIotlbAll(), 'ENOENT');
    throwsWith(t, () => d.pageTable(), 'ENOENT');
  }
  t.deepEqual(iommu.stats().tables, { pages: 0, bytes: 0 }, 'a second free does not free again');
});

test('after iommu.close(), calls reject ENODEV', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain();
  await dom.map(0x1000, 0x1000, K4, RW);
  await iommu.close();
  throwsWith(t, () => iommu.allocDomain(), 'ENODEV');
  await rejectsWith(t, () => dom.map(0x2000, 0x2000, K4, RW), 'ENODEV');
  await rejectsWith(t, () => dom.unmap(0x1000, K4), 'ENODEV');
  await rejectsWith(t, () => dom.mapSg(0x2000, [{ phys: 0, length: K4 }], RW), 'ENODEV');
  await rejectsWith(t, () => dom.unmapSg(0x1000, [{ phys: 0, length: K4 }]), 'ENODEV');
  await rejectsWith(t, () => dom.free(), 'ENODEV');
  throwsWith(t, () => dom.iovaToPhys(0x1000), 'ENODEV');
  throwsWith(t, () => dom.lookup(0x1000), 'ENODEV');
  throwsWith(t, () => dom.iotlbSync(), 'ENODEV');
  throwsWith(t, () => dom.flushIotlbAll(), 'ENODEV');
});

test('allocDomain: bad options are EINVAL', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  const bad: unknown[] = [
    { format: 'arm-lpae-s3' },
    { format: 'ARM-LPAE-S1' },
    { format: 1 },
    { granule: 8192 },
    { granule: 4095 },
    { granule: '4096' },
    { granule: 2 ** 21 },
    { ias: 31 },
    { ias: 49 },
    { ias: 40.5 },
    { ias: '48' },
    { oas: 31 },
    { oas: 52 },
    { oas: -48 },
    { pgsizeBitmap: 0 },
    { pgsizeBitmap: 0x800 },
    { pgsizeBitmap: 0x1000 | 0x800 },
    { pgsizeBitmap: 0x8000_0000 | 0x1000 },
    { pgsizeBitmap: 0x40201000 | 0x2000 },
    { granule: 16384, pgsizeBitmap: 0x40201000 },
    { granule: 65536, pgsizeBitmap: 0x1000 },
    { pgsizeBitmap: -1 },
    { pgsizeBitmap: 4096.5 },
    { pgsizeBitmap: '0x1000' },
    { invalidateOnMap: 1 },
    { invalidateOnMap: 'yes' },
    { gran: 4096 },
    { pgsize_bitmap: 0x1000 },
    'arm-lpae-s1',
    42,
    null,
    [],
  ];
  for (const opts of bad) {
    throwsWith(t, () => iommu.allocDomain(opts as object), 'EINVAL', JSON.stringify(opts));
  }
  t.is(iommu.stats().domains, 0);
  t.is(iommu.stats().tables.pages, 0, 'no root was allocated');
  // Every valid combination is accepted.
  for (const granule of [4096, 16384, 65536] as const) {
    for (const format of ['arm-lpae-s1', 'arm-lpae-s2'] as const) {
      for (const ias of [32, 40, 48]) {
        t.truthy(iommu.allocDomain({ format, granule, ias, oas: 32 + ((ias + 4) % 17), invalidateOnMap: ias === 40 }));
      }
    }
  }
  t.is(iommu.allocDomain({ pgsizeBitmap: 0x20_0000 }).pgsizeBitmap, 0x20_0000);
  t.is(iommu.allocDomain({}).pgsizeBitmap, 0x40201000);
});

test('Iommu.create: bad options are EINVAL or ERANGE', async (t) => {
  await rejectsWith(t, () => Iommu.create({ workers: -1 }), 'EINVAL');
  await rejectsWith(t, () => Iommu.create({ workers: 1.5 }), 'EINVAL');
  await rejectsWith(t, () => Iommu.create({ workrs: 0 } as object), 'EINVAL');
  await rejectsWith(t, () => Iommu.create({ workers: 0, tableMemoryBytes: 4096 }), 'ERANGE');
  await rejectsWith(t, () => Iommu.create({ workers: 0, tableMemoryBytes: -1 }), 'EINVAL');
});

// ---------------------------------------------------------------------------------------------
// every granule and format
// ---------------------------------------------------------------------------------------------

const CONFIGS = [
  { granule: 4096, page: K4, block: M2, big: G1 },
  { granule: 16384, page: K16, block: M32, big: 0 },
  { granule: 65536, page: K64, block: M512, big: 0 },
] as const;

for (const { granule, page, block, big } of CONFIGS) {
  for (const format of ['arm-lpae-s1', 'arm-lpae-s2'] as const) {
    test(`${format} ${granule / 1024}K granule: pages and blocks map, look up, walk and unmap`, async (t) => {
      const { iommu, dom } = await setup(t, { format, granule });
      const pt = dom.pageTable();
      const iova = 4 * block - 3 * page; // three pages, then a block, then two pages
      const paddr = 0x40_0000_0000 + iova;
      const size = 3 * page + block + 2 * page;
      await dom.map(iova, paddr, size, RW);
      const leaves = leavesOf(dom, iova, size);
      t.deepEqual(
        leaves.map((l) => l.pageSize),
        [page, page, page, block, page, page],
      );
      for (const l of leaves) {
        t.is(l.phys, paddr + (l.iova - iova));
        const w = armWalk(pt, l.iova + page - 1);
        t.is(w?.phys, paddr + (l.iova - iova) + page - 1, 'the ARM walk agrees');
        t.is(w?.pageSize, l.pageSize);
      }
      t.is(dom.iovaToPhys(iova - page), null);
      t.is(dom.iovaToPhys(iova + size), null);
      // iova and paddr disagree modulo the block size: pages only.
      await dom.map(16 * block, 32 * block + page, block, Prot.READ);
      t.true(leavesOf(dom, 16 * block, block).every((l) => l.pageSize === page));
      if (big) {
        await dom.map(8 * big, 16 * big, big, Prot.READ);
        t.is(dom.lookup(8 * big + 12345 * page)?.pageSize, big);
        t.is(await dom.unmap(8 * big, page), big);
      }
      t.is(await dom.unmap(iova, size), size);
      t.is(await dom.unmap(16 * block, block), block);
      for (const l of leaves) t.is(dom.iovaToPhys(l.iova), null);
      t.is(armWalk(pt, iova + 3 * page), null);
      const pages = iommu.stats().tables.pages;
      await dom.free();
      t.is(iommu.stats().tables.pages, 0, `${pages} pages all returned`);
    });
  }
}

test('a narrowed pgsizeBitmap is respected: a 4K-only domain never uses blocks', async (t) => {
  const { iommu, dom } = await setup(t, { pgsizeBitmap: K4 });
  t.is(dom.pgsizeBitmap, K4);
  await dom.map(G1, G1, 2 * M2, RW);
  t.true(leavesOf(dom, G1, 2 * M2).every((l) => l.pageSize === K4));
  t.is(leavesOf(dom, G1, 2 * M2).length, 1024);
  // 4K|1G: no 2M blocks, but 1G ones.
  const d = iommu.allocDomain({ pgsizeBitmap: K4 | G1 });
  await d.map(G1 - M2, G1 - M2, G1 + M2, RW);
  const leaves = leavesOf(d, G1 - M2, G1 + M2);
  t.is(leaves.length, 513);
  t.is(leaves[512]!.pageSize, G1);
  // 2M only: 2M is also the alignment unit.
  const d2 = iommu.allocDomain({ pgsizeBitmap: M2 });
  await rejectsWith(t, () => d2.map(K4, 0, M2, RW), 'EINVAL');
  await d2.map(G1, 0, G1, RW);
  t.is(d2.lookup(G1)?.pageSize, M2);
  await rejectsWith(t, () => d2.unmap(G1, K4), 'EINVAL');
  t.is(await d2.unmap(G1, M2), M2);
});

// ---------------------------------------------------------------------------------------------
// leaks
// ---------------------------------------------------------------------------------------------

async function cycle(dom: Domain, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    await dom.map(0x4000_0000 - 3 * K4, 0x8000_0000 - 3 * K4, 3 * K4 + M2 + K4, RW);
    await dom.mapSg(0x10_0000_0000, [{ phys: 0x1000, length: K4 }, { phys: 0x9000, length: 2 * K4 }], Prot.READ);
    await dom.unmap(0x4000_0000 - 3 * K4, 3 * K4 + M2 + K4);
    await dom.unmapSg(0x10_0000_0000, [{ phys: 0, length: 3 * K4 }]);
  }
}

test('repeated map/unmap cycles over the same range do not grow tables.pages', async (t) => {
  const { iommu, dom } = await setup(t);
  await cycle(dom, 1);
  const pages = iommu.stats().tables.pages;
  await cycle(dom, 50);
  t.is(iommu.stats().tables.pages, pages);
  // With block replacement in the cycle, pages are parked until a sync, then come back.
  for (let i = 0; i < 20; i++) {
    await dom.map(0x2_0000_0000 + K4, 0, K4, RW);
    await dom.unmap(0x2_0000_0000 + K4, K4);
    await dom.map(0x2_0000_0000, 0, M2, RW);
    await dom.unmap(0x2_0000_0000, M2);
    dom.iotlbSync();
  }
  const steady = iommu.stats().tables.pages;
  for (let i = 0; i < 20; i++) {
    await dom.map(0x2_0000_0000 + K4, 0, K4, RW);
    await dom.unmap(0x2_0000_0000 + K4, K4);
    await dom.map(0x2_0000_0000, 0, M2, RW);
    await dom.unmap(0x2_0000_0000, M2);
    dom.iotlbSync();
  }
  t.is(iommu.stats().tables.pages, steady);
  // Failed calls do not leak either.
  for (let i = 0; i < 20; i++) {
    await t.throwsAsync(() => dom.mapSg(0x3_0000_0000, [{ phys: 0, length: M2 }, { phys: 0x1_0000_0800, length: K4 }], RW));
    await dom.map(0x3_0000_0000 + M2 + 5 * K4, 0, K4, RW);
    await t.throwsAsync(() => dom.map(0x3_0000_0000, 0, 2 * M2, RW));
    await dom.unmap(0x3_0000_0000 + M2 + 5 * K4, K4);
  }
  const afterFailures = iommu.stats().tables.pages;
  await dom.free();
  t.deepEqual(iommu.stats().tables, { pages: 0, bytes: 0 });
  t.true(afterFailures >= steady);
});

test('after free() of every domain of every kind, tables.pages and bytes are 0', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  const doms: Domain[] = [];
  for (const { granule, page, block } of CONFIGS) {
    for (const format of ['arm-lpae-s1', 'arm-lpae-s2'] as const) {
      const d = iommu.allocDomain({ format, granule });
      await d.map(block - page, block - page, 2 * block, RW);
      await d.mapSg(8 * block, [{ phys: page, length: page }, { phys: 3 * page, length: block }], RW);
      await d.unmapSg(8 * block, [{ phys: 0, length: page }], { deferInvalidate: true });
      doms.push(d);
    }
  }
  t.true(iommu.stats().tables.pages > doms.length);
  for (const d of doms) await d.free();
  t.deepEqual(iommu.stats().tables, { pages: 0, bytes: 0 });
  t.is(iommu.stats().domains, 0);
});

test('blocks in the root table (short ias): 1G at level 1 for 4K/ias 32..39, 512M at level 2 for 64K/ias 32..42', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  const cases = [
    { granule: 4096, ias: 32, block: G1, rootLevel: 1 },
    { granule: 4096, ias: 39, block: G1, rootLevel: 1 },
    { granule: 65536, ias: 32, block: M512, rootLevel: 2 },
    { granule: 65536, ias: 42, block: M512, rootLevel: 2 },
    { granule: 16384, ias: 36, block: M32, rootLevel: 2 },
  ] as const;
  for (const { granule, ias, block, rootLevel } of cases) {
    for (const format of ['arm-lpae-s1', 'arm-lpae-s2'] as const) {
      const dom = iommu.allocDomain({ format, granule, ias });
      const pt = dom.pageTable();
      t.is(pt.startLevel, rootLevel);
      const top = 2 ** ias;
      // The last two blocks of the input space, in the root table, plus one page before them.
      await dom.map(top - 2 * block - granule, 2 ** 40 - 2 * block - granule, 2 * block + granule, RW);
      t.deepEqual(
        leavesOf(dom, top - 2 * block - granule, 2 * block + granule).map((l) => l.pageSize),
        [granule, block, block],
      );
      const w = armWalk(pt, top - 1);
      t.is(w?.level, rootLevel, `${format} ${granule}/${ias}: a root-level block`);
      t.is(w?.phys, 2 ** 40 - 1);
      t.is(dom.iovaToPhys(top - 1), 2 ** 40 - 1);
      t.is(dom.iovaToPhys(0), null);
      await rejectsWith(t, () => dom.map(top - block, 0, block, RW), 'EEXIST');
      t.is(await dom.unmap(top - 2 * block, block), block);
      t.is(dom.iovaToPhys(top - 2 * block), null);
      t.is(dom.iovaToPhys(top - block), 2 ** 40 - block);
      t.is(await dom.unmap(top - 2 * block - granule, 2 * block + granule), granule, 'stops at the hole it left');
      t.is(await dom.unmap(top - block, block), block);
      await dom.free();
    }
  }
  t.deepEqual(iommu.stats().tables, { pages: 0, bytes: 0 });
});

test('tables.bytes counts whole table pages of each granule', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  const d4 = iommu.allocDomain();
  t.deepEqual(iommu.stats().tables, { pages: 1, bytes: 4096 });
  const d64 = iommu.allocDomain({ granule: 65536 });
  t.deepEqual(iommu.stats().tables, { pages: 2, bytes: 4096 + 65536 });
  await d64.map(0, 0, K64, RW); // a level-2 and a level-3 table below the level-1 root
  t.deepEqual(iommu.stats().tables, { pages: 4, bytes: 4096 + 3 * 65536 });
  await d4.map(0, 0, K4, RW);
  t.deepEqual(iommu.stats().tables, { pages: 7, bytes: 4 * 4096 + 3 * 65536 });
  const d16 = iommu.allocDomain({ granule: 16384 });
  t.is(iommu.stats().tables.bytes, 4 * 4096 + 3 * 65536 + 16384);
  await d16.free();
  await d64.free();
  t.deepEqual(iommu.stats().tables, { pages: 4, bytes: 4 * 4096 });
});

test('a failed map that had installed 32Ki tables and more is rolled back whole, on a main thread (EEXIST, every table freed)', (t) => {
  // A real process: its main thread has a smaller stack than ava's worker, as a user's would.
  const script = `
    import { Iommu } from ${JSON.stringify(new URL('../../src/index.js', import.meta.url).href)};
    const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 512 * 2 ** 20 });
    const dom = iommu.allocDomain({ pgsizeBitmap: 0x1000 });
    const size = 64 * 2 ** 30; // 16Mi 4K leaves in 32Ki last-level tables
    await dom.map(size, 2 ** 40, 4096, 3); // the big map collides with this page at its end
    const before = iommu.stats().tables.pages;
    let code = 'none';
    try { await dom.map(0, 2 ** 41, size + 4096, 3); } catch (e) { code = e.code ?? e.constructor.name; }
    console.log(JSON.stringify({ code, before, after: iommu.stats().tables.pages, first: dom.iovaToPhys(0), last: dom.iovaToPhys(size) }));
    await iommu.close();
  `;
  const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 100_000 });
  t.is(out.status, 0, out.stderr);
  const r = JSON.parse(out.stdout.trim()) as { code: string; before: number; after: number; first: number | null; last: number };
  t.is(r.code, 'EEXIST');
  t.is(r.after, r.before, 'every table the failed map installed is freed');
  t.is(r.first, null);
  t.is(r.last, 2 ** 40);
});
