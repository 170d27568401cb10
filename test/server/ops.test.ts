/**
 * Every op and every error code, over a real Unix socket to a daemon started as users start it.
 * Serial: several tests read the daemon-wide stats.
 */
import test from 'ava';
import { Prot } from '../../src/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { encodeForeign, RawConn, type WireResponse } from './wire.js';

let daemon: RunningDaemon;
test.before(async () => {
  daemon = await startDaemon();
});
test.after.always(async () => {
  await daemon?.stop();
});

const RW = Prot.READ | Prot.WRITE;
const MiB = 2 ** 20;
const GiB = 2 ** 30;

function errorOf(r: WireResponse): string {
  if (r.ok) throw new Error(`expected an error, got ${JSON.stringify(r.result)}`);
  return r.error!.code;
}

async function open(): Promise<RawConn> {
  return RawConn.open(daemon.socket);
}

test.serial('hello: version, server, max frame; EINVAL for another version or a token alone', async (t) => {
  const c = await open();
  const r = await c.call({ op: 'hello', version: 1 });
  t.true(r.ok);
  t.deepEqual(r.result, { version: 1, server: 'iommud/0.1.0', max_frame: 16 * MiB, tenant: null });
  t.deepEqual(Object.keys(r as object).sort(), ['id', 'ok', 'result']);
  t.is(errorOf(await c.call({ op: 'hello', version: 2 })), 'EINVAL');
  t.is(errorOf(await c.call({ op: 'hello', token: 'x' })), 'EINVAL');
  t.true((await c.call({ op: 'hello' })).ok, 'hello without arguments');
  c.destroy();
});

test.serial('domain_alloc, map, iova_to_phys, lookup, unmap, domain_free', async (t) => {
  const c = await open();
  const alloc = await c.ok({ op: 'domain_alloc' });
  t.deepEqual(alloc, { domain: 1, pgsize_bitmap: 0x40201000 });
  t.deepEqual(await c.ok({ op: 'domain_alloc', granule: 4096, ias: 40, oas: 44, pgsize_bitmap: 4096, invalidate_on_map: true, format: 'arm-lpae-s2' }),
    { domain: 2, pgsize_bitmap: 4096 });
  const iova = 4 * GiB + 2 * MiB;
  t.deepEqual(await c.ok({ op: 'map', domain: 1, iova, paddr: 2 * MiB, size: 2 * MiB, prot: RW | Prot.CACHE }), {});
  t.deepEqual(await c.ok({ op: 'iova_to_phys', domain: 1, iova: iova + 0x1234 }), { phys: 2 * MiB + 0x1234 });
  t.deepEqual(await c.ok({ op: 'iova_to_phys', domain: 1, iova: 0 }), { phys: null });
  t.deepEqual(await c.ok({ op: 'lookup', domain: 1, iova: iova + 0x1234 }), { phys: 2 * MiB + 0x1234, page_size: 2 * MiB, prot: RW | Prot.CACHE });
  const nil = await c.call({ op: 'lookup', domain: 1, iova: 0 });
  t.true(nil.ok);
  t.is(nil.result, null);
  t.deepEqual(await c.ok({ op: 'unmap', domain: 1, iova, size: 2 * MiB }), { unmapped: 2 * MiB });
  t.deepEqual(await c.ok({ op: 'unmap', domain: 1, iova, size: 2 * MiB }), { unmapped: 0 });
  // A large address round-trips as an integer (sent by the daemon as int64).
  const high = 2 ** 47 - 4096;
  await c.ok({ op: 'map', domain: 1, iova: high, paddr: 2 ** 47 - 4096, size: 4096, prot: Prot.READ });
  t.deepEqual(await c.ok({ op: 'iova_to_phys', domain: 1, iova: high + 5 }), { phys: 2 ** 47 - 4096 + 5 });
  t.deepEqual(await c.ok({ op: 'domain_free', domain: 1 }), {});
  t.is(errorOf(await c.call({ op: 'iova_to_phys', domain: 1, iova: 0 })), 'ENOENT');
  t.is(errorOf(await c.call({ op: 'domain_free', domain: 1 })), 'ENOENT');
  t.deepEqual(await c.ok({ op: 'domain_alloc' }), { domain: 3, pgsize_bitmap: 0x40201000 }, 'ids are not reused');
  c.destroy();
});

