/**
 * The per-tenant table-memory quota (`iommud serve --max-table-memory`) over a real socket: a tenant
 * that reaches it gets ENOMEM with nothing changed, other tenants do not notice, and what its domains
 * give back (a block replacing an empty table, a freed domain) can be used again.
 */
import test from 'ava';
import { Prot } from '../../src/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { RawConn } from './wire.js';

const QUOTA = 64 * 1024;
const G1 = 2 ** 30;
const RW = Prot.READ | Prot.WRITE;

let daemon: RunningDaemon;
test.before(async () => {
  daemon = await startDaemon(['--max-table-memory', '64K', '--workers', '2']);
});
test.after.always(async () => {
  await daemon?.stop();
});

interface TenantStats {
  domains: number;
  table_pages: number;
  table_bytes: number;
  max_table_bytes: number | null;
}

async function tenantOf(c: RawConn): Promise<TenantStats> {
  return (await c.ok<{ tenant: TenantStats }>({ op: 'stats' })).tenant;
}

async function hello(tenant: string): Promise<RawConn> {
  const c = await RawConn.open(daemon.socket);
  await c.ok({ op: 'hello', tenant });
  return c;
}

/** Maps one 4K page in each 1 GiB region from `region` on (each needs new tables) until ENOMEM. */
async function fillQuota(c: RawConn, domain: number, region = 0): Promise<{ mapped: number; failedAt: number }> {
  for (let r = region; r < region + 64; r++) {
    const res = await c.call({ op: 'map', domain, iova: r * G1, paddr: 0x10_0000 + r * 0x1000, size: 0x1000, prot: RW });
    if (!res.ok) {
      if (res.error?.code !== 'ENOMEM') throw new Error(`expected ENOMEM, got ${res.error?.code}`);
      return { mapped: r - region, failedAt: r };
    }
  }
  throw new Error('the quota was never reached');
}

test.serial('a tenant at its quota gets ENOMEM, rolled back; another tenant is unaffected', async (t) => {
  const a = await hello('quota-a');
  const b = await hello('quota-b');
  const { domain } = await a.ok<{ domain: number }>({ op: 'domain_alloc' });
  t.like(await tenantOf(a), { domains: 1, table_pages: 1, table_bytes: 0x1000, max_table_bytes: QUOTA }, 'the root table counts');
  const { mapped, failedAt } = await fillQuota(a, domain);
  // The first page needs 3 tables below the root, each later 1 GiB region 2 more: (64K - 16K) / 8K = 6 more.
  t.is(mapped, 7);
  const full = await tenantOf(a);
  t.is(full.table_bytes, QUOTA);
  t.is(full.table_pages, 16);
  t.deepEqual(await a.ok({ op: 'iova_to_phys', domain, iova: failedAt * G1 }), { phys: null }, 'the failed map left nothing');
  t.is((await a.call({ op: 'domain_alloc' })).error?.code, 'ENOMEM', 'no room for another root table');
  // A big map_sg on the pool fails the same way, and is rolled back whole.
  const sg = Array.from({ length: 65_536 }, (_, i) => [0x1_0000_0000 + i * 0x2000, 0x1000]);
  const big = await a.call({ op: 'map_sg', domain, iova: 0x10 * G1, sg, prot: RW });
  t.is(big.error?.code, 'ENOMEM');
  t.deepEqual(await tenantOf(a), full, 'nothing changed');
  t.deepEqual(await a.ok({ op: 'iova_to_phys', domain, iova: 0x10 * G1 }), { phys: null });
  // Tenant b has a quota of its own, untouched by a's.
  const other = await b.ok<{ domain: number }>({ op: 'domain_alloc' });
  t.is((await fillQuota(b, other.domain)).mapped, 7);
  t.is((await tenantOf(b)).table_bytes, QUOTA);
  await b.ok({ op: 'domain_free', domain: other.domain });
  t.like(await tenantOf(b), { domains: 0, table_pages: 0, table_bytes: 0 });
  // a's mappings are all still there.
  for (let r = 0; r < mapped; r++) t.deepEqual(await a.ok({ op: 'iova_to_phys', domain, iova: r * G1 }), { phys: 0x10_0000 + r * 0x1000 });
  await a.ok({ op: 'domain_free', domain });
  a.destroy();
  b.destroy();
});

test.serial('memory a tenant gives back can be used again', async (t) => {
  const a = await hello('quota-c');
  const { domain } = await a.ok<{ domain: number }>({ op: 'domain_alloc' });
  const { failedAt } = await fillQuota(a, domain);
  // Unmapping alone frees no table (as io-pgtable-arm); a 2 MiB block over the emptied last-level
  // table replaces it, and the table's page goes back once the next invalidation has been issued.
  t.deepEqual(await a.ok({ op: 'unmap', domain, iova: 0, size: 0x1000 }), { unmapped: 0x1000 });
  t.is((await tenantOf(a)).table_bytes, QUOTA);
  await a.ok({ op: 'map', domain, iova: 0, paddr: 0x4000_0000, size: 0x20_0000, prot: RW });
  await a.ok({ op: 'iotlb_sync', domain });
  t.is((await tenantOf(a)).table_bytes, QUOTA - 0x1000);
  // That page is enough for nothing needing two tables, but a domain_free gives everything back.
  t.is((await a.call({ op: 'map', domain, iova: failedAt * G1, paddr: 0, size: 0x1000, prot: RW })).error?.code, 'ENOMEM');
  await a.ok({ op: 'domain_free', domain });
  t.like(await tenantOf(a), { domains: 0, table_pages: 0, table_bytes: 0 });
  const again = await a.ok<{ domain: number }>({ op: 'domain_alloc' });
  t.is((await fillQuota(a, again.domain)).mapped, 7, 'the whole quota is usable again');
  await a.ok({ op: 'domain_free', domain: again.domain });
  a.destroy();
});

test.serial("anonymous connections each have a quota, given back when they close", async (t) => {
  const watcher = await RawConn.open(daemon.socket);
  const before = (await watcher.ok<{ tables: { bytes: number } }>({ op: 'stats' })).tables.bytes;
  const conns = await Promise.all(Array.from({ length: 3 }, () => RawConn.open(daemon.socket)));
  for (const c of conns) {
    const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc' });
    t.is((await fillQuota(c, domain)).mapped, 7);
  }
  const during = (await watcher.ok<{ tables: { bytes: number } }>({ op: 'stats' })).tables.bytes;
  t.is(during, before + 3 * QUOTA);
  for (const c of conns) c.end();
  await Promise.all(conns.map((c) => c.closed));
  // The daemon frees an anonymous tenant's domains after its connection is gone.
  for (let i = 0; i < 100 && (await watcher.ok<{ tables: { bytes: number } }>({ op: 'stats' })).tables.bytes !== before; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  t.is((await watcher.ok<{ tables: { bytes: number } }>({ op: 'stats' })).tables.bytes, before);
  watcher.destroy();
});
