/**
 * map_sg's fast paths (src/pgtable/pgtable.ts mapSinglePages and mapShortRuns: runs too short for any
 * leaf but the smallest, written a table at a time) against the reference model, on lists long enough
 * to cross many leaf tables: runs of 1-40 pages (so both sides of SHORT_RUN_PAGES), entries that are
 * not whole pages but merge into whole runs, misaligned runs, runs beyond 2^oas and pages already
 * mapped in the way. Engine and model must agree on the result or errno, and the tables must hold
 * exactly the model's leaves afterwards (a failed call leaves nothing).
 */
import test from 'ava';
import fc from 'fast-check';
import { Iommu, IommuError, SgTable } from '../../src/index.js';
import { ModelDomain } from '../../src/stress/model.js';
import { allLeaves } from '../helpers/walker.js';

const K4 = 4096;
const M2 = 2 ** 21;
const READ = 1;

interface Piece {
  phys: number;
  length: number;
}

/** A run of `pages` pages at `phys`, cut into entries; `halves` cuts one page into two half entries. */
const runArb = fc.record({
  pages: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 1, max: 4 }) }, { weight: 3, arbitrary: fc.integer({ min: 5, max: 40 }) }),
  frame: fc.nat(2 ** 14),
  entryPages: fc.integer({ min: 1, max: 3 }),
  halves: fc.oneof({ weight: 12, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  misaligned: fc.oneof({ weight: 400, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
});

type Run = typeof runArb extends fc.Arbitrary<infer R> ? R : never;

function materialize(runs: Run[], oasTop: boolean): Piece[] {
  const out: Piece[] = [];
  for (const [r, run] of runs.entries()) {
    // Frames are even (x 2 pages) so two runs are never physically adjacent by accident.
    let phys = 2 ** 36 + run.frame * 2 * 64 * K4 + (run.misaligned ? K4 / 2 : 0);
    if (oasTop && r === runs.length - 1) phys = 2 ** 40 - K4; // the last run ends beyond a 40-bit oas
    let left = run.pages * K4;
    if (run.halves && left >= K4) {
      out.push({ phys, length: K4 / 2 }, { phys: phys + K4 / 2, length: K4 / 2 });
      phys += K4;
      left -= K4;
    }
    while (left > 0) {
      const length = Math.min(left, run.entryPages * K4);
      out.push({ phys, length });
      phys += length;
      left -= length;
    }
  }
  return out;
}

for (const [name, bitmap] of [
  ['default page sizes', undefined],
  ['4K pages only', 0x1000],
] as const) {
  test(`map_sg of long lists of short runs equals the reference model, tables exactly its leaves (${name})`, async (t) => {
    const iommu = await Iommu.create({ workers: 0 });
    t.teardown(() => iommu.close());
    const outcomes: Record<string, number> = {};
    await fc.assert(
      fc.asyncProperty(
        fc.array(runArb, { minLength: 50, maxLength: 400 }),
        fc.oneof({ weight: 8, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
        fc.uniqueArray(fc.nat(8000), { maxLength: 3 }),
        fc.integer({ min: 0, max: 600 }),
        async (runs, oasTop, obstacles, startPage) => {
          const sg = materialize(runs, oasTop);
          const dom = iommu.allocDomain({ oas: 40, pgsizeBitmap: bitmap });
          const model = new ModelDomain({ pgsizeBitmap: dom.pgsizeBitmap, ias: 48, oas: 40, stage2: false });
          // Start a little before a 2M boundary so the list's first tables are partial.
          const iova = 4 * 2 ** 30 - M2 + startPage * K4;
          for (const o of obstacles) {
            const at = iova + o * K4;
            t.deepEqual(model.map(at, 2 ** 38, K4, READ), { ok: true, value: null });
            await dom.map(at, 2 ** 38, K4, READ);
          }
          let got: string;
          try {
            got = `ok ${await dom.mapSg(iova, SgTable.from(sg), READ)}`;
          } catch (e) {
            if (!(e instanceof IommuError)) throw e;
            got = e.code;
          }
          const m = model.mapSg(iova, sg, READ);
          const want = m.ok ? `ok ${m.value}` : m.code;
          outcomes[want.split(' ')[0]!] = (outcomes[want.split(' ')[0]!] ?? 0) + 1;
          t.is(got, want, `mapSg of ${sg.length} entries at 0x${iova.toString(16)}`);
          const inTables = allLeaves(dom.pageTable()).map((l) => `${l.iova}:${l.phys}:${l.size}`);
          const inModel = model.leaves().map((l) => `${l.iova}:${l.paddr}:${l.size}`);
          t.is(inTables.length, inModel.length);
          t.deepEqual(inTables, inModel);
          await dom.free();
        },
      ),
      { numRuns: 100 },
    );
    // The generator reaches success and each kind of failure (a misaligned run is in ~40% of the lists).
    t.log(`outcomes: ${JSON.stringify(outcomes)}`);
    for (const code of ['ok', 'EEXIST', 'EINVAL', 'ERANGE']) t.true((outcomes[code] ?? 0) > 0, `outcomes: ${JSON.stringify(outcomes)}`);
  });
}
