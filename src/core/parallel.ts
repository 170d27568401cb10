/**
 * Parallel map_sg / unmap_sg: how one big call is cut into chunks that the pool's workers run at
 * once on the shared tables, and how their results are put back together so that nobody can tell,
 * except by the clock, that it was not one thread doing it in order (SEMANTICS §4).
 *
 * map_sg: the list is cut into chunks of entries. From the list's index (SgIndex) the main thread
 *   finds each chunk's IOVA span and the runs that cross chunk boundaries (a physically contiguous
 *   list is one run across every chunk). Each chunk writes the leaves whose first byte lies in its
 *   span; a crossing run is given whole, so page sizes are chosen exactly as one thread would. The
 *   pool's helpers and the caller claim chunks from a shared counter (MapCall), so a call is one
 *   message per helper (with callerRuns, a job for a standby helper that stays awake between calls:
 *   src/pool/standby.ts). Each chunk keeps its undo log in a journal in shared memory, so even a
 *   worker that dies is undone.
 *   The call's error is the one a single thread would have met first: the lowest IOVA among the
 *   chunks' errors. On any error every chunk is rolled back.
 *
 * unmap / unmap_sg, in two rounds over IOVA pieces:
 *   A. "scan": each piece finds, read-only, its leaves and the first hole in it;
 *   B. "clear": the pieces up to the first hole remove their leaves. A piece whose worker died is
 *      cleared again on the main thread (clearing is idempotent), so the call always completes.
 *   The scans' gathers, appended in order, are the gather a single thread would have built.
 */
import { availableParallelism } from 'node:os';
import { threadId } from 'node:worker_threads';
import { IommuError } from '../errors/errors.js';
import { Gather } from '../iotlb/gather.js';
import type { LpaeGeometry } from '../pgtable/format.js';
import type { MapLog } from '../pgtable/maplog.js';
import type { TableMemory } from '../pgtable/memory.js';
import { WalkMode, type IoPgtable } from '../pgtable/pgtable.js';
import { WorkerFailure, type ChunkPool } from '../pool/pool.js';
import type { FaultSpec, MapChunk, MapPlan, MapTask, ScanResult, TableSpec } from '../pool/tasks.js';
import { ChunkState, MAX_CHUNKS, MapCall, type ThreadProfile } from './mapcall.js';
import { MapError, type MapLoop } from './maploop.js';
import { inSharedMemory, type SgView } from './sg.js';
import { appendAll } from '../util/arrays.js';

/**
 * When a call is worth the pool, and how finely to cut it. A helper wakes 0.1-0.3 ms after it is
 * asked (docs/performance.md), and a 4K leaf costs ~2 ns inline (a scattered one ~5 ns), so calls
 * below 64Ki entries and pages stay inline whatever their cost; chunks are claimed dynamically, so
 * several per thread balance a late or slow helper without a round trip each.
 */
export const PARALLEL_MIN_PAGES = 65536;
/**
 * With callerRuns, a map goes to the pool only when its estimated inline time (MapLoop.estimateNs)
 * reaches this. Measured on this 2-vCPU machine (docs/performance.md, 2026-12-04), a warm helper,
 * inline against workers 2 in one process: contiguous lists of 384Ki pages (0.4 ms inline) at
 * 0.83-1.23x, of 512Ki (0.53 ms) at 1.23-1.39x; scattered lists of 128Ki pages (0.52 ms) at
 * 1.41-1.58x. Below ~0.4 ms the call's fixed costs (~0.15 ms before the caller maps, the end) eat
 * what the second thread saves.
 */
const MIN_POOL_WORK_NS = 500_000;
export const MIN_CHUNK_PAGES = 16384;
/**
 * Chunks are claimed, not assigned, so more of them balance a helper that wakes late (0.1-0.2 ms
 * here) or runs slower: the caller takes its share. A chunk costs ~1 µs to claim and set up.
 */
const CHUNKS_PER_THREAD = 16;
/** How long the caller waits in shared memory for helpers' chunks in progress, before it awaits their tasks. */
const CALLER_WAIT_MS = 20;
/** MapCall buffers kept for reuse. */
const MAX_SPARE_CALLS = 4;
/** A map_sg list of at most this many entries is cut by IOVA within its runs, not by entries. */
export const MAX_PIECED_ENTRIES = 64;
const JOURNAL_CAP = 1 << 16;

/** What the parallel engine needs of a domain. */
export interface DomainTables {
  readonly spec: TableSpec;
  readonly pgtable: IoPgtable;
  readonly loop: MapLoop;
}

