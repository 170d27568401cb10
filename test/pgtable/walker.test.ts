import test from 'ava';
import fc from 'fast-check';
import { Iommu, IommuError, Prot } from '../../src/index.js';
import { ALL_VALID_PROTS, leafDescriptor } from '../helpers/reference.js';
import { allLeaves, armWalk } from '../helpers/walker.js';

const GRANULES = [4096, 16384, 65536] as const;
const FORMATS = ['arm-lpae-s1', 'arm-lpae-s2'] as const;

/** Leaf sizes of a granule (SEMANTICS §7): [page, block] (and 1G for 4K). */
function leafSizes(granule: number): number[] {
  return granule === 4096 ? [4096, 2 ** 21, 2 ** 30] : granule === 16384 ? [16384, 2 ** 25] : [65536, 2 ** 29];
}

/** A map request in units of the granule's page and block sizes, placed in one of a few clusters. */
const mapRequest = fc.record({
  cluster: fc.nat(3),
  blockOffset: fc.nat(3),
  pageOffset: fc.oneof(fc.constant(0), fc.nat(40), fc.integer({ min: -40, max: -1 })),
  blocks: fc.nat(2),
  pages: fc.nat(20),
  paddrShiftBlocks: fc.nat(7),
  paddrSkewPages: fc.oneof(fc.constant(0), fc.nat(5)),
  prot: fc.constantFrom(...ALL_VALID_PROTS),
});

for (const format of FORMATS) {
  for (const granule of GRANULES) {
    test(`ARM walk of the shared tables agrees with iovaToPhys: ${format}, ${granule / 1024}K granule`, async (t) => {
      const [page, block] = leafSizes(granule) as [number, number];
      let checked = 0;
      await t.notThrowsAsync(() =>
        fc.assert(
          fc.asyncProperty(
            fc.integer({ min: 32, max: 48 }),
            fc.array(mapRequest, { minLength: 1, maxLength: 12 }),
            fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 50, maxLength: 50 }),
            async (ias, requests, probes) => {
              const iommu = await Iommu.create({ workers: 0 });
              try {
                const dom = iommu.allocDomain({ format, granule, ias });
                const pt = dom.pageTable();
                const space = 2 ** ias;
                // Clusters spread over the input space, block-aligned.
                const clusters = [0, 1, 2, 3].map((c) => Math.floor(((c + 0.5) * space) / 4 / block) * block);
                const mapped: { iova: number; size: number }[] = [];
                for (const r of requests) {
                  const iova = clusters[r.cluster]! + r.blockOffset * block + r.pageOffset * page;
                  const size = r.blocks * block + r.pages * page;
                  const paddr = (iova % 2 ** 40) + r.paddrShiftBlocks * block + r.paddrSkewPages * page;
                  if (size === 0 || iova < 0) continue;
                  try {
                    await dom.map(iova, paddr, size, r.prot);
                    mapped.push({ iova, size });
                  } catch (e) {
                    if (!(e instanceof IommuError) || (e.code !== 'EEXIST' && e.code !== 'ERANGE')) throw e;
                  }
                }
                // Random addresses: inside mapped ranges, near them, and anywhere in (and beyond) ias.
                const addrs: number[] = [];
                probes.forEach((p, i) => {
                  const m = mapped[i % Math.max(1, mapped.length)];
                  if (i % 3 === 0 || !m) addrs.push(Math.floor(p * space * 1.01));
                  else if (i % 3 === 1) addrs.push(m.iova + Math.floor(p * m.size));
                  else addrs.push(Math.max(0, m.iova - page + Math.floor(p * (m.size + 2 * page))));
                });
                for (const a of addrs) {
                  const mine = armWalk(pt, a);
                  const theirs = dom.lookup(a);
                  if ((mine?.phys ?? null) !== (theirs?.phys ?? null) || (mine?.pageSize ?? null) !== (theirs?.pageSize ?? null)) {
                    throw new Error(`iova 0x${a.toString(16)}: walk ${JSON.stringify(mine && { ...mine, desc: String(mine.desc) })}, lookup ${JSON.stringify(theirs)}`);
                  }
                  checked++;
                }
                // Every leaf in the tables is what lookup reports, and the leaves add up to what was mapped.
                const leaves = allLeaves(pt);
                for (const l of leaves) {
                  const at = dom.lookup(l.iova);
                  if (at?.phys !== l.phys || at.pageSize !== l.size) throw new Error(`leaf at 0x${l.iova.toString(16)} disagrees`);
                }
                const total = leaves.reduce((s, l) => s + l.size, 0);
                const want = mapped.reduce((s, m) => s + m.size, 0);
                if (total !== want) throw new Error(`tables hold ${total} bytes of leaves, ${want} were mapped`);
              } finally {
                await iommu.close();
              }
            },
          ),
          { numRuns: 40 },
        ),
      );
      t.true(checked > 0);
    });
  }
}

test('descriptors in memory are little-endian words of the documented format (walker reads the raw bytes)', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  t.teardown(() => iommu.close());
  for (const format of FORMATS) {
    const dom = iommu.allocDomain({ format });
    const prot = Prot.READ | Prot.NOEXEC | Prot.CACHE;
    await dom.map(0x12_3456_7000, 0xab_cdef_0000, 0x1000, prot);
    const leaf = armWalk(dom.pageTable(), 0x12_3456_7abc);
    t.truthy(leaf);
    t.is(leaf!.level, 3);
    t.is(leaf!.desc, leafDescriptor(format === 'arm-lpae-s2', prot, 0xab_cdef_0000n, true));
    t.is(leaf!.phys, 0xab_cdef_0abc);
    // Table descriptors are exactly next-table offset | 0b11, all within the shared memory.
    const pt = dom.pageTable();
    const view = new DataView(pt.memory);
    let table = pt.root;
    for (let level = 0; level < 3; level++) {
      const index = Number((0x12_3456_7000n >> BigInt(39 - 9 * level)) & 511n);
      const desc = view.getBigUint64(table + index * 8, true);
      t.is(desc & 3n, 3n, `level ${level} holds a table`);
      t.is(desc & ~0xfffn & ((1n << 48n) - 1n), desc & ~3n, 'nothing but the address and 0b11');
      table = Number(desc & ~3n);
      t.true(table + 4096 <= pt.memory.byteLength);
      t.is(table % 4096, 0);
    }
  }
});