test.serial('map errors: EEXIST, EINVAL (alignment, size 0, prot), ERANGE (ias, 2^53)', async (t) => {
  const c = await open();
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc', ias: 32 });
  await c.ok({ op: 'map', domain, iova: 0x10000, paddr: 0x20000, size: 0x3000, prot: RW });
  const map = (a: Record<string, unknown>): Promise<WireResponse> => c.call({ op: 'map', domain, iova: 0x40000, paddr: 0, size: 0x1000, prot: RW, ...a });
  t.is(errorOf(await map({ iova: 0x11000 })), 'EEXIST');
  t.is(errorOf(await map({ iova: 0x40001 })), 'EINVAL');
  t.is(errorOf(await map({ size: 0 })), 'EINVAL');
  t.is(errorOf(await map({ prot: Prot.CACHE })), 'EINVAL');
  t.is(errorOf(await map({ prot: 0x100 })), 'EINVAL');
  t.is(errorOf(await map({ iova: 2 ** 32 })), 'ERANGE');
  t.is(errorOf(await map({ paddr: 2 ** 53 })), 'ERANGE');
  t.is(errorOf(await map({ paddr: 2n ** 63n })), 'ERANGE');
  t.is(errorOf(await map({ paddr: -4096 })), 'EINVAL');
  t.is(errorOf(await map({ paddr: 4096.5 })), 'EINVAL');
  t.is(errorOf(await map({ paddr: '4096' })), 'EINVAL');
  t.is(errorOf(await map({ paddr: undefined })), 'EINVAL');
  t.is(errorOf(await map({ flags: 0 })), 'EINVAL');
  t.is(errorOf(await c.call({ op: 'unmap', domain, iova: 0x10800, size: 0x1000 })), 'EINVAL');
  t.deepEqual(await c.ok({ op: 'iova_to_phys', domain, iova: 0x12000 }), { phys: 0x22000 }, 'failed calls changed nothing');
  c.destroy();
});

test.serial('map_sg, unmap_sg, defer_invalidate, iotlb_sync, flush_iotlb_all', async (t) => {
  const c = await open();
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc' });
  const sg = [[0x100000, 0x2000], [0x102000, 0x1000], [0x200000, 0x1000]];
  t.deepEqual(await c.ok({ op: 'map_sg', domain, iova: 0x800000, sg, prot: RW }), { mapped: 0x4000 });
  t.deepEqual(await c.ok({ op: 'iova_to_phys', domain, iova: 0x803000 }), { phys: 0x200000 });
  t.is(errorOf(await c.call({ op: 'map_sg', domain, iova: 0x802000, sg, prot: RW })), 'EEXIST');
  t.is(errorOf(await c.call({ op: 'map_sg', domain, iova: 0x900000, sg: [[0, 0]], prot: RW })), 'EINVAL');
  t.deepEqual(await c.ok({ op: 'map_sg', domain, iova: 0x900000, sg: [], prot: RW }), { mapped: 0 });

  const syncs = async (): Promise<number> => (await c.ok<{ iotlb: { syncs: number } }>({ op: 'stats' })).iotlb.syncs;
  const before = await syncs();
  t.deepEqual(await c.ok({ op: 'unmap_sg', domain, iova: 0x800000, sg, defer_invalidate: true }), { unmapped: 0x4000 });
  t.is(await syncs(), before, 'deferred: no sync yet');
  t.deepEqual(await c.ok({ op: 'iotlb_sync', domain }), {});
  t.is(await syncs(), before + 1);
  await c.ok({ op: 'map_sg', domain, iova: 0x800000, sg, prot: RW, defer_invalidate: false });
  t.deepEqual(await c.ok({ op: 'unmap_sg', domain, iova: 0x800000, sg }), { unmapped: 0x4000 });
  t.is(await syncs(), before + 2, 'strict unmap_sg: one sync');
  t.deepEqual(await c.ok({ op: 'flush_iotlb_all', domain }), {});
  t.is(await syncs(), before + 3);
  t.is(errorOf(await c.call({ op: 'iotlb_sync', domain: 99 })), 'ENOENT');
  t.is(errorOf(await c.call({ op: 'flush_iotlb_all', domain: 99 })), 'ENOENT');
  t.is(errorOf(await c.call({ op: 'unmap_sg', domain: 99, iova: 0, sg })), 'ENOENT');
  c.destroy();
});

