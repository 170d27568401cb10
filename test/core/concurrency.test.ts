/**
 * Many callers at once on one domain: disjoint ranges run together, overlapping ones take effect one
 * after the other in the order they were submitted (the range lock is FIFO), readers on the main
 * thread never see a torn or foreign descriptor, devices keep no translation of a failed call, and a
 * domain cannot be freed under a call in flight.
 */
import test, { type ExecutionContext } from 'ava';
import { IommuError, Prot, type Domain, type InvalidationCommand, type Iommu } from '../../src/index.js';
import { leavesFor } from '../helpers/reference.js';
import {
  G1,
  K4,
  M2,
  PARALLEL_MIN_PAGES,
  bigList,
  contiguousSegs,
  leafDump,
  makeIommu,
  modelDump,
  modelLeaves,
  nextTurn,
  physOracle,
  randInt,
  recordSyncs,
  rng,
  runSegs,
  sameDump,
  scatteredSegs,
  type BigList,
  type ModelLeaf,
} from '../helpers/parallel.js';

const RW = Prot.READ | Prot.WRITE;
const BITMAP = 0x4020_1000;
const N = PARALLEL_MIN_PAGES;

type Outcome = { ok: number | undefined } | { code: string; message: string };

async function outcome(p: Promise<number | void>): Promise<Outcome> {
  try {
    const v = await p;
    return { ok: v === undefined ? undefined : v };
  } catch (e) {
    if (!(e instanceof IommuError)) throw e;
    return { code: e.code, message: e.message };
  }
}

/** Tracks whether a promise is still pending. */
function pending<T>(p: Promise<T>): { p: Promise<T>; done: () => boolean } {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  return { p, done: () => settled };
}

function runLeaves(iova: number, paddr: number, size: number, prot = RW): ModelLeaf[] {
  return leavesFor(BITMAP, iova, paddr, size).map((l) => ({ iova: l.iova, phys: l.paddr, size: l.size, prot }));
}

// -------------------------------------------------------------------------------------------------
// Disjoint ranges
// -------------------------------------------------------------------------------------------------