/** Test-only fault injection: which chunk, and when. */
export interface FaultPlan {
  phase: 'map' | 'scan' | 'clear';
  /**
   * Which chunk (or unmap piece) fails. For a map, HELPERS_FIRST_CHUNK means the first chunk a helper
   * claims while the caller maps too (callerRuns stays on: the caller finds it unfinished); any
   * other number, that chunk, with the call run on the helpers alone so that one of them takes it.
   */
  chunk: number;
  fault: FaultSpec;
}

export const HELPERS_FIRST_CHUNK = -1;

export interface MapOutcome {
  /** Bytes mapped (when error is null). */
  mapped: number;
  /** Every chunk's undo log (rebuilt from its journal if its worker died). */
  logs: MapLog[];
  error: IommuError | null;
  /** Where a single thread would have stopped: rollback invalidates [iova, failedAt). */
  failedAt: number;
}

export class ParallelEngine {
  /** Test-only: the next call's injected fault. */
  faultPlan: FaultPlan | null = null;
  /**
   * For benchmarks: with `profiling` on, each parallel map leaves in `lastProfile` how long each of
   * its threads spent mapping how many bytes (MapCall.profile), measured inside the real call.
   */
  profiling = false;
  lastProfile: ThreadProfile[] | null = null;
  /** Threads that work on one call: the helpers of the pool, and the caller if callerRuns. */
  private readonly participants: number;
  /** MapCall buffers that no helper uses any more. */
  private readonly spareCalls: SharedArrayBuffer[] = [];

  /**
   * @param callerRuns the calling thread maps chunks too, so that a call wakes one helper fewer (on
   *   2 vCPUs: one instead of two). Off in the daemon, whose event loop must stay free for others.
   */
  constructor(
    private readonly pool: ChunkPool,
    private readonly memory: TableMemory,
    private readonly callerRuns: boolean,
  ) {
    // More threads than CPUs only take turns; the caller counts as one of them.
    this.participants = callerRuns ? 1 + Math.min(pool.threads, Math.max(1, availableParallelism() - 1)) : pool.threads;
  }

  get threads(): number {
    return this.pool.threads;
  }

  /**
   * Test-only: decide by size alone (PARALLEL_MIN_PAGES entries or pages), as without callerRuns, so
   * that tests can drive the parallel path with lists of a convenient size.
   */
  bySizeOnly = false;

  /** Whether a map of `entries` sg entries covering `pages` smallest pages is big enough for the pool. */
  mapIsBig(entries: number, pages: number): boolean {
    return entries >= PARALLEL_MIN_PAGES || pages >= PARALLEL_MIN_PAGES;
  }

  /**
   * Whether a big map whose inline time is estimated at `inlineNs` (MapLoop.estimateNs) goes to the
   * pool. Without callerRuns (the daemon) every big call does, to keep the caller's event loop free;
   * with it, only calls long enough for parallelism to pay, once the pool's workers have started.
   * Before that a helper would take its job only when its worker is up, 0.15-0.3 s after the Iommu
   * was made: the caller mapped every chunk alone, paying the call's fixed costs on top, and calls
   * ran 1.5-10x slower than inline (docs/performance.md).
   */
  mapWorthIt(inlineNs: number): boolean {
    if (!this.callerRuns || this.bySizeOnly) return true;
    return inlineNs >= MIN_POOL_WORK_NS && this.pool.ready;
  }

  /** Whether every worker of the pool has started (ChunkPool.ready). */
  get ready(): boolean {
    return this.pool.ready;
  }

  /**
   * Resolves true once every worker of the pool has started (from then on big calls can use it), or
   * false after `timeoutMs` if they have not.
   */
  whenReady(timeoutMs = Infinity): Promise<boolean> {
    return this.pool.whenReady(timeoutMs);
  }

  /**
   * Tells the standby helpers that a call is about to come to the pool: they wake while the caller
   * plans it (waking a parked thread takes ~0.1 ms here), so its job finds them awake.
   */
  wakeHelpers(): void {
    if (this.callerRuns) this.pool.wakeStandbys(this.participants - 1);
  }

  /**
   * Whether big unmaps go to the pool. Exact unmap semantics (stop at the first hole) make the
   * parallel unmap two rounds, a scan and a clear, each costing about what an inline unmap costs
   * (docs/performance.md): twice the work, so never faster on two threads. It is only worth it when
   * the caller's thread must stay free (callerRuns off: the daemon's event loop).
   */
  get unmapsOnPool(): boolean {
    return !this.callerRuns;
  }