test.serial('attach, translate (every fault reason), detach', async (t) => {
  const c = await open();
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc', ias: 32 });
  await c.ok({ op: 'map', domain, iova: 0x10000, paddr: 0x7000_0000, size: 0x1000, prot: Prot.READ });
  await c.ok({ op: 'map', domain, iova: 0x20000, paddr: 0x7100_0000, size: 0x1000, prot: RW });
  t.deepEqual(await c.ok({ op: 'attach', device: 5, domain }), {});
  t.deepEqual(await c.ok({ op: 'translate', device: 5, iova: 0x10010, access: 'read' }), { phys: 0x7000_0010 });
  t.deepEqual(await c.ok({ op: 'translate', device: 5, iova: 0x20010, access: 'write' }), { phys: 0x7100_0010 });
  const fault = async (device: number, iova: number, access: string): Promise<WireResponse['error']> => {
    const r = await c.call({ op: 'translate', device, iova, access });
    t.is(errorOf(r), 'EFAULT');
    return r.error;
  };
  t.like(await fault(5, 0x10000, 'write'), { code: 'EFAULT', reason: 'permission', device: 5, iova: 0x10000, access: 'write' });
  t.like(await fault(5, 0x30000, 'read'), { reason: 'translation', device: 5, iova: 0x30000, access: 'read' });
  t.like(await fault(5, 2 ** 33, 'read'), { reason: 'address-size', device: 5 });
  t.like(await fault(6, 0x10000, 'read'), { reason: 'no-domain', device: 6 });
  t.is(errorOf(await c.call({ op: 'translate', device: 5, iova: 0, access: 'exec' })), 'EINVAL');
  t.is(errorOf(await c.call({ op: 'attach', device: 5, domain: 77 })), 'ENOENT');
  t.is(errorOf(await c.call({ op: 'attach', device: 2 ** 32, domain })), 'EINVAL');
  const stats = await c.ok<{ devices: number; tenant: { devices: number } }>({ op: 'stats' });
  t.is(stats.tenant.devices, 1);
  t.deepEqual(await c.ok({ op: 'detach', device: 5 }), {});
  t.like(await fault(5, 0x10000, 'read'), { reason: 'no-domain' });
  t.is(errorOf(await c.call({ op: 'detach', device: 5 })), 'ENOENT');
  // Freeing a domain detaches its devices.
  await c.ok({ op: 'attach', device: 9, domain });
  await c.ok({ op: 'domain_free', domain });
  t.like(await fault(9, 0x10000, 'read'), { reason: 'no-domain' });
  t.is(errorOf(await c.call({ op: 'detach', device: 9 })), 'ENOENT');
  c.destroy();
});

test.serial('stats: the daemon-wide counters with snake_case keys, plus the caller\'s tenant', async (t) => {
  const c = await open();
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc' });
  await c.ok({ op: 'map', domain, iova: 0, paddr: 0, size: 0x1000, prot: RW });
  const s = await c.ok<Record<string, Record<string, number>>>({ op: 'stats' });
  for (const key of ['invalidations', 'syncs', 'hits', 'misses']) t.is(typeof s.iotlb![key], 'number', key);
  t.is(typeof s.tables!.pages, 'number');
  t.is(typeof s.tables!.bytes, 'number');
  t.is(typeof s.domains, 'number');
  t.is(typeof s.devices, 'number');
  t.deepEqual(s.tenant, { domains: 1, devices: 0, table_pages: 4, table_bytes: 4 * 4096, max_table_bytes: null });
  for (const key of Object.keys(s)) t.regex(key, /^[a-z_]+$/);
  t.is(errorOf(await c.call({ op: 'stats', verbose: true })), 'EINVAL');
  c.destroy();
});

test.serial('ENOSYS for an unknown op; EINVAL for a bad id or op, answered with id nil', async (t) => {
  const c = await open();
  const r = await c.call({ op: 'map_pages' });
  t.is(errorOf(r), 'ENOSYS');
  c.sendBody(Buffer.from(encodeForeign({ op: 'stats' })));
  let e = await c.next();
  t.is(e.id, null);
  t.is(errorOf(e), 'EINVAL');
  c.sendBody(encodeForeign({ id: 'seven', op: 'stats' }));
  e = await c.next();
  t.is(e.id, null);
  t.is(errorOf(e), 'EINVAL');
  c.sendBody(encodeForeign({ id: 3, op: 5 }));
  e = await c.next();
  t.is(e.id, 3);
  t.is(errorOf(e), 'EINVAL');
  // Any unsigned id is echoed, uint64 included.
  c.sendBody(encodeForeign({ id: 2n ** 64n - 1n, op: 'stats' }));
  e = await c.next();
  t.is(e.id, 2n ** 64n - 1n);
  t.true(e.ok);
  c.destroy();
});

