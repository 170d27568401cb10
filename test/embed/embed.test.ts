/**
 * iommud/embed with real engine threads: the same answers as the in-process API, SgTables that cross
 * without a copy, calls that reject (never hang) when the engine thread dies mid-call, close and
 * terminate, and a program that forgets close() still exits.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MessageChannel } from 'node:worker_threads';
import { EmbeddedDomain, EmbeddedIommu } from '../../src/embed/index.js';
import { STALL_ENGINE } from '../../src/embed/embedded.js';
import { STALL } from '../../src/embed/host.js';
import { sgFromWire, sgToWire, type WireSg } from '../../src/embed/wire.js';
import { FaultError, Iommu, IommuError, Prot, SgTable, type SgEntry } from '../../src/index.js';
import { rejectsWith } from '../helpers/errno.js';
import { rng } from '../helpers/rng.js';
import { tempDir } from '../server/daemon.js';

const RW = Prot.READ | Prot.WRITE;

async function embedded(t: ExecutionContext, workers = 0): Promise<EmbeddedIommu> {
  const iommu = await EmbeddedIommu.create({ workers });
  t.teardown(() => iommu.terminate());
  return iommu;
}

/** What a call did: its value, or its error's code (and a fault's data). */
async function outcome(call: () => unknown): Promise<unknown> {
  try {
    return { value: await call() };
  } catch (e) {
    if (!(e instanceof IommuError)) throw e; // every failure is an IommuError, embedded or not
    return { code: e.code, fault: (e as FaultError).fault };
  }
}

/** The calls both APIs have; the in-process one answers some synchronously, which `await` takes too. */
interface AnyDomain {
  map(iova: unknown, paddr: unknown, size: unknown, prot: unknown): unknown;
  unmap(iova: unknown, size: unknown): unknown;
  mapSg(iova: unknown, sg: unknown, prot: unknown, opts?: unknown): unknown;
  unmapSg(iova: unknown, sg: unknown, opts?: unknown): unknown;
  iotlbSync(): unknown;
  flushIotlbAll(): unknown;
  iovaToPhys(iova: unknown): unknown;
  lookup(iova: unknown): unknown;
  readAndClearDirty(iova: unknown, size: unknown, opts?: unknown): unknown;
  free(): unknown;
}
interface AnyIommu {
  allocDomain(options?: { dirtyTracking?: boolean; invalidateOnMap?: boolean }): AnyDomain | Promise<AnyDomain>;
  attachDevice(deviceId: number, domain: never): unknown;
  translate(deviceId: unknown, iova: unknown, access: unknown): unknown;
  stats(): unknown;
}

/**
 * A seeded random run of calls, good and bad, on two domains with a device each: every call's
 * outcome, then the stats. Run on the in-process API and on the embedded one, it must match exactly.
 */
async function scenario(iommu: AnyIommu, seed: number): Promise<unknown[]> {
  const random = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const doms = [await iommu.allocDomain({ dirtyTracking: true }), await iommu.allocDomain({ invalidateOnMap: true })];
  const log: unknown[] = [];
  for (const [i, d] of doms.entries()) log.push(await outcome(() => iommu.attachDevice(i, d as never)));
  const iovas = [0, 0x1000, 0x3000, 0x20_0000, 0x40_0000, 0x1_0000_0000];
  const sizes = [0x1000, 0x2000, 0x20_0000, 0x1800, 0];
  const bad = [-1, 0.5, 'x', 2 ** 53, 7n, undefined, null, NaN];
  const sgOf = (): SgEntry[] => Array.from({ length: 1 + Math.floor(random() * 5) }, () => ({ phys: pick(iovas) + 0x1000_0000, length: pick(sizes.slice(0, 3)) }));
  for (let step = 0; step < 250; step++) {
    const d = pick(doms);
    const iova = random() < 0.05 ? pick(bad) : pick(iovas);
    const size = pick(sizes);
    const sg = sgOf();
    const table = random() < 0.5;
    const defer = { deferInvalidate: random() < 0.5 };
    const calls: (() => unknown)[] = [
      () => d.map(iova, pick(iovas) + 0x8000_0000, size, pick([RW, Prot.READ, Prot.WRITE | Prot.NOEXEC, 0, 64])),
      () => d.unmap(iova, size),
      () => d.mapSg(iova, table ? SgTable.from(sg) : sg, RW),
      () => d.unmapSg(iova, table ? SgTable.from(sg) : sg, defer),
      () => d.iotlbSync(),
      () => d.flushIotlbAll(),
      () => d.iovaToPhys(iova),
      () => d.lookup(iova),
      () => d.readAndClearDirty(iova, size, { noClear: random() < 0.5 }),
      () => iommu.translate(pick([0, 1, 2]), iova, pick(['read', 'write', 'exec'])),
    ];
    log.push([step, await outcome(pick(calls))]);
  }
  log.push(await iommu.stats());
  for (const d of doms) log.push(await outcome(() => d.free()));
  log.push(await outcome(() => doms[0]!.map(0, 0, 0x1000, RW)), await iommu.stats());
  return log;
}

