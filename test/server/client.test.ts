/**
 * The Node client (`iommud/client`) against a real daemon: the Domain API over the socket,
 * pipelined calls, errors as IommuError / FaultError, tenants, close.
 */
import test from 'ava';
import { IommudClient, RemoteDomain } from '../../src/client/index.js';
import { FaultError, IommuError, Prot, SgTable } from '../../src/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';

let daemon: RunningDaemon;
test.before(async () => {
  daemon = await startDaemon(['--tenant', 'team:pw']);
});
test.after.always(async () => {
  await daemon?.stop();
});

const RW = Prot.READ | Prot.WRITE;

test('the package exports ./client', async (t) => {
  const mod = (await import('iommud/client')) as { IommudClient: unknown };
  t.is(mod.IommudClient, IommudClient);
});

test('the Domain API over the socket', async (t) => {
  const c = await IommudClient.connect(daemon.socket);
  t.like(c.info, { version: 1, maxFrame: 16 * 2 ** 20, tenant: null });
  const dom = await c.allocDomain({ ias: 40 });
  t.true(dom instanceof RemoteDomain);
  t.is(dom.pgsizeBitmap, 0x40201000);
  t.is(await dom.map(2 ** 36, 2 ** 40, 2 ** 21, RW | Prot.CACHE), undefined);
  t.is(await dom.iovaToPhys(2 ** 36 + 5), 2 ** 40 + 5);
  t.deepEqual(await dom.lookup(2 ** 36 + 5), { phys: 2 ** 40 + 5, pageSize: 2 ** 21, prot: RW | Prot.CACHE });
  t.is(await dom.lookup(0), null);
  t.is(await dom.unmap(2 ** 36, 2 ** 21), 2 ** 21);
  const table = SgTable.from([{ phys: 0x10000, length: 0x1000 }, { phys: 0x11000, length: 0x1000 }, { phys: 0x90000, length: 0x2000 }]);
  t.is(await dom.mapSg(0x400000, table, RW), 0x4000);
  t.is(await dom.mapSg(0x800000, [[0x10000, 0x1000]], Prot.READ, { deferInvalidate: true }), 0x1000);
  t.is(await dom.unmapSg(0x400000, [...table], { deferInvalidate: true }), 0x4000);
  await dom.iotlbSync();
  await dom.flushIotlbAll();
  await c.attachDevice(4, dom);
  t.is(await c.translate(4, 0x800010, 'read'), 0x10010);
  const fault = await t.throwsAsync(c.translate(4, 0x800010, 'write'));
  t.true(fault instanceof FaultError);
  t.true(fault instanceof IommuError);
  t.is((fault as FaultError).code, 'EFAULT');
  t.deepEqual((fault as FaultError).fault, { reason: 'permission', deviceId: 4, iova: 0x800010, access: 'write' });
  const s = await c.stats();
  t.like(s.tenant, { domains: 1, devices: 1, maxTableBytes: null });
  t.true(s.tenant.tablePages >= 1 && s.tenant.tableBytes === s.tenant.tablePages * 4096, 'the root at least, in 4K pages');
  t.true(s.tables.pages > 0);
  t.is(typeof s.iotlb.syncs, 'number');
  await c.detachDevice(4);
  await dom.free();
  const gone = await t.throwsAsync(dom.iovaToPhys(0));
  t.is((gone as IommuError).code, 'ENOENT');
  await c.close();
});

test('errors are IommuErrors with the daemon\'s code and message', async (t) => {
  const c = await IommudClient.connect(daemon.socket);
  const dom = await c.allocDomain();
  await dom.map(0x1000, 0x1000, 0x1000, RW);
  const cases: [Promise<unknown>, string][] = [
    [dom.map(0x1000, 0x1000, 0x1000, RW), 'EEXIST'],
    [dom.map(0x1001, 0x1000, 0x1000, RW), 'EINVAL'],
    [dom.map(2 ** 53, 0, 0x1000, RW), 'ERANGE'],
    [dom.map(0x2000, 0, 0x1000, 0), 'EINVAL'],
    [dom.map(0x2000, -1, 0x1000, RW), 'EINVAL'],
    [dom.map(0x2000, 0.5, 0x1000, RW), 'EINVAL'],
    [c.domain(99).unmap(0, 0x1000), 'ENOENT'],
    [c.detachDevice(1), 'ENOENT'],
    [c.allocDomain({ granule: 8192 as 4096 }), 'EINVAL'],
    [c.request('stats', { verbose: 1 } as never), 'EINVAL'],
    [c.request('nope' as 'stats', {}), 'ENOSYS'],
  ];
  for (const [call, code] of cases) {
    const e = await t.throwsAsync(call);
    t.true(e instanceof IommuError);
    t.is(String((e as IommuError).code), code);
    t.regex(e!.message, new RegExp(`^${code}: .+`));
  }
  await c.close();
});

test('pipelining: hundreds of calls in flight on one connection, in order per domain', async (t) => {
  const c = await IommudClient.connect(daemon.socket);
  const dom = await c.allocDomain({ pgsizeBitmap: 4096 });
  const maps: Promise<void>[] = [];
  for (let i = 0; i < 500; i++) maps.push(dom.map(i * 0x1000, 0x100000 + i * 0x1000, 0x1000, RW));
  const probes = [dom.iovaToPhys(499 * 0x1000), dom.unmap(0, 250 * 0x1000), dom.iovaToPhys(0), dom.iovaToPhys(250 * 0x1000)];
  t.true(c.inflight > 100, `${c.inflight} in flight`);
  await Promise.all(maps);
  t.deepEqual(await Promise.all(probes), [0x100000 + 499 * 0x1000, 250 * 0x1000, null, 0x100000 + 250 * 0x1000]);
  t.is(c.inflight, 0);
  await c.close();
});

test('tenants through the client: tokens, sharing across connections, anonymous cleanup', async (t) => {
  const denied = await t.throwsAsync(IommudClient.connect(daemon.socket, { tenant: 'team', token: 'wrong' }));
  t.is((denied as IommuError).code, 'EPERM');
  const a = await IommudClient.connect(daemon.socket, { tenant: 'team', token: 'pw' });
  t.is(a.info.tenant, 'team');
  const dom = await a.allocDomain();
  await dom.map(0, 0x7000, 0x1000, RW);
  await a.close();
  const b = await IommudClient.connect(daemon.socket, { tenant: 'team', token: 'pw' });
  t.is(await b.domain(dom.id).iovaToPhys(0x10), 0x7010);
  await b.domain(dom.id).free();
  await b.close();
  const anon = await IommudClient.connect(daemon.socket);
  t.is(anon.info.tenant, null);
  await t.throwsAsync(anon.domain(dom.id).iovaToPhys(0), { instanceOf: IommuError });
  await anon.close();
});

test('close waits for answers; calls after close or on a dropped connection reject with ENODEV', async (t) => {
  const c = await IommudClient.connect(daemon.socket);
  const dom = await c.allocDomain();
  const pending = dom.map(0, 0, 0x1000, RW);
  await c.close();
  await t.notThrowsAsync(pending);
  const late = await t.throwsAsync(dom.iovaToPhys(0));
  t.is((late as IommuError).code, 'ENODEV');
  const d = await IommudClient.connect(daemon.socket);
  const inflight = d.stats();
  d.destroy();
  t.is(((await t.throwsAsync(inflight)) as IommuError).code, 'ENODEV');
  const nobody = await t.throwsAsync(IommudClient.connect('/nonexistent/iommud.sock'));
  t.is((nobody as IommuError).code, 'ENODEV');
});
