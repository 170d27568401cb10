import test from 'ava';
import fc from 'fast-check';
import { Iommu, Prot } from '../../src/index.js';
import { LeafEncoding, LpaeGeometry, leafProt, type FormatName } from '../../src/pgtable/format.js';
import { ALL_VALID_PROTS, grantedProt, leafDescriptor } from '../helpers/reference.js';
import { armWalk } from '../helpers/walker.js';

// One 8-byte cell seen as a Float64 and as a BigUint64: the engine handles descriptors as Float64s
// with the descriptor's bit pattern.
const cell = new ArrayBuffer(8);
const cellF64 = new Float64Array(cell);
const cellU64 = new BigUint64Array(cell);
const bitsOf = (d: number): bigint => {
  cellF64[0] = d;
  return cellU64[0]!;
};

const GRANULES = [4096, 16384, 65536] as const;
const FORMATS: FormatName[] = ['arm-lpae-s1', 'arm-lpae-s2'];

/** The descriptor of the leaf that maps iova, read from the domain's shared table memory. */
function descriptorAt(dom: { pageTable(): Parameters<typeof armWalk>[0] }, iova: number): bigint {
  const leaf = armWalk(dom.pageTable(), iova);
  if (!leaf) throw new Error(`nothing maps 0x${iova.toString(16)}`);
  return leaf.desc;
}

test('SEMANTICS §7 worked values, read back from table memory after real maps (stage 1)', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain();
  await dom.map(0x1000, 0x12345000, 0x1000, Prot.READ | Prot.WRITE | Prot.NOEXEC | Prot.CACHE);
  t.is(descriptorAt(dom, 0x1000), 0x0060000012345f47n);
  await dom.map(0x2000, 0x12345000, 0x1000, Prot.READ);
  t.is(descriptorAt(dom, 0x2000), 0x0000000012345ec3n);
  await dom.map(0x4000_0000, 0x8000_0000, 0x20_0000, Prot.READ | Prot.WRITE | Prot.CACHE);
  const block = descriptorAt(dom, 0x4000_0000);
  t.is(block & 0xfffn, 0xf45n);
  t.is(block & ~0xfffn, 0x8000_0000n);
  t.is(dom.lookup(0x4000_0000)?.pageSize, 0x20_0000);
  await iommu.close();
});

test('SEMANTICS §7 worked values, read back from table memory after real maps (stage 2)', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain({ format: 'arm-lpae-s2' });
  await dom.map(0x1000, 0x12345000, 0x1000, Prot.READ | Prot.WRITE | Prot.CACHE);
  t.is(descriptorAt(dom, 0x1000), 0x12345000n | 0x7ffn);
  await dom.map(0x2000, 0x12345000, 0x1000, Prot.READ | Prot.WRITE);
  t.is(descriptorAt(dom, 0x2000), 0x12345000n | 0x6d7n);
  await dom.map(0x3000, 0x12345000, 0x1000, Prot.READ | Prot.WRITE | Prot.NOEXEC);
  t.is(descriptorAt(dom, 0x3000), (3n << 53n) | 0x12345000n | 0x6d7n);
  await iommu.close();
});

test('every leaf descriptor written by map equals the reference encoder (all prots, both stages)', async (t) => {
  for (const format of FORMATS) {
    const iommu = await Iommu.create({ workers: 0 });
    const dom = iommu.allocDomain({ format });
    const stage2 = format === 'arm-lpae-s2';
    let i = 0;
    for (const prot of ALL_VALID_PROTS) {
      const iova = 0x1000_0000 + i * 0x1000;
      const paddr = 0xab_cd00_0000 + i * 0x1000;
      await dom.map(iova, paddr, 0x1000, prot);
      t.is(descriptorAt(dom, iova), leafDescriptor(stage2, prot, BigInt(paddr), true), `${format} page prot ${prot}`);
      const biova = 0x80_0000_0000 + i * 0x20_0000;
      const bpaddr = 0x7f_0000_0000 + i * 0x20_0000;
      await dom.map(biova, bpaddr, 0x20_0000, prot);
      t.is(descriptorAt(dom, biova), leafDescriptor(stage2, prot, BigInt(bpaddr), false), `${format} block prot ${prot}`);
      i++;
    }
    await iommu.close();
  }
});