for (const callerRuns of [true, false])
  test.serial(`disjoint callers at once: all succeed (or fail) as alone, the final state equals the model${callerRuns ? '' : ' (pool only)'}`, async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, callerRuns);
  const ref = await makeIommu(t, 0);
  const dom = iommu.allocDomain();
  const seq = ref.allocDomain();
  const L1 = bigList('scattered', scatteredSegs(N + 100, K4, 0xd1));
  const A = G1 + 2 * K4; // shares its first last-level table with the tiny maps below
  const L3 = bigList('runs', runSegs(N + 300, K4, M2, 4 * G1 + M2, 0xd3));
  const L5 = bigList('runs, colliding at its end', runSegs(N + 50, K4, M2, 8 * G1, 0xd5));
  const pre: [number, number, number][] = [
    [6 * G1, 2 ** 40, N * K4], // unmapped by a big unmapSg below
    [6 * G1 - K4, 2 ** 41, K4], // unmapped by a tiny unmap below
    [2 * G1 + 64 * K4, 2 ** 41 + M2, K4], // collides with a tiny map below
    [8 * G1 + L5.bytes - K4, 2 ** 42, K4], // collides with L5's last page
  ];
  for (const d of [dom, seq]) for (const [i, p, s] of pre) await d.map(i, p, s, RW);
  const unmapList = bigList('contiguous', contiguousSegs(N, K4, 0));

  type Call = { name: string; big: boolean; run: (d: Domain) => Promise<number | void> };
  const calls: Call[] = [
    { name: 'big mapSg scattered', big: true, run: (d) => d.mapSg(A, L1.table, RW) },
    { name: 'tiny map just below it', big: false, run: (d) => d.map(G1, 2 ** 43, 2 * K4, RW) },
    { name: 'tiny map just after it', big: false, run: (d) => d.map(A + L1.bytes, 2 ** 43 + M2, K4, RW) },
    { name: 'big map of 2M blocks', big: true, run: (d) => d.map(3 * G1 + 2 * M2, 7 * G1 + 2 * M2, 0x2000_0000, RW) },
    { name: 'big mapSg runs', big: true, run: (d) => d.mapSg(4 * G1 + M2, L3.table, Prot.READ) },
    { name: 'tiny mapSg', big: false, run: (d) => d.mapSg(2 * G1, [{ phys: 2 ** 44, length: K4 }, { phys: 2 ** 44 + K4, length: 3 * K4 }, { phys: 2 ** 45, length: K4 }], RW) },
    { name: 'big unmapSg', big: true, run: (d) => d.unmapSg(6 * G1, unmapList.table) },
    { name: 'tiny unmap', big: false, run: (d) => d.unmap(6 * G1 - K4, K4) },
    { name: 'tiny map that collides', big: false, run: (d) => d.map(2 * G1 + 63 * K4, 2 ** 46, 2 * K4, RW) },
    { name: 'big mapSg that collides at its end', big: true, run: (d) => d.mapSg(8 * G1, L5.table, RW) },
    { name: 'tiny map far away', big: false, run: (d) => d.map(2 ** 46, 2 ** 46, M2, RW) },
    { name: 'tiny unmap of nothing', big: false, run: (d) => d.unmap(2 ** 45, K4) },
  ];
  // All at once; note which were still pending when each tiny call finished.
  const first = pending(calls[0]!.run(dom));
  const flights = [first, ...calls.slice(1).map((c) => pending(c.run(dom)))];
  const pendingAtTinyEnd: boolean[] = [];
  await Promise.all(
    flights.map((f, i) =>
      f.p.then(
        () => void (calls[i]!.big ? undefined : pendingAtTinyEnd.push(!first.done())),
        () => void (calls[i]!.big ? undefined : pendingAtTinyEnd.push(!first.done())),
      ),
    ),
  );
  const got = await Promise.all(flights.map((f) => outcome(f.p)));
  // The same calls one after the other, inline.
  const want: Outcome[] = [];
  for (const c of calls) want.push(await outcome(c.run(seq)));
  calls.forEach((c, i) => t.deepEqual(got[i], want[i], c.name));
  t.like(got[9], { code: 'EEXIST' });
  t.like(got[8], { code: 'EEXIST' });
  // They did overlap in time: the tiny calls finished while the first big one was still running.
  t.true(pendingAtTinyEnd.length > 0 && pendingAtTinyEnd.every(Boolean), `tiny calls finished before the big mapSg: ${pendingAtTinyEnd}`);

  // The model: what is left of the pre-existing mappings, and every successful call.
  const model: ModelLeaf[] = [
    ...runLeaves(2 * G1 + 64 * K4, 2 ** 41 + M2, K4),
    ...runLeaves(8 * G1 + L5.bytes - K4, 2 ** 42, K4),
    ...modelLeaves(BITMAP, A, L1.segs, RW),
    ...runLeaves(G1, 2 ** 43, 2 * K4),
    ...runLeaves(A + L1.bytes, 2 ** 43 + M2, K4),
    ...runLeaves(3 * G1 + 2 * M2, 7 * G1 + 2 * M2, 0x2000_0000),
    ...modelLeaves(BITMAP, 4 * G1 + M2, L3.segs, Prot.READ),
    ...modelLeaves(BITMAP, 2 * G1, [{ phys: 2 ** 44, length: K4 }, { phys: 2 ** 44 + K4, length: 3 * K4 }, { phys: 2 ** 45, length: K4 }], RW),
    ...runLeaves(2 ** 46, 2 ** 46, M2),
  ];
  sameDump(t, leafDump(dom), modelDump(model, K4), 'final leaves vs the model');
  sameDump(t, leafDump(dom), leafDump(seq), 'final leaves vs the same calls in sequence');
  // Tables of the failed calls were given back once the domain was idle: the same pages as in sequence.
  t.is(await heldPages(iommu, dom), await heldPages(ref, seq), 'table pages held by the domain, as in sequence');
});

/** Pages a domain holds: what free() gives back. */
async function heldPages(iommu: Iommu, d: Domain): Promise<number> {
  const before = iommu.stats().tables.pages;
  await d.free();
  return before - iommu.stats().tables.pages;
}

// -------------------------------------------------------------------------------------------------
// Overlapping ranges
// -------------------------------------------------------------------------------------------------

