/**
 * MessagePack for an untrusted socket. Every frame holds one *standard* MessagePack value: before
 * msgpackr decodes it, `checkStandardValue` walks the bytes once and refuses extension types (msgpackr
 * would turn them into Dates or records), trailing bytes, truncated values and nesting deeper than any
 * request needs (msgpackr decodes recursively). msgpackr is then configured for other languages'
 * encoders: plain maps become plain objects, and 64-bit integers become numbers when they are safe
 * (a uint64-encoded 5 is 5) and bigints otherwise, which argument checks answer with ERANGE.
 *
 * Encoding: msgpackr writes a JavaScript number above 32 bits as a float64. The protocol promises
 * integers, so `toWireIntegers` turns such numbers into bigints first (written as int64/uint64).
 */
import { Packr, Unpackr } from 'msgpackr';
import { IommuError } from '../errors/errors.js';

/** A request is a map of arguments whose deepest value is an sg entry: map → array → array. */
export const MAX_DEPTH = 16;

// 'auto' (a number when safe, else a bigint) is implemented by msgpackr but missing from its typings.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' as 'bigint' });
const packr = new Packr({ useRecords: false, variableMapSize: true });

/**
 * Throws EPROTO unless `bytes` is exactly one well-formed standard MessagePack value. No allocation
 * beyond a small stack: a hostile length cannot make it reserve memory.
 */
export function checkStandardValue(bytes: Uint8Array): void {
  const end = bytes.length;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // open[d]: values still to read in the container open at depth d (the top level counts as one).
  const open: number[] = [1];
  let pos = 0;
  const need = (n: number): void => {
    if (n > end - pos) throw new IommuError('EPROTO', `frame ends inside a MessagePack value (at byte ${pos})`);
  };
  while (open.length > 0) {
    const top = open.length - 1;
    if (open[top] === 0) {
      open.pop();
      continue;
    }
    open[top]!--;
    need(1);
    const b = bytes[pos++]!;
    let items = 0;
    let skip = 0;
    if (b <= 0x7f || b >= 0xe0) {
      // positive or negative fixint
    } else if (b <= 0x8f) {
      items = (b & 0x0f) * 2;
    } else if (b <= 0x9f) {
      items = b & 0x0f;
    } else if (b <= 0xbf) {
      skip = b & 0x1f;
    } else {
      switch (b) {
        case 0xc0: case 0xc2: case 0xc3: break; // nil, false, true
        case 0xc4: case 0xd9: need(1); skip = bytes[pos++]!; break; // bin8, str8
        case 0xc5: case 0xda: need(2); skip = view.getUint16(pos); pos += 2; break; // bin16, str16
        case 0xc6: case 0xdb: need(4); skip = view.getUint32(pos); pos += 4; break; // bin32, str32
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xca: case 0xce: case 0xd2: skip = 4; break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
        case 0xdc: need(2); items = view.getUint16(pos); pos += 2; break; // array16
        case 0xdd: need(4); items = view.getUint32(pos); pos += 4; break; // array32
        case 0xde: need(2); items = view.getUint16(pos) * 2; pos += 2; break; // map16
        case 0xdf: need(4); items = view.getUint32(pos) * 2; pos += 4; break; // map32
        case 0xc1:
          throw new IommuError('EPROTO', `byte 0xc1 at ${pos - 1} is never used by MessagePack`);
        default: // 0xc7-0xc9, 0xd4-0xd8
          throw new IommuError('EPROTO', `extension type at byte ${pos - 1}: the protocol is standard MessagePack without extensions`);
      }
    }
    if (skip > 0) {
      need(skip);
      pos += skip;
    }
    if (items > 0) {
      // Every value takes at least one byte, so a count beyond what is left is a lie.
      need(items);
      if (open.length > MAX_DEPTH) throw new IommuError('EPROTO', `values nested deeper than ${MAX_DEPTH}`);
      open.push(items);
    }
  }
  if (pos !== end) throw new IommuError('EPROTO', `${end - pos} bytes after the MessagePack value`);
}

/** One standard MessagePack value, or EPROTO. */
export function decodeValue(bytes: Uint8Array): unknown {
  checkStandardValue(bytes);
  try {
    return unpackr.unpack(bytes);
  } catch (e) {
    throw new IommuError('EPROTO', `undecodable MessagePack: ${(e as Error).message}`);
  }
}

export function encodeValue(value: unknown): Buffer {
  return packr.pack(value);
}

const UINT32_LIMIT = 2 ** 32;
const INT64_LIMIT = 2 ** 63;

/** n as the protocol sends an integer: a bigint when msgpackr would otherwise write a float64. */
export function wireInt(n: number): number | bigint {
  return Number.isInteger(n) && (n >= UINT32_LIMIT || n < -(2 ** 31)) && Math.abs(n) < INT64_LIMIT ? BigInt(n) : n;
}

/**
 * Replaces, in place, every integer number of plain objects and arrays that msgpackr would write as a
 * float64 by a bigint, so it goes out as a MessagePack integer. Returns `value`.
 */
export function toWireIntegers<T>(value: T): T {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      if (typeof v === 'number') value[i] = wireInt(v);
      else if (typeof v === 'object' && v !== null) toWireIntegers(v);
    }
  } else if (typeof value === 'object' && value !== null) {
    const o = value as Record<string, unknown>;
    for (const key of Object.keys(o)) {
      const v = o[key];
      if (typeof v === 'number') o[key] = wireInt(v);
      else if (typeof v === 'object' && v !== null) toWireIntegers(v);
    }
  }
  return value;
}
