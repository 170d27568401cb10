/**
 * examples/http-server.ts as a user runs it after `npm run build`: a real process, driven over HTTP.
 */
import test from 'ava';
import { fileURLToPath } from 'node:url';
import { runNode, startProcess, type RunningProcess } from '../server/daemon.js';

const EXAMPLE_JS = fileURLToPath(new URL('../../examples/http-server.js', import.meta.url));

let server: RunningProcess;
let base: string;
test.before(async () => {
  server = await startProcess([EXAMPLE_JS, '--port', '0', '--workers', '1', '--max-body', '4096'], /^iommud example listening on (\S+)$/m);
  base = server.ready[1]!;
});
test.after.always(async () => {
  await server?.stop('SIGKILL');
});

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(base + path, { method, ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }) });
  const text = await res.text();
  return { status: res.status, json: text === '' ? null : JSON.parse(text) };
}

const errorCode = (r: { json: unknown }): string | undefined => (r.json as { error?: { code: string } }).error?.code;

test.serial('domains, map, lookup, map_sg, unmap_sg, unmap and stats over HTTP', async (t) => {
  const created = await call('POST', '/domains', { granule: 4096 });
  t.is(created.status, 201);
  const { id, pgsizeBitmap } = created.json as { id: number; pgsizeBitmap: number };
  t.is(pgsizeBitmap, 0x40201000);
  t.deepEqual(await call('POST', `/domains/${id}/map`, { iova: '0x40000000', paddr: '0x80000000', size: '0x200000', prot: 3 }), { status: 200, json: {} });
  t.deepEqual(await call('GET', `/domains/${id}/iova/0x40001234`), { status: 200, json: { phys: 0x8000_1234, pageSize: 0x20_0000, prot: 3 } });
  const sg = [['0x10000000', 4096], [0x1000_1000, '0x3000'], [0x2000_0000, 0x1000]];
  t.deepEqual(await call('POST', `/domains/${id}/map_sg`, { iova: 0x1_0000_0000, sg, prot: 1 }), { status: 200, json: { mapped: 0x5000 } });
  t.is(((await call('GET', `/domains/${id}/iova/${0x1_0000_4000}`)).json as { phys: number }).phys, 0x2000_0000);
  t.deepEqual(await call('POST', `/domains/${id}/unmap_sg`, { iova: 0x1_0000_0000, sg, deferInvalidate: true }), { status: 200, json: { unmapped: 0x5000 } });
  const before = (await call('GET', '/stats')).json as { iotlb: { syncs: number }; tables: { pages: number }; domains: number };
  t.deepEqual(await call('POST', `/domains/${id}/iotlb_sync`), { status: 200, json: {} });
  const after = (await call('GET', '/stats')).json as { iotlb: { syncs: number } };
  t.is(after.iotlb.syncs, before.iotlb.syncs + 1, 'the deferred invalidation was issued by iotlb_sync');
  t.true(before.tables.pages > 1);
  t.deepEqual(await call('POST', `/domains/${id}/unmap`, { iova: 0x4000_0000, size: 0x20_0000 }), { status: 200, json: { unmapped: 0x20_0000 } });
  const gone = await call('GET', `/domains/${id}/iova/0x40001234`);
  t.is(gone.status, 404);
  t.is(errorCode(gone), 'ENOENT');
  t.is((await call('DELETE', `/domains/${id}`)).status, 204);
  t.is((await call('DELETE', `/domains/${id}`)).status, 404);
});

test.serial('errno codes map to HTTP statuses, and bad requests never harm the server', async (t) => {
  const { id } = (await call('POST', '/domains', {})).json as { id: number };
  await call('POST', `/domains/${id}/map`, { iova: 0, paddr: 0, size: 0x1000, prot: 3 });
  const cases: [string, string, unknown, number, string][] = [
    ['POST', `/domains/${id}/map`, { iova: 0, paddr: 0, size: 0x1000, prot: 3 }, 409, 'EEXIST'],
    ['POST', `/domains/${id}/map`, { iova: -1, paddr: 0, size: 0x1000, prot: 3 }, 400, 'EINVAL'],
    ['POST', `/domains/${id}/map`, { iova: 2 ** 53, paddr: 0, size: 0x1000, prot: 3 }, 400, 'ERANGE'],
    ['POST', `/domains/${id}/map`, { paddr: 0, size: 0x1000, prot: 3 }, 400, 'EINVAL'],
    ['POST', `/domains/${id}/map_sg`, { iova: 0, sg: [[0]], prot: 3 }, 400, 'EINVAL'],
    ['POST', `/domains/${id}/map_sg`, { iova: 0, sg: 'no', prot: 3 }, 400, 'EINVAL'],
    ['POST', `/domains/${id}/unmap`, '{not json', 400, 'EINVAL'],
    ['POST', `/domains/${id}/unmap`, '[1, 2]', 400, 'EINVAL'],
    ['POST', '/domains', { granule: 12345 }, 400, 'EINVAL'],
    ['POST', '/domains', { colour: 'red' }, 400, 'EINVAL'],
    ['POST', `/domains/${id}/map`, { iova: 0, paddr: 0, size: 0x1000, prot: 3, pad: 'x'.repeat(5000) }, 413, 'EMSGSIZE'],
    ['GET', '/domains/999/iova/0', undefined, 404, 'ENOENT'],
    ['GET', '/nowhere', undefined, 404, 'ENOSYS'],
    ['PUT', '/stats', undefined, 405, 'EINVAL'],
  ];
  for (const [method, path, body, status, code] of cases) {
    const r = await call(method, path, body);
    t.is(r.status, status, `${method} ${path} ${JSON.stringify(body)?.slice(0, 60)}`);
    t.is(errorCode(r), code, `${method} ${path}`);
  }
  t.deepEqual((await call('GET', `/domains/${id}/iova/0x10`)).json, { phys: 0x10, pageSize: 0x1000, prot: 3 }, 'still serving, mapping intact');
});

test.serial('requests at once are served at once, and SIGTERM stops the server cleanly', async (t) => {
  const { id } = (await call('POST', '/domains', {})).json as { id: number };
  const maps = Array.from({ length: 32 }, (_, i) => call('POST', `/domains/${id}/map`, { iova: i * 0x1000, paddr: 0x10_0000 + i * 0x1000, size: 0x1000, prot: 1 }));
  t.true((await Promise.all(maps)).every((r) => r.status === 200));
  const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => call('GET', `/domains/${id}/iova/${i * 0x1000}`)));
  t.deepEqual(reads.map((r) => (r.json as { phys: number }).phys), Array.from({ length: 32 }, (_, i) => 0x10_0000 + i * 0x1000));
  t.deepEqual(await server.stop('SIGTERM'), { code: 0, signal: null });
});

test('a bad command line is a clear message and exit code 2', async (t) => {
  for (const [args, message] of [
    [['--port', 'eighty'], /--port takes a whole number/],
    [['--workers', '1.5'], /--workers takes a whole number/],
    [['--colour', 'red'], /Unknown option '--colour'/],
  ] as const) {
    const r = await runNode([EXAMPLE_JS, ...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message);
  }
});
