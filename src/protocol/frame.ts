/**
 * Framing: every message, both ways, is a 4-byte big-endian length N and then N bytes of MessagePack.
 *
 *   +----------------+---------------------------------+
 *   | N (uint32, BE) | N bytes: one MessagePack value  |
 *   +----------------+---------------------------------+
 *
 * FrameReader cuts a byte stream into frame bodies. A body that lies inside one chunk is handed out as
 * a view of that chunk (no copy). A body split across chunks is kept as the list of its pieces and
 * joined once when the last arrives: a 16 MiB frame in 64 KiB chunks costs one copy, not 256, and a
 * peer that announces 16 MiB and sends little holds only what it sent.
 */
import { encodeValue } from './msgpack.js';

export const HEADER_BYTES = 4;
/** The default largest frame body a server accepts: 16 MiB. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;
/** The largest --max-frame: a body is one Buffer, and a length is a uint32. */
export const MAX_MAX_FRAME = 2 ** 30;

export interface FrameSink {
  /** A complete frame body; valid only during the call (it may be a view of a chunk). */
  frame(body: Buffer): void;
  /** A header announced `length` > maxFrame. The reader stops: nothing after it is a frame boundary. */
  oversize(length: number): void;
}

export class FrameReader {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  /** Pieces of a body that spans chunks, their total, and the body's length (-1: none pending). */
  private pieces: Buffer[] = [];
  private bodyFill = 0;
  private bodyLength = -1;
  private stopped = false;

  constructor(
    private readonly maxFrame: number,
    private readonly sink: FrameSink,
  ) {}

  /** True once an oversize header was seen: the stream can no longer be framed. */
  get isStopped(): boolean {
    return this.stopped;
  }

  /** Bytes of a frame received so far but not yet complete. */
  get partialBytes(): number {
    return this.headerFill + this.bodyFill;
  }

  push(chunk: Buffer): void {
    let pos = 0;
    const end = chunk.length;
    while (pos < end && !this.stopped) {
      if (this.bodyLength >= 0) {
        // Collecting a body that spans chunks.
        const n = Math.min(this.bodyLength - this.bodyFill, end - pos);
        this.pieces.push(chunk.subarray(pos, pos + n));
        this.bodyFill += n;
        pos += n;
        if (this.bodyFill === this.bodyLength) {
          const body = Buffer.concat(this.pieces, this.bodyLength);
          this.pieces = [];
          this.bodyFill = 0;
          this.bodyLength = -1;
          this.sink.frame(body);
        }
        continue;
      }
      let length: number;
      if (this.headerFill === 0 && end - pos >= HEADER_BYTES) {
        length = chunk.readUInt32BE(pos);
        pos += HEADER_BYTES;
      } else {
        const n = Math.min(HEADER_BYTES - this.headerFill, end - pos);
        chunk.copy(this.header, this.headerFill, pos, pos + n);
        this.headerFill += n;
        pos += n;
        if (this.headerFill < HEADER_BYTES) break;
        this.headerFill = 0;
        length = this.header.readUInt32BE(0);
      }
      if (length > this.maxFrame) {
        this.stopped = true;
        this.sink.oversize(length);
        return;
      }
      if (end - pos >= length) {
        this.sink.frame(chunk.subarray(pos, pos + length));
        pos += length;
      } else {
        this.bodyLength = length;
        this.bodyFill = 0;
      }
    }
  }
}

/** The frame for a body already encoded. */
export function frameBytes(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  out.set(body, HEADER_BYTES);
  return out;
}

/** One value as a complete frame: header and MessagePack body. */
export function encodeFrame(value: unknown): Buffer {
  return frameBytes(encodeValue(value));
}
