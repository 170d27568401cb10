import test from 'ava';
import fc from 'fast-check';
import { Iommu, Prot } from '../../src/index.js';
import { PgsizeChooser } from '../../src/core/pgsize.js';
import { iommuPgsize } from '../helpers/reference.js';

/** An address below 2^48, often with many low bits clear (so large page sizes become possible). */
const address48 = fc
  .tuple(fc.bigInt({ min: 0n, max: (1n << 48n) - 1n }), fc.integer({ min: 12, max: 40 }))
  .map(([x, k]) => x & ~((1n << BigInt(k)) - 1n));

/**
 * A random iommu_pgsize input that satisfies its precondition: iova, paddr and size aligned to the
 * bitmap's smallest size, size at least that.
 */
const pgsizeInput = fc
  .record({
    // Any non-empty set of page sizes from 4K to 2G.
    bitmap: fc.integer({ min: 1, max: 2 ** 20 - 1 }).map((bits) => bits * 2 ** 12),
    iova: address48,
    paddr: address48,
    sameOffsetBits: fc.constantFrom(0, 0, 21, 25, 29, 30, 31, 34),
    size: fc.oneof(
      fc.bigInt({ min: 1n, max: 1024n }).map((units) => ({ units })),
      fc.bigInt({ min: 1n, max: 1n << 44n }).map((bytes) => ({ bytes })),
    ),
  })
  .map(({ bitmap, iova: rawIova, paddr: rawPaddr, sameOffsetBits, size }) => {
    let min = 1n;
    while ((BigInt(bitmap) & min) === 0n) min <<= 1n;
    const iova = rawIova & ~(min - 1n);
    let paddr = rawPaddr & ~(min - 1n);
    // Often give paddr the same offset as iova within a large size, so the "next size" rule applies.
    if (sameOffsetBits > 0) {
      const m = (1n << BigInt(sameOffsetBits)) - 1n;
      paddr = (paddr & ~m) | (iova & m);
    }
    const bytes = 'units' in size ? size.units * min : size.bytes & ~(min - 1n);
    return { bitmap, iova, paddr, size: bytes === 0n ? min : bytes };
  });

test('PgsizeChooser agrees with Linux iommu_pgsize on random inputs', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(pgsizeInput, ({ bitmap, iova, paddr, size }) => {
        const want = iommuPgsize(BigInt(bitmap), iova, paddr, size);
        const chooser = new PgsizeChooser(bitmap);
        const pgsize = chooser.choose(Number(iova), Number(paddr), Number(size));
        if (BigInt(pgsize) !== want.pgsize || BigInt(chooser.count) !== want.count) {
          throw new Error(`got ${pgsize} x ${chooser.count}, want ${want.pgsize} x ${want.count}`);
        }
      }),
      { numRuns: 5000 },
    ),
  );
});

test('PgsizeChooser agrees with iommu_pgsize when size ends at or near a larger size boundary', (t) => {
  // The "next size" rule compares offset + next with size: exercise equality and both neighbours.
  t.notThrows(() =>
    fc.assert(
      fc.property(
        fc.constantFrom(0x40201000, 0x40200000 | 0x1000, 0x4000_1000, 0x200_4000, 0x2001_0000, 0x7fff_f000),
        fc.bigInt({ min: 1n, max: 1n << 20n }),
        fc.integer({ min: 1, max: 3 }),
        fc.constantFrom(-1n, 0n, 0n, 1n),
        fc.bigInt({ min: 0n, max: 1n << 16n }),
        (bitmap, unitsBelow, nextCount, extra, high) => {
          let min = 1n;
          while ((BigInt(bitmap) & min) === 0n) min <<= 1n;
          // A boundary of some size of the bitmap above the smallest, and an iova below it.
          const sizes = [...Array(32).keys()].map((b) => 1n << BigInt(b)).filter((sz) => (BigInt(bitmap) & sz) !== 0n && sz > min);
          const next = sizes[Number(unitsBelow % BigInt(sizes.length))]!;
          const below = (unitsBelow * min) % next || min;
          const iova = high * (1n << 30n) + next * 4n - below;
          const size = below + BigInt(nextCount) * next + extra * min;
          if (size <= 0n) return;
          const want = iommuPgsize(BigInt(bitmap), iova, iova, size);
          const chooser = new PgsizeChooser(bitmap);
          const got = chooser.choose(Number(iova), Number(iova), Number(size));
          if (BigInt(got) !== want.pgsize || BigInt(chooser.count) !== want.count) {
            throw new Error(`iova 0x${iova.toString(16)} size 0x${size.toString(16)}: got ${got} x ${chooser.count}, want ${want.pgsize} x ${want.count}`);
          }
        },
      ),
      { numRuns: 3000 },
    ),
  );
});

