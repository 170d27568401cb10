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
 * Pages are counted in 4 KiB units ("unit" below). Free pages wait on a stack per size class, in a
 * second, fixed SharedArrayBuffer (4 bytes per unit of the ceiling, and a quarter and a sixteenth of
 * that for the larger classes: 0.13% of it). A stack, unlike a list threaded through the free pages,
 * keeps the lock's critical section on hot cache lines: popping from a list read the page's first
 * word, which another core had often written last, and two threads allocating at once then ran at
 * half speed each (docs/performance.md). A page is zeroed when it is freed (outside the lock, before it
 * goes on a stack; memory never handed out is zero already), so a new table starts with every
 * descriptor invalid and handing one out is a pop. A page is only freed once nothing can reach it.
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
  /** Pages on the free stack of each size class. */
  Free4K = 2,
  Free16K = 3,
  Free64K = 4,
  /** Table pages in use, and 4K units they occupy. */
  Pages = 5,
  Units = 6,
  /** Ceiling, in units. */
  LimitUnits = 7,
  /** Threads parked in Atomics.wait for the lock: unlock notifies only when there are some. */
  Waiters = 8,
}

const SPINS_BEFORE_WAIT = 128;

/** Where each size class's free stack starts, in Int32 entries, and the entries all three need. */
function stackLayout(limitUnits: number): { bases: [number, number, number]; entries: number } {
  const b16 = limitUnits;
  const b64 = b16 + (limitUnits >> 2) + 1;
  return { bases: [0, b16, b64], entries: b64 + (limitUnits >> 4) + 1 };
}

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
  /** The free stacks (Int32 unit numbers), shared like `sab`. */
  readonly stacksSab: SharedArrayBuffer;
  private readonly stacks: Int32Array;
  /** Each size class's stack base in `stacks`, indexed by its header slot. */
  private readonly stackBase: number[] = [];
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
    return new TableMemory(sab, new SharedArrayBuffer(stackLayout(limitUnits).entries * 4));
  }

  /** Attaches to memory created elsewhere (another thread passes both SharedArrayBuffers). */
  constructor(sab: SharedArrayBuffer, stacksSab: SharedArrayBuffer) {
    this.sab = sab;
    this.stacksSab = stacksSab;
    this.stacks = new Int32Array(stacksSab);
    this.remap();
    const { bases } = stackLayout(this.i32[Slot.LimitUnits]!);
    this.stackBase[Slot.Free4K] = bases[0];
    this.stackBase[Slot.Free16K] = bases[1];
    this.stackBase[Slot.Free64K] = bases[2];
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
      const free = this.i32[cls]!;
      if (free > 0) {
        unit = this.stacks[this.stackBase[cls]! + free - 1]!;
        this.i32[cls] = free - 1;
        this.ensureMapped((unit + units) * UNIT);
      } else {
        unit = this.bumpAlloc(units);
        if (unit < 0) return -1;
      }
      Atomics.add(this.i32, Slot.Pages, 1);
      Atomics.add(this.i32, Slot.Units, units);
    } finally {
      this.unlock();
    }
    return unit * UNIT;
  }

  /** Returns a page to its free list, zeroed. The caller guarantees no walk can still reach it. */
  free(offset: number, bytes: number): void {
    const cls = sizeClass(bytes);
    const unit = offset / UNIT;
    // Another thread may have grown the memory for this page: the views must reach it, or fill()
    // would stop at their end and the page would go back with its old descriptors.
    this.ensureMapped(offset + bytes);
    this.f64.fill(0, offset / 8, (offset + bytes) / 8);
    this.lock();
    try {
      this.push(cls, unit);
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
    for (let u = bump; u < start; u++) this.push(Slot.Free4K, u);
    this.i32[Slot.Bump] = end;
    return start;
  }

  /** Under the lock: puts `unit` on its class's stack (the entry first, then the count). */
  private push(cls: number, unit: number): void {
    const free = this.i32[cls]!;
    this.stacks[this.stackBase[cls]! + free] = unit;
    this.i32[cls] = free + 1;
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
      if (spins >= SPINS_BEFORE_WAIT) {
        Atomics.add(i32, Slot.Waiters, 1);
        Atomics.wait(i32, Slot.Lock, holder, 1);
        Atomics.sub(i32, Slot.Waiters, 1);
      }
    }
  }

  /**
   * Notifies only when a thread is parked: V8's Atomics.notify takes a process-wide mutex even when
   * nobody waits, which two threads allocating at once then contend for (docs/performance.md). A
   * waiter counts itself before it parks, and parks only while the lock still holds the holder it
   * saw, so a release between the two is never missed. (A thread killed while parked leaves the count
   * up: unlocks then notify every time, which is only slower.)
   */
  private unlock(): void {
    Atomics.store(this.i32, Slot.Lock, 0);
    if (Atomics.load(this.i32, Slot.Waiters) > 0) Atomics.notify(this.i32, Slot.Lock, 1);
  }

  /**
   * Releases the lock if the thread `deadThreadId` died holding it. The critical sections only ever
   * leave the free stacks consistent between single stores (an entry is written before the count
   * that covers it), so the state is safe to reuse.
   */
  releaseLockOfDeadThread(deadThreadId: number): boolean {
    const released = Atomics.compareExchange(this.i32, Slot.Lock, deadThreadId + 1, 0) === deadThreadId + 1;
    if (released) Atomics.notify(this.i32, Slot.Lock);
    return released;
  }
}
