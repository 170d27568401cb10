/**
 * One parallel map call in shared memory: its chunks, a claim counter, and each chunk's journal. The
 * calling thread and the pool's helpers all run the same loop (`runClaimed`): take the next chunk
 * (the caller from the front, helpers alternately from the back and the front, by compare-and-swap
 * on one claim word), map it, record the outcome in its journal, repeat until none is left.
 * So a call costs one message per helper however many chunks it has; a helper that wakes late or
 * runs on a slower vCPU simply takes fewer chunks; and the caller works instead of waiting.
 *
 *   Int32 slots (header)                                             Float64 words
 *   +-------+--------+--------+---------+--------------------------+--------------------+---------------------------+
 *   | claim | chunks | chunks | helpers | helper h: threadId + 1   | plan: P.Stride     | journals (MapLog layout,  |
 *   | word  |        | done   | out     | (MAX_HELPERS slots)      | words per chunk    | J.*), one per chunk, each |
 *   |       |        |        |         |                          |                    | on cache lines of its own |
 *   +-------+--------+--------+---------+--------------------------+--------------------+---------------------------+
 *
 * A chunk's journal says how far it got (MapLog's undo log, mirrored) and, once it is done, how it
 * ended: a chunk left Claimed was running in a thread that died or threw, and is undone from it.
 * The done counter lets the caller wait for the helpers' last chunks in shared memory (waitDone)
 * rather than for their result messages, which arrive 0.03-0.25 ms later (docs/performance.md).
 * "Helpers out" counts the helpers sent the call that have not yet left it: the buffer is reused for
 * a later call only at 0, so a helper that starts late never finds another call in it.
 */
import { J, MapLog, initJournal, journalSize } from '../pgtable/maplog.js';
import type { MapChunk } from '../pool/tasks.js';
import type { MapError, MapLoop } from './maploop.js';

/** The claim word's halves: chunks taken from the front, and from the back. */
const CLAIM_BITS = 16;
const CLAIM_MASK = (1 << CLAIM_BITS) - 1;
/** A call has fewer chunks than a half of the claim word counts. */
export const MAX_CHUNKS = CLAIM_MASK;

/** Int32 slots before the plan: the claim word, the chunk count, then one per helper. */
const HEADER_SLOTS = 512;
const enum H {
  /** Chunks claimed: from the front (low half) and from the back (high half). */
  Next = 0,
  Chunks = 1,
  Done = 2,
  Out = 3,
  Helpers = 4,
}
export const MAX_HELPERS = HEADER_SLOTS - H.Helpers;
const PLAN_WORDS = HEADER_SLOTS / 2;

/** How long waitDone waits awake before it parks (docs/performance.md). */
const DONE_SPIN_MS = 0.25;

/** Journals start on a cache line (8 words) of their own: two threads write their headers at once. */
const LINE_WORDS = 8;

/** Per chunk: first, end, spanStart, spanEnd, head (iova, paddr, size), tail (same), journal offset. */
const enum P {
  First = 0,
  End = 1,
  SpanStart = 2,
  SpanEnd = 3,
  Head = 4,
  Tail = 7,
  Journal = 10,
  Stride = 11,
}

/** A chunk's state, in its journal's J.State word. */
export const enum ChunkState {
  Unclaimed = 0,
  Claimed = 1,
  Done = 2,
}

/** Test-only: make whoever runs chunk `chunk` fail once it has mapped `afterBytes` of it. */
export interface ChunkFault {
  /** A chunk's index, or -1 for the first chunk this thread claims. */
  chunk: number;
  afterBytes: number;
  /** What failing means there (the worker exits or throws); built by the thread that runs it. */
  trip: () => void;
}

export class MapCall {
  readonly sab: SharedArrayBuffer;
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;

