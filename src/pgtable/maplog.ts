/**
 * The undo log of a map call, or of one chunk of it. A call only writes leaves into empty slots, in
 * IOVA order from `base`, so `written` bytes from `base` say exactly which leaves to clear; besides
 * leaves, a call may install tables and unlink empty subtrees (where a block goes), and those are
 * listed here so they can be put back.
 *
 * In a worker the log is also mirrored into a journal in shared memory, so that if the worker dies
 * mid-chunk the main thread can still undo what it wrote. Before a batch of leaves is written the
 * walk records its "intent" (the slots about to be written, all checked empty), and clears it once
 * `written` covers them: a dead worker's partial batch is exactly the intent range.
 *
 *   journal[off + ...]:
 *   0 base | 1 written | 2 intent first slot | 3 intent end slot | 4 n installed | 5 n replaced |
 *   6 capacity installed | 7 capacity replaced | 8 overflowed | 9 worker threadId |
 *   10 state | 11 error | 12 error iova | 13 error paddr | 14 error size  (kept by MapCall) |
 *   installed (slot, page, iova, size) quads... |
 *   replaced (slot, old descriptor, iova, size) quads...
 */
export const enum J {
  Base = 0,
  Written = 1,
  IntentFirst = 2,
  IntentEnd = 3,
  NInstalled = 4,
  NReplaced = 5,
  CapInstalled = 6,
  CapReplaced = 7,
  Overflowed = 8,
  /** threadId of the worker running the chunk (to release a lock it may die holding). */
  ThreadId = 9,
  /** How the chunk ended, for the thread that collects it (src/core/mapcall.ts). */
  State = 10,
  Error = 11,
  ErrorIova = 12,
  ErrorPaddr = 13,
  ErrorSize = 14,
  /** When the chunk's thread started and finished mapping it (its performance.now(), ms): for the profile. */
  Started = 15,
  Finished = 16,
  Header = 17,
}

export function journalSize(capInstalled: number, capReplaced: number): number {
  return J.Header + 4 * capInstalled + 4 * capReplaced;
}

export class MapLog {
  /** Where this call (or chunk) writes its first leaf; its leaves follow in order from here. */
  base: number;
  /** Bytes of IOVA mapped so far, from `base`. */
  written = 0;
  /**
   * Tables this call installed, as (slot, offset, iova, size) quads in install order: [iova, iova +
   * size) is what the table translates, where walks through it must be invalidated once it is freed.
   */
  readonly installed: number[] = [];
  /** Empty subtrees that blocks replaced, as (slot, old descriptor as Float64, iova, size) quads. */
  readonly replaced: number[] = [];
  /** The pages of those subtrees, as (offset, bytes) pairs: freed only after a walk invalidation. */
  readonly replacedPages: number[] = [];
  /** Slots [intentFirst, intentEnd) checked empty and being written (a dead writer's partial batch). */
  intentFirst = 0;
  intentEnd = 0;
  private readonly journal: Float64Array | null;
  private readonly off: number;
  /** Test-only fault injection: called once `written` reaches faultAfter bytes. */
  faultAfter = Infinity;
  onFault: (() => void) | null = null;

  constructor(base: number, journal: Float64Array | null = null, off = 0) {
    this.base = base;
    this.journal = journal;
    this.off = off;
    if (journal) {
      journal[off + J.Base] = base;
      journal[off + J.Written] = 0;
      journal[off + J.IntentEnd] = 0;
      journal[off + J.NInstalled] = 0;
      journal[off + J.NReplaced] = 0;
      journal[off + J.Overflowed] = 0;
    }
  }

  /** Sets where the leaves start, before the first is written (chunks that begin mid-run). */
  setBase(base: number): void {
    this.base = base;
    if (this.journal) this.journal[this.off + J.Base] = base;
  }

  intent(first: number, end: number): void {
    this.intentFirst = first;
    this.intentEnd = end;
    const j = this.journal;
    if (j) {
      j[this.off + J.IntentFirst] = first;
      j[this.off + J.IntentEnd] = end;
    }
  }

  /** `bytes` more leaves are written; the intent is done. */
  wrote(bytes: number): void {
    this.written += bytes;
    if (this.written >= this.faultAfter) this.onFault?.();
    this.intentEnd = 0;
    // The journal's intent is left as it is: `written` now covers it, so undoing it again is harmless,
    // and a single-page run (a scattered list) saves a shared-memory store per leaf.
    if (this.journal) this.journal[this.off + J.Written] = this.written;
  }

  addInstalled(slot: number, page: number, iova: number, size: number): void {
    this.installed.push(slot, page, iova, size);
    const j = this.journal;
    if (j) {
      const n = j[this.off + J.NInstalled]!;
      if (n < j[this.off + J.CapInstalled]!) {
        const at = this.off + J.Header + 4 * n;
        j[at] = slot;
        j[at + 1] = page;
        j[at + 2] = iova;
        j[at + 3] = size;
        j[this.off + J.NInstalled] = n + 1;
      } else j[this.off + J.Overflowed] = 1;
    }
  }

  addReplaced(slot: number, oldDescriptor: number, iova: number, size: number): void {
    this.replaced.push(slot, oldDescriptor, iova, size);
    const j = this.journal;
    if (j) {
      const n = j[this.off + J.NReplaced]!;
      if (n < j[this.off + J.CapReplaced]!) {
        const at = this.off + J.Header + 4 * j[this.off + J.CapInstalled]! + 4 * n;
        j[at] = slot;
        j[at + 1] = oldDescriptor;
        j[at + 2] = iova;
        j[at + 3] = size;
        j[this.off + J.NReplaced] = n + 1;
      } else j[this.off + J.Overflowed] = 1;
    }
  }

  /**
   * The log of a chunk whose worker died, rebuilt from its journal. `complete` is false if the
   * journal overflowed: then tables it installed or unlinked may be missing from the log.
   */
  static fromJournal(j: Float64Array, off: number): { log: MapLog; complete: boolean } {
    const log = new MapLog(j[off + J.Base]!);
    log.written = j[off + J.Written]!;
    log.intentFirst = j[off + J.IntentFirst]!;
    log.intentEnd = j[off + J.IntentEnd]!;
    const capInstalled = j[off + J.CapInstalled]!;
    for (let i = 0; i < 4 * j[off + J.NInstalled]!; i++) log.installed.push(j[off + J.Header + i]!);
    const rBase = off + J.Header + 4 * capInstalled;
    for (let i = 0; i < j[off + J.NReplaced]!; i++) {
      for (let k = 0; k < 4; k++) log.replaced.push(j[rBase + 4 * i + k]!);
    }
    return { log, complete: j[off + J.Overflowed] === 0 };
  }
}

/**
 * Prepares a chunk's journal region with its capacities. Only the header is zeroed: entries are read
 * only up to the counts in it.
 */
export function initJournal(j: Float64Array, off: number, capInstalled: number, capReplaced: number): void {
  j.fill(0, off, off + J.Header);
  j[off + J.CapInstalled] = capInstalled;
  j[off + J.CapReplaced] = capReplaced;
}