test('every call answers exactly what the in-process API answers, errors and faults included', async (t) => {
  const inline = await Iommu.create({ workers: 0 });
  t.teardown(() => inline.close());
  const emb = await embedded(t);
  for (const seed of [1, 2]) {
    const expected = await scenario(inline, seed);
    t.deepEqual(await scenario(emb, seed), expected, `seed ${seed}`);
  }
});

test('errors keep their class, code, message and fault', async (t) => {
  const iommu = await embedded(t);
  const dom = await iommu.allocDomain();
  await dom.map(0x1000, 0x5000, 0x1000, Prot.READ);
  const err = await t.throwsAsync(dom.map(0x1000, 0, 0x1000, RW), { instanceOf: IommuError });
  t.is(err?.code, 'EEXIST');
  t.is(err?.message, 'EEXIST: iova 0x1000 is already mapped');
  await iommu.attachDevice(9, dom);
  const fault = await t.throwsAsync(iommu.translate(9, 0x1000, 'write'), { instanceOf: FaultError });
  t.deepEqual(fault?.fault, { reason: 'permission', deviceId: 9, iova: 0x1000, access: 'write', domain: dom.id });
  t.true(Object.isFrozen(fault?.fault));
  // An argument that cannot even be sent is the caller's mistake, as in-process.
  await rejectsWith(t, () => dom.map(Symbol('iova') as unknown as number, 0, 0x1000, RW), 'EINVAL');
  await rejectsWith(t, () => dom.mapSg(0, [{ phys: 0, length: () => 1 }] as never, RW), 'EINVAL');
  // attachDevice's domain must be one of this Iommu's, as in-process.
  const other = await embedded(t);
  await rejectsWith(t, () => iommu.attachDevice(1, {} as EmbeddedDomain), 'EINVAL');
  await rejectsWith(t, () => other.attachDevice(1, dom), 'ENOENT');
  await rejectsWith(t, () => EmbeddedIommu.create({ workers: -1 }), 'EINVAL');
  await rejectsWith(t, () => EmbeddedIommu.create({ tableMemoryBytes: 2 ** 53 }), 'ERANGE');
});

test('calls made without awaiting take effect in the order made', async (t) => {
  const iommu = await embedded(t);
  const dom = await iommu.allocDomain();
  const calls = [
    dom.map(0x1000, 0xa000, 0x1000, RW),
    dom.iovaToPhys(0x1000),
    dom.unmap(0x1000, 0x1000),
    dom.iovaToPhys(0x1000),
    dom.map(0x1000, 0xb000, 0x1000, RW),
    dom.map(0x1000, 0xc000, 0x1000, RW).catch((e: IommuError) => e.code),
    dom.lookup(0x1000),
  ];
  t.deepEqual(await Promise.all(calls), [undefined, 0xa000, 0x1000, null, undefined, 'EEXIST', { phys: 0xb000, pageSize: 0x1000, prot: RW }]);
});

test('a device fault reaches onFault listeners on the main thread', async (t) => {
  const iommu = await embedded(t);
  const dom = await iommu.allocDomain();
  await iommu.attachDevice(4, dom);
  const seen: unknown[] = [];
  const got = new Promise<void>((resolve) => {
    iommu.onFault(() => {
      throw new Error('a listener that throws is ignored');
    });
    const off = iommu.onFault((f) => {
      seen.push(f);
      off();
      resolve();
    });
  });
  await rejectsWith(t, () => iommu.translate(4, 0x7000, 'read'), 'EFAULT');
  await got;
  t.deepEqual(seen, [{ reason: 'translation', deviceId: 4, iova: 0x7000, access: 'read', domain: dom.id }]);
  t.deepEqual(await iommu.recentFaults(), seen);
});

