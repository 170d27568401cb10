/**
 * Fault injection into the worker pool (the test-only `parallel.faultPlan` hook): a map whose worker
 * dies or throws rejects EIO and leaves the domain exactly as it was; an unmap whose worker dies still
 * completes (the main thread redoes that piece); the pool and the table-memory allocator keep serving.
 */
import test, { type ExecutionContext } from 'ava';
import { IommuError, Prot, type Domain, type Iommu, type InvalidationCommand } from '../../src/index.js';
import { HELPERS_FIRST_CHUNK, type FaultPlan } from '../../src/core/parallel.js';
import { sgView } from '../../src/core/sg.js';
import {
  tasksOf,
  G1,
  K4,
  M2,
  PARALLEL_MIN_PAGES,
  bigList,
  fullDump,
  leafDump,
  makeIommu,
  mixedSegs,
  recordSyncs,
  runSegs,
  sameDump,
  type BigList,
} from '../helpers/parallel.js';

const RW = Prot.READ | Prot.WRITE;
const N = PARALLEL_MIN_PAGES;

function engine(iommu: Iommu): NonNullable<Iommu['parallel']> {
  const p = iommu.parallel;
  if (!p) throw new Error('no parallel engine');
  return p;
}


/** The allocator lock word of table memory (Int32 0 of the shared buffer): 0 when free. */
function allocatorLock(dom: Domain): number {
  return Atomics.load(new Int32Array(dom.pageTable().memory, 0, 1), 0);
}

interface Fixture {
  iommu: Iommu;
  dom: Domain;
  list: BigList;
  iova: number;
  /** Leaves of the call on an inline engine (the reference). */
  expected: string[];
  /** How many map chunks the call is cut into. */
  chunks: number;
}

async function fixture(t: ExecutionContext, list: BigList, iova: number): Promise<Fixture> {
  const iommu = await makeIommu(t, 2);
  const inline = await makeIommu(t, 0);
  const ref = inline.allocDomain();
  await ref.mapSg(iova, list.table, RW);
  const expected = leafDump(ref);
  const dom = iommu.allocDomain();
  // Neighbours on both sides, in the tables the call uses.
  await dom.map(iova - 3 * K4, 2 ** 44, 3 * K4, RW);
  await dom.map(iova + list.bytes, 2 ** 44 + M2, 5 * K4, RW);
  // How many chunks the call is cut into (its helpers claim them; one message each).
  const chunks = engine(iommu).planSg(dom, iova, sgView(list.table), RW).chunks.length;
  const counts = await tasksOf(iommu, () => dom.mapSg(iova, list.table, RW));
  t.is(await dom.unmapSg(iova, list.table), list.bytes);
  t.true(chunks >= 2, `the call is cut into ${chunks} chunks`);
  t.true((counts.map ?? 0) >= 1 && (counts.map ?? 0) <= iommu.workers, `one map task per helper at most (${counts.map})`);
  return { iommu, dom, list, iova, expected, chunks };
}

/** The call with `plan` injected: EIO, and the domain exactly as before. Then without: success. */
async function mapFaultRound(t: ExecutionContext, f: Fixture, plan: FaultPlan, call: () => Promise<unknown>, what: string): Promise<void> {
  const before = fullDump(f.dom);
  const pages = f.iommu.stats().tables.pages;
  engine(f.iommu).faultPlan = plan;
  const t0 = Date.now();
  const err = await t.throwsAsync(call(), { instanceOf: IommuError }, what);
  t.is(err?.code, 'EIO', `${what}: EIO`);
  t.true(Date.now() - t0 < 30_000, `${what}: failed promptly`);
  t.is(engine(f.iommu).faultPlan, null, `${what}: the plan was used`);
  sameDump(t, fullDump(f.dom), before, `${what}: every descriptor as before`);
  t.is(f.iommu.stats().tables.pages, pages, `${what}: tables.pages as before`);
  t.is(allocatorLock(f.dom), 0, `${what}: the allocator lock is free`);
  // The pool still serves: the same call without a fault.
  await t.notThrowsAsync(call(), `${what}: the same call without a fault`);
}

const PLANS: { chunk: (k: number) => number; name: string; afterBytes: number }[] = [
  { name: 'chunk 0, at once', chunk: () => 0, afterBytes: 0 },
  { name: 'chunk 0, later', chunk: () => 0, afterBytes: 300 * K4 },
  { name: 'chunk 1', chunk: () => 1, afterBytes: 37 * K4 },
  { name: 'a middle chunk', chunk: (k) => k >> 1, afterBytes: 5 * M2 },
  { name: 'the last chunk, at once', chunk: (k) => k - 1, afterBytes: 0 },
  { name: 'the last chunk, later', chunk: (k) => k - 1, afterBytes: 1000 * K4 },
];