for (const callerRuns of [true, false])
  test.serial(`callers on the same range at once: exactly the first submitted succeeds, the rest fail EEXIST without a trace${callerRuns ? '' : ' (pool only)'}`, async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, callerRuns);
  const ref = await makeIommu(t, 0);
  const X = 5 * G1 - 32 * M2 + 5 * K4; // crosses a 1G boundary
  const L1 = bigList('scattered', scatteredSegs(N + 7, K4, 0x0a));
  const L2 = bigList('runs', runSegs(N + 7, K4, M2, X, 0x0b));
  const bytes = L1.bytes; // L1 and L2: the same number of 4K pages
  t.is(L2.bytes, bytes);
  const TINY = [{ phys: 2 ** 42, length: K4 }, { phys: 2 ** 42 + 2 * K4, length: 2 * K4 }];
  type Call = { name: string; run: (d: Domain) => Promise<number | void>; leaves: ModelLeaf[] };
  const all: Call[] = [
    { name: 'big mapSg L1', run: (d) => d.mapSg(X, L1.table, RW), leaves: modelLeaves(BITMAP, X, L1.segs, RW) },
    { name: 'big map', run: (d) => d.map(X, 2 ** 40 + (X % G1), bytes, RW), leaves: runLeaves(X, 2 ** 40 + (X % G1), bytes) },
    { name: 'tiny map', run: (d) => d.map(X, 2 ** 41, 2 * K4, RW), leaves: runLeaves(X, 2 ** 41, 2 * K4) },
    { name: 'big mapSg L2', run: (d) => d.mapSg(X, L2.table, Prot.READ), leaves: modelLeaves(BITMAP, X, L2.segs, Prot.READ) },
    { name: 'tiny mapSg', run: (d) => d.mapSg(X, TINY, RW), leaves: modelLeaves(BITMAP, X, TINY, RW) },
  ];
  // Each call in turn submitted first, the others after it.
  for (let w = 0; w < all.length; w++) {
    const order = [all[w]!, ...all.filter((_, i) => i !== w)];
    const dom = iommu.allocDomain();
    const pages0 = iommu.stats().tables.pages;
    const got = await Promise.all(order.map((c) => outcome(c.run(dom))));
    t.deepEqual(got[0], { ok: order[0]!.name.includes('mapSg') ? (order[0]!.name.startsWith('big') ? bytes : 3 * K4) : undefined }, `${order[0]!.name} submitted first wins`);
    got.slice(1).forEach((o, i) => t.like(o, { code: 'EEXIST' }, `${order[i + 1]!.name} after ${order[0]!.name}`));
    // Every leaf is the winner's, and the tables are what the winner alone needs.
    sameDump(t, leafDump(dom), modelDump(order[0]!.leaves, K4), `leaves after ${order[0]!.name} won`);
    const alone = ref.allocDomain();
    const refPages0 = ref.stats().tables.pages;
    await order[0]!.run(alone);
    t.is(iommu.stats().tables.pages - pages0, ref.stats().tables.pages - refPages0, `table pages after ${order[0]!.name} won`);
    await alone.free();
    await dom.free();
  }
});

/** A random sequence of calls on overlapping ranges of one window. */
function sequence(seed: number, W: number, lists: BigList[]): { name: string; run: (d: Domain) => Promise<number | void> }[] {
  const r = rng(seed);
  const out: { name: string; run: (d: Domain) => Promise<number | void> }[] = [];
  for (let k = 0; k < 16; k++) {
    const pick = r();
    const at = W + randInt(r, 0, 64) * M2 + (r() < 0.5 ? 0 : randInt(r, 1, 511) * K4);
    const prot = r() < 0.5 ? RW : Prot.READ | Prot.CACHE;
    if (pick < 0.25) {
      const l = lists[randInt(r, 0, lists.length - 1)]!;
      out.push({ name: `mapSg ${l.name} @${at.toString(16)}`, run: (d) => d.mapSg(at, l.table, prot) });
    } else if (pick < 0.4) {
      const l = lists[randInt(r, 0, lists.length - 1)]!;
      out.push({ name: `unmapSg ${l.name} @${at.toString(16)}`, run: (d) => d.unmapSg(at, l.table) });
    } else if (pick < 0.5) {
      const size = randInt(r, N, N + 2000) * K4;
      const paddr = 2 ** 40 + (r() < 0.5 ? at % G1 : K4);
      out.push({ name: `map ${size.toString(16)} @${at.toString(16)}`, run: (d) => d.map(at, paddr, size, prot) });
    } else if (pick < 0.6) {
      const size = randInt(r, N, 2 * N) * K4;
      out.push({ name: `unmap ${size.toString(16)} @${at.toString(16)}`, run: (d) => d.unmap(at, size) });
    } else if (pick < 0.8) {
      const size = randInt(r, 1, 8) * K4;
      const paddr = 2 ** 41 + randInt(r, 0, 1000) * K4;
      out.push({ name: `tiny map ${size.toString(16)} @${at.toString(16)}`, run: (d) => d.map(at, paddr, size, prot) });
    } else {
      const size = randInt(r, 1, 600) * K4;
      out.push({ name: `tiny unmap ${size.toString(16)} @${at.toString(16)}`, run: (d) => d.unmap(at, size) });
    }
  }
  return out;
}

