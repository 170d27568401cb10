/**
 * Tenants over real sockets: isolation of domains and devices, sharing within a named tenant,
 * anonymous connections freeing what they own when they close, tokens and quotas.
 */
import test from 'ava';
import { Prot } from '../../src/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { RawConn } from './wire.js';

let daemon: RunningDaemon;
test.before(async () => {
  daemon = await startDaemon(['--tenant', 'alpha:alpha-token', '--max-domains', '4']);
});
test.after.always(async () => {
  await daemon?.stop();
});

const RW = Prot.READ | Prot.WRITE;
const open = (): Promise<RawConn> => RawConn.open(daemon.socket);

async function statsOf(c: RawConn): Promise<{ domains: number; tables: { pages: number }; devices: number; tenant: { domains: number; devices: number; table_pages: number } }> {
  return c.ok({ op: 'stats' });
}

test.serial("another tenant's domain is ENOENT, exactly like one that never existed", async (t) => {
  const a = await open();
  const b = await open();
  await a.ok({ op: 'hello', tenant: 'alpha', token: 'alpha-token' });
  await b.ok({ op: 'hello', tenant: 'beta' });
  const { domain } = await a.ok<{ domain: number }>({ op: 'domain_alloc' });
  await a.ok({ op: 'map', domain, iova: 0x1000, paddr: 0x5000, size: 0x1000, prot: RW });
  for (const req of [
    { op: 'map', domain, iova: 0x2000, paddr: 0, size: 0x1000, prot: RW },
    { op: 'unmap', domain, iova: 0x1000, size: 0x1000 },
    { op: 'map_sg', domain, iova: 0x2000, sg: [[0, 0x1000]], prot: RW },
    { op: 'unmap_sg', domain, iova: 0x1000, sg: [[0, 0x1000]] },
    { op: 'iova_to_phys', domain, iova: 0x1000 },
    { op: 'lookup', domain, iova: 0x1000 },
    { op: 'iotlb_sync', domain },
    { op: 'flush_iotlb_all', domain },
    { op: 'attach', device: 1, domain },
    { op: 'domain_free', domain },
  ]) {
    const theirs = await b.call(req);
    const never = await b.call({ ...req, domain: 4242 });
    t.is(theirs.error?.code, 'ENOENT', req.op);
    t.is(theirs.error?.message.replace(String(domain), 'N'), never.error?.message.replace('4242', 'N'), 'same words');
  }
  // Its own domain numbering starts at 1 too, and is independent.
  const mine = await b.ok<{ domain: number }>({ op: 'domain_alloc' });
  t.is(mine.domain, 1);
  t.deepEqual(await b.ok({ op: 'iova_to_phys', domain: mine.domain, iova: 0x1000 }), { phys: null });
  t.deepEqual(await a.ok({ op: 'iova_to_phys', domain, iova: 0x1000 }), { phys: 0x5000 }, 'untouched');
  await b.ok({ op: 'domain_free', domain: mine.domain });
  await a.ok({ op: 'domain_free', domain });
  a.destroy();
  b.destroy();
});

test.serial('device ids are per tenant', async (t) => {
  const a = await open();
  const b = await open();
  const da = (await a.ok<{ domain: number }>({ op: 'domain_alloc' })).domain;
  const db = (await b.ok<{ domain: number }>({ op: 'domain_alloc' })).domain;
  await a.ok({ op: 'map', domain: da, iova: 0, paddr: 0xa000, size: 0x1000, prot: RW });
  await b.ok({ op: 'map', domain: db, iova: 0, paddr: 0xb000, size: 0x1000, prot: RW });
  await a.ok({ op: 'attach', device: 3, domain: da });
  const r = await b.call({ op: 'translate', device: 3, iova: 0, access: 'read' });
  t.is(r.error?.reason, 'no-domain', "b's device 3 is not a's");
  t.is(r.error?.device, 3);
  t.is((await b.call({ op: 'detach', device: 3 })).error?.code, 'ENOENT');
  await b.ok({ op: 'attach', device: 3, domain: db });
  t.deepEqual(await a.ok({ op: 'translate', device: 3, iova: 0x10, access: 'read' }), { phys: 0xa010 });
  t.deepEqual(await b.ok({ op: 'translate', device: 3, iova: 0x10, access: 'read' }), { phys: 0xb010 });
  // Moving a device to another domain of the same tenant.
  const da2 = (await a.ok<{ domain: number }>({ op: 'domain_alloc' })).domain;
  await a.ok({ op: 'map', domain: da2, iova: 0, paddr: 0xc000, size: 0x1000, prot: RW });
  await a.ok({ op: 'attach', device: 3, domain: da2 });
  t.deepEqual(await a.ok({ op: 'translate', device: 3, iova: 0x10, access: 'read' }), { phys: 0xc010 });
  t.is((await statsOf(a)).tenant.devices, 1);
  a.destroy();
  b.destroy();
});