for (const how of ['exit', 'throw'] as const) {
  test.serial(`map phase, a worker that ${how === 'exit' ? 'dies' : 'throws'}: EIO, rolled back exactly, and the pool keeps serving`, async (t) => {
    t.timeout(120_000);
    const iova = 5 * G1 - 40 * M2 + 7 * K4; // crosses a 1G boundary
    const list = bigList('runs', runSegs(N + 1234, K4, M2, iova, 0xfa17));
    const f = await fixture(t, list, iova);
    for (const p of PLANS) {
      const chunk = p.chunk(f.chunks);
      const what = `${how} in ${p.name} (chunk ${chunk} of ${f.chunks}) after ${p.afterBytes} bytes`;
      await mapFaultRound(t, f, { phase: 'map', chunk, fault: { afterBytes: p.afterBytes, how } }, () => f.dom.mapSg(iova, list.table, RW), what);
      sameDump(t, leafDump(f.dom).filter((l) => parseInt(l, 16) >= iova && parseInt(l, 16) < iova + list.bytes), f.expected, `${what}: leaves of the retried call as inline`);
      // Undo it (tables stay, so the next round's blocks replace empty tables).
      t.is(await f.dom.unmapSg(iova, list.table), list.bytes);
    }
    // A big map() of one run, failing in its last piece.
    const paddr = 2 ** 40 + (iova % G1);
    const mapCall = (): Promise<void> => f.dom.map(iova, paddr, list.bytes, RW);
    const pieces = engine(f.iommu).planMap(f.dom, iova, paddr, list.bytes, RW).chunks.length;
    await mapFaultRound(t, f, { phase: 'map', chunk: pieces - 1, fault: { afterBytes: M2, how } }, mapCall, `${how}: map() of one run, last piece`);
    t.is(await f.dom.unmap(iova, list.bytes), list.bytes);
    // The neighbours are intact.
    t.is(f.dom.iovaToPhys(iova - K4), 2 ** 44 + 2 * K4);
    t.is(f.dom.iovaToPhys(iova + list.bytes + 4 * K4), 2 ** 44 + M2 + 4 * K4);
  });
}