for (const callerRuns of [true, false])
  test.serial(`overlapping map/unmap submitted at once take effect in submission order (FIFO range lock)${callerRuns ? '' : ' (pool only)'}`, async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, callerRuns);
  const ref = await makeIommu(t, 0);
  const syncs = recordSyncs(iommu);
  const refSyncs = recordSyncs(ref);
  const W = 3 * G1 - 16 * M2;
  const lists = [
    bigList('scattered', scatteredSegs(N + 11, K4, 0xf1)),
    bigList('runs', runSegs(N + 22, K4, M2, W, 0xf2)),
    bigList('contiguous', contiguousSegs(N + 33, K4, 2 ** 39 + (W % G1))),
  ];
  // A fixed, hand-made sequence first: each call depends on the one before it.
  const X = W + 8 * M2;
  const L = lists[0]!;
  const fixed: { name: string; run: (d: Domain) => Promise<number | void> }[] = [
    { name: 'big mapSg', run: (d) => d.mapSg(X, L.table, RW) },
    { name: 'tiny unmap of its first page', run: (d) => d.unmap(X, K4) },
    { name: 'tiny map there', run: (d) => d.map(X, 2 ** 44, K4, Prot.READ) },
    { name: 'big unmapSg', run: (d) => d.unmapSg(X, L.table) },
    { name: 'big map of the range', run: (d) => d.map(X, 2 ** 40 + (X % G1), L.bytes, RW) },
    { name: 'tiny unmap of its last 2M block and 4K pages', run: (d) => d.unmap(X + L.bytes - M2 - 11 * K4, M2 + 11 * K4) },
    { name: 'tiny map there again', run: (d) => d.map(X + L.bytes - M2 - 11 * K4, 2 ** 45, M2 + 11 * K4, RW) },
    { name: 'big unmap of all', run: (d) => d.unmap(X, L.bytes) },
    { name: 'big mapSg again', run: (d) => d.mapSg(X, L.table, RW) },
  ];
  const sequences = [fixed, ...[1, 2, 3, 4].map((s) => sequence(s, W, lists))];
  for (const [k, calls] of sequences.entries()) {
    const dom = iommu.allocDomain();
    const seq = ref.allocDomain();
    const s0 = syncs.length;
    const r0 = refSyncs.length;
    const got = await Promise.all(calls.map((c) => outcome(c.run(dom))));
    const want: Outcome[] = [];
    for (const c of calls) want.push(await outcome(c.run(seq)));
    calls.forEach((c, i) => t.deepEqual(got[i], want[i], `sequence ${k}, call ${i}: ${c.name}`));
    sameDump(t, leafDump(dom), leafDump(seq), `sequence ${k}: final leaves`);
    // The same batches: one per unmap, with the same leaf invalidations. (Walk invalidations of
    // replaced empty tables may differ: which empty tables exist when depends on the interleaving.)
    const batches = (b: InvalidationCommand[][]): string[] => b.map((x) => JSON.stringify(x.filter((c) => c.kind !== 'walk'))).sort();
    t.deepEqual(batches(syncs.slice(s0)), batches(refSyncs.slice(r0)), `sequence ${k}: the same invalidation batches`);
    if (k === 0) {
      t.deepEqual(got.map((o) => ('ok' in o ? o.ok : o.code)), [L.bytes, K4, undefined, L.bytes, undefined, M2 + 11 * K4, undefined, L.bytes, L.bytes]);
    }
    const p0 = iommu.stats().tables.pages;
    const q0 = ref.stats().tables.pages;
    await dom.free();
    await seq.free();
    t.is(p0 - iommu.stats().tables.pages, q0 - ref.stats().tables.pages, `sequence ${k}: table pages`);
  }
});