test.serial('integers sent as uint64 (as other languages do) work; 2^53 and above are ERANGE', async (t) => {
  const c = await open();
  const send = async (req: Record<string, unknown>): Promise<WireResponse> => {
    c.sendBody(encodeForeign(req));
    return c.response(req.id as number);
  };
  const alloc = await send({ id: 1, op: 'domain_alloc', granule: 4096, ias: 48 });
  t.true(alloc.ok);
  const domain = (alloc.result as { domain: number }).domain;
  t.true((await send({ id: 2, op: 'map', domain, iova: 2 ** 40, paddr: 5 * 4096, size: 4096, prot: 3 })).ok);
  t.deepEqual((await send({ id: 3, op: 'iova_to_phys', domain, iova: 2 ** 40 + 5 })).result, { phys: 5 * 4096 + 5 });
  t.deepEqual((await send({ id: 4, op: 'map_sg', domain, iova: 0x10000, sg: [[0x5000, 0x1000], [0x9000, 0x1000]], prot: 1 })).result, { mapped: 0x2000 });
  t.deepEqual((await send({ id: 5, op: 'attach', device: 1, domain })).result, {});
  t.deepEqual((await send({ id: 6, op: 'translate', device: 1, iova: 0x11008, access: 'read' })).result, { phys: 0x9008 });
  t.is(errorOf(await send({ id: 7, op: 'map', domain, iova: 2n ** 53n, paddr: 0, size: 4096, prot: 3 })), 'ERANGE');
  t.is(errorOf(await send({ id: 8, op: 'map', domain, iova: 0, paddr: 2n ** 64n - 1n, size: 4096, prot: 3 })), 'ERANGE');
  t.is(errorOf(await send({ id: 9, op: 'unmap', domain, iova: 0, size: 2n ** 53n + 4096n })), 'ERANGE');
  t.is(errorOf(await send({ id: 10, op: 'map_sg', domain, iova: 0, sg: [[2n ** 60n, 4096]], prot: 3 })), 'ERANGE');
  t.is(errorOf(await send({ id: 11, op: 'map', domain, iova: -4096, paddr: 0, size: 4096, prot: 3 })), 'EINVAL');
  c.destroy();
});

test.serial('EPROTO with id nil for frames that are not MessagePack or not a map; the connection stays usable', async (t) => {
  const c = await open();
  const bodies = [
    Buffer.from([0xc1]), // never used
    Buffer.from([0x92, 0x01]), // truncated array
    Buffer.from([0x01, 0x02]), // two values
    Buffer.from([0xd6, 0xff, 0, 0, 0, 1]), // timestamp extension
    Buffer.alloc(0), // empty
    encodeForeign([1, 2, 3]), // not a map
    encodeForeign('stats'),
    Buffer.from([0xc0]), // nil
  ];
  for (const body of bodies) {
    c.sendBody(body);
    const r = await c.next();
    t.is(r.id, null);
    t.is(errorOf(r), 'EPROTO', body.toString('hex'));
  }
  t.true((await c.call({ op: 'stats' })).ok, 'still usable');
  c.destroy();
});

test.serial('EMSGSIZE for a frame above the maximum, then the connection is closed', async (t) => {
  const c = await open();
  const id = c.send({ op: 'stats' });
  const header = Buffer.alloc(4);
  header.writeUInt32BE(16 * MiB + 1);
  c.sendRaw(header);
  const answers = await c.take(2);
  const stats = answers.find((r) => r.id === id);
  t.true(stats?.ok, 'the request before it is answered');
  const big = answers.find((r) => r.id === null)!;
  t.is(errorOf(big), 'EMSGSIZE');
  await c.closed;
  t.pass();
  // The daemon is fine.
  const d = await open();
  t.true((await d.call({ op: 'stats' })).ok);
  d.destroy();
});

