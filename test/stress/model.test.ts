/**
 * The stress tool's reference model (src/stress/model.ts) against the independent BigInt transcription
 * of iommu_pgsize in test/helpers/reference.ts: the same leaves for every layout, and the unmap rules
 * of SEMANTICS §3 on steps it has to trim and split.
 */
import test from 'ava';
import fc from 'fast-check';
import { ModelDomain, pgsizeStep, type ModelLeaf } from '../../src/stress/model.js';
import { leavesFor, READ } from '../helpers/reference.js';

const K4 = 0x1000;
const M2 = 2 ** 21;
const G1 = 2 ** 30;
const BITMAPS = [0x40201000, 0x1000, 0x201000, 0x40001000, 0x2004000, 0x20010000];

function model(bitmap = 0x40201000): ModelDomain {
  return new ModelDomain({ pgsizeBitmap: bitmap, ias: 48, oas: 48, stage2: false });
}

test('generic_pt test_mixed: 14 x 2M, then 3 x 1G, then 3 x 2M', (t) => {
  const m = model();
  const steps = m.stepsFor(0x3fe400000, 0x3fe400000, 0xc2200000, READ);
  t.deepEqual(
    steps.map((s) => [s.pgsize, s.count]),
    [
      [M2, 14],
      [G1, 3],
      [M2, 3],
    ],
  );
  t.deepEqual(pgsizeStep(m.sizes, 0x3fe400000, 0x3fe400000, 0xc2200000), { pgsize: M2, count: 14 });
});

test('the model maps exactly the leaves of the BigInt iommu_pgsize, for any aligned layout', (t) => {
  fc.assert(
    fc.property(
      fc.constantFrom(...BITMAPS),
      fc.nat(2 ** 20),
      fc.nat(2 ** 20),
      fc.integer({ min: 1, max: 2 ** 13 }),
      fc.constantFrom(0, 1, 7, 511, 512, 513, 2047, 2048),
      (bitmap, iovaPages, physPages, sizePages, shift) => {
        const min = bitmap & -bitmap;
        const iova = (iovaPages + shift) * min;
        const paddr = (physPages + (shift % 3)) * min;
        const size = sizePages * min;
        const m = model(bitmap);
        const want = leavesFor(bitmap, iova, paddr, size);
        t.deepEqual(m.map(iova, paddr, size, READ), { ok: true, value: null });
        const got = m.leaves().map((l) => ({ iova: l.iova, paddr: l.paddr, size: l.size }));
        return got.length === want.length && got.every((l, i) => l.iova === want[i]!.iova && l.paddr === want[i]!.paddr && l.size === want[i]!.size);
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

test('unmap trims and splits steps at leaf boundaries, stops inside a block, and removes a reached block whole', (t) => {
  const m = model();
  // 4 x 4K, 2 x 2M, 4 x 4K from iova 2M - 16K.
  t.deepEqual(m.map(M2 - 4 * K4, 0x8000_0000 - 4 * K4, 8 * K4 + 2 * M2, READ), { ok: true, value: null });
  t.deepEqual(m.steps.map((s) => [s.pgsize, s.count]), [[K4, 4], [M2, 2], [K4, 4]]);
  t.deepEqual(m.unmap(M2 - 3 * K4, K4), { ok: true, value: K4 }, 'the second 4K page');
  t.deepEqual(m.steps.map((s) => [s.iova, s.count]), [[M2 - 4 * K4, 1], [M2 - 2 * K4, 2], [M2, 2], [3 * M2, 4]], 'split in two');
  t.deepEqual(m.unmap(M2 + K4, K4), { ok: true, value: 0 }, 'inside a 2M block: nothing');
  t.deepEqual(m.unmap(M2 - 2 * K4, 3 * K4), { ok: true, value: 2 * K4 + M2 }, 'a reached block goes whole');
  t.deepEqual(m.unmap(M2 - 3 * K4, K4), { ok: true, value: 0 }, 'a hole stops at once');
  const removed: ModelLeaf[] = [];
  t.deepEqual(m.unmap(2 * M2, M2 + 2 * K4, removed), { ok: true, value: M2 + 2 * K4 });
  t.deepEqual(removed.map((l) => [l.iova, l.size]), [[2 * M2, M2], [3 * M2, 2 * K4]], 'the leaves removed, a run per step');
  t.deepEqual(m.steps.map((s) => [s.iova, s.pgsize, s.count]), [[M2 - 4 * K4, K4, 1], [3 * M2 + 2 * K4, K4, 2]]);
});

test('map_sg: a run that collides late fails the whole call, EINVAL of an earlier run wins, 64Ki runs stay linear', (t) => {
  const m = model(0x1000);
  t.deepEqual(m.map(10 * K4, 0, K4, READ), { ok: true, value: null });
  t.deepEqual(m.mapSg(0, [{ phys: 0x100000, length: 4 * K4 }, { phys: 0x200000, length: 8 * K4 }], READ), { ok: false, code: 'EEXIST' });
  t.is(m.steps.length, 1, 'nothing of the failed call stays');
  t.deepEqual(m.mapSg(0, [{ phys: 0x100800, length: K4 }, { phys: 0, length: 16 * K4 }], READ), { ok: false, code: 'EINVAL' });
  const n = 65536;
  const sg = Array.from({ length: n }, (_, i) => ({ phys: 2 ** 32 + (i ^ 1) * K4, length: K4 }));
  t.deepEqual(m.mapSg(2 ** 33, sg, READ), { ok: true, value: n * K4 });
  t.is(m.steps.length, n + 1);
  t.is(m.iovaToPhys(2 ** 33 + 5 * K4 + 7), 2 ** 32 + 4 * K4 + 7);
  t.deepEqual(m.unmap(2 ** 33, n * K4), { ok: true, value: n * K4 });
  t.is(m.steps.length, 1);
});

test('translate: stage 1 reads anything mapped and writes only with WRITE; stage 2 keeps read and write apart', (t) => {
  const s1 = model();
  s1.map(0, 0x10_0000, K4, 2);
  s1.map(K4, 0x20_0000, K4, READ);
  t.deepEqual(s1.translate(5, 'read'), { phys: 0x10_0005 }, 'write-only reads back as read/write on stage 1');
  t.deepEqual(s1.translate(K4, 'write'), { fault: 'permission' });
  t.deepEqual(s1.translate(2 * K4, 'read'), { fault: 'translation' });
  t.deepEqual(s1.translate(2 ** 48, 'read'), { fault: 'address-size' });
  const s2 = new ModelDomain({ pgsizeBitmap: 0x40201000, ias: 48, oas: 48, stage2: true });
  s2.map(0, 0x10_0000, K4, 2);
  t.deepEqual(s2.translate(0, 'read'), { fault: 'permission' });
  t.deepEqual(s2.translate(0, 'write'), { phys: 0x10_0000 });
});