test.serial('a tiny call overlapping a pending big call waits for it; a disjoint one does not', async (t) => {
  t.timeout(60_000);
  const iommu = await makeIommu(t, 2);
  const dom = iommu.allocDomain();
  const X = 2 * G1 + 4 * K4;
  const L = bigList('scattered', scatteredSegs(N + 1, K4, 0x77));
  for (let round = 0; round < 3; round++) {
    const order: string[] = [];
    const big = pending(dom.mapSg(X, L.table, RW).then((v) => (order.push('big'), v)));
    const disjoint = dom.map(X - 4 * K4, 2 ** 44, K4, RW).then(() => order.push('disjoint'));
    const over = dom.unmap(X + 10 * K4, K4).then((v) => (order.push('overlapping unmap'), v));
    const again = dom.map(X + 10 * K4, 2 ** 45, K4, RW).then(() => order.push('overlapping map'));
    await disjoint;
    t.false(big.done(), 'the disjoint call finished while the big one was still running');
    t.is(await over, K4, 'the overlapping unmap saw the big call done');
    await again;
    t.is(await big.p, L.bytes);
    t.deepEqual(order, ['disjoint', 'big', 'overlapping unmap', 'overlapping map']);
    t.is(dom.iovaToPhys(X + 10 * K4), 2 ** 45);
    t.is(dom.iovaToPhys(X + 11 * K4), L.segs[11]!.phys);
    t.is(await dom.unmap(X - 4 * K4, K4), K4);
    t.is(await dom.unmapSg(X, L.table), L.bytes);
  }
});

// -------------------------------------------------------------------------------------------------
// Readers racing writers
// -------------------------------------------------------------------------------------------------

/** Leaf sizes by address, from model leaves. */
function leafSizeOracle(leaves: ModelLeaf[]): (a: number) => number | null {
  const sorted = [...leaves].sort((x, y) => x.iova - y.iova);
  return (a) => {
    let lo = 0;
    let hi = sorted.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (sorted[mid]!.iova <= a) lo = mid;
      else hi = mid - 1;
    }
    const l = sorted[lo];
    return l && l.iova <= a && a < l.iova + l.size ? l.size : null;
  };
}

/**
 * While `call` runs, reads `addrs` with lookup() at every turn of the event loop: each answer must be
 * null or exactly the expected leaf. Returns the turns taken while the call was pending.
 */
async function raceReaders(t: ExecutionContext, dom: Domain, call: Promise<unknown>, addrs: number[], phys: (a: number) => number | null, size: (a: number) => number | null, prot: number): Promise<{ turns: number; seen: number; bad: string[] }> {
  const flight = pending(call);
  const bad: string[] = [];
  let turns = 0;
  let seen = 0;
  while (!flight.done()) {
    await nextTurn();
    turns++;
    for (const a of addrs) {
      const l = dom.lookup(a);
      if (l === null) continue;
      seen++;
      if (l.phys !== phys(a) || l.pageSize !== size(a) || l.prot !== prot) {
        if (bad.length < 5) bad.push(`0x${a.toString(16)}: ${JSON.stringify(l)}, expected phys 0x${phys(a)?.toString(16)} size ${size(a)}`);
      }
      const p = dom.iovaToPhys(a);
      if (p !== null && p !== phys(a) && bad.length < 5) bad.push(`iovaToPhys 0x${a.toString(16)} = 0x${p.toString(16)}`);
    }
  }
  await t.notThrowsAsync(flight.p);
  return { turns, seen, bad };
}

