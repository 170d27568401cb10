/**
 * Pipelining over a real socket: many requests in flight on one connection take effect in the order
 * sent (checked against the library run sequentially), deferred invalidations and barriers keep their
 * place, and a client that does not read its answers is slowed down, not dropped.
 */
import test from 'ava';
import { Iommu, IommuError, Prot, type Domain } from '../../src/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { RawConn, type WireResponse } from './wire.js';
import { rng } from '../helpers/rng.js';

let daemon: RunningDaemon;
test.before(async () => {
  daemon = await startDaemon(['--workers', '2']);
});
test.after.always(async () => {
  await daemon?.stop();
});

const RW = Prot.READ | Prot.WRITE;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** 65536 pages of 4 KiB: large enough that the engine splits the call over its worker threads. */
const BIG = 256 * MiB;


test('map, unmap, map of one range pipelined through the worker pool take effect in order', async (t) => {
  const c = await RawConn.open(daemon.socket);
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  const ids: (number | bigint)[] = [];
  for (let i = 0; i < 6; i++) {
    ids.push(c.send({ op: 'map', domain, iova: GiB, paddr: i * GiB, size: BIG, prot: RW }));
    ids.push(c.send({ op: 'unmap', domain, iova: GiB, size: BIG }));
  }
  ids.push(c.send({ op: 'map', domain, iova: GiB, paddr: 7 * GiB, size: BIG, prot: RW }));
  const probe = c.send({ op: 'iova_to_phys', domain, iova: GiB + BIG - 1 });
  for (let i = 0; i < ids.length; i++) {
    const r = await c.response(ids[i]!, 30_000);
    t.true(r.ok, `request ${i}: ${r.error?.code}`);
    if (i % 2 === 1 && i < 12) t.deepEqual(r.result, { unmapped: BIG });
  }
  t.deepEqual((await c.response(probe)).result, { phys: 7 * GiB + BIG - 1 });
  c.destroy();
});

test('a deferred unmap_sg, iotlb_sync and translate pipelined: the sync covers the unmap', async (t) => {
  const c = await RawConn.open(daemon.socket);
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  const sg = [[0x4000_0000, BIG]];
  await c.ok({ op: 'map_sg', domain, iova: 0, sg, prot: RW });
  await c.ok({ op: 'attach', device: 1, domain });
  // Warm the IOTLB: a later translate would hit this entry if the invalidation were skipped.
  t.deepEqual(await c.ok({ op: 'translate', device: 1, iova: BIG - 4096, access: 'read' }), { phys: 0x4000_0000 + BIG - 4096 });
  const unmap = c.send({ op: 'unmap_sg', domain, iova: 0, sg, defer_invalidate: true });
  const sync = c.send({ op: 'iotlb_sync', domain });
  const dma = c.send({ op: 'translate', device: 1, iova: BIG - 4096, access: 'read' });
  t.deepEqual((await c.response(unmap, 30_000)).result, { unmapped: BIG });
  t.true((await c.response(sync)).ok);
  const r = await c.response(dma);
  t.is(r.error?.reason, 'translation', 'the stale translation was invalidated before the translate');
  c.destroy();
});