test.serial('an anonymous connection frees its domains and devices when it closes', async (t) => {
  const watcher = await open();
  const base = await statsOf(watcher);
  const c = await open();
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc' });
  await c.ok({ op: 'map_sg', domain, iova: 0, sg: [[0x100000, 0x10000], [0x400000, 0x200000]], prot: RW });
  await c.ok({ op: 'attach', device: 0, domain });
  const during = await statsOf(watcher);
  t.is(during.domains, base.domains + 1);
  t.is(during.devices, base.devices + 1);
  t.true(during.tables.pages > base.tables.pages);
  // Close with requests still in flight: they take effect, then everything is released.
  for (let i = 0; i < 20; i++) c.send({ op: 'map', domain, iova: 0x1000_0000 + i * 0x1000, paddr: 0, size: 0x1000, prot: RW });
  c.end();
  await c.closed;
  let after = await statsOf(watcher);
  for (let i = 0; i < 100 && after.domains !== base.domains; i++) {
    await new Promise((r) => setTimeout(r, 20));
    after = await statsOf(watcher);
  }
  t.is(after.domains, base.domains);
  t.is(after.devices, base.devices);
  t.is(after.tables.pages, base.tables.pages);
  watcher.destroy();
});

test.serial("a named tenant's objects outlive its connections and are shared by them", async (t) => {
  const c1 = await open();
  await c1.ok({ op: 'hello', tenant: 'gamma' });
  const { domain } = await c1.ok<{ domain: number }>({ op: 'domain_alloc' });
  await c1.ok({ op: 'map', domain, iova: 0x4000, paddr: 0x9000, size: 0x1000, prot: RW });
  await c1.ok({ op: 'attach', device: 12, domain });
  c1.end();
  await c1.closed;
  const c2 = await open();
  t.like(await c2.ok({ op: 'hello', tenant: 'gamma' }), { tenant: 'gamma' });
  t.deepEqual(await c2.ok({ op: 'iova_to_phys', domain, iova: 0x4008 }), { phys: 0x9008 });
  t.deepEqual(await c2.ok({ op: 'translate', device: 12, iova: 0x4008, access: 'write' }), { phys: 0x9008 });
  t.like((await statsOf(c2)).tenant, { domains: 1, devices: 1 });
  const c3 = await open();
  await c3.ok({ op: 'hello', tenant: 'gamma' });
  await c3.ok({ op: 'unmap', domain, iova: 0x4000, size: 0x1000 });
  t.deepEqual(await c2.ok({ op: 'iova_to_phys', domain, iova: 0x4008 }), { phys: null }, 'seen by the other connection');
  await c2.ok({ op: 'domain_free', domain });
  c2.destroy();
  c3.destroy();
});

test.serial('tokens: EPERM when wrong or missing; hello cannot switch tenants (EBUSY)', async (t) => {
  const c = await open();
  t.is((await c.call({ op: 'hello', tenant: 'alpha' })).error?.code, 'EPERM');
  t.is((await c.call({ op: 'hello', tenant: 'alpha', token: 'alpha-tokeN' })).error?.code, 'EPERM');
  t.is((await c.call({ op: 'hello', tenant: 'alpha', token: '' })).error?.code, 'EPERM');
  t.like(await c.ok({ op: 'hello', tenant: 'alpha', token: 'alpha-token' }), { tenant: 'alpha' });
  t.like(await c.ok({ op: 'hello', tenant: 'alpha', token: 'alpha-token' }), { tenant: 'alpha' }, 'again: fine');
  t.is((await c.call({ op: 'hello', tenant: 'beta' })).error?.code, 'EBUSY');
  const anon = await open();
  await anon.ok({ op: 'domain_alloc' });
  t.is((await anon.call({ op: 'hello', tenant: 'beta' })).error?.code, 'EBUSY', 'anonymous objects cannot change hands');
  t.is((await anon.call({ op: 'hello', tenant: '' })).error?.code, 'EINVAL');
  c.destroy();
  anon.destroy();
});

test.serial('quotas are per tenant: EDQUOT for one does not stop another', async (t) => {
  const a = await open();
  const b = await open();
  await a.ok({ op: 'hello', tenant: 'quota-a' });
  await b.ok({ op: 'hello', tenant: 'quota-b' });
  const ids: number[] = [];
  for (let i = 0; i < 4; i++) ids.push((await a.ok<{ domain: number }>({ op: 'domain_alloc' })).domain);
  t.is((await a.call({ op: 'domain_alloc' })).error?.code, 'EDQUOT');
  t.true((await b.call({ op: 'domain_alloc' })).ok);
  await a.ok({ op: 'domain_free', domain: ids[0] });
  t.true((await a.call({ op: 'domain_alloc' })).ok, 'freeing makes room');
  a.destroy();
  b.destroy();
});
