/**
 * Requests and responses. A request is a map `{ id, op, ...arguments }`; a response is
 * `{ id, ok: true, result }` or `{ id, ok: false, error: { code, message, ...details } }`.
 */
import { IommuError, type Errno } from '../errors/errors.js';
import { describe } from '../util/args.js';
import { decodeValue, toWireIntegers } from './msgpack.js';
import { isOpName, parseArgs, type ArgsOf, type OpName } from './schema.js';

/** A request id: any unsigned integer (a bigint when it is beyond 2^53), or null when unusable. */
export type RequestId = number | bigint | null;

export interface ErrorBody {
  code: string;
  message: string;
  /** Structured details, e.g. a translate fault's `reason`, `device`, `iova`, `access`. */
  [detail: string]: unknown;
}

export type Response =
  | { id: RequestId; ok: true; result: unknown }
  | { id: RequestId; ok: false; error: ErrorBody };

export interface ParsedRequest<O extends OpName = OpName> {
  id: RequestId;
  op: O;
  args: ArgsOf<O>;
}

/** Thrown for a request that cannot be served: the error to answer, and the id to answer it under. */
export class RequestError extends Error {
  constructor(
    readonly id: RequestId,
    readonly error: IommuError,
  ) {
    super(error.message);
  }
}

const UINT64_MAX = 2n ** 64n - 1n;

function parseId(value: unknown): RequestId {
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return value;
  if (typeof value === 'bigint' && value >= 0n && value <= UINT64_MAX) return value;
  const what = value === undefined ? 'is missing' : `must be an unsigned integer, got ${describe(value)}`;
  throw new RequestError(null, new IommuError('EINVAL', `the request id ${what}`));
}

/**
 * A frame body as a request: EPROTO (id null) if it is not one MessagePack map; EINVAL for a missing
 * or bad id, op or argument; ENOSYS for an op that does not exist.
 */
export function parseRequest(body: Uint8Array): ParsedRequest {
  let msg: unknown;
  try {
    msg = decodeValue(body);
  } catch (e) {
    throw new RequestError(null, e as IommuError);
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg) || msg instanceof Uint8Array) {
    throw new RequestError(null, new IommuError('EPROTO', `a request must be a MessagePack map, got ${describe(msg)}`));
  }
  const request = msg as Record<string, unknown>;
  const id = parseId(request.id);
  const op = request.op;
  if (typeof op !== 'string') {
    throw new RequestError(id, new IommuError('EINVAL', `the request's op must be a string, got ${describe(op)}`));
  }
  if (!isOpName(op)) throw new RequestError(id, new IommuError('ENOSYS', `no such op '${op.slice(0, 64)}'`));
  try {
    return { id, op, args: parseArgs(op, request) };
  } catch (e) {
    throw new RequestError(id, e as IommuError);
  }
}

export function okResponse(id: RequestId, result: unknown): Response {
  return toWireIntegers({ id, ok: true, result });
}

/** The message of an IommuError without the "CODE: " its constructor put in front. */
export function plainMessage(e: Error, code: string): string {
  return e.message.startsWith(`${code}: `) ? e.message.slice(code.length + 2) : e.message;
}

export function errorResponse(id: RequestId, code: Errno, message: string, details?: Record<string, unknown>): Response {
  return toWireIntegers({ id, ok: false, error: { code, message, ...details } });
}

/** Any thrown value as an error response: an IommuError keeps its code; anything else is EIO. */
export function errorResponseFor(id: RequestId, e: unknown, details?: Record<string, unknown>): Response {
  if (e instanceof IommuError) return errorResponse(id, e.code, plainMessage(e, e.code), details);
  return errorResponse(id, 'EIO', `internal error: ${e instanceof Error ? e.message : String(e)}`);
}