test.serial('EBUSY: freeing a domain while another connection of its tenant has a call in flight', async (t) => {
  const a = await open();
  const b = await open();
  await a.ok({ op: 'hello', tenant: 'busy' });
  await b.ok({ op: 'hello', tenant: 'busy' });
  const { domain } = await a.ok<{ domain: number }>({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  // Calls on one range run one after the other: eight 256 MiB maps/unmaps of 4K pages keep the domain busy.
  const ids: (number | bigint)[] = [];
  for (let i = 0; i < 4; i++) {
    ids.push(a.send({ op: 'map', domain, iova: 0, paddr: 0, size: 256 * MiB, prot: RW }));
    ids.push(a.send({ op: 'unmap', domain, iova: 0, size: 256 * MiB }));
  }
  await a.response(ids[0]!);
  const r = await b.call({ op: 'domain_free', domain });
  t.is(errorOf(r), 'EBUSY');
  for (const id of ids.slice(1)) t.true((await a.response(id, 30_000)).ok);
  // On the connection that issued the calls, domain_free waits for them instead.
  a.send({ op: 'map', domain, iova: 0, paddr: 0, size: 256 * MiB, prot: RW });
  t.deepEqual(await a.ok({ op: 'domain_free', domain }), {});
  a.destroy();
  b.destroy();
});

test('EDQUOT, ENOMEM and EPERM in a daemon with small limits', async (t) => {
  const small = await startDaemon(['--max-domains', '2', '--max-devices', '1', '--table-memory', '128K', '--tenant', 'locked:s3cret', '--workers', '0']);
  try {
    const c = await RawConn.open(small.socket);
    const d1 = (await c.ok<{ domain: number }>({ op: 'domain_alloc' })).domain;
    await c.ok({ op: 'domain_alloc' });
    t.is(errorOf(await c.call({ op: 'domain_alloc' })), 'EDQUOT');
    await c.ok({ op: 'attach', device: 1, domain: d1 });
    t.is(errorOf(await c.call({ op: 'attach', device: 2, domain: d1 })), 'EDQUOT');
    await c.ok({ op: 'attach', device: 1, domain: d1 }, ); // re-attaching the same device is no new device
    // Another connection (another tenant) has its own quota.
    const other = await RawConn.open(small.socket);
    t.true((await other.call({ op: 'domain_alloc' })).ok);
    // Table memory: 128 KiB holds a few dozen table pages; maps 1 GiB apart each need new tables.
    let code = '';
    let pagesBefore = 0;
    for (let i = 0; i < 64 && code === ''; i++) {
      pagesBefore = (await c.ok<{ tables: { pages: number } }>({ op: 'stats' })).tables.pages;
      const r = await c.call({ op: 'map', domain: d1, iova: i * 512 * GiB + i * GiB, paddr: 0, size: 4096, prot: RW });
      if (!r.ok) code = r.error!.code;
    }
    t.is(code, 'ENOMEM');
    t.is((await c.ok<{ tables: { pages: number } }>({ op: 'stats' })).tables.pages, pagesBefore, 'rolled back');
    // Tokens.
    const p = await RawConn.open(small.socket);
    t.is(errorOf(await p.call({ op: 'hello', tenant: 'locked' })), 'EPERM');
    t.is(errorOf(await p.call({ op: 'hello', tenant: 'locked', token: 'guess' })), 'EPERM');
    t.like(await p.ok({ op: 'hello', tenant: 'locked', token: 's3cret' }), { tenant: 'locked' });
    t.is(errorOf(await p.call({ op: 'hello', tenant: 'free-for-all' })), 'EBUSY', 'a second hello cannot switch tenants');
    c.destroy();
    other.destroy();
    p.destroy();
  } finally {
    t.is((await small.stop()).code, 0);
  }
});

test.serial('a large frame: map_sg and unmap_sg of 100000 segments (about 1.5 MB, split over many reads)', async (t) => {
  const c = await open();
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc' });
  const n = 100_000;
  const sg = Array.from({ length: n }, (_, i) => [2 ** 40 + i * 0x2000, 0x1000]);
  t.deepEqual(await c.ok({ op: 'map_sg', domain, iova: 2 ** 32, sg, prot: RW }), { mapped: n * 0x1000 });
  t.deepEqual(await c.ok({ op: 'iova_to_phys', domain, iova: 2 ** 32 + (n - 1) * 0x1000 + 7 }), { phys: 2 ** 40 + (n - 1) * 0x2000 + 7 });
  t.deepEqual(await c.ok({ op: 'unmap_sg', domain, iova: 2 ** 32, sg }), { unmapped: n * 0x1000 });
  await c.ok({ op: 'domain_free', domain });
  c.destroy();
});
