/**
 * What crosses between the main thread and the engine thread of iommud/embed, besides plain numbers:
 * outcomes (comlink would turn a thrown IommuError into a plain Error without its code, so every host
 * call answers an Outcome instead of throwing) and scatter-gather lists.
 */
import { FaultError, type DeviceFault } from '../core/devices.js';
import { SgTable } from '../core/sg.js';
import { SgIndex } from '../core/sgindex.js';
import { IommuError, type Errno } from '../errors/errors.js';
import { plainMessage } from '../protocol/messages.js';

export interface WireError {
  code: Errno;
  message: string;
  /** A translate fault's data (code EFAULT). */
  fault?: DeviceFault;
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; error: WireError };

/** Any thrown value as a WireError: an IommuError keeps its code; anything else is a bug, EIO. */
export function toWireError(e: unknown): WireError {
  if (e instanceof FaultError) return { code: 'EFAULT', message: plainMessage(e, 'EFAULT'), fault: { ...e.fault } };
  if (e instanceof IommuError) return { code: e.code, message: plainMessage(e, e.code) };
  return { code: 'EIO', message: `internal error in the engine thread: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}` };
}

/** The IommuError (or FaultError) a WireError stands for, as the in-process call would have thrown it. */
export function fromWireError(w: WireError): IommuError {
  return w.fault ? new FaultError(Object.freeze(w.fault)) : new IommuError(w.code, w.message);
}

/**
 * An sg list on its way to the engine thread. An SgTable goes whole: structured cloning copies its
 * own fields, and its segments are a Float64Array over a SharedArrayBuffer, which is shared, not
 * copied; only the SgIndex (16 bytes per 64 entries) is copied. Cloning drops the prototypes, so the
 * engine thread puts them back (sgFromWire). Anything else (an array) is cloned as it is.
 */
export type WireSg = { sgTable: SgTable } | { list: unknown };

export function sgToWire(sg: unknown): WireSg {
  return sg instanceof SgTable ? { sgTable: sg } : { list: sg };
}

/** The fields structured cloning leaves of an SgTable and its SgIndex (see src/core/sg.ts, sgindex.ts). */
interface ClonedSgTable {
  buffer: unknown;
  view: unknown;
  count: unknown;
  index: Record<string, unknown> | null;
}

export function sgFromWire(w: WireSg): SgTable | unknown {
  if (!('sgTable' in w)) return w.list;
  const t = w.sgTable as unknown as ClonedSgTable;
  const index = t.index;
  if (
    !(t.buffer instanceof SharedArrayBuffer) || !(t.view instanceof Float64Array) || t.view.buffer !== t.buffer ||
    !Number.isInteger(t.count) || typeof index !== 'object' || index === null ||
    !(index.bytesBefore instanceof Float64Array) || !(index.firstBreak instanceof Int32Array) || !(index.lastBreak instanceof Int32Array)
  ) {
    // Only a change of SgTable's fields can get here; test/embed pins them.
    throw new IommuError('EIO', 'internal error: an SgTable arrived in a shape the engine thread does not know');
  }
  Object.setPrototypeOf(index, SgIndex.prototype);
  return Object.setPrototypeOf(t, SgTable.prototype) as SgTable;
}
