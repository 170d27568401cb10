/**
 * A bounded, seeded fuzz run over a real socket: a few thousand frames — random bytes, damaged
 * requests, and well-formed requests with random ops and arguments. Every frame gets exactly one
 * answer, never an internal error, and afterwards a full scenario still works.
 */
import test from 'ava';
import { IommudClient } from '../../src/client/index.js';
import { encodeValue, OP_NAMES, OPS, type ArgSpec } from '../../src/protocol/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { encodeForeign, RawConn } from './wire.js';
import { rng } from '../helpers/rng.js';

const SEED = 0xf022;
/** Ops for well-typed requests, weighted towards the ones that change and read mappings. */
const PLAUSIBLE_OPS = ['map', 'map', 'map', 'unmap', 'map_sg', 'map_sg', 'unmap_sg', 'iova_to_phys', 'lookup', 'attach',
  'translate', 'translate', 'iotlb_sync', 'flush_iotlb_all', 'domain_alloc', 'stats'] as const;
const FRAMES = 3000;


let daemon: RunningDaemon;
test.before(async () => {
  // Small table memory: a random huge map fails fast with ENOMEM instead of filling a gigabyte.
  daemon = await startDaemon(['--table-memory', '16M', '--max-frame', '1M']);
});
test.after.always(async () => {
  await daemon?.stop();
});

