/**
 * A raw protocol connection for tests: sends frames (or any bytes) and reads responses as decoded
 * maps, with no client library in between.
 */
import { connect, type Socket } from 'node:net';
import { decodeValue, encodeFrame, FrameReader, frameBytes, MAX_MAX_FRAME } from '../../src/protocol/index.js';

export interface WireResponse {
  id: number | bigint | null;
  ok: boolean;
  result?: unknown;
  error?: { code: string; message: string; reason?: string; device?: number; iova?: number; access?: string };
}

export class RawConn {
  private readonly responses: WireResponse[] = [];
  private waiters: (() => void)[] = [];
  private readonly reader: FrameReader;
  private nextId = 1;
  readonly closed: Promise<void>;
  isClosed = false;

  private constructor(readonly socket: Socket) {
    this.reader = new FrameReader(MAX_MAX_FRAME, {
      frame: (body) => {
        this.responses.push(decodeValue(body) as WireResponse);
        this.wake();
      },
      oversize: () => socket.destroy(new Error('oversize response')),
    });
    socket.on('data', (c: Buffer) => this.reader.push(c));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.isClosed = true;
        this.wake();
        resolve();
      }),
    );
  }

  static open(target: string | { host: string; port: number }): Promise<RawConn> {
    const socket = typeof target === 'string' ? connect(target) : connect(target.port, target.host);
    return new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(new RawConn(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Sends a request map (an id is added if it has none); returns its id. */
  send(request: Record<string, unknown>): number | bigint {
    const id = (request.id ?? this.nextId++) as number | bigint;
    // msgpackr writes undefined as an extension type; an absent argument is simply not sent.
    const message = Object.fromEntries(Object.entries({ ...request, id }).filter(([, v]) => v !== undefined));
    this.socket.write(encodeFrame(message));
    return id;
  }

  sendBody(body: Uint8Array): void {
    this.socket.write(frameBytes(body));
  }

  sendRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Responses received so far and not yet taken. */
  get buffered(): number {
    return this.responses.length;
  }

  /** The next response in arrival order. */
  async next(timeoutMs = 10_000): Promise<WireResponse> {
    const deadline = Date.now() + timeoutMs;
    while (this.responses.length === 0) {
      if (this.isClosed) throw new Error('connection closed while waiting for a response');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a response');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.responses.shift()!;
  }

  /** The next `n` responses, in arrival order. */
  async take(n: number, timeoutMs = 20_000): Promise<WireResponse[]> {
    const out: WireResponse[] = [];
    for (let i = 0; i < n; i++) out.push(await this.next(timeoutMs));
    return out;
  }

  /** The response with `id` (others stay buffered). */
  async response(id: number | bigint, timeoutMs = 10_000): Promise<WireResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.responses.findIndex((r) => r.id === id || (r.id !== null && BigInt(r.id) === BigInt(id)));
      if (i >= 0) return this.responses.splice(i, 1)[0]!;
      if (this.isClosed) throw new Error(`connection closed before response ${id}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for response ${id}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Sends a request and waits for its response. */
  call(request: Record<string, unknown>): Promise<WireResponse> {
    return this.response(this.send(request));
  }

  /** Sends a request and returns its result, throwing if the response is an error. */
  async ok<T = Record<string, unknown>>(request: Record<string, unknown>): Promise<T> {
    const r = await this.call(request);
    if (!r.ok) throw new Error(`${String(request.op)} failed: ${r.error?.code} ${r.error?.message}`);
    return r.result as T;
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * MessagePack as another language's encoder might write it: every integer as uint64 (0xcf) or int64
 * (0xd3), other numbers as float64, maps as map16, arrays as array16, strings as str8/str16. Only what the tests need.
 */
export function encodeForeign(value: unknown): Buffer {
  const parts: Buffer[] = [];
  const put = (v: unknown): void => {
    if (v === null || v === undefined) parts.push(Buffer.from([0xc0]));
    else if (typeof v === 'boolean') parts.push(Buffer.from([v ? 0xc3 : 0xc2]));
    else if (typeof v === 'number' && (!Number.isInteger(v) || Math.abs(v) >= 2 ** 63)) {
      const b = Buffer.alloc(9);
      b[0] = 0xcb;
      b.writeDoubleBE(v, 1);
      parts.push(b);
    } else if (typeof v === 'number' || typeof v === 'bigint') {
      const b = Buffer.alloc(9);
      const big = BigInt(v);
      if (big >= 0n) {
        b[0] = 0xcf;
        b.writeBigUInt64BE(big, 1);
      } else {
        b[0] = 0xd3;
        b.writeBigInt64BE(big, 1);
      }
      parts.push(b);
    } else if (typeof v === 'string') {
      const s = Buffer.from(v, 'utf8');
      parts.push(s.length < 256 ? Buffer.from([0xd9, s.length]) : Buffer.from([0xda, s.length >> 8, s.length & 0xff]), s);
    } else if (Array.isArray(v)) {
      parts.push(Buffer.from([0xdc, v.length >> 8, v.length & 0xff]));
      for (const e of v) put(e);
    } else if (typeof v === 'object') {
      const entries = Object.entries(v as Record<string, unknown>);
      parts.push(Buffer.from([0xde, entries.length >> 8, entries.length & 0xff]));
      for (const [k, e] of entries) {
        put(k);
        put(e);
      }
    } else {
      throw new Error(`encodeForeign: ${typeof v}`);
    }
  };
  put(value);
  return Buffer.concat(parts);
}
