/**
 * Table memory: the one growable SharedArrayBuffer that holds every page-table page of an Iommu, and
 * the allocator that hands those pages out. The allocator's state lives in the buffer's first page, so
 * every thread that has the buffer (the main thread and each worker) allocates and frees from the same
 * pool, under one small Atomics lock.
 *
 *   byte 0                4096                                              byteLength  maxByteLength
 *   +---------------------+-------------------------------------------------+- - - - - -+
 *   | header (Int32 slots)| table pages: 4K, 16K or 64K each, aligned to size | grown on demand
 *   +---------------------+-------------------------------------------------+- - - - - -+
 *
 * Pages are counted in 4 KiB units ("unit" below). A free page keeps the unit number of the next free
 * page of its size in its first word: the free lists cost no memory of their own. A page is zeroed
 * when it is handed out, so a new table starts with every descriptor invalid.
 *
 * Views are fixed-length typed arrays over the buffer's current length: on Node 20 a length-tracking
 * view of a growable buffer is ~10x slower to index. After any thread grows the buffer, a thread
 * re-creates its views the first time it needs a byte beyond them (`ensureMapped`).
 */
import { threadId } from 'node:worker_threads';
import { IommuError } from '../errors/errors.js';

export const UNIT = 4096;
export const HEADER_BYTES = UNIT;
export const MIN_TABLE_MEMORY = 128 * 1024;
/** Growable SharedArrayBuffers are limited to 4 GiB on Node 20. */
export const MAX_TABLE_MEMORY = 2 ** 32;
const INITIAL_BYTES = 256 * 1024;

/** Named Int32 slots of the header. */
const enum Slot {
  /** 0 when free; otherwise the holder's threadId + 1 (so a dead holder can be identified). */
  Lock = 0,
  /** First unit never handed out. */
  Bump = 1,
  /** Heads of the free lists, by size class (unit number; 0 = empty, unit 0 is the header). */
  Free4K = 2,
  Free16K = 3,
  Free64K = 4,
  /** Table pages in use, and 4K units they occupy. */
  Pages = 5,
  Units = 6,
  /** Ceiling, in units. */
  LimitUnits = 7,
}

const SPINS_BEFORE_WAIT = 128;

function sizeClass(bytes: number): number {
  switch (bytes) {
    case 4096:
      return Slot.Free4K;
    case 16384:
      return Slot.Free16K;
    case 65536:
      return Slot.Free64K;
    default:
      throw new IommuError('EINVAL', `table pages are 4K, 16K or 64K, not ${bytes}`);
  }
}

export class TableMemory {
  readonly sab: SharedArrayBuffer;
  /** Descriptors, one per element (byte offset / 8). */
  f64!: Float64Array;
  /** The same memory as 32-bit words: descriptor i is words 2i (bits 31:0) and 2i+1 (bits 63:32). */
  i32!: Int32Array;
  /** How many bytes the views cover. */
  mappedBytes = 0;
  private readonly me = threadId + 1;

  /** Creates new table memory with a ceiling of `maxBytes`. */
  static create(maxBytes: number): TableMemory {
    if (maxBytes < MIN_TABLE_MEMORY) {
      throw new IommuError('ERANGE', `tableMemoryBytes must be at least ${MIN_TABLE_MEMORY}, got ${maxBytes}`);
    }
    if (maxBytes > MAX_TABLE_MEMORY) {
      throw new IommuError('ERANGE', `tableMemoryBytes must be at most 4 GiB on this engine, got ${maxBytes}`);
    }
    const limitUnits = Math.floor(maxBytes / UNIT);
    const sab = new SharedArrayBuffer(Math.min(INITIAL_BYTES, limitUnits * UNIT), {
      maxByteLength: limitUnits * UNIT,
    });
    const header = new Int32Array(sab, 0, HEADER_BYTES / 4);
    header[Slot.Bump] = 1;
    header[Slot.LimitUnits] = limitUnits;
    return new TableMemory(sab);
  }