test(`${FRAMES} random frames (seed ${SEED}): one answer each, no internal error, then a full scenario works`, async (t) => {
  const rand = rng(SEED);
  const int = (n: number): number => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const ARG_NAMES = ['domain', 'iova', 'paddr', 'size', 'prot', 'sg', 'device', 'access', 'defer_invalidate', 'format',
    'granule', 'ias', 'oas', 'pgsize_bitmap', 'invalidate_on_map', 'version', 'tenant', 'token', 'bogus'];
  const value = (depth = 0): unknown => {
    switch (int(depth > 2 ? 9 : 12)) {
      case 0: return int(4);
      case 1: return int(64) * 0x1000;
      case 2: return pick([0, 1, 2, 3, 7, 0x3f, 4096, 65536, 2 ** 21, 2 ** 30, 2 ** 32, 2 ** 48, 2 ** 53 - 1, 2 ** 53]);
      case 3: return pick([-1, -4096, 0.5, 1e300, -0, Number.MAX_SAFE_INTEGER]);
      case 4: return pick([2n ** 53n, 2n ** 63n, -(2n ** 63n), 2n ** 64n - 1n]);
      case 5: return pick(['read', 'write', 'arm-lpae-s1', 'arm-lpae-s2', '', 'x'.repeat(int(300)), 'tenant-' + int(3)]);
      case 6: return pick([true, false, null]);
      case 7: return Array.from({ length: int(6) }, () => [int(64) * 0x1000, (1 + int(4)) * 0x1000]);
      case 8: return Buffer.from([int(256)]);
      case 9: return Array.from({ length: int(4) }, () => value(depth + 1));
      case 10: return Object.fromEntries(Array.from({ length: int(4) }, () => [pick(ARG_NAMES), value(depth + 1)]));
      default: return [[value(depth + 1), value(depth + 1)]];
    }
  };
  const request = (): Record<string, unknown> => {
    const r: Record<string, unknown> = {};
    if (rand() < 0.95) r.id = rand() < 0.9 ? int(1e6) : value();
    if (rand() < 0.95) r.op = rand() < 0.85 ? pick(OP_NAMES) : value();
    const n = int(6);
    for (let i = 0; i < n; i++) r[pick(ARG_NAMES)] = value();
    if (rand() < 0.5 && typeof r.op === 'string' && r.op !== 'hello') r.domain = 1 + int(3);
    return r;
  };
  // Well-typed requests built from the schema, with values chosen to collide: these reach the engine.
  const plausible = (): Record<string, unknown> => {
    const op = rand() < 0.01 ? pick(['domain_free', 'detach'] as const) : pick(PLAUSIBLE_OPS);
    const r: Record<string, unknown> = { id: int(1e6), op };
    for (const [name, spec] of Object.entries(OPS[op].args as Record<string, ArgSpec>)) {
      if (!spec.required && rand() < 0.5) continue;
      switch (spec.type.kind) {
        case 'uint': r[name] = name === 'domain' || name === 'device' ? 1 + int(4) : name === 'prot' ? 1 + int(3) : name === 'granule' ? pick([4096, 16384, 65536]) : name === 'ias' || name === 'oas' ? pick([32, 40, 48]) : name === 'pgsize_bitmap' ? pick([4096, 0x201000]) : int(32) * pick([0x1000, 0x200000]); break;
        case 'sg': r[name] = Array.from({ length: int(5) }, () => [int(32) * 0x1000, (1 + int(3)) * 0x1000]); break;
        case 'enum': r[name] = name === 'access' ? pick(['read', 'write']) : pick(['arm-lpae-s1', 'arm-lpae-s2']); break;
        case 'bool': r[name] = rand() < 0.5; break;
        default: r[name] = 'x';
      }
    }
    return r;
  };
  const body = (): Uint8Array => {
    if (rand() < 0.4) return encodeValue(plausible());
    const kind = rand();
    if (kind < 0.15) return Buffer.from(Array.from({ length: int(40) }, () => int(256)));
    const encoded = Buffer.from(rand() < 0.5 ? encodeValue(request()) : encodeForeign(JSON.parse(JSON.stringify(request(), (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v)))));
    if (kind < 0.35) {
      // Damage it: flip bytes, cut it, or add to it.
      const damaged = Buffer.from(encoded);
      for (let i = 0; i < 1 + int(3); i++) if (damaged.length) damaged[int(damaged.length)] = int(256);
      if (rand() < 0.3) return damaged.subarray(0, int(damaged.length + 1));
      if (rand() < 0.3) return Buffer.concat([damaged, Buffer.from([int(256)])]);
      return damaged;
    }
    return encoded;
  };

  const c = await RawConn.open(daemon.socket);
  await c.ok({ op: 'domain_alloc' });
  await c.ok({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  await c.ok({ op: 'domain_alloc', format: 'arm-lpae-s2' });
  const codes = new Map<string, number>();
  let answered = 0;
  for (let sent = 0; sent < FRAMES; sent += 100) {
    // In batches, so a frame that makes the daemon misbehave is found near where it was sent.
    for (let i = 0; i < 100; i++) c.sendBody(body());
    for (const r of await c.take(100, 30_000)) {
      answered++;
      const code = r.ok ? 'ok' : String(r.error?.code);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
  }
  t.is(answered, FRAMES);
  t.log([...codes].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', '));
  t.false(codes.has('EIO'), 'no internal error');
  for (const code of ['ok', 'EPROTO', 'EINVAL', 'ENOSYS', 'ENOENT', 'EEXIST', 'EFAULT']) t.true((codes.get(code) ?? 0) > 0, code);
  await new Promise((r) => setTimeout(r, 50));
  t.is(c.buffered, 0, 'no extra answers');

  // The same connection still works, and so does a new one, end to end.
  t.true((await c.call({ op: 'stats' })).ok);
  c.destroy();
  const client = await IommudClient.connect(daemon.socket);
  const dom = await client.allocDomain();
  t.is(await dom.mapSg(0x100000, [{ phys: 0x4000_0000, length: 0x200000 }, { phys: 0x5000_0000, length: 0x1000 }], 3), 0x201000);
  await client.attachDevice(1, dom);
  t.is(await client.translate(1, 0x300000, 'write'), 0x5000_0000);
  t.is(await dom.unmapSg(0x100000, [{ phys: 0x4000_0000, length: 0x200000 }, { phys: 0x5000_0000, length: 0x1000 }]), 0x201000);
  t.is(await dom.iovaToPhys(0x100000), null);
  await dom.free();
  await client.close();
  t.false(daemon.stderr().includes('"level":50'), 'no errors logged');
});
