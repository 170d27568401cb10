/**
 * Parallel map_sg / unmap_sg: how one big call is cut into chunks that the pool's workers run at
 * once on the shared tables, and how their results are put back together so that nobody can tell,
 * except by the clock, that it was not one thread doing it in order (SEMANTICS §4).
 *
 * map_sg: the list is cut into chunks of entries. From the list's index (SgIndex) the main thread
 *   finds each chunk's IOVA span and the runs that cross chunk boundaries (a physically contiguous
 *   list is one run across every chunk). Each chunk writes the leaves whose first byte lies in its
 *   span; a crossing run is given whole, so page sizes are chosen exactly as one thread would. Each
 *   chunk keeps its undo log in a journal in shared memory, so even a worker that dies is undone.
 *   The call's error is the one a single thread would have met first: the lowest IOVA among the
 *   chunks' errors. On any error every chunk is rolled back.
 *
 * unmap / unmap_sg, in two rounds over IOVA pieces:
 *   A. "scan": each piece finds, read-only, its leaves and the first hole in it;
 *   B. "clear": the pieces up to the first hole remove their leaves. A piece whose worker died is
 *      cleared again on the main thread (clearing is idempotent), so the call always completes.
 *   The scans' gathers, appended in order, are the gather a single thread would have built.
 */
import { IommuError } from '../errors/errors.js';
import { Gather } from '../iotlb/gather.js';
import type { LpaeGeometry } from '../pgtable/format.js';
import { initJournal, J, journalSize, MapLog } from '../pgtable/maplog.js';
import type { TableMemory } from '../pgtable/memory.js';
import { WalkMode, type IoPgtable } from '../pgtable/pgtable.js';
import { WorkerFailure, type ChunkPool } from '../pool/pool.js';
import type { FaultSpec, MapChunk, MapResult, MapTask, ScanResult, TableSpec } from '../pool/tasks.js';
import { MapError, MapLoop } from './maploop.js';
import { inSharedMemory, type SgView } from './sg.js';

/**
 * When a call is worth the pool, and how finely to cut it. A task costs ~20-70 µs to dispatch on
 * this 2-core machine (docs/performance.md), and a leaf ~3 ns inline, so a chunk below ~16K leaves
 * spends more on dispatch than the thread saves; calls below ~64K leaves stay inline.
 */
