/**
 * Model-based test of the domain API: fast-check drives random sequences of map / unmap / mapSg /
 * unmapSg / iotlbSync on a small IOVA window, and after every command the engine is compared with a
 * reference model written from SEMANTICS §1-§4 (src/stress/model.ts, also the stress tool's): the
 * leaves it holds (iova -> phys, size).
 */
import test from 'ava';
import fc from 'fast-check';
import { Iommu, IommuError, SgTable, type Domain, type FormatName } from '../../src/index.js';
import { ModelDomain as ReferenceModel } from '../../src/stress/model.js';
import { CACHE, NOEXEC, READ, WRITE, grantedProt } from '../helpers/reference.js';
import { allLeaves } from '../helpers/walker.js';

interface Leaf {
  iova: number;
  phys: number;
  size: number;
  prot: number;
}

type Outcome = { code: string } | { value: number | undefined };

/**
 * The reference model (src/stress/model.ts, written from SEMANTICS with nothing shared with the
 * engine; checked against test/helpers/reference.ts in test/stress/model.test.ts) in this test's terms.
 */
class ModelDomain {
  private readonly m: ReferenceModel;

  constructor(pgsizeBitmap: number, ias: number, oas: number) {
    this.m = new ReferenceModel({ pgsizeBitmap, ias, oas, stage2: false });
  }

  get leaves(): Leaf[] {
    return this.m.leaves().map((l) => ({ iova: l.iova, phys: l.paddr, size: l.size, prot: l.prot }));
  }

  leafAt(addr: number): Leaf | null {
    const l = this.m.leafAt(addr);
    return l ? { iova: l.iova, phys: l.paddr, size: l.size, prot: l.prot } : null;
  }

  map(iova: number, paddr: number, size: number, prot: number): Outcome {
    return outcomeOf(this.m.map(iova, paddr, size, prot));
  }

  mapSg(iova: number, sg: { phys: number; length: number }[], prot: number): Outcome {
    return outcomeOf(this.m.mapSg(iova, sg, prot));
  }

  unmap(iova: number, size: number): Outcome {
    return outcomeOf(this.m.unmap(iova, size));
  }

  unmapSg(iova: number, sg: { phys: number; length: number }[]): Outcome {
    return outcomeOf(this.m.unmapSg(iova, sg));
  }
}

function outcomeOf(o: { ok: true; value: number | null } | { ok: false; code: string }): Outcome {
  return o.ok ? { value: o.value ?? undefined } : { code: o.code };
}

type Command =
  | { op: 'map'; iova: number; paddr: number; size: number; prot: number }
  | { op: 'unmap'; iova: number; size: number }
  | { op: 'mapSg'; iova: number; sg: { phys: number; length: number }[]; prot: number; table: boolean; defer: boolean }
  | { op: 'unmapSg'; iova: number; sg: { phys: number; length: number }[]; table: boolean; defer: boolean }
  | { op: 'sync' }
  /** Unmap, one unmap call per leaf, every leaf that starts in one block-sized region (empties tables). */
  | { op: 'clearBlock'; block: number };

interface Variant {
  name: string;
  format: FormatName;
  granule: 4096 | 16384;
  ias: number;
  oas: number;
  pgsizeBitmap?: number;
  /** The IOVA window: [base, base + span). */
  base: number;
  span: number;
  /** Where iova-linked physical addresses start (same offset modulo blocks as the iova). */
  physBase: number;
  numRuns: number;
}