for (const callerRuns of [true, false])
  test.serial(`readers racing a parallel mapSg/unmapSg see nothing or the final leaf, never anything else${callerRuns ? '' : ' (pool only)'}`, async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, callerRuns);
  const dom = iommu.allocDomain();
  const prot = Prot.READ | Prot.WRITE | Prot.CACHE;
  const X = 3 * G1 - 8 * M2;
  const lists = [bigList('scattered', scatteredSegs(2 * N, K4, 0x1e)), bigList('runs', runSegs(2 * N, K4, M2, X, 0x1f))];
  let turnsTotal = 0;
  let seenTotal = 0;
  for (const L of lists) {
    const phys = physOracle(X, L.segs);
    const size = leafSizeOracle(modelLeaves(BITMAP, X, L.segs, prot));
    const r = rng(L.bytes);
    const addrs = Array.from({ length: 2000 }, () => X + Math.floor(r() * L.bytes));
    for (let round = 0; round < 2; round++) {
      const m = await raceReaders(t, dom, dom.mapSg(X, L.table, prot), addrs, phys, size, prot);
      t.deepEqual(m.bad, [], `${L.name}: readers during mapSg`);
      const u = await raceReaders(t, dom, dom.unmapSg(X, L.table), addrs, phys, size, prot);
      t.deepEqual(u.bad, [], `${L.name}: readers during unmapSg`);
      turnsTotal += m.turns + u.turns;
      seenTotal += m.seen + u.seen;
    }
  }
  t.log(`turns while pending: ${turnsTotal}, leaves seen: ${seenTotal}`);
  t.true(turnsTotal >= 8, 'the readers did run while the calls were in flight');
});

// Devices translate on the calling thread. With callerRuns that thread maps its share and then waits
// for the helpers' last chunks in shared memory, so no device can translate while the call runs; in
// the pool-only mode (the daemon's) its event loop turns meanwhile, and these two tests race it.
test.serial('a device translating during a failing parallel map keeps no translation of it afterwards (pool only)', async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, false);
  const X = 3 * G1 + 4 * M2;
  const L = bigList('scattered', scatteredSegs(2 * N, K4, 0xdd));
  const phys = physOracle(X, L.segs);
  const r = rng(5);
  const addrs = Array.from({ length: 400 }, () => X + Math.floor(r() * L.bytes / K4) * K4);
  let caught = 0;
  const stale: string[] = [];
  // The collision is at the first page (nothing before it: no rollback invalidation needed by a
  // single thread), or in the middle (the rollback invalidates the range before it).
  for (const hit of [X, X + Math.floor(L.bytes / 2 / K4) * K4]) {
    for (let round = 0; round < 4 && caught < 40; round++) {
      const dom = iommu.allocDomain();
      iommu.attachDevice(7, dom);
      await dom.map(hit, 2 ** 46, K4, Prot.READ);
      const flight = pending(dom.mapSg(X, L.table, RW));
      const translated = new Set<number>();
      while (!flight.done()) {
        await nextTurn();
        for (const a of addrs) {
          if (a === hit) continue;
          try {
            const p = iommu.translate(7, a, 'read');
            if (p === phys(a)) translated.add(a);
          } catch {
            // not mapped (yet)
          }
        }
      }
      await t.throwsAsync(flight.p, { instanceOf: IommuError });
      caught += translated.size;
      for (const a of translated) {
        try {
          const p = iommu.translate(7, a, 'read');
          if (stale.length < 5) stale.push(`hit 0x${hit.toString(16)}: 0x${a.toString(16)} still translates to 0x${p.toString(16)}`);
        } catch (e) {
          t.is((e as IommuError).code, 'EFAULT');
        }
      }
      iommu.detachDevice(7);
      await dom.free();
    }
  }
  t.log(`translations made while the failing calls ran: ${caught}`);
  t.true(caught > 0, 'devices did translate while the failing calls were running');
  t.deepEqual(stale, [], 'no device keeps a translation of the failed call');
});