  /**
   * Lays out a call: its chunks' plan and, for each, a journal of the given capacities. It takes a
   * buffer from `spare` if one is big enough and no helper is still in it (a buffer of a few 100 KiB
   * costs 0.05-0.1 ms to allocate); the caller puts buffers there once it is done with them.
   */
  static create(chunks: readonly MapChunk[], caps: readonly (readonly [number, number])[], spare: SharedArrayBuffer[] = []): MapCall {
    if (chunks.length > MAX_CHUNKS) throw new Error(`internal: a call of ${chunks.length} chunks (at most ${MAX_CHUNKS})`);
    let words = PLAN_WORDS + chunks.length * P.Stride;
    const offsets = caps.map(([installed, replaced]) => {
      const at = Math.ceil(words / LINE_WORDS) * LINE_WORDS;
      words = at + journalSize(installed, replaced);
      return at;
    });
    const fit = spare.findIndex((b) => b.byteLength >= words * 8 && Atomics.load(new Int32Array(b, 0, HEADER_SLOTS), H.Out) === 0);
    const call = new MapCall(fit >= 0 ? spare.splice(fit, 1)[0]! : new SharedArrayBuffer(2 ** Math.ceil(Math.log2(words * 8))));
    const f = call.f64;
    // Only what is read before it is written: the header, the plan and the journals' headers
    // (initJournal); journal entries are read only up to the counts there.
    f.fill(0, 0, PLAN_WORDS + chunks.length * P.Stride);
    call.i32[H.Chunks] = chunks.length;
    chunks.forEach((c, i) => {
      const p = PLAN_WORDS + i * P.Stride;
      f[p + P.First] = c.first;
      f[p + P.End] = c.end;
      f[p + P.SpanStart] = c.spanStart;
      f[p + P.SpanEnd] = c.spanEnd;
      f.set(c.head ?? [NaN, NaN, NaN], p + P.Head);
      f.set(c.tail ?? [NaN, NaN, NaN], p + P.Tail);
      f[p + P.Journal] = offsets[i]!;
      initJournal(f, offsets[i]!, caps[i]![0], caps[i]![1]);
    });
    return call;
  }