  private chunkCount(pages: number): number {
    return Math.max(1, Math.min(Math.floor(pages / MIN_CHUNK_PAGES), this.participants * CHUNKS_PER_THREAD));
  }

  /** The injected fault for one call: every parallel call consumes the plan, whether it uses it or not. */
  private takePlan(): (phase: FaultPlan['phase'], chunk: number) => FaultSpec | undefined {
    const plan = this.faultPlan;
    this.faultPlan = null;
    return (phase, chunk) => (plan && plan.phase === phase && plan.chunk === chunk ? plan.fault : undefined);
  }

  /**
   * map_sg of the list at iova, cut into chunks of entries: each chunk's IOVA span, and the runs that
   * cross into it (head) and out of it (tail), whole. The list's index makes this a look at a few
   * blocks per chunk, not a pass over the list.
   */
  planSg(d: DomainTables, iova: number, sg: SgView, prot: number): MapPlan {
    const { pairs, index } = sg;
    const n = index.length;
    if (n <= MAX_PIECED_ENTRIES) return this.planRuns(d, iova, sg, prot);
    const pages = index.bytes / d.loop.minPgsize;
    // As many chunks as the pages are worth, but at least one entry each.
    const k = Math.min(this.chunkCount(Math.max(n, pages)), n);
    const bounds = Array.from({ length: k + 1 }, (_, c) => Math.round((c * n) / k));
    const offsets = bounds.map((i) => index.offsetOf(pairs, i));
    // The run through the boundary before entry e, as [iova, paddr, length], or null if e starts a run.
    // Boundaries come in order and often lie in one run (a contiguous list is one run): the last run
    // found is kept, so a long run is searched for once, not once per boundary.
    let run: number[] | null = null;
    let runFirst = -1;
    let runEnd = -1;
    const crossing = (e: number): number[] | null => {
      if (e <= 0 || e >= n || index.startsRun(pairs, e)) return null;
      if (e > runFirst && e < runEnd) return run;
      runFirst = index.runStart(pairs, e);
      runEnd = index.runEnd(pairs, e);
      const startOffset = index.offsetOf(pairs, runFirst);
      run = [iova + startOffset, pairs[2 * runFirst]!, index.offsetOf(pairs, runEnd) - startOffset];
      return run;
    };
    const chunks: MapChunk[] = [];
    for (let c = 0; c < k; c++) {
      chunks.push({
        first: bounds[c]!,
        end: bounds[c + 1]!,
        spanStart: iova + offsets[c]!,
        spanEnd: iova + offsets[c + 1]!,
        head: crossing(bounds[c]!),
        tail: crossing(bounds[c + 1]!),
      });
    }
    return {
      sg: inSharedMemory(pairs).buffer as SharedArrayBuffer,
      breaks: inSharedMemory(index.breaks).buffer as SharedArrayBuffer,
      prot,
      chunks,
    };
  }

  /**
   * map_sg of a list of a few runs, some of them big (a few huge segments): IOVA pieces of each run,
   * each written by a chunk of its own as planMap does for map(), so the work is shared however few
   * entries the list has.
   */
  private planRuns(d: DomainTables, iova: number, sg: SgView, prot: number): MapPlan {
    const { pairs, index } = sg;
    const n = index.length;
    const chunks: MapChunk[] = [];
    let at = iova;
    for (let i = 0; i < n; ) {
      const j = index.runEnd(pairs, i);
      let len = 0;
      for (let e = i; e < j; e++) len += pairs[2 * e + 1]!;
      const run = [at, pairs[2 * i]!, len];
      // Entries are never empty (sgView refuses them), so every run has at least one piece.
      // At most MAX_CHUNKS in all, whatever the pool's size (a call's claim word counts to that).
      for (const [lo, hi] of this.pieces(d.pgtable.geo, d.loop.minPgsize, at, len, Math.floor(MAX_CHUNKS / n))) chunks.push({ first: i, end: j, spanStart: lo, spanEnd: hi, head: run, tail: null });
      at += len;
      i = j;
    }
    return { sg: inSharedMemory(pairs).buffer as SharedArrayBuffer, breaks: inSharedMemory(index.breaks).buffer as SharedArrayBuffer, prot, chunks };
  }