test.serial('a device that walked the tables of a failing parallel map cannot reach them once they are freed and reused (pool only)', async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, false);
  const X = 2 * G1;
  const L = bigList('scattered', scatteredSegs(2 * N, K4, 0xa11));
  const A = iommu.allocDomain();
  iommu.attachDevice(7, A);
  await A.map(X, 2 ** 46, K4, Prot.READ); // the list's first page: the mapSg fails EEXIST
  const regions = L.bytes / M2;
  const walked = new Set<number>();
  const flight = pending(A.mapSg(X, L.table, RW));
  while (!flight.done()) {
    await nextTurn();
    // The first page of each 2M region: the device caches that region's last-level table.
    for (let r = 1; r < regions; r++) {
      if (walked.has(r)) continue;
      try {
        iommu.translate(7, X + r * M2, 'read');
        walked.add(r);
      } catch {
        // not there yet
      }
    }
  }
  await t.throwsAsync(flight.p, { instanceOf: IommuError });
  t.log(`regions walked while the call ran: ${walked.size}`);
  t.true(walked.size > 0, 'the device did walk tables while the failing call ran');
  // Another domain maps at the same IOVAs: its tables reuse the pages the rollback freed.
  const B = iommu.allocDomain();
  const LB = bigList('B', scatteredSegs(2 * N, K4, 0xb22));
  t.is(await B.mapSg(X, LB.table, RW), LB.bytes);
  const leaks: string[] = [];
  for (const r of walked) {
    const a = X + r * M2 + 5 * K4; // never translated: not in the leaf cache, only its table is
    try {
      const p = iommu.translate(7, a, 'read');
      if (leaks.length < 5) leaks.push(`device of domain A reads 0x${a.toString(16)} -> 0x${p.toString(16)} (A maps nothing there)`);
    } catch (e) {
      t.is((e as IommuError).code, 'EFAULT');
    }
  }
  t.deepEqual(leaks, [], 'no translation through freed (and reused) table pages');
});

test.serial('a table a failed call left while another call was in flight is freed only after walks through it are invalidated', async (t) => {
  t.timeout(120_000);
  const iommu = await makeIommu(t, 2, undefined, false);
  const dom = iommu.allocDomain();
  iommu.attachDevice(7, dom);
  const R = 5 * G1; // a 2M region with no last-level table yet
  const k = 5; // the page of R the device reads
  await dom.map(R + M2, 2 ** 45, K4, Prot.READ); // the failing map below collides here
  await dom.map(7 * G1, 2 ** 44, K4, Prot.READ); // the level-2 table that the maps at 7G will share
  // A big call in flight on a disjoint range: the failed call's tables cannot be freed at once.
  const big = bigList('contiguous', contiguousSegs(2 * N, K4, 2 ** 43));
  const flight = pending(dom.mapSg(G1, big.table, RW));
  // It installs R's last-level table for its first page, then meets the leaf at R + M2.
  const e = await t.throwsAsync(dom.map(R + M2 - K4, 2 ** 42, 2 * K4, RW), { instanceOf: IommuError });
  t.is(e?.code, 'EEXIST');
  // A later call writes into that table; the device walks it, and caches it.
  await dom.map(R + k * K4, 2 ** 41, K4, RW);
  t.is(iommu.translate(7, R + k * K4, 'read'), 2 ** 41);
  t.is(await dom.unmap(R + k * K4, K4), K4); // the table is empty again
  t.false(flight.done(), 'the big call was still in flight throughout');
  t.is(await flight.p, big.bytes); // now nothing is in flight: the empty table is freed
  // New tables reuse the freed pages, each with a leaf at page k of its region.
  for (let i = 1; i <= 8; i++) await dom.map(7 * G1 + i * M2 + k * K4, 2 ** 40 + i * M2, K4, RW);
  await dom.map(R + k * K4, 2 ** 39, K4, RW);
  t.is(iommu.translate(7, R + k * K4, 'read'), 2 ** 39, 'the device reads the new mapping, not a reused page');
});

// -------------------------------------------------------------------------------------------------
// free() under calls in flight
// -------------------------------------------------------------------------------------------------