  /** Attaches to a call laid out elsewhere (a helper receives the buffer). */
  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.i32 = new Int32Array(sab, 0, HEADER_SLOTS);
    this.f64 = new Float64Array(sab);
  }

  get chunks(): number {
    return this.i32[H.Chunks]!;
  }

  /** The journals, for MapLog. */
  get journal(): Float64Array {
    return this.f64;
  }

  journalOffset(chunk: number): number {
    return this.f64[PLAN_WORDS + chunk * P.Stride + P.Journal]!;
  }

  state(chunk: number): ChunkState {
    return this.f64[this.journalOffset(chunk) + J.State]! as ChunkState;
  }

  spanStart(chunk: number): number {
    return this.f64[PLAN_WORDS + chunk * P.Stride + P.SpanStart]!;
  }

  spanEnd(chunk: number): number {
    return this.f64[PLAN_WORDS + chunk * P.Stride + P.SpanEnd]!;
  }

  /** Records that `helpers` helpers are sent the call (each leaves it at the end of runClaimed). */
  sendingHelpers(helpers: number): void {
    Atomics.store(this.i32, H.Out, helpers);
  }

  /** The threadId helper `helper` runs on, once it has started (-1 before). */
  helperThread(helper: number): number {
    return Atomics.load(this.i32, H.Helpers + helper) - 1;
  }

  /**
   * Maps chunks until none is left to claim. `helper` is the pool helper's number, or -1 for the
   * calling thread. Returns how many chunks this thread mapped.
   */
  runClaimed(loop: MapLoop, pairs: Float64Array, breaks: Int32Array, prot: number, helper: number, threadId: number, fault: ChunkFault | null): number {
    if (helper >= 0) Atomics.store(this.i32, H.Helpers + helper, threadId + 1);
    const f = this.f64;
    const chunks = this.chunks;
    let mapped = 0;
    // The caller takes chunks from the front, the first helper from the back, and so on alternately:
    // each thread then maps neighbouring chunks, and they meet where the work is split.
    const fromBack = helper % 2 === 0;
    for (let c = this.claim(fromBack); c < chunks; c = this.claim(fromBack)) {
      const p = PLAN_WORDS + c * P.Stride;
      const off = f[p + P.Journal]!;
      f[off + J.ThreadId] = threadId;
      f[off + J.State] = ChunkState.Claimed;
      f[off + J.Started] = performance.now();
      const log = new MapLog(f[p + P.SpanStart]!, f, off);
      if (fault && (fault.chunk === c || (fault.chunk < 0 && mapped === 0))) {
        log.faultAfter = fault.afterBytes;
        log.onFault = fault.trip;
      }
      // Entry indices (below 2^31) go in as int32. A Float64Array load is a heap number to V8,
      // and once the list walks had seen heap-number indices they stayed compiled for doubles,
      // inline calls included: scattered map_sg ran 18% slower on both paths (docs/performance.md).
      const done = loop.mapChunk(
        pairs,
        breaks,
        f[p + P.First]! | 0,
        f[p + P.End]! | 0,
        f[p + P.SpanStart]!,
        f[p + P.SpanEnd]!,
        runAt(f, p + P.Head),
        runAt(f, p + P.Tail),
        prot,
        log,
      );
      if (done < 0) {
        f[off + J.Error] = loop.error;
        f[off + J.ErrorIova] = loop.errorIova;
        f[off + J.ErrorPaddr] = loop.errorPaddr;
        f[off + J.ErrorSize] = loop.errorSize;
      }
      f[off + J.Finished] = performance.now();
      f[off + J.State] = ChunkState.Done;
      if (Atomics.add(this.i32, H.Done, 1) === chunks - 1) Atomics.notify(this.i32, H.Done);
      mapped++;
    }
    // A helper's last touch of the buffer: from here on it may be reused.
    if (helper >= 0) Atomics.sub(this.i32, H.Out, 1);
    return mapped;
  }

  /**
   * The next chunk from the front or the back, or `chunks` when none is left. The claim word holds
   * how many were taken from the front (low 16 bits) and from the back (high 16 bits), so that one
   * compare-and-swap hands out each chunk exactly once.
   */
  private claim(fromBack: boolean): number {
    const chunks = this.chunks;
    for (;;) {
      const taken = Atomics.load(this.i32, H.Next);
      const front = taken & CLAIM_MASK;
      const back = taken >>> CLAIM_BITS;
      if (front + back >= chunks) return chunks;
      if (Atomics.compareExchange(this.i32, H.Next, taken, taken + (fromBack ? 1 << CLAIM_BITS : 1)) === taken) {
        return fromBack ? chunks - 1 - back : front;
      }
    }
  }

  /**
   * Blocks until every chunk is done, for at most `timeoutMs`; false if some chunk is not done by
   * then (its helper is slow, or died mid-chunk: its task will tell). For the calling thread, once it
   * has nothing left to claim: what remains is at most one chunk per helper, already running.
   */
  waitDone(timeoutMs: number): boolean {
    const start = performance.now();
    const deadline = start + timeoutMs;
    const chunks = this.chunks;
    // Awake first, for about a chunk's time: a thread parked in Atomics.wait took 0.06-0.08 ms to
    // wake after the helper's notify on this machine, which a call of 2 ms then pays in full.
    const spinUntil = start + Math.min(DONE_SPIN_MS, timeoutMs);
    while (Atomics.load(this.i32, H.Done) < chunks && performance.now() < spinUntil);
    for (let done = Atomics.load(this.i32, H.Done); done < chunks; done = Atomics.load(this.i32, H.Done)) {
      const left = deadline - performance.now();
      if (left <= 0) return false;
      Atomics.wait(this.i32, H.Done, done, left);
    }
    return true;
  }

  /**
   * How long each thread spent mapping its chunks, and how many bytes of IOVA they spanned: one entry
   * per thread that finished a chunk, in order of first appearance. Each thread's times are its own
   * clock's, so only durations are compared.
   */
  profile(): ThreadProfile[] {
    const f = this.f64;
    const byThread = new Map<number, ThreadProfile>();
    for (let c = 0; c < this.chunks; c++) {
      const off = this.journalOffset(c);
      if (f[off + J.State] !== ChunkState.Done) continue;
      const threadId = f[off + J.ThreadId]!;
      let t = byThread.get(threadId);
      if (!t) byThread.set(threadId, (t = { threadId, chunks: 0, bytes: 0, busyMs: 0 }));
      t.chunks++;
      t.bytes += this.spanEnd(c) - this.spanStart(c);
      t.busyMs += f[off + J.Finished]! - f[off + J.Started]!;
    }
    return [...byThread.values()];
  }

  /** The chunk's undo log, as its journal has it (for a Done chunk, the whole log but freed pages). */
  log(chunk: number): MapLog {
    return MapLog.fromJournal(this.f64, this.journalOffset(chunk)).log;
  }

  /** A Done chunk's error (MapError.None if none) and where, written into `loop` for toError(). */
  errorOf(chunk: number, loop: MapLoop): MapError {
    const off = this.journalOffset(chunk);
    const f = this.f64;
    loop.error = f[off + J.Error]! as MapError;
    loop.errorIova = f[off + J.ErrorIova]!;
    loop.errorPaddr = f[off + J.ErrorPaddr]!;
    loop.errorSize = f[off + J.ErrorSize]!;
    return loop.error;
  }
}

/** One thread's part in a parallel map (MapCall.profile). */
export interface ThreadProfile {
  threadId: number;
  chunks: number;
  /** IOVA bytes its chunks spanned. */
  bytes: number;
  /** Time it spent inside them. */
  busyMs: number;
}

/** A run [iova, paddr, size] stored at f[at..at+3), or null (NaN). */
function runAt(f: Float64Array, at: number): number[] | null {
  return Number.isNaN(f[at]) ? null : [f[at]!, f[at + 1]!, f[at + 2]!];
}