  /** Attaches to memory created elsewhere (another thread passes the SharedArrayBuffer). */
  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.remap();
  }

  private remap(): void {
    const len = this.sab.byteLength;
    this.f64 = new Float64Array(this.sab, 0, len / 8);
    this.i32 = new Int32Array(this.sab, 0, len / 4);
    this.mappedBytes = len;
  }

  /** Makes the views cover [0, end) if the buffer has grown that far (another thread grew it). */
  ensureMapped(end: number): void {
    if (end > this.mappedBytes) this.remap();
  }

  get pagesInUse(): number {
    return Atomics.load(this.i32, Slot.Pages);
  }

  get bytesInUse(): number {
    return Atomics.load(this.i32, Slot.Units) * UNIT;
  }

  get limitBytes(): number {
    return this.i32[Slot.LimitUnits]! * UNIT;
  }

  /**
   * A zeroed table page of `bytes` (4K, 16K or 64K), aligned to its size; returns its byte offset, or
   * -1 when the ceiling is reached. Never throws for exhaustion: the caller turns -1 into ENOMEM after
   * it has rolled back.
   */
  alloc(bytes: number): number {
    const cls = sizeClass(bytes);
    const units = bytes / UNIT;
    this.lock();
    let unit: number;
    try {
      unit = this.i32[cls]!;
      if (unit !== 0) {
        this.ensureMapped((unit + 1) * UNIT);
        this.i32[cls] = this.i32[unit * (UNIT / 4)]!;
      } else {
        unit = this.bumpAlloc(units);
        if (unit < 0) return -1;
      }
      Atomics.add(this.i32, Slot.Pages, 1);
      Atomics.add(this.i32, Slot.Units, units);
    } finally {
      this.unlock();
    }
    const offset = unit * UNIT;
    this.f64.fill(0, offset / 8, (offset + bytes) / 8);
    return offset;
  }

  /** Returns a page to its free list. The caller guarantees no walk can still reach it. */
  free(offset: number, bytes: number): void {
    const cls = sizeClass(bytes);
    const unit = offset / UNIT;
    this.lock();
    try {
      this.ensureMapped(offset + bytes);
      this.i32[unit * (UNIT / 4)] = this.i32[cls]!;
      this.i32[cls] = unit;
      Atomics.sub(this.i32, Slot.Pages, 1);
      Atomics.sub(this.i32, Slot.Units, bytes / UNIT);
    } finally {
      this.unlock();
    }
  }

  /** Under the lock: carve `units` aligned units from never-used memory, growing the buffer. */
  private bumpAlloc(units: number): number {
    const bump = this.i32[Slot.Bump]!;
    const start = Math.ceil(bump / units) * units;
    const end = start + units;
    if (end > this.i32[Slot.LimitUnits]!) return -1;
    if (end * UNIT > this.sab.byteLength) {
      const grown = Math.min(this.i32[Slot.LimitUnits]! * UNIT, Math.max(end * UNIT, this.sab.byteLength * 2));
      this.sab.grow(grown);
    }
    this.ensureMapped(end * UNIT);
    // Units skipped to align a large page are not lost: they become free 4K pages.
    for (let u = bump; u < start; u++) {
      this.i32[u * (UNIT / 4)] = this.i32[Slot.Free4K]!;
      this.i32[Slot.Free4K] = u;
    }
    this.i32[Slot.Bump] = end;
    return start;
  }

  /**
   * A spin-then-wait lock on the header's Lock slot. The critical sections are a few loads and stores,
   * so contention is brief: spin first, and only then park in Atomics.wait (1 ms at a time, so the
   * main thread never blocks for long even if a worker is descheduled while holding it).
   */
  private lock(): void {
    const i32 = this.i32;
    for (let spins = 0; ; spins++) {
      const holder = Atomics.compareExchange(i32, Slot.Lock, 0, this.me);
      if (holder === 0) return;
      if (holder === this.me) throw new IommuError('EBUSY', 'table memory lock is not re-entrant');
      if (spins >= SPINS_BEFORE_WAIT) Atomics.wait(i32, Slot.Lock, holder, 1);
    }
  }

  private unlock(): void {
    Atomics.store(this.i32, Slot.Lock, 0);
    Atomics.notify(this.i32, Slot.Lock, 1);
  }

  /**
   * Releases the lock if the thread `deadThreadId` died holding it. The critical sections only ever
   * leave the free lists consistent between single stores, so the state is safe to reuse.
   */
  releaseLockOfDeadThread(deadThreadId: number): boolean {
    const released = Atomics.compareExchange(this.i32, Slot.Lock, deadThreadId + 1, 0) === deadThreadId + 1;
    if (released) Atomics.notify(this.i32, Slot.Lock);
    return released;
  }
}