test('table budgets and tableBytes work as in-process', async (t) => {
  const iommu = await embedded(t);
  const budget = await iommu.createTableBudget(0x4000 + 100);
  t.is(budget.limitBytes, 0x4000, 'rounded down to 4 KiB units');
  const dom = await iommu.allocDomain({ tableBudget: budget });
  t.is(await dom.tableBytes(), 0x1000, 'the root table');
  await dom.map(0, 0x1000, 0x1000, RW); // three tables below the root: the whole budget
  t.is(await budget.usedBytes(), 0x4000);
  await rejectsWith(t, () => dom.map(2 ** 30, 0x1000, 0x1000, RW), 'ENOMEM', 'two more tables do not fit');
  t.is(await dom.tableBytes(), 0x4000, 'rolled back');
  await rejectsWith(t, () => iommu.allocDomain({ tableBudget: budget }), 'ENOMEM', 'nor does another root');
  const free = await iommu.allocDomain();
  await free.map(2 ** 30, 0x1000, 0x1000, RW);
  t.is(await free.tableBytes(), 0x4000, 'a domain without the budget is not limited by it');
  await rejectsWith(t, () => budget.close(), 'EBUSY');
  await dom.free();
  t.is(await budget.usedBytes(), 0);
  await budget.close();
  await budget.close();
  await rejectsWith(t, () => iommu.allocDomain({ tableBudget: budget }), 'EINVAL', 'a closed budget');
  const other = await embedded(t);
  await rejectsWith(t, async () => iommu.allocDomain({ tableBudget: await other.createTableBudget(0x4000) }), 'EINVAL', "another Iommu's budget");
});

/** Sends `sg` through a real MessagePort, as a call does, and revives it on the other side. */
function acrossPort(sg: SgTable): Promise<unknown> {
  const { port1, port2 } = new MessageChannel();
  return new Promise((resolve) => {
    port2.once('message', (w: WireSg) => {
      port1.close();
      resolve(sgFromWire(w));
    });
    port1.postMessage(sgToWire(sg));
  });
}

test('an SgTable crosses threads as itself, its segments shared rather than copied', async (t) => {
  const sg = new SgTable(4096);
  for (let i = 0; i < 3000; i++) sg.push(0x10_0000 + (i % 7 === 0 ? 0x100_0000 : 0) + i * 0x1000, 0x1000);
  const back = await acrossPort(sg);
  t.true(back instanceof SgTable);
  const revived = back as SgTable;
  t.is(revived.length, sg.length);
  t.deepEqual([...revived], [...sg]);
  t.deepEqual(revived.engineView.index, sg.engineView.index, 'the run index came along');
  // Shared memory: a write to the original's buffer shows through the revived table.
  new Float64Array(sg.shared.buffer)[0] = 0x4242_0000;
  t.is(revived.get(0)?.phys, 0x4242_0000);
  // Arrays are cloned as they are.
  t.deepEqual(sgFromWire(structuredClone(sgToWire([{ phys: 1, length: 2 }] as never))), [{ phys: 1, length: 2 }]);
});

/** Parks the engine thread inside a call; resolves with the flag that releases it, and the call. */
async function stallEngine(iommu: EmbeddedIommu): Promise<{ flag: Int32Array; call: Promise<void> }> {
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const call = iommu[STALL_ENGINE](flag);
  const wait = Atomics.waitAsync(flag, 0, STALL.WAITING);
  if (wait.async) await wait.value;
  return { flag, call };
}

function release(flag: Int32Array, how: number): void {
  Atomics.store(flag, 0, how);
  Atomics.notify(flag, 0);
}