/** Every format and granule, 48-bit. */
const GEOS = FORMATS.flatMap((format) => GRANULES.map((granule) => new LpaeGeometry({ format, granule, ias: 48, oas: 48 })));

/** A level that holds leaves, picked by `pick`: 4K granule 1 (1G), 2 (2M), 3 (4K); others 2 and 3. */
function leafLevel(geo: LpaeGeometry, pick: number): number {
  const levels = geo.granule === 4096 ? [1, 2, 3] : [2, 3];
  return levels[pick % levels.length]!;
}

test('LeafEncoding.at(paddr) equals the BigInt reference encoder for random prot, level, paddr', (t) => {
  const arb = fc
    .record({
      geo: fc.constantFrom(...GEOS),
      prot: fc.constantFrom(...ALL_VALID_PROTS),
      levelPick: fc.nat(2),
      // A random address below 2^48; it is aligned down to the leaf size below.
      addr: fc.bigInt({ min: 0n, max: (1n << 48n) - 1n }),
    })
    .map(({ geo, prot, levelPick, addr }) => {
      const level = leafLevel(geo, levelPick);
      const size = BigInt(geo.blockSize(level));
      return { geo, prot, level, paddr: (addr / size) * size };
    });
  t.notThrows(() =>
    fc.assert(
      fc.property(arb, ({ geo, prot, level, paddr }) => {
        const enc = new LeafEncoding(geo, prot, level);
        const got = bitsOf(enc.at(Number(paddr)));
        const want = leafDescriptor(geo.stage2, prot, paddr, level === 3);
        if (got !== want) {
          throw new Error(`${geo.format}/${geo.granule} level ${level} prot ${prot} paddr 0x${paddr.toString(16)}: got 0x${got.toString(16)}, want 0x${want.toString(16)}`);
        }
        // The halves agree with the whole descriptor when the address is zero.
        if (bitsOf(enc.at(0)) !== ((BigInt(enc.hi) << 32n) | BigInt(enc.lo))) throw new Error('lo/hi disagree with template');
      }),
      { numRuns: 2000 },
    ),
  );
});

test('LeafEncoding.writeRun, writeEach and writeEntries write exactly at() of each address (runs of 0-11 leaves, up to the top of the OAS)', (t) => {
  const arb = fc
    .record({
      geo: fc.constantFrom(...GEOS),
      prot: fc.constantFrom(...ALL_VALID_PROTS),
      levelPick: fc.nat(2),
      count: fc.nat(11),
      offset: fc.nat(5),
      addr: fc.oneof(fc.bigInt({ min: 0n, max: (1n << 48n) - 1n }), fc.bigInt({ min: (1n << 48n) - (1n << 33n), max: (1n << 48n) - 1n })),
    })
    .map(({ geo, prot, levelPick, count, offset, addr }) => {
      const level = leafLevel(geo, levelPick);
      const size = geo.blockSize(level);
      // The run's last leaf lies below 2^48.
      const top = (1n << 48n) / BigInt(size) - BigInt(count);
      const frame = (addr / BigInt(size)) % (top > 0n ? top : 1n);
      return { geo, prot, level, size, count, offset, paddr: Number(frame) * size };
    });
  t.notThrows(() =>
    fc.assert(
      fc.property(arb, ({ geo, prot, level, size, count, offset, paddr }) => {
        const enc = new LeafEncoding(geo, prot, level);
        const f64 = new Float64Array(offset + count + 2).fill(-1);
        enc.writeRun(f64, offset, offset + count, paddr, size);
        const pairs = new Float64Array(2 * count);
        for (let k = 0; k < count; k++) pairs[2 * k] = paddr + k * size;
        const each = new Float64Array(count + 1).fill(-1);
        enc.writeEach(each, 1, pairs, 0, count);
        // The same leaves as entries of 1-3 leaves each (writeEntries), cut where offset says.
        const cut: number[] = [];
        for (let k = 0; k < count; k += 1 + ((k + offset) % 3)) cut.push(paddr + k * size, Math.min(1 + ((k + offset) % 3), count - k) * size);
        const entries = new Float64Array(count + 1).fill(-1);
        const after = enc.writeEntries(entries, 1, new Float64Array(cut), 0, cut.length / 2, size);
        if (after !== 1 + count) throw new Error(`writeEntries returned ${after}, want ${1 + count}`);
        for (let k = 0; k < count; k++) {
          const want = leafDescriptor(geo.stage2, prot, BigInt(paddr + k * size), level === 3);
          if (bitsOf(f64[offset + k]!) !== want) throw new Error(`writeRun leaf ${k}: 0x${bitsOf(f64[offset + k]!).toString(16)}, want 0x${want.toString(16)}`);
          if (bitsOf(each[1 + k]!) !== want) throw new Error(`writeEach leaf ${k}: 0x${bitsOf(each[1 + k]!).toString(16)}, want 0x${want.toString(16)}`);
          if (bitsOf(entries[1 + k]!) !== want) throw new Error(`writeEntries leaf ${k}: 0x${bitsOf(entries[1 + k]!).toString(16)}, want 0x${want.toString(16)}`);
        }
        // Nothing outside the range.
        if (offset > 0 && f64[offset - 1] !== -1) throw new Error('writeRun wrote before first');
        if (f64[offset + count] !== -1 || each[0] !== -1 || entries[0] !== -1) throw new Error('wrote past the range');
      }),
      { numRuns: 3000 },
    ),
  );
});