function commandArb(v: Variant): fc.Arbitrary<Command> {
  const page = v.granule;
  const block = v.granule === 4096 ? 2 ** 21 : 2 ** 25;
  const spanPages = v.span / page;
  const spanBlocks = v.span / block;
  // Now and then misalign a value by half a page, to exercise EINVAL.
  const skew = fc.oneof({ weight: 30, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constant(page / 2) });
  const offset = fc.oneof(
    fc.nat(spanPages - 1).map((n) => n * page),
    fc.nat(spanBlocks - 1).map((n) => n * block),
    fc.tuple(fc.nat(spanBlocks - 1), fc.integer({ min: -8, max: 8 })).map(([b, p]) => Math.max(0, b * block + p * page)),
  );
  const iova = fc.tuple(offset, skew).map(([o, s]) => v.base + o + s);
  const length = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 24 }).map((n) => n * page) },
    { weight: 2, arbitrary: fc.integer({ min: 1, max: 2 }).map((n) => n * block) },
    { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 8 })).map(([b, p]) => b * block + p * page) },
    { weight: 1, arbitrary: fc.constant(0) },
  );
  const size = fc.tuple(length, skew).map(([l, s]) => l + s);
  // paddr: linked to the iova (so blocks are possible), or anywhere page-aligned.
  const paddrFor = (io: number) =>
    fc.oneof(
      fc.tuple(fc.nat(3), skew).map(([k, s]) => v.physBase + (io - v.base) + k * block + s),
      fc.nat(2 ** 20).map((n) => n * page),
    );
  const prot = fc.oneof(
    { weight: 20, arbitrary: fc.constantFrom(READ, WRITE, READ | WRITE, READ | WRITE | CACHE, READ | NOEXEC, WRITE | CACHE | NOEXEC) },
    { weight: 1, arbitrary: fc.constantFrom(0, CACHE, 0x40 | READ) },
  );
  const sgEntry = fc.record({
    contiguous: fc.boolean(),
    phys: fc.nat(2 ** 20).map((n) => n * page),
    length: fc.oneof(
      { weight: 12, arbitrary: length.filter((l) => l > 0) },
      { weight: 1, arbitrary: fc.constant(page / 2) },
    ),
  });
  // Materialize: a "contiguous" entry continues the previous one physically (so map_sg merges them).
  const sgList = fc.array(sgEntry, { maxLength: 4 }).map((es) => {
    const out: { phys: number; length: number }[] = [];
    for (const e of es) {
      const prev = out[out.length - 1];
      out.push({ phys: e.contiguous && prev ? prev.phys + prev.length : e.phys, length: e.length });
    }
    return out;
  });
  const linkedSg = (io: number) =>
    fc.tuple(sgList, fc.nat(3)).map(([sg, k]) => {
      // Sometimes start the list at the iova-linked physical address so its runs can use blocks.
      if (sg.length > 0 && k === 0) {
        const shift = v.physBase + (io - v.base) - sg[0]!.phys;
        return sg.map((e, i) => (i === 0 || sg[i - 1]!.phys + sg[i - 1]!.length === e.phys ? { phys: e.phys + shift, length: e.length } : e));
      }
      return sg;
    });
  return fc.oneof(
    { weight: 4, arbitrary: iova.chain((io) => fc.record({ op: fc.constant('map' as const), iova: fc.constant(io), paddr: paddrFor(io), size, prot })) },
    // A map that starts a few pages below a block boundary and ends at or just past a later one.
    {
      weight: 2,
      arbitrary: fc
        .record({ b: fc.integer({ min: 1, max: spanBlocks - 1 }), p: fc.integer({ min: 1, max: 4 }), n: fc.integer({ min: 0, max: 2 }), q: fc.nat(2), prot })
        .map(({ b, p, n, q, prot }) => ({
          op: 'map' as const,
          iova: v.base + b * block - p * page,
          paddr: v.physBase + b * block - p * page,
          size: p * page + n * block + q * page,
          prot,
        })),
    },
    // A block-aligned map whose paddr agrees modulo the block size: blocks, maybe over emptied tables.
    {
      weight: 2,
      arbitrary: fc.record({ b: fc.nat(spanBlocks - 1), n: fc.integer({ min: 1, max: 2 }), k: fc.nat(3), prot }).map(({ b, n, k, prot }) => ({
        op: 'map' as const,
        iova: v.base + b * block,
        paddr: v.physBase + b * block + k * block,
        size: n * block,
        prot,
      })),
    },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('unmap' as const), iova, size }) },
    {
      weight: 3,
      arbitrary: iova.chain((io) =>
        fc.record({ op: fc.constant('mapSg' as const), iova: fc.constant(io), sg: linkedSg(io), prot, table: fc.boolean(), defer: fc.boolean() }),
      ),
    },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('unmapSg' as const), iova, sg: sgList, table: fc.boolean(), defer: fc.boolean() }) },
    { weight: 1, arbitrary: fc.constant({ op: 'sync' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('clearBlock' as const), block: fc.nat(spanBlocks - 1) }) },
  );
}