test('the engine thread reads the SgTable the main thread filled, not a copy of it', async (t) => {
  const iommu = await embedded(t, 2);
  const dom = await iommu.allocDomain();
  const { flag, call } = await stallEngine(iommu);
  // 2^17 entries: the engine cuts the call into chunks for its pool, which read the same memory.
  const sg = new SgTable(1 << 17);
  for (let i = 0; i < 1 << 17; i++) sg.push(0x1_0000_0000 + i * 0x2000, 0x1000);
  const mapped = dom.mapSg(0, sg, RW);
  // The call is on its way; the engine has not read the list yet. Change one segment under it.
  new Float64Array(sg.shared.buffer)[2 * 70_000] = 0x7_0000_0000;
  release(flag, STALL.RESUME);
  await call;
  t.is(await mapped, (1 << 17) * 0x1000);
  t.is(await dom.iovaToPhys(70_000 * 0x1000), 0x7_0000_0000, 'the engine saw the write made after the call was sent');
  t.is(await dom.iovaToPhys(70_001 * 0x1000), 0x1_0000_0000 + 70_001 * 0x2000);
  t.is(await dom.unmapSg(0, sg), (1 << 17) * 0x1000);
});

test('the engine thread dying mid-call rejects every call in flight with EIO and later ones with ENODEV', async (t) => {
  for (const how of [STALL.EXIT, STALL.THROW]) {
    const iommu = await embedded(t, 1);
    const dom = await iommu.allocDomain();
    await dom.map(0, 0x1000, 0x1000, RW);
    const { flag, call } = await stallEngine(iommu);
    // Queued behind the parked call: sent, never answered.
    const queued = [dom.map(0x1000, 0x2000, 0x1000, RW), dom.iovaToPhys(0), iommu.stats(), dom.free()];
    // The engine thread is parked inside a call; this thread's event loop is not.
    let ticks = 0;
    for (let i = 0; i < 3; i++) await sleep(1).then(() => ticks++);
    t.is(ticks, 3);
    release(flag, how);
    if (how === STALL.EXIT) await rejectsWith(t, () => call, 'EIO');
    else await call; // the stalled call itself returned; the thread died right after
    for (const p of queued) await rejectsWith(t, () => p, 'EIO', `queued call, ${how}`);
    const later = await t.throwsAsync(dom.iovaToPhys(0), { instanceOf: IommuError });
    t.is(later?.code, 'ENODEV');
    t.regex(later?.message ?? '', how === STALL.EXIT ? /exited with code 70/ : /injected failure/);
    await rejectsWith(t, () => iommu.allocDomain(), 'ENODEV');
    await iommu.close(); // nothing left to close; does not hang
  }
});

test('terminate() rejects calls in flight with EIO; close() waits for them', async (t) => {
  const iommu = await embedded(t);
  const dom = await iommu.allocDomain();
  const { flag, call } = await stallEngine(iommu);
  const inflight = dom.map(0, 0x1000, 0x1000, RW);
  await iommu.terminate();
  await rejectsWith(t, () => call, 'EIO');
  await rejectsWith(t, () => inflight, 'EIO');
  await rejectsWith(t, () => dom.map(0, 0x1000, 0x1000, RW), 'ENODEV');
  release(flag, STALL.RESUME); // nothing is waiting any more

  const other = await embedded(t);
  const d2 = await other.allocDomain();
  const maps = [d2.map(0, 0x1000, 0x1000, RW), d2.map(0x1000, 0x2000, 0x1000, RW)];
  const closing = other.close();
  await rejectsWith(t, () => d2.iovaToPhys(0), 'ENODEV', 'a call after close()');
  await Promise.all([...maps, closing, other.close()]);
  t.pass('calls made before close() completed');
});

test('a program that never calls close() still exits', async (t) => {
  const script = join(tempDir(), 'forgets-close.mjs');
  const entry = new URL('../../src/embed/index.js', import.meta.url).href;
  writeFileSync(script, [
    `import { EmbeddedIommu, Prot } from ${JSON.stringify(entry)};`,
    `const iommu = await EmbeddedIommu.create({ workers: 1 });`,
    `const dom = await iommu.allocDomain();`,
    `await dom.map(0x1000, 0x2000, 0x1000, Prot.READ);`,
    `console.log(await dom.iovaToPhys(0x1000));`,
  ].join('\n'));
  const proc = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
    proc.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  t.is(code, 0, 'exited by itself (killed after 20 s otherwise)');
  t.is(out.trim(), String(0x2000));
});