  /** map of one big run: IOVA pieces of the same run, each writing its own leaves. */
  planMap(d: DomainTables, iova: number, paddr: number, size: number, prot: number): MapPlan {
    const pairs = new Float64Array(new SharedArrayBuffer(16));
    pairs[0] = paddr;
    pairs[1] = size;
    const run = [iova, paddr, size];
    const chunks = this.pieces(d.pgtable.geo, d.loop.minPgsize, iova, size).map(
      ([lo, hi]): MapChunk => ({ first: 0, end: 1, spanStart: lo, spanEnd: hi, head: run, tail: null }),
    );
    // One entry, which starts the run: its block has a break.
    const breaks = new Int32Array(new SharedArrayBuffer(4));
    return { sg: pairs.buffer as SharedArrayBuffer, breaks: breaks.buffer as SharedArrayBuffer, prot, chunks };
  }

  /**
   * Runs a planned map: the helpers and (with callerRuns) this thread claim its chunks until none is
   * left. Then collects every chunk's log from its journal, and the call's error.
   */
  async runMap(d: DomainTables, iova: number, plan: MapPlan): Promise<MapOutcome> {
    const { chunks } = plan;
    const planned = this.takePlan();
    const first = planned('map', HELPERS_FIRST_CHUNK);
    let fault: MapTask['fault'] = first && { ...first, chunk: HELPERS_FIRST_CHUNK };
    for (let c = 0; c < chunks.length && !fault; c++) {
      const f = planned('map', c);
      if (f) fault = { ...f, chunk: c };
    }
    // A fault planned for a given chunk must hit a helper, so that call runs on the helpers alone.
    const callerRuns = this.callerRuns && (!fault || fault.chunk === HELPERS_FIRST_CHUNK);
    // Calls submitted together are all admitted before this one maps (a tiny call disjoint from it
    // is not held behind it); overlapping ones are already ordered by the domain's range lock.
    await null;
    if (!callerRuns) {
      // Its tasks need the workers that standby helpers hold; and an earlier call may have returned
      // before its helpers' results were handled (waitDone), which piscina counts as busy.
      await this.pool.retireStandbys();
      await this.pool.catchUp();
    }
    const geo = d.pgtable.geo;
    const call = MapCall.create(
      chunks,
      chunks.map((c) => journalCaps(geo, d.loop.minPgsize, d.spec.pgsizeBitmap, c.spanEnd - c.spanStart)),
      this.spareCalls,
    );
    const job = (helper: number): MapTask => ({ kind: 'map', table: d.spec, sg: plan.sg, breaks: plan.breaks, call: call.sab, helper, prot: plan.prot, fault });
    if (callerRuns) {
      // Standby helpers (kept awake between calls) take chunks while this thread maps too.
      const helpers = await this.pool.claimStandbys(Math.min(this.participants - 1, chunks.length - 1));
      call.sendingHelpers(helpers.length);
      helpers.forEach((helper, h) => helper.send(job(h)));
      call.runClaimed(d.loop, new Float64Array(plan.sg), new Int32Array(plan.breaks), plan.prot, -1, threadId, null);
      // What is left is the helpers' chunks in progress: wait for them in shared memory, briefly. A
      // helper that died mid-chunk never finishes it: its task ending says so.
      if (!call.waitDone(CALLER_WAIT_MS)) await Promise.all(helpers.map((helper) => helper.released()));
    } else {
      const helpers = Math.min(this.participants, chunks.length);
      call.sendingHelpers(helpers);
      const tasks: Promise<number>[] = [];
      for (let h = 0; h < helpers; h++) {
        tasks.push(
          this.pool.run<number>(job(h)).catch((e: unknown) => {
            // A helper that died may hold the allocator lock: free it at once, not after the others
            // settle, since they may be waiting for it. (A helper that only threw released it.)
            const tid = call.helperThread(h);
            if (e instanceof WorkerFailure && e.died && tid >= 0) this.memory.releaseLockOfDeadThread(tid);
            throw e;
          }),
        );
      }
      await Promise.allSettled(tasks);
    }
    if (this.profiling) this.lastProfile = call.profile();
    // Reused once no helper is in it (MapCall.create checks).
    this.spareCalls.push(call.sab);
    if (this.spareCalls.length > MAX_SPARE_CALLS) this.spareCalls.shift();

    const logs: MapLog[] = [];
    let error: IommuError | null = null;
    let failedAt = Infinity;
    let died = false;
    for (let c = 0; c < chunks.length; c++) {
      const log = call.log(c);
      logs.push(log);
      if (call.state(c) !== ChunkState.Done) {
        // Its thread died or threw mid-chunk (or nobody was left to take it): undone from the journal.
        died = true;
        failedAt = Math.min(failedAt, call.spanStart(c));
        continue;
      }
      appendAll(log.replacedPages, d.pgtable.replacedPages(log));
      if (call.errorOf(c, d.loop) !== MapError.None && d.loop.errorIova < failedAt) {
        failedAt = d.loop.errorIova;
        error = d.loop.toError();
      }
    }
    if (died) {
      error = new IommuError('EIO', 'a worker thread died while mapping; the call was rolled back');
      // A dead chunk may have written past what its journal says it finished: invalidate everything.
      failedAt = call.spanEnd(chunks.length - 1);
    } else if (error !== null && (error as IommuError).code === 'ENOMEM') {
      // Where memory ran out depends on how the chunks raced, not on the list: invalidate all that
      // any chunk wrote, so a device cannot keep a translation of it.
      for (const log of logs) if (log.written > 0) failedAt = Math.max(failedAt, log.base + log.written);
    }
    const mapped = chunks.length > 0 ? chunks[chunks.length - 1]!.spanEnd - iova : 0;
    return { mapped, logs, error, failedAt: error ? failedAt : mapped + iova };
  }