async function outcome(call: () => Promise<number | void>): Promise<Outcome> {
  try {
    const value = await call();
    return { value: value === undefined ? undefined : value };
  } catch (e) {
    if (e instanceof IommuError) return { code: e.code };
    throw e;
  }
}

function describeCmd(c: Command): string {
  return JSON.stringify(c, (_k, v) => (typeof v === 'number' && v >= 0x1000 ? '0x' + v.toString(16) : v));
}

/** What the generated commands exercised, so a test can check its generator reaches every case. */
type Coverage = Record<string, number>;

function count(cov: Coverage, key: string): void {
  cov[key] = (cov[key] ?? 0) + 1;
}

async function runCommands(v: Variant, cmds: Command[], probes: number[], cov: Coverage): Promise<void> {
  const iommu = await Iommu.create({ workers: 0 });
  try {
    const dom: Domain = iommu.allocDomain({ format: v.format, granule: v.granule, ias: v.ias, oas: v.oas, pgsizeBitmap: v.pgsizeBitmap });
    const model = new ModelDomain(dom.pgsizeBitmap, v.ias, v.oas);
    const stage2 = v.format === 'arm-lpae-s2';
    const blockSize = v.granule === 4096 ? 2 ** 21 : 2 ** 25;
    // Block-sized regions that have held a smaller leaf: a block mapped there replaced a table.
    const hadPages = new Set<number>();
    const fail = (i: number, what: string) => {
      throw new Error(`after command ${i} ${describeCmd(cmds[i]!)}: ${what}`);
    };
    for (let i = 0; i < cmds.length; i++) {
      const c = cmds[i]!;
      const before = iommu.stats();
      let got: Outcome;
      let want: Outcome;
      let syncsIfOk = 0;
      switch (c.op) {
        case 'map':
          got = await outcome(() => dom.map(c.iova, c.paddr, c.size, c.prot));
          want = model.map(c.iova, c.paddr, c.size, c.prot);
          break;
        case 'unmap':
          got = await outcome(() => dom.unmap(c.iova, c.size));
          want = model.unmap(c.iova, c.size);
          syncsIfOk = 1;
          break;
        case 'mapSg':
          got = await outcome(() => dom.mapSg(c.iova, c.table ? SgTable.from(c.sg) : c.sg, c.prot, { deferInvalidate: c.defer }));
          want = model.mapSg(c.iova, c.sg, c.prot);
          break;
        case 'unmapSg':
          got = await outcome(() => dom.unmapSg(c.iova, c.table ? SgTable.from(c.sg) : c.sg, { deferInvalidate: c.defer }));
          want = model.unmapSg(c.iova, c.sg);
          syncsIfOk = c.defer ? 0 : 1;
          break;
        case 'sync':
          dom.iotlbSync();
          got = want = { value: undefined };
          syncsIfOk = 1;
          break;
        case 'clearBlock': {
          const start = v.base + c.block * blockSize;
          const victims = model.leaves.filter((l) => l.iova >= start && l.iova < start + blockSize);
          let total = 0;
          for (const l of victims) {
            const r = await dom.unmap(l.iova, l.size);
            if (r !== l.size) fail(i, `unmap(0x${l.iova.toString(16)}, 0x${l.size.toString(16)}) = ${r}`);
            model.unmap(l.iova, l.size);
            total += r;
          }
          got = want = { value: total };
          syncsIfOk = victims.length;
          break;
        }
      }
      if (JSON.stringify(got) !== JSON.stringify(want)) fail(i, `engine ${JSON.stringify(got)}, model ${JSON.stringify(want)}`);
      const after = iommu.stats();
      count(cov, 'code' in got ? `${c.op} ${got.code}` : `${c.op} ok`);
      if (c.op === 'sync' && after.tables.pages < before.tables.pages) count(cov, 'replaced table freed');
      if ('value' in got && (c.op === 'unmap' || c.op === 'unmapSg') && (got.value ?? 0) > ('size' in c ? c.size : c.sg.reduce((s, e) => s + e.length, 0))) {
        count(cov, 'unmap beyond size');
      }
      if ('value' in got && after.iotlb.syncs - before.iotlb.syncs !== syncsIfOk) {
        fail(i, `${after.iotlb.syncs - before.iotlb.syncs} syncs, expected ${syncsIfOk}`);
      }
      if ('code' in got && after.tables.pages !== before.tables.pages) {
        fail(i, `a failed call changed tables.pages ${before.tables.pages} -> ${after.tables.pages}`);
      }
      // Every leaf of the model is in the tables, with its address, size and prot.
      for (const l of model.leaves) {
        for (const a of [l.iova, l.iova + l.size - 1]) {
          const at = dom.lookup(a);
          const wantProt = grantedProt(stage2, l.prot);
          if (!at || at.phys !== l.phys + (a - l.iova) || at.pageSize !== l.size || at.prot !== wantProt) {
            fail(i, `lookup(0x${a.toString(16)}) = ${JSON.stringify(at)}, model leaf ${JSON.stringify(l)}`);
          }
        }
      }
      if (model.leaves.some((l) => l.size > v.granule)) count(cov, 'blocks present');
      for (const l of model.leaves) {
        const region = Math.floor(l.iova / blockSize);
        if (l.size < blockSize) hadPages.add(region);
        else if (l.size === blockSize && hadPages.has(region) && (c.op === 'map' || c.op === 'mapSg') && 'value' in got) {
          count(cov, 'block where a table was');
        }
      }
      // Random addresses of the window (any byte) translate as the model says.
      for (let k = 0; k < 6; k++) {
        const a = v.base + probes[(i * 6 + k) % probes.length]!;
        const l = model.leafAt(a);
        const phys = dom.iovaToPhys(a);
        if (phys !== (l ? l.phys + (a - l.iova) : null)) fail(i, `iovaToPhys(0x${a.toString(16)}) = ${phys}, model ${JSON.stringify(l)}`);
      }
      // After a failure (and now and then), the tables hold exactly the model's leaves, nothing else.
      if ('code' in got || i === cmds.length - 1) {
        const inTables = allLeaves(dom.pageTable()).map((l) => `${l.iova}:${l.phys}:${l.size}`);
        const inModel = model.leaves.map((l) => `${l.iova}:${l.phys}:${l.size}`);
        if (inTables.join() !== inModel.join()) fail(i, `tables hold ${inTables.length} leaves, model ${inModel.length}`);
      }
    }
    await dom.free();
    const end = iommu.stats().tables;
    if (end.pages !== 0 || end.bytes !== 0) throw new Error(`free() left ${end.pages} table pages`);
  } finally {
    await iommu.close();
  }
}

