/**
 * `iommud stress --record FILE` writes, and `iommud replay FILE` reads, the operation trace of a run:
 * one standard MessagePack map (the wire protocol's codec, src/protocol/msgpack.ts), readable by any
 * MessagePack library:
 *
 *   { format: "iommud-stress-trace", version: 1, config: StressConfig, target: string,
 *     clients: [ { ops: [StressOp, ...], answers: [Answer, ...] }, ... ] }
 *
 * StressOp and Answer are the plain objects of src/stress/workload.ts and run.ts; big lists are
 * stored as their generator ({ kind: "contig" | "swap", phys, n, len }), not entry by entry.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { IommuError } from '../errors/errors.js';
import { decodeValue, encodeValue, toWireIntegers } from '../protocol/msgpack.js';
import type { Answer, StressConfig } from './run.js';
import type { StressOp } from './workload.js';

export const TRACE_FORMAT = 'iommud-stress-trace';

export interface StressTrace {
  format: typeof TRACE_FORMAT;
  version: 1;
  config: StressConfig;
  target: string;
  clients: { ops: StressOp[]; answers: Answer[] }[];
}

export function writeTrace(path: string, trace: StressTrace): void {
  // A structured clone first: toWireIntegers rewrites large numbers in place.
  writeFileSync(path, encodeValue(toWireIntegers(structuredClone(trace))));
}

export function readTrace(path: string): StressTrace {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new IommuError('ENOENT', `cannot read ${path}: ${(e as Error).message}`);
  }
  let value: unknown;
  try {
    value = decodeValue(bytes);
  } catch (e) {
    throw new IommuError('EINVAL', `${path} is not a MessagePack file: ${(e as Error).message}`);
  }
  const t = value as Partial<StressTrace> | null;
  if (!t || typeof t !== 'object' || t.format !== TRACE_FORMAT) throw new IommuError('EINVAL', `${path} is not an iommud stress trace`);
  if (t.version !== 1) throw new IommuError('EINVAL', `${path} is a version ${String(t.version)} trace; this iommud reads version 1`);
  if (!t.config || !Array.isArray(t.clients) || t.clients.some((c) => !Array.isArray(c?.ops) || !Array.isArray(c?.answers) || c.ops.length !== c.answers.length)) {
    throw new IommuError('EINVAL', `${path}: the trace is incomplete`);
  }
  return t as StressTrace;
}