test('PgsizeChooser agrees with iommu_pgsize along whole map loops (4K|2M|1G)', (t) => {
  const bitmap = 0x40201000;
  t.notThrows(() =>
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 1n << 24n }),
        fc.bigInt({ min: 0n, max: 1n << 24n }),
        fc.bigInt({ min: 1n, max: 1n << 20n }),
        fc.nat(1),
        (iu, pu, su, same) => {
          let iova = iu << 12n;
          let paddr = same ? (pu << 30n) + (iova & 0x3fff_ffffn) : pu << 12n;
          let size = su << 12n;
          const chooser = new PgsizeChooser(bitmap);
          while (size > 0n) {
            const want = iommuPgsize(BigInt(bitmap), iova, paddr, size);
            const got = chooser.choose(Number(iova), Number(paddr), Number(size));
            if (BigInt(got) !== want.pgsize || BigInt(chooser.count) !== want.count) throw new Error('disagree');
            const step = want.pgsize * want.count;
            iova += step;
            paddr += step;
            size -= step;
          }
        },
      ),
      { numRuns: 1000 },
    ),
  );
});

test('minPgsize is the smallest size of the bitmap', (t) => {
  t.is(new PgsizeChooser(0x40201000).minPgsize, 0x1000);
  t.is(new PgsizeChooser(0x40200000).minPgsize, 0x20_0000);
  t.is(new PgsizeChooser(0x2000_0000 | 0x1_0000).minPgsize, 0x1_0000);
});

test('iommu_pgsize worked cases', (t) => {
  const c = new PgsizeChooser(0x40201000);
  // Aligned 4M: two 2M blocks.
  t.is(c.choose(0x40_0000, 0x40_0000, 0x40_0000), 0x20_0000);
  t.is(c.count, 2);
  // 4K-aligned start with 2M+ to go: 4K pages only up to the 2M boundary.
  t.is(c.choose(0x1ff000, 0x1ff000, 0x40_1000), 0x1000);
  t.is(c.count, 1);
  // iova and paddr disagree modulo 2M: 4K pages all the way.
  t.is(c.choose(0x20_0000, 0x20_1000, 0x40_0000), 0x1000);
  t.is(c.count, 0x400);
  // Exactly enough for one 2M after the boundary: stop at the boundary.
  t.is(c.choose(0x1ff000, 0x1ff000, 0x201000), 0x1000);
  t.is(c.count, 1);
  t.is(c.choose(0x3fe0_0000, 0x7fe0_0000, 0x4020_0000), 0x20_0000);
  t.is(c.count, 1);
  // Not enough left after the boundary for a whole 2M: no early stop.
  t.is(c.choose(0x1ff000, 0x1ff000, 0x20_0000), 0x1000);
  t.is(c.count, 0x200);
});

test("generic_pt test_mixed: iova = paddr = 0x3fe400000, size 0xc2200000 maps 14 x 2M, 3 x 1G, 3 x 2M", async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain();
  t.is(dom.pgsizeBitmap, 0x40201000);
  const start = 0x3_fe40_0000;
  const size = 0xc220_0000;
  await dom.map(start, start, size, Prot.READ | Prot.WRITE);
  const leaves: number[] = [];
  for (let a = start; a < start + size; ) {
    const l = dom.lookup(a);
    if (!l) throw new Error(`hole at 0x${a.toString(16)}`);
    t.is(l.phys, a);
    leaves.push(l.pageSize);
    a += l.pageSize;
  }
  const M2 = 0x20_0000;
  const G1 = 0x4000_0000;
  t.deepEqual(leaves, [...Array(14).fill(M2), G1, G1, G1, M2, M2, M2]);
  t.is(dom.lookup(start - 0x1000), null);
  t.is(dom.lookup(start + size), null);
  await iommu.close();
});