const VARIANTS: Variant[] = [
  // 4K pages, 2M blocks and table replacement around the 1 GiB boundary.
  { name: '4K granule, stage 1, 8 MiB around 1 GiB', format: 'arm-lpae-s1', granule: 4096, ias: 48, oas: 48, base: 2 ** 30 - 2 ** 22, span: 2 ** 23, physBase: 2 ** 35, numRuns: 120 },
  // 16K pages and 32M blocks.
  { name: '16K granule, stage 1, 128 MiB around 1 GiB', format: 'arm-lpae-s1', granule: 16384, ias: 48, oas: 48, base: 2 ** 30 - 2 ** 26, span: 2 ** 27, physBase: 2 ** 36, numRuns: 60 },
  // Stage 2 at the top of a 32-bit input space with a 40-bit output space: ERANGE on both sides.
  { name: '4K granule, stage 2, top of a 32-bit ias, 40-bit oas', format: 'arm-lpae-s2', granule: 4096, ias: 32, oas: 40, base: 2 ** 32 - 2 ** 23, span: 2 ** 23, physBase: 2 ** 40 - 2 ** 24, numRuns: 80 },
  // A narrowed bitmap: 4K and 1G only, so the 2M boundaries do not matter.
  { name: '4K granule, stage 1, pgsizeBitmap 4K only', format: 'arm-lpae-s1', granule: 4096, ias: 48, oas: 48, pgsizeBitmap: 0x1000, base: 2 ** 30 - 2 ** 22, span: 2 ** 23, physBase: 2 ** 35, numRuns: 40 },
];