test('leafProt decodes what the descriptor grants: stage 1 WRITE-only reads back READ|WRITE, stage 2 keeps WRITE-only', (t) => {
  for (const format of FORMATS) {
    for (const granule of GRANULES) {
      const geo = new LpaeGeometry({ format, granule, ias: 48, oas: 48 });
      for (const prot of ALL_VALID_PROTS) {
        for (const level of [2, 3]) {
          const d = leafDescriptor(geo.stage2, prot, 0x1234_0000_0000n, level === 3);
          const lo = Number(d & 0xffff_ffffn);
          const hi = Number(d >> 32n);
          t.is(leafProt(geo, lo, hi), grantedProt(geo.stage2, prot), `${format} ${granule} prot ${prot}`);
        }
      }
    }
  }
  const s1 = new LpaeGeometry({ format: 'arm-lpae-s1', granule: 4096, ias: 48, oas: 48 });
  const s2 = new LpaeGeometry({ format: 'arm-lpae-s2', granule: 4096, ias: 48, oas: 48 });
  const w1 = new LeafEncoding(s1, Prot.WRITE, 3);
  const w2 = new LeafEncoding(s2, Prot.WRITE, 3);
  t.is(leafProt(s1, w1.lo, w1.hi), Prot.READ | Prot.WRITE);
  t.is(leafProt(s2, w2.lo, w2.hi), Prot.WRITE);
});

test('lookup().prot reports what the descriptor grants after a real map', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  for (const format of FORMATS) {
    const dom = iommu.allocDomain({ format });
    const stage2 = format === 'arm-lpae-s2';
    let i = 0;
    for (const prot of ALL_VALID_PROTS) {
      const iova = 0x2000_0000 + i++ * 0x1000;
      await dom.map(iova, iova, 0x1000, prot);
      t.is(dom.lookup(iova)?.prot, grantedProt(stage2, prot), `${format} prot ${prot}`);
    }
  }
  await iommu.close();
});

test('geometry: levels, start level and root entries for every granule and ias 32..48 (§7 formula)', (t) => {
  for (const format of FORMATS) {
    for (const granule of GRANULES) {
      const g = Math.log2(granule);
      const bitsPerLevel = g - 3;
      for (let ias = 32; ias <= 48; ias++) {
        const geo = new LpaeGeometry({ format, granule, ias, oas: 48 });
        const levels = Math.ceil((ias - g) / bitsPerLevel);
        t.is(geo.levels, levels, `${granule}/${ias} levels`);
        t.is(geo.startLevel, 4 - levels, `${granule}/${ias} startLevel`);
        // The root resolves whatever the lower levels leave of ias.
        t.is(geo.rootEntries, 2 ** (ias - g - (levels - 1) * bitsPerLevel), `${granule}/${ias} rootEntries`);
        t.is(geo.entriesPerTable, granule / 8);
        t.true(geo.rootEntries >= 2 && geo.rootEntries <= granule / 8);
      }
    }
  }
  // Known configurations (ARM ARM / io-pgtable-arm).
  const known: [number, number, number, number][] = [
    // granule, ias, startLevel, rootEntries
    [4096, 48, 0, 512],
    [4096, 39, 1, 512],
    [4096, 40, 0, 2],
    [4096, 32, 1, 4],
    [16384, 48, 0, 2],
    [16384, 47, 1, 2048],
    [16384, 36, 2, 2048],
    [65536, 48, 1, 64],
    [65536, 42, 2, 8192],
    [65536, 32, 2, 8],
  ];
  for (const [granule, ias, startLevel, rootEntries] of known) {
    const geo = new LpaeGeometry({ format: 'arm-lpae-s1', granule: granule as 4096, ias, oas: 48 });
    t.is(geo.startLevel, startLevel, `${granule}/${ias}`);
    t.is(geo.rootEntries, rootEntries, `${granule}/${ias}`);
  }
});