  /**
   * unmap of [iova, iova + size): returns the bytes unmapped and the gather of the leaves removed,
   * exactly as Domain's inline unmap would.
   */
  async unmap(d: DomainTables, iova: number, size: number): Promise<{ unmapped: number; gather: Gather }> {
    const pt = d.pgtable;
    const pieces = this.pieces(pt.geo, d.loop.minPgsize, iova, size);
    const faultFor = this.takePlan();
    // Round A: find each piece's leaves and first hole, without changing anything.
    const scans = await Promise.all(
      pieces.map(async ([lo, hi], c): Promise<ScanResult> => {
        try {
          return await this.pool.run<ScanResult>({ kind: 'scan', table: d.spec, lo, hi, first: c === 0, fault: faultFor('scan', c) });
        } catch {
          const gather = new Gather();
          const stop = pt.walkLeaves(lo, hi, c === 0 ? WalkMode.Scan : WalkMode.SkipStraddler, gather);
          return { stop, end: pt.walkEnd, gather: gather.snapshot() };
        }
      }),
    );
    const gather = new Gather();
    let end = iova;
    const clears: [number, number][] = [];
    for (let c = 0; c < pieces.length; c++) {
      const s = scans[c]!;
      gather.append(Gather.fromSnapshot(s.gather));
      end = Math.max(end, s.end);
      clears.push([pieces[c]![0]!, s.stop >= 0 ? s.stop : pieces[c]![1]!]);
      if (s.stop >= 0) break; // a single thread stops at the first hole
    }
    // Round B: remove them. Clearing is idempotent, so a piece whose worker died is simply redone here.
    const mode = WalkMode.Clear | WalkMode.SkipStraddler | WalkMode.SkipHoles;
    await Promise.all(
      clears.map(async ([lo, hi], c) => {
        if (hi <= lo) return;
        try {
          await this.pool.run<number>({ kind: 'clear', table: d.spec, lo, hi, fault: faultFor('clear', c) });
        } catch {
          pt.walkLeaves(lo, hi, mode, null);
        }
      }),
    );
    return { unmapped: end - iova, gather };
  }

  /** [iova, iova + size) cut into pieces at table boundaries, about equal in bytes. */
  private pieces(geo: LpaeGeometry, minPgsize: number, iova: number, size: number, most = Infinity): [number, number][] {
    const k = Math.min(this.chunkCount(size / minPgsize), most);
    const align = geo.blockSize(Math.max(geo.startLevel, geo.levelOfPgsize(minPgsize) - 1));
    const out: [number, number][] = [];
    let lo = iova;
    for (let c = 1; c <= k; c++) {
      let hi = c === k ? iova + size : Math.ceil((iova + (size * c) / k) / align) * align;
      hi = Math.min(Math.max(hi, lo), iova + size);
      if (hi > lo) out.push([lo, hi]);
      lo = hi;
    }
    return out;
  }
}

/** Journal capacities (tables installed, subtrees replaced) that a chunk spanning `span` bytes can need. */
function journalCaps(geo: LpaeGeometry, minPgsize: number, bitmap: number, span: number): [number, number] {
  const minLevel = geo.levelOfPgsize(minPgsize);
  let installed = 0;
  for (let l = geo.startLevel + 1; l <= minLevel; l++) installed += Math.ceil(span / geo.blockSize(l - 1)) + 2;
  const blocks = bitmap - minPgsize; // the sizes above the smallest
  const smallestBlock = blocks > 0 ? blocks & -blocks : 0;
  const replaced = smallestBlock > 0 ? Math.ceil(span / smallestBlock) + 2 : 0;
  return [Math.min(installed, JOURNAL_CAP), Math.min(replaced, JOURNAL_CAP)];
}