test.serial('free() while a parallel call is in flight is EBUSY; afterwards it works and returns every page', async (t) => {
  t.timeout(60_000);
  // Unmaps go to the pool only when the caller takes no share.
  const iommu = await makeIommu(t, 2, undefined, false);
  const X = G1 + 3 * K4;
  const L = bigList('scattered', scatteredSegs(N + 3, K4, 0xfe));
  const pages0 = iommu.stats().tables.pages;
  const dom = iommu.allocDomain();
  const calls: [string, () => Promise<number | void>][] = [
    ['mapSg', () => dom.mapSg(X, L.table, RW)],
    ['unmapSg', () => dom.unmapSg(X, L.table)],
    ['map', () => dom.map(X, 2 ** 40, N * K4, RW)],
    ['unmap', () => dom.unmap(X, N * K4)],
  ];
  for (const [name, call] of calls) {
    const flight = pending(call());
    const tiny = dom.map(2 ** 44, 2 ** 44, K4, RW); // queued behind nothing (disjoint) but in flight too
    const err = await t.throwsAsync(dom.free(), { instanceOf: IommuError }, `free() during ${name}`);
    t.is(err?.code, 'EBUSY', `free() during ${name}`);
    t.false(flight.done(), `${name} was still in flight when free() was refused`);
    await flight.p;
    await tiny;
    t.is(await dom.unmap(2 ** 44, K4), K4);
    t.false(dom.isFreed);
  }
  // Leave something mapped, then free: every page comes back.
  await dom.mapSg(X, L.table, RW);
  await dom.free();
  t.is(iommu.stats().tables.pages, pages0);
  const err = await t.throwsAsync(dom.mapSg(X, L.table, RW), { instanceOf: IommuError });
  t.is(err?.code, 'ENOENT');
});

// -------------------------------------------------------------------------------------------------
// Several domains, and close()
// -------------------------------------------------------------------------------------------------

test.serial('big calls on two domains at once share the pool and the allocator without interfering', async (t) => {
  t.timeout(60_000);
  const iommu = await makeIommu(t, 2);
  const ref = await makeIommu(t, 0);
  const X = 4 * G1 + 5 * K4;
  const lists = [bigList('scattered', scatteredSegs(N + 9, K4, 0x2d)), bigList('runs', runSegs(N + 9, K4, M2, X, 0x2e))];
  const doms = [iommu.allocDomain(), iommu.allocDomain({ granule: 16384 })];
  const refs = [ref.allocDomain(), ref.allocDomain({ granule: 16384 })];
  // The 16K domain gets the lists scaled to 16K pages.
  const l16 = bigList('scattered 16K', scatteredSegs(N + 9, 0x4000, 0x2f));
  const X16 = 4 * G1 + 5 * 0x4000;
  const run = (ds: Domain[]): Promise<unknown>[] => [ds[0]!.mapSg(X, lists[0]!.table, RW), ds[1]!.mapSg(X16, l16.table, RW), ds[0]!.mapSg(X + 2 * G1, lists[1]!.table, RW)];
  t.deepEqual(await Promise.all(run(doms)), [lists[0]!.bytes, l16.bytes, lists[1]!.bytes]);
  for (const r of run(refs)) await r;
  doms.forEach((d, i) => sameDump(t, leafDump(d), leafDump(refs[i]!), `domain ${i}`));
  // unmap stops at the hole after the first list; the 16K domain's list goes whole.
  const un = await Promise.all([doms[0]!.unmap(X, 3 * G1), doms[1]!.unmapSg(X16, l16.table), doms[0]!.unmapSg(X + 2 * G1, lists[1]!.table)]);
  t.deepEqual(un, [lists[0]!.bytes, l16.bytes, lists[1]!.bytes]);
  for (const d of doms) t.deepEqual(leafDump(d), []);
});

test.serial('close() while a big call is in flight: the call settles, close() resolves, later calls are ENODEV', async (t) => {
  t.timeout(60_000);
  const iommu = await makeIommu(t, 2);
  const dom = iommu.allocDomain();
  const L = bigList('scattered', scatteredSegs(4 * N, K4, 0xc105e));
  const flight = dom.mapSg(G1, L.table, RW).then(
    (v) => ({ ok: v }),
    (e: IommuError) => ({ code: e.code }),
  );
  await nextTurn();
  const t0 = Date.now();
  await iommu.close();
  const settled = await Promise.race([flight, new Promise((resolve) => setTimeout(() => resolve('hung'), 20_000))]);
  t.not(settled, 'hung', 'the call in flight settled');
  t.true(Date.now() - t0 < 20_000);
  const err = await t.throwsAsync(dom.mapSg(G1, L.table, RW), { instanceOf: IommuError });
  t.is(err?.code, 'ENODEV');
});
