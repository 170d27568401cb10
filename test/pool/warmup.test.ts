/**
 * A pool worker warms its map code as it starts (src/pool/warmup.ts), on table memory of its own;
 * and its module is loaded before piscina reports it ready (workers/chunk-worker-loader.cts), so
 * the warm-up happens as the pool starts, not when the first task arrives.
 */
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import test from 'ava';
import { Prot } from '../../src/index.js';
import { TableAccounts } from '../../src/pgtable/account.js';
import { TableMemory } from '../../src/pgtable/memory.js';
import type { PoolData } from '../../src/pool/pool.js';
import { warmUp } from '../../src/pool/warmup.js';
import { bigList, K4, leafDump, makeIommu, PARALLEL_MIN_PAGES, scatteredSegs } from '../helpers/parallel.js';

test('warmUp maps and unmaps every list it builds, whole (its own checks pass), and returns the bytes', (t) => {
  // 6 rounds of three lists of 32Ki pages (scattered, contiguous, runs of 4).
  t.is(warmUp(1), 6 * 3 * 32768 * K4);
});

test('the workers warm up on memory of their own: the Iommu has no table page but its domains’, and maps as inline', async (t) => {
  const iommu = await makeIommu(t, 2);
  const inline = await makeIommu(t, 0);
  // A call on the pool, so the workers have surely started (and warmed up) by the time it is done.
  const list = bigList('scattered', scatteredSegs(4 * PARALLEL_MIN_PAGES, K4, 0x3c));
  const dom = iommu.allocDomain();
  const ref = inline.allocDomain();
  await dom.mapSg(0, list.table, Prot.READ | Prot.WRITE);
  await ref.mapSg(0, list.table, Prot.READ | Prot.WRITE);
  t.deepEqual(leafDump(dom), leafDump(ref));
  t.is(iommu.stats().tables.bytes, dom.tableBytes, 'every table page in use is the domain’s');
  t.is(iommu.stats().tables.bytes, inline.stats().tables.bytes);
});

test('the loader exports what piscina awaits before it reports a worker ready: the worker module, loaded, under "default"', async (t) => {
  // piscina require()s the task file; an export that is not a function it replaces by the export
  // named "default", awaited, before the worker reports ready and parks waiting for tasks.
  const memory = TableMemory.create(2 ** 20);
  const data: PoolData = { memory: memory.sab, freeStacks: memory.stacksSab, accounts: TableAccounts.create().sab, started: new SharedArrayBuffer(4) };
  const loader = new URL('../../workers/chunk-worker-loader.cjs', import.meta.url).pathname;
  const script = `
    const { parentPort } = require('node:worker_threads');
    const loader = require(${JSON.stringify(loader)});
    Promise.resolve(loader.default).then((run) => parentPort.postMessage([typeof loader, loader.__esModule, typeof run]));`;
  const worker = new Worker(script, { eval: true, workerData: data });
  t.teardown(() => worker.terminate());
  const [answer] = (await once(worker, 'message')) as [unknown];
  t.deepEqual(answer, ['object', true, 'function']);
});
