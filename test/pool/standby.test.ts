/**
 * Standby helpers (src/pool/standby.ts): with callerRuns, a pool worker stays awake between parallel
 * maps, so a call hands it a job instead of starting a piscina task. It serves call after call, leaves
 * when idle (so an Iommu nobody closes does not keep the process alive), comes back on the next call,
 * and lets close() and the pool's other tasks have its worker.
 */
import { spawnSync } from 'node:child_process';
import test from 'ava';
import { Prot, type Iommu } from '../../src/index.js';
import { MapCall } from '../../src/core/mapcall.js';
import type { ChunkPool } from '../../src/pool/pool.js';
import type { TableSpec } from '../../src/pool/tasks.js';
import { bigList, contiguousSegs, K4, leafDump, makeIommu, PARALLEL_MIN_PAGES, scatteredSegs, tasksOf } from '../helpers/parallel.js';

const RW = Prot.READ | Prot.WRITE;
const N = PARALLEL_MIN_PAGES;

function pool(iommu: Iommu): ChunkPool {
  return (iommu.parallel as unknown as { pool: ChunkPool }).pool;
}

test('a helper started by one call serves the next ones with a job each (queued if it is still busy), no new task; the leaves are those of an inline map', async (t) => {
  const iommu = await makeIommu(t, 2);
  const inline = await makeIommu(t, 0);
  const list = bigList('scattered', scatteredSegs(2 * N, K4, 0x5b));
  const dom = iommu.allocDomain();
  const ref = inline.allocDomain();
  await ref.mapSg(0, list.table, RW);
  // So that a slow moment of a loaded machine between two calls does not send it away.
  pool(iommu).standby(0).idleMs = 60_000;
  const first = await tasksOf(iommu, async () => {
    await dom.mapSg(0, list.table, RW);
    await dom.unmapSg(0, list.table);
  });
  t.deepEqual(first, { standby: 1, map: 1 }, 'the first call starts the helper and hands it its job');
  const later = await tasksOf(iommu, async () => {
    for (let i = 0; i < 5; i++) {
      await dom.mapSg(0, list.table, RW);
      if (i === 4) t.deepEqual(leafDump(dom), leafDump(ref));
      await dom.unmapSg(0, list.table);
    }
  });
  t.deepEqual(later, { map: 5 }, 'later calls only hand it jobs');
  // A helper that woke late may still be taking its last jobs (the caller mapped their chunks).
  await pool(iommu).standby(0).released();
  t.is(pool(iommu).standby(0).served, 6, 'the same helper took all six jobs');
});