for (const v of VARIANTS) {
  test(`the engine behaves as the reference model: ${v.name}`, async (t) => {
    const cov: Coverage = {};
    await t.notThrowsAsync(() =>
      fc.assert(
        fc.asyncProperty(
          fc.array(commandArb(v), { minLength: 1, maxLength: 30, size: 'max' }),
          fc.array(fc.nat(v.span - 1), { minLength: 12, maxLength: 12 }),
          (cmds, probes) => runCommands(v, cmds, probes, cov),
        ),
        { numRuns: v.numRuns },
      ),
    );
    // The generator must reach every kind of outcome (these are all common; rarer cases are in domain.test).
    const expected = ['map ok', 'map EEXIST', 'map EINVAL', 'mapSg ok', 'mapSg EEXIST', 'mapSg EINVAL', 'unmap ok', 'unmapSg ok', 'clearBlock ok', 'sync ok'];
    if (v.pgsizeBitmap === undefined) expected.push('blocks present');
    if (v.ias < 48) expected.push('map ERANGE', 'mapSg ERANGE', 'unmap ERANGE', 'unmapSg ERANGE');
    for (const key of expected) t.true((cov[key] ?? 0) > 0, `the commands exercised "${key}": ${JSON.stringify(cov)}`);
  });
}

test('the reference model itself: unmap rules on a hand-checked layout', (t) => {
  // Guards the model: 3 x 4K then a 2M block, as iommu_pgsize chooses them.
  const m = new ModelDomain(0x40201000, 48, 48);
  t.deepEqual(m.map(2 ** 30 - 0x3000, 2 ** 31 - 0x3000, 0x3000 + 2 ** 21, READ), { value: undefined });
  t.deepEqual(m.leaves.map((l) => l.size), [0x1000, 0x1000, 0x1000, 2 ** 21]);
  t.deepEqual(m.map(2 ** 30, 0, 0x1000, READ), { code: 'EEXIST' });
  t.deepEqual(m.unmap(2 ** 30 + 0x1000, 0x1000), { value: 0 });
  t.deepEqual(m.unmap(2 ** 30 - 0x2000, 0x2000), { value: 0x2000 });
  t.deepEqual(m.unmap(2 ** 30 - 0x3000, 0x3000), { value: 0x1000 });
  t.deepEqual(m.unmap(2 ** 30, 0x1000), { value: 2 ** 21 });
  t.deepEqual(m.leaves, []);
  t.deepEqual(m.mapSg(0, [{ phys: 0x800, length: 0x800 }, { phys: 0x1000, length: 0x800 }], READ), { code: 'EINVAL' });
  t.deepEqual(m.mapSg(0, [{ phys: 0x1000, length: 0x800 }, { phys: 0x1800, length: 0x800 }], READ), { value: 0x1000 });
});