export const PARALLEL_MIN_PAGES = 65536;
export const MIN_CHUNK_PAGES = 16384;
/** One chunk per thread: a second batch costs another round trip through the main thread (measured: 1.60x -> 1.76x on scattered map_sg, docs/performance.md). */
const CHUNKS_PER_THREAD = 1;
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
  chunk: number;
  fault: FaultSpec;
}

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

  constructor(
    private readonly pool: ChunkPool,
    private readonly memory: TableMemory,
  ) {}

  get threads(): number {
    return this.pool.threads;
  }

  private chunkCount(pages: number): number {
    return Math.max(1, Math.min(Math.floor(pages / MIN_CHUNK_PAGES), this.pool.threads * CHUNKS_PER_THREAD));
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
  planSg(d: DomainTables, iova: number, sg: SgView, prot: number): MapChunk[] {
    const { pairs, index } = sg;
    const n = index.length;
    const k = this.chunkCount(n);
    const bounds = Array.from({ length: k + 1 }, (_, c) => Math.round((c * n) / k));
    const offsets = bounds.map((i) => index.offsetOf(pairs, i));
    // The run through the boundary before entry e, as [iova, paddr, length], or null if e starts a run.
    const crossing = (e: number): number[] | null => {
      if (e <= 0 || e >= n || index.startsRun(pairs, e)) return null;
      const start = index.runStart(pairs, e);
      const startOffset = index.offsetOf(pairs, start);
      return [iova + startOffset, pairs[2 * start]!, index.offsetOf(pairs, index.runEnd(pairs, e)) - startOffset];
    };
    const sgBuffer = inSharedMemory(pairs).buffer as SharedArrayBuffer;
    const chunks: MapChunk[] = [];
    for (let c = 0; c < k; c++) {
      chunks.push({
        kind: 'map',
        table: d.spec,
        sg: sgBuffer,
        first: bounds[c]!,
        end: bounds[c + 1]!,
        spanStart: iova + offsets[c]!,
        spanEnd: iova + offsets[c + 1]!,
        head: crossing(bounds[c]!),
        tail: crossing(bounds[c + 1]!),
        prot,
      });
    }
    return chunks;
  }

  /** map of one big run: IOVA pieces of the same run, each writing its own leaves. */
  async map(d: DomainTables, iova: number, paddr: number, size: number, prot: number): Promise<MapOutcome> {
    const pairs = new Float64Array(new SharedArrayBuffer(16));
    pairs[0] = paddr;
    pairs[1] = size;
    const run = [iova, paddr, size];
    const sg = pairs.buffer as SharedArrayBuffer;
    const chunks = this.pieces(d.pgtable.geo, d.loop.minPgsize, iova, size).map(
      ([lo, hi]): MapChunk => ({ kind: 'map', table: d.spec, sg, first: 0, end: 1, spanStart: lo, spanEnd: hi, head: run, tail: null, prot }),
    );
    return this.runMapTasks(d, iova, chunks);
  }

  /** Writes every chunk, each with a journal; collects their logs, and the call's error. */
  async runMapTasks(d: DomainTables, iova: number, chunks: MapChunk[]): Promise<MapOutcome> {
    const geo = d.pgtable.geo;
    const caps = chunks.map((t) => journalCaps(geo, d.loop.minPgsize, d.spec.pgsizeBitmap, t.spanEnd - t.spanStart));
    const offsets: number[] = [];
    let words = 0;
    for (const [ci, cr] of caps) {
      offsets.push(words);
      words += journalSize(ci, cr);
    }
    const journal = new Float64Array(new SharedArrayBuffer(words * 8));
    const faultFor = this.takePlan();
    const tasks = chunks.map((chunk, c): MapTask => {
      initJournal(journal, offsets[c]!, caps[c]![0]!, caps[c]![1]!);
      return { ...chunk, journal: journal.buffer as SharedArrayBuffer, journalOffset: offsets[c]!, fault: faultFor('map', c) };
    });
    const settled = await Promise.allSettled(
      tasks.map((t, c) =>
        this.pool.run<MapResult>(t).catch((e: unknown) => {
          // A dead worker may hold the allocator lock: free it at once, not after the others
          // settle, since they may be waiting for it. (A worker that only threw released it.)
          if (e instanceof WorkerFailure && e.died) this.memory.releaseLockOfDeadThread(journal[offsets[c]! + J.ThreadId]!);
          throw e;
        }),
      ),
    );

    const logs: MapLog[] = [];
    let error: IommuError | null = null;
    let failedAt = Infinity;
    let died = false;
    settled.forEach((r, c) => {
      if (r.status === 'fulfilled') {
        const v = r.value;
        const log = new MapLog(v.base);
        log.written = v.written;
        log.installed.push(...v.installed);
        log.replaced.push(...v.replaced);
        log.replacedPages.push(...v.replacedPages);
        logs.push(log);
        if (!v.ok && v.errorIova < failedAt) {
          failedAt = v.errorIova;
          error = errorOf(d.loop, v);
        }
      } else {
        // The worker died mid-chunk: undo from its journal.
        const { log } = MapLog.fromJournal(journal, offsets[c]!);
        logs.push(log);
        died = true;
        failedAt = Math.min(failedAt, tasks[c]!.spanStart);
      }
    });
    if (died) error = new IommuError('EIO', 'a worker thread died while mapping; the call was rolled back');
    if (died) {
      // A dead chunk may have written past what its journal says it finished: invalidate everything.
      failedAt = tasks[tasks.length - 1]!.spanEnd;
    } else if (error !== null && (error as IommuError).code === 'ENOMEM') {
      // Where memory ran out depends on how the chunks raced, not on the list: invalidate all that
      // any chunk wrote, so a device cannot keep a translation of it.
      for (const log of logs) if (log.written > 0) failedAt = Math.max(failedAt, log.base + log.written);
    }
    const mapped = tasks.length > 0 ? tasks[tasks.length - 1]!.spanEnd - iova : 0;
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
  private pieces(geo: LpaeGeometry, minPgsize: number, iova: number, size: number): [number, number][] {
    const k = this.chunkCount(size / minPgsize);
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

function errorOf(loop: MapLoop, r: MapResult): IommuError {
  loop.error = r.error as MapError;
  loop.errorIova = r.errorIova;
  loop.errorPaddr = r.errorPaddr;
  loop.errorSize = r.errorSize;
  return loop.toError();
}