for (const how of ['exit', 'throw'] as const) {
  test.serial(`map phase with the caller mapping too, a helper that ${how === 'exit' ? 'dies' : 'throws'} mid-chunk: the caller finds its chunk unfinished, EIO, rolled back exactly`, async (t) => {
    t.timeout(120_000);
    const iova = 3 * G1 - 24 * M2 + 5 * K4;
    const list = bigList('runs', runSegs(4 * N + 77, K4, M2, iova, 0xca11));
    const f = await fixture(t, list, iova);
    // The caller waits for the helpers' chunks in shared memory, and for their task results only
    // when a chunk stays unfinished: this is that path. The helper fails in the first chunk it takes
    // (if it takes none, the caller mapped everything and the call succeeds: that round is retried).
    let failed = 0;
    for (let round = 0; round < 24 && failed < 3; round++) {
      const before = fullDump(f.dom);
      engine(f.iommu).faultPlan = { phase: 'map', chunk: HELPERS_FIRST_CHUNK, fault: { afterBytes: (round % 3) * 40 * K4, how } };
      const t0 = Date.now();
      const r = await f.dom.mapSg(iova, list.table, RW).then(
        (v) => ({ ok: true as const, v }),
        (e: unknown) => ({ ok: false as const, e }),
      );
      t.is(engine(f.iommu).faultPlan, null, `round ${round}: the plan was used`);
      if (r.ok) {
        t.is(r.v, list.bytes);
        t.is(await f.dom.unmapSg(iova, list.table), list.bytes);
        continue;
      }
      failed++;
      t.true(r.e instanceof IommuError && r.e.code === 'EIO', `round ${round}: EIO, got ${String(r.e)}`);
      t.true(Date.now() - t0 < 30_000, `round ${round}: failed promptly`);
      sameDump(t, fullDump(f.dom), before, `round ${round}: every descriptor as before`);
      t.is(allocatorLock(f.dom), 0);
      // piscina replaces a dead worker; until the new one has loaded, the caller maps alone.
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
    t.true(failed >= 3, `a helper took a chunk and failed in ${failed} rounds`);
    t.is(await f.dom.mapSg(iova, list.table, RW), list.bytes, 'the pool still serves');
    sameDump(t, leafDump(f.dom).filter((l) => parseInt(l, 16) >= iova && parseInt(l, 16) < iova + list.bytes), f.expected, 'leaves as inline');
  });
}

test.serial('map phase: repeated deaths in a row do not exhaust the pool or the allocator', async (t) => {
  t.timeout(120_000);
  const iova = 2 * G1 + 9 * K4;
  const list = bigList('mixed', mixedSegs(N + 99, K4, M2, iova, 0xdead));
  const f = await fixture(t, list, iova);
  for (let round = 0; round < 6; round++) {
    const before = fullDump(f.dom);
    engine(f.iommu).faultPlan = { phase: 'map', chunk: round % f.chunks, fault: { afterBytes: round * 50 * K4, how: round % 2 === 0 ? 'exit' : 'throw' } };
    const err = await t.throwsAsync(f.dom.mapSg(iova, list.table, RW), { instanceOf: IommuError });
    t.is(err?.code, 'EIO');
    sameDump(t, fullDump(f.dom), before, `round ${round}: as before`);
    t.is(allocatorLock(f.dom), 0);
  }
  // Table memory and the pool still work, promptly: a new domain and maps that install tables.
  const t0 = Date.now();
  const d2 = f.iommu.allocDomain();
  for (let k = 0; k < 16; k++) await d2.map(2 ** 40 + k * (G1 + M2) + K4, 2 ** 40, K4, RW);
  t.is(await d2.mapSg(7 * G1, list.table, RW), list.bytes);
  t.true(Date.now() - t0 < 10_000, `after the faults, allocation took ${Date.now() - t0} ms`);
  t.is(await f.dom.mapSg(iova, list.table, RW), list.bytes);
  sameDump(t, leafDump(f.dom).filter((l) => parseInt(l, 16) >= iova && parseInt(l, 16) < iova + list.bytes), f.expected, 'leaves after the faults');
  await d2.free();
});

// -------------------------------------------------------------------------------------------------
// unmap: scan and clear phases
// -------------------------------------------------------------------------------------------------

/** Builds the same layout on a domain: the list mapped, with a hole punched late in it. */
async function holeyLayout(dom: Domain, list: BigList, iova: number, hole: number | null): Promise<void> {
  await dom.mapSg(iova, list.table, RW);
  if (hole !== null) {
    // Unmap whatever leaf is at the hole (a page, or the block holding it).
    const l = dom.lookup(hole)!;
    const start = Math.floor(hole / l.pageSize) * l.pageSize;
    await dom.unmap(start, l.pageSize);
  }
}

for (const phase of ['scan', 'clear'] as const) {
  test.serial(`${phase} phase, a worker that dies or throws: the unmap still completes exactly as inline`, async (t) => {
    t.timeout(120_000);
    // Unmaps go to the pool only when the caller does not take a share (the daemon's configuration).
    const iommu = await makeIommu(t, 2, undefined, false);
    const inline = await makeIommu(t, 0);
    const batches = recordSyncs(iommu);
    const refBatches = recordSyncs(inline);
    const iova = 3 * G1 - 20 * M2 + 3 * K4;
    const list = bigList('runs', runSegs(N + 555, K4, M2, iova, 0xc1ea));
    const dom = iommu.allocDomain();
    const ref = inline.allocDomain();
    // Pieces of this unmap, counted on a call without a fault.
    await holeyLayout(dom, list, iova, null);
    const counts = await tasksOf(iommu, () => dom.unmapSg(iova, list.table));
    const pieces = counts.scan ?? 0;
    t.true(pieces >= 2, `the unmap is cut into ${pieces} pieces`);
    let rounds = 0;
    for (const how of ['exit', 'throw'] as const) {
      for (const chunk of [0, pieces >> 1, pieces - 1]) {
        for (const hole of [null, iova + Math.floor((list.bytes * 0.9) / K4) * K4]) {
          const what = `${phase} ${how} in piece ${chunk} of ${pieces}${hole === null ? '' : ', hole late'}`;
          await holeyLayout(dom, list, iova, hole);
          await holeyLayout(ref, list, iova, hole);
          const b0 = batches.length;
          const r0 = refBatches.length;
          engine(iommu).faultPlan = { phase, chunk, fault: { afterBytes: 3 * K4, how } };
          const got = await dom.unmapSg(iova, list.table);
          const want = await ref.unmapSg(iova, list.table);
          t.is(got, want, `${what}: bytes unmapped`);
          t.is(engine(iommu).faultPlan, null, `${what}: the plan was used`);
          sameDump(t, leafDump(dom), leafDump(ref), `${what}: leaves left`);
          t.deepEqual(batches.slice(b0), refBatches.slice(r0) as InvalidationCommand[][], `${what}: one invalidation batch, as inline`);
          t.is(allocatorLock(dom), 0);
          // Clean up what is left after the hole, on both.
          if (hole !== null) {
            await dom.unmapSg(iova, list.table).then(async () => {
              for (const d of [dom, ref]) {
                const rest = leafDump(d).filter((l) => parseInt(l, 16) >= iova);
                for (const l of rest) {
                  const [a, s] = l.split(' ');
                  await d.unmap(parseInt(a!, 16), parseInt(s!, 16));
                }
              }
            });
          }
          t.deepEqual(leafDump(dom), [], `${what}: range empty`);
          rounds++;
        }
      }
    }
    t.true(rounds >= 10);
    // The pool still serves a map and an unmap without faults.
    t.is(await dom.mapSg(iova, list.table, RW), list.bytes);
    t.is(await dom.unmapSg(iova, list.table), list.bytes);
  });
}

test.serial('a fault plan is consumed by the next parallel call, whatever its chunks', async (t) => {
  t.timeout(60_000);
  const iommu = await makeIommu(t, 2, undefined, false);
  const dom = iommu.allocDomain();
  const iova = G1;
  const list = bigList('mixed', mixedSegs(N + 5, K4, M2, iova, 0x9));
  // A plan for a chunk the call does not have.
  engine(iommu).faultPlan = { phase: 'map', chunk: 999, fault: { afterBytes: 0, how: 'exit' } };
  t.is(await dom.mapSg(iova, list.table, RW), list.bytes);
  t.is(engine(iommu).faultPlan, null, 'consumed by the mapSg');
  // A clear-phase plan on an unmap that stops at once (nothing to clear).
  engine(iommu).faultPlan = { phase: 'clear', chunk: 1, fault: { afterBytes: 0, how: 'exit' } };
  t.is(await dom.unmap(iova + list.bytes + M2, N * K4), 0);
  t.is(engine(iommu).faultPlan, null, 'consumed by the unmap');
  t.is(await dom.unmapSg(iova, list.table), list.bytes);
});

test.serial('a worker dying in one call while another big call runs: EIO for the one, the other unaffected, no table lost', async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2);
  const inline = await makeIommu(t, 0);
  const A = 3 * G1 + 5 * K4;
  const B = 3 * G1 + 0x1400_0000 + 9 * K4; // after A's range, sharing the upper tables
  const la = bigList('runs', runSegs(N + 300, K4, M2, A, 0xa1));
  const lb = bigList('mixed', mixedSegs(N + 300, K4, M2, B, 0xb1));
  t.true(A + la.bytes < B);
  for (const chunk of [0, 1]) { // chunk indices that exist whatever the chunk count (one per worker, at least 2)
    const dom = iommu.allocDomain();
    await dom.map(A - K4, 2 ** 44, K4, RW);
    const ref = inline.allocDomain();
    await ref.map(A - K4, 2 ** 44, K4, RW);
    await ref.mapSg(B, lb.table, RW);
    engine(iommu).faultPlan = { phase: 'map', chunk, fault: { afterBytes: 20 * K4, how: 'exit' } };
    const [a, b] = await Promise.allSettled([dom.mapSg(A, la.table, RW), dom.mapSg(B, lb.table, RW)]);
    t.is(a.status, 'rejected');
    t.is(((a as PromiseRejectedResult).reason as IommuError).code, 'EIO', `chunk ${chunk}: EIO`);
    t.deepEqual(b, { status: 'fulfilled', value: lb.bytes }, `chunk ${chunk}: the other call`);
    sameDump(t, leafDump(dom), leafDump(ref), `chunk ${chunk}: only the other call's leaves (and the neighbour)`);
    // Once idle, the failed call's tables are all given back: the domain holds what the reference holds.
    const held = async (i: Iommu, d: Domain): Promise<number> => {
      const p0 = i.stats().tables.pages;
      await d.free();
      return p0 - i.stats().tables.pages;
    };
    t.is(await held(iommu, dom), await held(inline, ref), `chunk ${chunk}: table pages`);
  }
});
