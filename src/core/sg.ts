/**
 * Scatter-gather lists. An SgTable keeps its segments in a SharedArrayBuffer as Float64 pairs
 * [phys0, length0, phys1, length1, ...], so worker threads read them without a copy. A plain array of
 * { phys, length } is accepted everywhere an SgTable is, and gives identical results.
 */
import { IommuError } from '../errors/errors.js';
import { ADDRESS_LIMIT, checkAddress, checkCount, describe } from '../util/args.js';
import { SgIndex } from './sgindex.js';

export interface SgEntry {
  phys: number;
  length: number;
}

export type SgList = ReadonlyArray<SgEntry> | SgTable;

const DEFAULT_CAPACITY = 64;

export class SgTable {
  private buffer: SharedArrayBuffer;
  private view: Float64Array;
  private count = 0;
  /** Kept as entries are pushed, so a big map_sg is cut into chunks without a pass over the list. */
  private readonly index: SgIndex;

  constructor(capacity: number = DEFAULT_CAPACITY) {
    const cap = Math.max(1, checkCount('capacity', capacity, 2 ** 27));
    this.buffer = new SharedArrayBuffer(cap * 16);
    this.view = new Float64Array(this.buffer);
    this.index = new SgIndex(cap);
  }

  static from(entries: Iterable<SgEntry>): SgTable {
    const list = Array.isArray(entries) ? (entries as SgEntry[]) : [...entries];
    const table = new SgTable(list.length);
    list.forEach((e, i) => {
      if (typeof e !== 'object' || e === null) throw new IommuError('EINVAL', `sg[${i}] must be { phys, length }, got ${describe(e)}`);
      table.push(e.phys, e.length);
    });
    return table;
  }

  /** Appends one segment. phys: a physical address; length: bytes, above 0. */
  push(phys: number, length: number): this {
    checkSegment(this.count, phys, length);
    if (this.count * 2 === this.view.length) this.grow();
    this.view[this.count * 2] = phys;
    this.view[this.count * 2 + 1] = length;
    this.index.add(this.view, this.count);
    this.count++;
    return this;
  }

  get length(): number {
    return this.count;
  }

  get(i: number): SgEntry | undefined {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) return undefined;
    return { phys: this.view[i * 2]!, length: this.view[i * 2 + 1]! };
  }

  *[Symbol.iterator](): IterableIterator<SgEntry> {
    for (let i = 0; i < this.count; i++) yield { phys: this.view[i * 2]!, length: this.view[i * 2 + 1]! };
  }

  /** The shared memory and the number of segments in it (for the engine and its workers). */
  get shared(): { buffer: SharedArrayBuffer; count: number } {
    return { buffer: this.buffer, count: this.count };
  }

  /** @internal Segments as [phys, length] pairs, with their index; valid until the next push. */
  get engineView(): SgView {
    return { pairs: this.view.subarray(0, this.count * 2), index: this.index };
  }

  /** Segments as [phys, length] pairs; valid until the next push. */
  get pairs(): Float64Array {
    return this.view.subarray(0, this.count * 2);
  }

  private grow(): void {
    const bigger = new SharedArrayBuffer(this.buffer.byteLength * 2);
    const view = new Float64Array(bigger);
    view.set(this.view);
    this.buffer = bigger;
    this.view = view;
  }
}

function checkSegment(i: number, phys: unknown, length: unknown): void {
  // The common, valid case first, without building the argument names for a message.
  if (
    typeof phys === 'number' && typeof length === 'number' &&
    Number.isInteger(phys) && Number.isInteger(length) &&
    phys >= 0 && phys < ADDRESS_LIMIT && length > 0 && length < ADDRESS_LIMIT
  ) {
    return;
  }
  checkAddress(`sg[${i}].phys`, phys);
  if (checkAddress(`sg[${i}].length`, length) === 0) {
    throw new IommuError('EINVAL', `sg[${i}].length must be above 0`);
  }
}

/** An sg list as the engine reads it: [phys, length] pairs, and their index. */
export interface SgView {
  pairs: Float64Array;
  index: SgIndex;
}

/** The segments of either form as [phys, length] pairs with an index, every entry checked. */
export function sgView(sg: unknown): SgView {
  if (sg instanceof SgTable) return sg.engineView;
  if (!Array.isArray(sg)) {
    throw new IommuError('EINVAL', `sg must be an array of { phys, length } or an SgTable, got ${describe(sg)}`);
  }
  const pairs = new Float64Array(sg.length * 2);
  const index = new SgIndex(sg.length);
  for (let i = 0; i < sg.length; i++) {
    const e: unknown = sg[i];
    if (typeof e !== 'object' || e === null) throw new IommuError('EINVAL', `sg[${i}] must be { phys, length }, got ${describe(e)}`);
    const { phys, length } = e as Record<string, unknown>;
    checkSegment(i, phys, length);
    pairs[i * 2] = phys as number;
    pairs[i * 2 + 1] = length as number;
    index.add(pairs, i);
  }
  return { pairs, index };
}

/** The same array in a SharedArrayBuffer (for worker threads), copying only if it is not already. */
export function inSharedMemory<T extends Float64Array | Int32Array>(array: T): T {
  if (array.buffer instanceof SharedArrayBuffer) return array;
  const shared = new (array.constructor as new (b: SharedArrayBuffer) => T)(new SharedArrayBuffer(array.byteLength));
  shared.set(array);
  return shared;
}