test('supportedPgsizes per granule, and the domain default pgsizeBitmap', async (t) => {
  const want = { 4096: 0x40201000, 16384: 0x4000 + 0x200_0000, 65536: 0x1_0000 + 0x2000_0000 };
  const iommu = await Iommu.create({ workers: 0 });
  for (const granule of GRANULES) {
    for (const format of FORMATS) {
      for (const ias of [36, 40, 44, 48]) {
        t.is(new LpaeGeometry({ format, granule, ias, oas: 48 }).supportedPgsizes, want[granule], `${granule}/${ias}`);
      }
      const dom = iommu.allocDomain({ format, granule });
      t.is(dom.pgsizeBitmap, want[granule]);
      t.is(dom.pageTable().granule, granule);
      t.is(dom.pageTable().startLevel, new LpaeGeometry({ format, granule, ias: 48, oas: 48 }).startLevel);
    }
  }
  await iommu.close();
});

test('index() and blockSize() follow the ARM index bits (4K: 47:39, 38:30, 29:21, 20:12)', (t) => {
  const geo = new LpaeGeometry({ format: 'arm-lpae-s1', granule: 4096, ias: 48, oas: 48 });
  const iova = 0xabcd_ef12_3000;
  const v = BigInt(iova);
  t.is(geo.index(iova, 0), Number((v >> 39n) & 511n));
  t.is(geo.index(iova, 1), Number((v >> 30n) & 511n));
  t.is(geo.index(iova, 2), Number((v >> 21n) & 511n));
  t.is(geo.index(iova, 3), Number((v >> 12n) & 511n));
  t.deepEqual([0, 1, 2, 3].map((l) => geo.blockSize(l)), [2 ** 39, 2 ** 30, 2 ** 21, 2 ** 12]);
});

test('LeafEncoding.at(paddr): exactly template | paddr at the extremes (paddr 0, the top of 2^48), with DBM, every prot and level', (t) => {
  // at() avoids subnormal arithmetic (see its comment); the test above checks random addresses against
  // the reference encoder, this one the arithmetic at its edges, for dirty-tracking templates too.
  let checked = 0;
  for (const format of ['arm-lpae-s1', 'arm-lpae-s2'] as const) {
    for (const granule of [4096, 16384, 65536] as const) {
      for (const dirtyTracking of format === 'arm-lpae-s1' ? [false, true] : [false]) {
        const geo = new LpaeGeometry({ format, granule, ias: 48, oas: 48, dirtyTracking });
        for (const prot of ALL_VALID_PROTS) {
          for (let level = geo.startLevel; level <= 3; level++) {
            if (level < 3 && (geo.supportedPgsizes & geo.blockSize(level)) === 0) continue;
            const enc = new LeafEncoding(geo, prot, level);
            const size = geo.blockSize(level);
            for (const paddr of [0, size, 2 ** 32, 2 ** 48 - size, 2 ** 47 + size]) {
              const want = (BigInt(enc.hi) << 32n) | BigInt(enc.lo) | BigInt(paddr);
              if (bitsOf(enc.at(paddr)) !== want) t.fail(`${format} ${granule} prot ${prot} level ${level} paddr 0x${paddr.toString(16)}`);
              checked++;
            }
          }
        }
      }
    }
  }
  t.true(checked > 3_000, `${checked} descriptors checked`);
});