test('a random pipelined sequence gives exactly the answers of the library run one call at a time', async (t) => {
  const rand = rng(0x5eed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  type Req = Record<string, unknown> & { op: string };
  const requests: Req[] = [];
  const domains = [1, 2, 3];
  for (let i = 0; i < 1500; i++) {
    const domain = pick(domains);
    const slot = Math.floor(rand() * 48) * 0x10000;
    const size = (1 + Math.floor(rand() * 4)) * 0x1000;
    const paddr = Math.floor(rand() * 4096) * 0x1000;
    const r = rand();
    if (domain === 1 && r < 0.02) requests.push({ op: 'map', domain, iova: GiB, paddr: 0x1_0000_0000, size: BIG, prot: RW });
    else if (domain === 1 && r < 0.04) requests.push({ op: 'unmap', domain, iova: GiB, size: BIG });
    else if (r < 0.3) requests.push({ op: 'map', domain, iova: slot, paddr, size, prot: pick([1, 2, 3, 7, 9]) });
    else if (r < 0.45) requests.push({ op: 'unmap', domain, iova: slot, size });
    else if (r < 0.55) requests.push({ op: 'map_sg', domain, iova: slot, sg: [[paddr, 0x1000], [paddr + 0x3000, size]], prot: RW, defer_invalidate: rand() < 0.5 });
    else if (r < 0.62) requests.push({ op: 'unmap_sg', domain, iova: slot, sg: [[paddr, size]], defer_invalidate: rand() < 0.5 });
    else if (r < 0.75) requests.push({ op: 'iova_to_phys', domain, iova: slot + Math.floor(rand() * 0x5000) });
    else if (r < 0.82) requests.push({ op: 'lookup', domain, iova: domain === 1 && rand() < 0.3 ? GiB + 12345 : slot });
    else if (r < 0.85) requests.push({ op: 'iotlb_sync', domain });
    else if (r < 0.87) requests.push({ op: 'flush_iotlb_all', domain });
    else if (r < 0.9) requests.push({ op: 'attach', device: domain, domain: pick(domains) });
    else requests.push({ op: 'translate', device: pick(domains), iova: rand() < 0.2 ? GiB + 0x1000 : slot + 0x800, access: pick(['read', 'write']) });
  }

  // The wire: allocate the domains, then send everything without waiting.
  const c = await RawConn.open(daemon.socket);
  await c.ok({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  await c.ok({ op: 'domain_alloc' });
  await c.ok({ op: 'domain_alloc', format: 'arm-lpae-s2' });
  const ids = requests.map((q) => c.send(q));
  const got = new Map<number | bigint, WireResponse>();
  for (const r of await c.take(ids.length, 60_000)) got.set(r.id!, r);

  // The library, one call at a time in the order sent.
  const iommu = await Iommu.create({ workers: 0 });
  const doms: Domain[] = [
    iommu.allocDomain({ pgsizeBitmap: 4096 }),
    iommu.allocDomain(),
    iommu.allocDomain({ format: 'arm-lpae-s2' }),
  ];
  const attached = new Map<number, number>();
  // A domain with invalidations deferred and not yet synced may hand a device a stale translation or
  // not, depending on what the IOTLB still holds (its sets are indexed by engine-internal tags, which
  // differ between the daemon and this library): there, only that translate answered is checked.
  const stale = new Set<number>();
  let compared = 0;
  let mismatches = 0;
  for (let i = 0; i < requests.length; i++) {
    const q = requests[i]!;
    const d = doms[(q.domain as number) - 1]!;
    const sgOf = (): { phys: number; length: number }[] => (q.sg as number[][]).map(([phys, length]) => ({ phys: phys!, length: length! }));
    let expected: { ok: true; result: unknown } | { ok: false; code: string; reason?: string };
    try {
      let result: unknown;
      switch (q.op) {
        case 'map': await d.map(q.iova as number, q.paddr as number, q.size as number, q.prot as number); result = {}; break;
        case 'unmap': result = { unmapped: await d.unmap(q.iova as number, q.size as number) }; break;
        case 'map_sg': result = { mapped: await d.mapSg(q.iova as number, sgOf(), q.prot as number, { deferInvalidate: q.defer_invalidate as boolean }) }; break;
        case 'unmap_sg': result = { unmapped: await d.unmapSg(q.iova as number, sgOf(), { deferInvalidate: q.defer_invalidate as boolean }) }; break;
        case 'iova_to_phys': result = { phys: d.iovaToPhys(q.iova as number) }; break;
        case 'lookup': { const l = d.lookup(q.iova as number); result = l && { phys: l.phys, page_size: l.pageSize, prot: l.prot }; break; }
        case 'iotlb_sync': d.iotlbSync(); stale.delete(q.domain as number); result = {}; break;
        case 'flush_iotlb_all': d.flushIotlbAll(); stale.delete(q.domain as number); result = {}; break;
        case 'attach': iommu.attachDevice(q.device as number, d); attached.set(q.device as number, q.domain as number); result = {}; break;
        case 'translate': result = { phys: iommu.translate(attached.has(q.device as number) ? (q.device as number) : 999, q.iova as number, q.access as 'read' | 'write') }; break;
        default: throw new Error(q.op);
      }
      expected = { ok: true, result };
    } catch (e) {
      if (!(e instanceof IommuError)) throw e;
      expected = { ok: false, code: e.code, reason: (e as IommuError & { fault?: { reason: string } }).fault?.reason };
    }
    if (q.defer_invalidate === true) stale.add(q.domain as number);
    const r = got.get(ids[i]!)!;
    t.truthy(r, `request ${i} was answered`);
    if (q.op === 'translate' && stale.has(attached.get(q.device as number) ?? 0)) continue;
    compared++;
    const actual = r.ok ? { ok: true, result: r.result } : { ok: false, code: r.error!.code, reason: r.error!.reason };
    if (JSON.stringify(actual) !== JSON.stringify(expected)) {
      if (mismatches++ < 5) t.log(`#${i} ${JSON.stringify(q)}: wire ${JSON.stringify(actual)} library ${JSON.stringify(expected)}`);
    }
  }
  await iommu.close();
  t.is(mismatches, 0);
  t.true(compared > requests.length * 0.9, `compared ${compared}`);
  // The generator's own check: big maps (64Ki pages, which the daemon hands to its pool) are in the mix.
  t.true(requests.filter((q) => q.op === 'map' && q.size === BIG).length > 0, 'the sequence includes maps big enough for the worker pool');
  c.destroy();
});

test('a client that does not read its answers is slowed, not dropped: every answer arrives', async (t) => {
  const c = await RawConn.open(daemon.socket);
  c.socket.pause();
  const n = 20_000;
  for (let i = 0; i < n; i++) c.send({ op: 'stats' });
  await new Promise((r) => setTimeout(r, 300));
  t.true(c.socket.writableLength > 0, 'the daemon stopped reading: our requests back up');
  // Others are served meanwhile.
  const other = await RawConn.open(daemon.socket);
  t.true((await other.call({ op: 'stats' })).ok);
  other.destroy();
  c.socket.resume();
  const answers = await c.take(n, 30_000);
  t.is(answers.filter((r) => r.ok).length, n);
  t.deepEqual(answers.map((r) => Number(r.id)), Array.from({ length: n }, (_, i) => i + 1), 'synchronous answers keep their order');
  c.destroy();
});
