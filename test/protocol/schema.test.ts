import test from 'ava';
import { readFileSync } from 'node:fs';
import { ERRNO, SgTable } from '../../src/index.js';
import { extractOpReference, renderOpReference } from '../../src/protocol/docs.js';
import { OPS, OP_NAMES, parseArgs, parseRequest, encodeValue, RequestError, type ArgSpec } from '../../src/protocol/index.js';
import { HANDLERS } from '../../src/server/handlers.js';
import { throwsWith } from '../helpers/errno.js';

const DOC = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
const CONTRACT_OPS = [
  'hello', 'domain_alloc', 'domain_free', 'map', 'unmap', 'map_sg', 'unmap_sg', 'iotlb_sync',
  'flush_iotlb_all', 'iova_to_phys', 'lookup', 'attach', 'detach', 'translate', 'stats',
];

test('the schema has every op of the contract, and the server a handler for each', (t) => {
  t.deepEqual([...OP_NAMES].sort(), [...CONTRACT_OPS].sort());
  t.deepEqual(Object.keys(HANDLERS).sort(), [...OP_NAMES].sort());
});

test('docs/protocol.md documents exactly the ops of the schema', (t) => {
  const documented = [...DOC.matchAll(/^### `([a-z_]+)`$/gm)].map((m) => m[1]).sort();
  t.deepEqual(documented, [...OP_NAMES].sort());
});

test("docs/protocol.md's op reference is the one the schema renders", (t) => {
  t.is(extractOpReference(DOC), renderOpReference(), 'run: node dist/src/cli/main.js protocol --update docs/protocol.md');
});

test('every argument name is snake_case and every listed error is an errno of the catalogue', (t) => {
  for (const name of OP_NAMES) {
    t.regex(name, /^[a-z]+(_[a-z]+)*$/);
    for (const arg of Object.keys(OPS[name].args)) t.regex(arg, /^[a-z]+(_[a-z]+)*$/, `${name}.${arg}`);
    for (const code of OPS[name].errors) t.true(Object.hasOwn(ERRNO, code), `${name}: ${code}`);
  }
});

test('arguments: required, types, ranges, unknown names', (t) => {
  const map = { domain: 1, iova: 0x1000, paddr: 0x2000, size: 0x1000, prot: 3 };
  t.deepEqual(parseArgs('map', { id: 1, op: 'map', ...map }), map);
  throwsWith(t, () => parseArgs('map', { ...map, iova: undefined }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, iova: null }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, iova: '4096' }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, iova: -4096 }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, iova: 4096.5 }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, iova: NaN }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, iova: 2 ** 53 }), 'ERANGE');
  throwsWith(t, () => parseArgs('map', { ...map, iova: 2n ** 60n }), 'ERANGE');
  throwsWith(t, () => parseArgs('map', { ...map, iova: Infinity }), 'ERANGE');
  throwsWith(t, () => parseArgs('map', { ...map, domain: 2 ** 32 }), 'EINVAL');
  throwsWith(t, () => parseArgs('map', { ...map, flags: 1 }), 'EINVAL');
  t.is(parseArgs('map', { ...map, iova: 2 ** 53 - 1 }).iova, 2 ** 53 - 1);
  // An optional argument sent as nil is absent.
  t.deepEqual(parseArgs('domain_alloc', { format: null, granule: 4096 }), { granule: 4096 });
  throwsWith(t, () => parseArgs('domain_alloc', { format: 'x86' }), 'EINVAL');
  throwsWith(t, () => parseArgs('domain_alloc', { invalidate_on_map: 1 }), 'EINVAL');
  throwsWith(t, () => parseArgs('translate', { device: 1, iova: 0, access: 'exec' }), 'EINVAL');
  throwsWith(t, () => parseArgs('hello', { tenant: 'x'.repeat(129) }), 'EINVAL');
  throwsWith(t, () => parseArgs('stats', { domain: 1 }), 'EINVAL');
});

test('sg lists: [phys, length] pairs into an SgTable', (t) => {
  const a = parseArgs('map_sg', { domain: 1, iova: 0, prot: 1, sg: [[0x1000, 0x1000], [0x3000, 0x2000]] });
  t.true(a.sg instanceof SgTable);
  t.deepEqual([...a.sg], [{ phys: 0x1000, length: 0x1000 }, { phys: 0x3000, length: 0x2000 }]);
  t.is(parseArgs('map_sg', { domain: 1, iova: 0, prot: 1, sg: [] }).sg.length, 0);
  const bad = (sg: unknown): Record<string, unknown> => ({ domain: 1, iova: 0, prot: 1, sg });
  throwsWith(t, () => parseArgs('map_sg', bad({ phys: 1 })), 'EINVAL');
  throwsWith(t, () => parseArgs('map_sg', bad([{ phys: 0, length: 4096 }])), 'EINVAL');
  throwsWith(t, () => parseArgs('map_sg', bad([[0, 4096, 1]])), 'EINVAL');
  throwsWith(t, () => parseArgs('map_sg', bad([[0, 0]])), 'EINVAL');
  throwsWith(t, () => parseArgs('map_sg', bad([[2n ** 53n, 4096]])), 'ERANGE');
  throwsWith(t, () => parseArgs('map_sg', bad([[0, -1]])), 'EINVAL');
});

test('request envelope: id, op, EPROTO for non-maps', (t) => {
  const fail = (body: Uint8Array): RequestError => t.throws(() => parseRequest(body), { instanceOf: RequestError })!;
  t.is(fail(encodeValue([1, 2])).error.code, 'EPROTO');
  t.is(fail(encodeValue('map')).error.code, 'EPROTO');
  t.is(fail(encodeValue(null)).error.code, 'EPROTO');
  t.is(fail(encodeValue(Buffer.from([1]))).error.code, 'EPROTO');
  let e = fail(encodeValue({ op: 'stats' }));
  t.is(e.error.code, 'EINVAL');
  t.is(e.id, null);
  e = fail(encodeValue({ id: -1, op: 'stats' }));
  t.is(e.error.code, 'EINVAL');
  e = fail(encodeValue({ id: 7, op: 'frobnicate' }));
  t.is(e.error.code, 'ENOSYS');
  t.is(e.id, 7);
  e = fail(encodeValue({ id: 8, op: 42 }));
  t.is(e.error.code, 'EINVAL');
  t.is(e.id, 8);
  const ok = parseRequest(encodeValue({ id: 2n ** 63n, op: 'stats' }));
  t.is(ok.id, 2n ** 63n);
});

test('the op reference names every argument with its type', (t) => {
  const ref = renderOpReference();
  for (const name of OP_NAMES) {
    for (const [arg, spec] of Object.entries(OPS[name].args as Record<string, ArgSpec>)) {
      t.true(ref.includes(`| \`${arg}\` | ${spec.type.wire.replace(/\|/g, '\\|')} |`), `${name}.${arg}`);
    }
  }
});
