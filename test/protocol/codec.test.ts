import test from 'ava';
import {
  checkStandardValue,
  decodeValue,
  encodeFrame,
  encodeValue,
  FrameReader,
  MAX_DEPTH,
  toWireIntegers,
  wireInt,
} from '../../src/protocol/index.js';
import { IommuError } from '../../src/index.js';
import { throwsWith } from '../helpers/errno.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('standard values pass the check and decode to plain objects', (t) => {
  const body = encodeValue({ id: 1, op: 'map_sg', sg: [[4096, 8192]], ok: true, s: 'x', n: null, f: 1.5, b: Buffer.from([1]) });
  t.notThrows(() => checkStandardValue(body));
  const v = decodeValue(body) as Record<string, unknown>;
  t.is(Object.getPrototypeOf(v), Object.prototype);
  t.deepEqual(v.sg, [[4096, 8192]]);
});

test('uint64 and int64 integers decode as numbers when safe, as bigints beyond 2^53', (t) => {
  t.is(decodeValue(hex('cf 0000000000000005')), 5);
  t.is(decodeValue(hex('cf 001fffffffffffff')), 2 ** 53 - 1);
  t.is(decodeValue(hex('d3 ffffffffffffffff')), -1);
  t.is(decodeValue(hex('cf 0020000000000001')), 2n ** 53n + 1n);
  t.is(decodeValue(hex('cf ffffffffffffffff')), 2n ** 64n - 1n);
});

test('the encoder sends integers above 32 bits as MessagePack integers, never floats', (t) => {
  t.deepEqual(encodeValue(toWireIntegers({ a: 2 ** 40 })), hex('81 a1 61 d3 0000010000000000'));
  t.deepEqual(encodeValue(toWireIntegers([2 ** 52 + 1])), hex('91 d3 0010000000000001'));
  t.deepEqual(encodeValue(wireInt(2 ** 32)), hex('d3 0000000100000000'));
  t.deepEqual(encodeValue(toWireIntegers({ c: 1.5, d: 7 })), hex('82 a1 63 cb 3ff8000000000000 a1 64 07'));
  const v = { a: 2 ** 40, b: [2 ** 52 + 1], c: 1.5, d: 7, e: -(2 ** 40) };
  t.deepEqual(decodeValue(encodeValue(toWireIntegers(structuredClone(v)))), v);
});

test('extension types, the unused byte 0xc1, truncation and trailing bytes are EPROTO', (t) => {
  throwsWith(t, () => checkStandardValue(hex('d6ff00000001')), 'EPROTO', 'timestamp ext');
  throwsWith(t, () => checkStandardValue(hex('d40105')), 'EPROTO', 'fixext1');
  throwsWith(t, () => checkStandardValue(hex('c7 01 05 00')), 'EPROTO', 'ext8');
  throwsWith(t, () => checkStandardValue(hex('c1')), 'EPROTO');
  throwsWith(t, () => checkStandardValue(hex('82 a1 61 01')), 'EPROTO', 'map missing a pair');
  throwsWith(t, () => checkStandardValue(hex('01 02')), 'EPROTO', 'two values');
  throwsWith(t, () => checkStandardValue(Buffer.alloc(0)), 'EPROTO', 'empty');
  throwsWith(t, () => checkStandardValue(hex('cf 00 00')), 'EPROTO', 'short uint64');
});

test('hostile lengths fail fast, and nesting is bounded', (t) => {
  throwsWith(t, () => checkStandardValue(hex('dd ffffffff 01')), 'EPROTO');
  throwsWith(t, () => checkStandardValue(hex('df ffffffff 01')), 'EPROTO');
  throwsWith(t, () => checkStandardValue(hex('c6 ffffffff')), 'EPROTO');
  throwsWith(t, () => checkStandardValue(hex('db ffffffff')), 'EPROTO');
  const deep = Buffer.alloc(MAX_DEPTH + 2, 0x91);
  deep[deep.length - 1] = 0x01;
  throwsWith(t, () => checkStandardValue(deep), 'EPROTO');
  const ok = Buffer.alloc(MAX_DEPTH, 0x91);
  ok[ok.length - 1] = 0x01;
  t.notThrows(() => checkStandardValue(ok));
  const huge = Buffer.alloc(200_000, 0x91);
  throwsWith(t, () => decodeValue(huge), 'EPROTO');
});

test('FrameReader reassembles frames split anywhere and hands out several per chunk', (t) => {
  const values = [{ id: 1 }, { id: 2, s: 'x'.repeat(1000) }, { id: 3 }, {}];
  const stream = Buffer.concat(values.map((v) => encodeFrame(v)));
  for (const step of [1, 2, 3, 5, 7, 64, stream.length]) {
    const got: unknown[] = [];
    const r = new FrameReader(1 << 20, { frame: (b) => got.push(decodeValue(b)), oversize: () => t.fail() });
    for (let i = 0; i < stream.length; i += step) r.push(stream.subarray(i, i + step));
    t.deepEqual(got, values, `chunks of ${step}`);
    t.is(r.partialBytes, 0);
  }
});

test('FrameReader stops at a length above the maximum, and passes empty bodies', (t) => {
  const bodies: number[] = [];
  let oversize = -1;
  const r = new FrameReader(100, { frame: (b) => bodies.push(b.length), oversize: (n) => (oversize = n) });
  r.push(Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0, 0, 0, 101, 1, 2, 3]));
  t.deepEqual(bodies, [0, 1]);
  t.is(oversize, 101);
  t.true(r.isStopped);
  r.push(Buffer.from([0, 0, 0, 1, 1]));
  t.deepEqual(bodies, [0, 1], 'nothing after an oversize header is framed');
});

test('decodeValue reports EPROTO as an IommuError', (t) => {
  const e = t.throws(() => decodeValue(hex('c1')));
  t.true(e instanceof IommuError);
});