test('an idle helper leaves; the next call starts it again and is mapped right', async (t) => {
  const iommu = await makeIommu(t, 1);
  const list = bigList('contiguous', contiguousSegs(2 * N, K4, 2 ** 36));
  const dom = iommu.allocDomain();
  const helper = pool(iommu).standby(0);
  helper.idleMs = 20;
  await dom.mapSg(0, list.table, RW);
  await dom.unmapSg(0, list.table);
  // Give it ample time to go, and for its task to settle here.
  const deadline = Date.now() + 10_000;
  while (!helper.asleep && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.true(helper.asleep, 'left after being idle');
  t.is(helper.served, 0);
  const counts = await tasksOf(iommu, () => dom.mapSg(0, list.table, RW));
  t.deepEqual(counts, { standby: 1, map: 1 });
  t.is(dom.iovaToPhys((2 * N - 1) * K4 + 5), 2 ** 36 + (2 * N - 1) * K4 + 5);
  t.is(await dom.unmapSg(0, list.table), list.bytes);
});

test('calls that must run on the pool alone get the worker a helper holds (workers: 1)', async (t) => {
  const iommu = await makeIommu(t, 1);
  const list = bigList('contiguous', contiguousSegs(2 * N, K4, 2 ** 36));
  const dom = iommu.allocDomain();
  await dom.mapSg(0, list.table, RW);
  await dom.unmapSg(0, list.table);
  t.false(pool(iommu).standby(0).asleep);
  // A fault plan for a given chunk runs the call on the helpers alone, as piscina tasks.
  iommu.parallel!.faultPlan = { phase: 'map', chunk: 0, fault: { afterBytes: Infinity, how: 'throw' } };
  const counts = await tasksOf(iommu, () => dom.mapSg(0, list.table, RW));
  t.true(pool(iommu).standby(0).asleep, 'the helper stood down');
  t.true((counts.map ?? 0) >= 1 && counts.standby === undefined, JSON.stringify(counts));
  t.is(await dom.unmapSg(0, list.table), list.bytes);
});

test('close() with a helper waiting for work resolves, and later calls are ENODEV', async (t) => {
  const iommu = await makeIommu(t, 2);
  const list = bigList('contiguous', contiguousSegs(2 * N, K4, 2 ** 36));
  const dom = iommu.allocDomain();
  await dom.mapSg(0, list.table, RW);
  t.false(pool(iommu).standby(0).asleep);
  await iommu.close();
  t.true(pool(iommu).standby(0).asleep);
  await t.throwsAsync(dom.mapSg(0, list.table, RW), { code: 'ENODEV' });
});

test('a process whose Iommu is never closed exits once its calls are done', (t) => {
  // A real process, as a user runs it: a parallel map (worth the pool by size), then nothing.
  const script = `
    import { Iommu, SgTable } from ${JSON.stringify(new URL('../../src/index.js', import.meta.url).href)};
    const iommu = await Iommu.create({ workers: 2 });
    await iommu.parallel.whenReady(); // till then big calls run inline
    const dom = iommu.allocDomain();
    const sg = new SgTable(1 << 20);
    for (let i = 0; i < 1 << 20; i++) sg.push(2 ** 36 + 2 * i * 4096, 4096);
    await dom.mapSg(0, sg, 3);
    await dom.mapSg(2 ** 33, sg, 3);
    console.log(iommu.parallel.pool.standby(0).served > 0 ? 'served' : 'not served');
  `;
  const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.is(out.signal, null, 'it exited by itself (not killed at the 60 s limit)');
  t.is(out.status, 0, out.stderr);
  t.is(out.stdout.trim(), 'served');
});

test('woken or not, spinning or parked again: a helper takes every job it is sent (300 jobs at random delays)', async (t) => {
  t.timeout(120_000); // a lost job would leave released() waiting
  const iommu = await makeIommu(t, 1);
  const dom = iommu.allocDomain();
  const helper = pool(iommu).standby(0);
  helper.idleMs = 60_000;
  // A job with no chunks: the helper joins the call, finds nothing to claim, and is done.
  const empty = MapCall.create([], []);
  const pairs = new SharedArrayBuffer(16);
  const job = { kind: 'map', table: (dom as unknown as { spec: TableSpec }).spec, sg: pairs, breaks: new SharedArrayBuffer(4), call: empty.sab, helper: 0, prot: RW };
  t.true(helper.claim()); // starts it
  helper.send(job);
  await helper.released();
  let served = 1;
  let x = 7;
  for (let i = 0; i < 300; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    // Woken or not; the job right away, while it spins, or after its spin (1 ms) ended and it parked.
    if (x % 3 !== 0) helper.wake();
    const delayMs = [0, 0.05, 0.3, 2][(x >> 4) % 4]!;
    if (delayMs > 0) {
      const until = performance.now() + delayMs;
      while (performance.now() < until);
    }
    t.true(helper.claim());
    helper.send(job);
    await helper.released();
    served++;
  }
  t.is(helper.served, served, 'every job was taken, by the same helper');
});

test('with profiling on, a parallel map reports each thread’s chunks, bytes and time, which add up to the call', async (t) => {
  const iommu = await makeIommu(t, 2);
  const par = iommu.parallel!;
  const list = bigList('scattered', scatteredSegs(4 * N, K4, 0x9f));
  const dom = iommu.allocDomain();
  await dom.mapSg(0, list.table, RW);
  t.is(par.lastProfile, null, 'off by default');
  par.profiling = true;
  await dom.unmapSg(0, list.table);
  await dom.mapSg(0, list.table, RW);
  const profile = par.lastProfile!;
  t.truthy(profile);
  t.is(profile.reduce((s, p) => s + p.bytes, 0), list.bytes, 'the threads’ chunks span the whole call');
  t.true(profile.reduce((s, p) => s + p.chunks, 0) > 1, 'of several chunks');
  t.is(new Set(profile.map((p) => p.threadId)).size, profile.length, 'one entry per thread');
  for (const p of profile) t.true(p.chunks > 0 && p.busyMs > 0 && p.busyMs < 60_000, JSON.stringify(p));
});
