/**
 * The map loop of drivers/iommu/iommu.c: merge scatter-gather entries into physically contiguous
 * runs, check each run (§2's order), choose page sizes with iommu_pgsize, and write the leaves.
 * It is synchronous, allocation-free per run, and reports errors as data (`error`, `errorIova`), so
 * the same code serves an inline call on the main thread and a chunk of a big call in a worker.
 */
import { IommuError } from '../errors/errors.js';
import { LeafEncoding } from '../pgtable/format.js';
import { IoPgtable, MapLog, MapStatus } from '../pgtable/pgtable.js';
import { hex } from '../util/args.js';
import { PgsizeChooser } from './pgsize.js';
import { BLOCK, BLOCK_SHIFT } from './sgindex.js';

/**
 * Runs of up to this many smallest pages take the short-run path (pgtable's mapShortRuns): measured
 * on one thread, runs of 2-16 pages cost 15-100 ns there against 55-150 ns on the general path,
 * which wins from a few dozen pages on.
 */
const SHORT_RUN_PAGES = 32;

/**
 * The inline cost model, for the decision to hand a map to the pool (ParallelEngine.mapWorthIt).
 * Measured on one thread (docs/performance.md, 2026-12-04): a 4K leaf of a long run ~1.1 ns, a short
 * run ~2.9 ns over its leaves (single pages: 4.0 ns each; runs of 2-32 pages cost more, 6-7 ns a page,
 * so the model errs towards inline there), a long run ~100 ns of its own (checks, sizes, the walk).
 */
const PAGE_NS = 1.1;
const SHORT_RUN_NS = 2.9;
const LONG_RUN_NS = 100;

export const enum MapError {
  None = 0,
  /** iova, paddr or size not aligned to the smallest page size (EINVAL). */
  Misaligned = 1,
  /** size 0 (EINVAL). */
  Empty = 2,
  /** iova + size beyond 2^ias (ERANGE). */
  IovaRange = 3,
  /** paddr + size beyond 2^oas (ERANGE). */
  PaddrRange = 4,
  /** Already mapped (EEXIST). */
  Exists = 5,
  /** Table memory exhausted (ENOMEM). */
  NoMem = 6,
}

export class MapLoop {
  readonly pgtable: IoPgtable;
  readonly minPgsize: number;
  /** Set when a call returns failure: what went wrong, and where. */
  error = MapError.None;
  errorIova = 0;
  errorPaddr = 0;
  errorSize = 0;
  private readonly chooser: PgsizeChooser;
  private readonly encodings: (LeafEncoding | undefined)[] = [];

  constructor(pgtable: IoPgtable, pgsizeBitmap: number) {
    this.pgtable = pgtable;
    this.chooser = new PgsizeChooser(pgsizeBitmap);
    this.minPgsize = this.chooser.minPgsize;
  }

  /** iommu_map of a whole call: one run. */
  map(iova: number, paddr: number, size: number, prot: number, log: MapLog): boolean {
    this.pgtable.resetWalkCache();
    return this.mapRun(iova, paddr, size, prot, log);
  }

  /** iommu_map of one run: checks, then leaves. Returns false with `error` set on failure. */
  mapRun(iova: number, paddr: number, size: number, prot: number, log: MapLog): boolean {
    if (this.checkRun(iova, paddr, size) !== MapError.None) return false;
    const geo = this.pgtable.geo;
    const chooser = this.chooser;
    let done = 0;
    while (done < size) {
      const pgsize = chooser.choose(iova + done, paddr + done, size - done);
      const count = chooser.count;
      const level = geo.levelOfPgsize(pgsize);
      const status = this.pgtable.mapLeaves(iova + done, paddr + done, level, count, this.encoding(prot, level), log);
      if (status !== MapStatus.Ok) return this.writeFailed(status, log, paddr, size);
      done += pgsize * count;
    }
    return true;
  }

  /**
   * iommu_map_sg over segments [first, end) of `pairs` ([phys, length] Float64 pairs), mapped back to
   * back from iova. Returns the bytes mapped, or -1 with `error` set; `log.written` then says how far
   * leaves were written (everything the caller must roll back).
   */
  mapSg(iova: number, pairs: Float64Array, breaks: Int32Array, first: number, end: number, prot: number, log: MapLog): number {
    return this.mapChunk(pairs, breaks, first, end, iova, Infinity, null, null, prot, log);
  }

  /**
   * One chunk of a map_sg that several threads share. The chunk owns the entries [first, end), which
   * map at IOVA [spanStart, spanEnd), and writes exactly the leaves whose first byte lies there. A run
   * that crosses into the chunk from the one before (`head`) or out to the next (`tail`) is given
   * whole, as [iova, paddr, length], so that its page sizes are chosen as one thread would choose
   * them; only the leaves that start in the span are written. Returns bytes of the span walked, or -1.
   */
  mapChunk(
    pairs: Float64Array,
    breaks: Int32Array,
    first: number,
    end: number,
    spanStart: number,
    spanEnd: number,
    head: readonly number[] | null,
    tail: readonly number[] | null,
    prot: number,
    log: MapLog,
  ): number {
    const pt = this.pgtable;
    pt.resetWalkCache();
    if (end <= first) return 0;
    // Runs too short for any leaf but the smallest (a scattered list) are written a table at a time.
    const min = this.minPgsize;
    // Longer runs are merged faster by the general path, which skips index blocks unread.
    const maxRun = Math.min(this.chooser.maxSmallRun, SHORT_RUN_PAGES * min);
    const minLevel = pt.geo.levelOfPgsize(min);
    const minEnc = this.encoding(prot, minLevel);
    // A run crossing out of the chunk is the tail's, mapped clipped: the fast path stops before it.
    const shortEnd = tail ? end - 1 : end;
    let i = first;
    let at = spanStart;
    if (head) {
      if (!this.mapRunClipped(head, spanStart, spanEnd, prot, log)) return -1;
      const start = pairs[2 * first]!;
      i = runEnd(pairs, breaks, first + 1, end, start + pairs[2 * first + 1]!);
      at += pairs[2 * i - 2]! + pairs[2 * i - 1]! - start;
    }
    while (i < end) {
      const start = pairs[2 * i]!;
      if (log.written === 0) log.setBase(at);
      if (i < shortEnd && pairs[2 * i + 1]! <= maxRun) {
        // A run of one leaf (a scattered list) has a tighter loop of its own.
        const single = pairs[2 * i + 1] === min && (i + 1 === end || pairs[2 * i + 2] !== start + min);
        const n = single
          ? pt.mapSinglePages(pairs, i, shortEnd, end, at, minLevel, minEnc, log)
          : pt.mapShortRuns(pairs, i, shortEnd, end, at, minLevel, maxRun, minEnc, log);
        if (n > 0) {
          at += single ? n * min : pt.shortRunBytes;
          i += n;
          continue;
        }
      }
      const j = runEnd(pairs, breaks, i + 1, end, start + pairs[2 * i + 1]!);
      const len = pairs[2 * j - 2]! + pairs[2 * j - 1]! - start;
      i = j;
      if (j === end && tail) {
        if (!this.mapRunClipped(tail, spanStart, spanEnd, prot, log)) return -1;
      } else if (!this.mapRun(at, start, len, prot, log)) return -1;
      at += len;
    }
    return at - spanStart;
  }

  /** A whole run [iova, paddr, size], checked as one, of which only leaves starting in [lo, hi) are written. */
  private mapRunClipped(run: readonly number[], lo: number, hi: number, prot: number, log: MapLog): boolean {
    const iova = run[0]!;
    const paddr = run[1]!;
    const size = run[2]!;
    if (this.checkRun(iova, paddr, size) !== MapError.None) return false;
    const geo = this.pgtable.geo;
    const chooser = this.chooser;
    let done = 0;
    while (done < size && iova + done < hi) {
      const pgsize = chooser.choose(iova + done, paddr + done, size - done);
      const count = chooser.count;
      const stepStart = iova + done;
      const from = stepStart >= lo ? 0 : Math.ceil((lo - stepStart) / pgsize);
      const to = Math.min(count, Math.ceil((hi - stepStart) / pgsize));
      if (to > from) {
        const leafIova = stepStart + from * pgsize;
        if (log.written === 0) log.setBase(leafIova);
        const level = geo.levelOfPgsize(pgsize);
        const status = this.pgtable.mapLeaves(leafIova, paddr + done + from * pgsize, level, to - from, this.encoding(prot, level), log);
        if (status !== MapStatus.Ok) return this.writeFailed(status, log, paddr, size);
      }
      done += pgsize * count;
    }
    return true;
  }

  /**
   * How many leaves iommu_map writes for a run that passed checkRun: what the map costs, for the
   * decision to hand it to the pool (a 1 GiB-aligned 4 GiB run is 4 leaves, not 1Mi pages).
   */
  leavesOf(iova: number, paddr: number, size: number): number {
    const chooser = this.chooser;
    let leaves = 0;
    for (let done = 0; done < size; ) {
      const pgsize = chooser.choose(iova + done, paddr + done, size - done);
      leaves += chooser.count;
      done += pgsize * chooser.count;
    }
    return leaves;
  }

  /** Estimated inline time of a map of `runs` runs writing `leaves` leaves (counted exactly). */
  estimateNs(runs: number, leaves: number): number {
    return runs * LONG_RUN_NS + leaves * PAGE_NS;
  }

  /**
   * Estimated inline time of a map_sg of `runs` runs covering `bytes`, without a pass over them: runs
   * whose mean length reaches the next page size are taken to map with those (blocks), the rest with
   * the smallest pages. Blocks the list cannot use for want of alignment make it an underestimate,
   * which errs towards inline, where a call is never slower than on one thread.
   */
  estimateSgNs(bytes: number, runs: number): number {
    if (runs === 0) return 0;
    const mean = bytes / runs;
    const next = this.chooser.maxSmallRun + this.minPgsize;
    const leaves = mean >= next ? bytes / next : bytes / this.minPgsize;
    return runs * (mean <= SHORT_RUN_PAGES * this.minPgsize ? SHORT_RUN_NS : LONG_RUN_NS) + leaves * PAGE_NS;
  }

  /** The error of the last failed call, as the IommuError to throw. */
  toError(): IommuError {
    const { errorIova: iova, errorPaddr: paddr, errorSize: size } = this;
    const geo = this.pgtable.geo;
    switch (this.error) {
      case MapError.Misaligned:
        return new IommuError('EINVAL', `iova ${hex(iova)}, paddr ${hex(paddr)} and size ${hex(size)} must be aligned to the smallest page size ${hex(this.minPgsize)}`);
      case MapError.Empty:
        return new IommuError('EINVAL', 'size must be above 0');
      case MapError.IovaRange:
        return new IommuError('ERANGE', `iova range ${hex(iova)}+${hex(size)} exceeds the ${geo.ias}-bit input address space`);
      case MapError.PaddrRange:
        return new IommuError('ERANGE', `paddr range ${hex(paddr)}+${hex(size)} exceeds the ${geo.oas}-bit output address space`);
      case MapError.Exists:
        return new IommuError('EEXIST', `iova ${hex(iova)} is already mapped`);
      case MapError.NoMem:
        return new IommuError('ENOMEM', `${this.pgtable.owner.exhausted(this.pgtable.mem, geo.granule)} exhausted mapping iova ${hex(iova)}`);
      default:
        return new IommuError('EINVAL', 'no error');
    }
  }

  /** SEMANTICS §2's checks of one run, in Linux's order; a failure is recorded as the loop's error. */
  checkRun(iova: number, paddr: number, size: number): MapError {
    const min = this.minPgsize;
    let error = MapError.None;
    // min <= 1 GiB, so the low 32 bits (what `|` sees of a number) decide alignment exactly.
    if (((iova | paddr | size) & (min - 1)) !== 0) error = MapError.Misaligned;
    else if (size === 0) error = MapError.Empty;
    else if (iova + size > this.pgtable.geo.iasLimit) error = MapError.IovaRange;
    else if (paddr + size > this.pgtable.geo.oasLimit) error = MapError.PaddrRange;
    if (error !== MapError.None) this.fail(error, iova, paddr, size);
    return error;
  }

  /** Leaves are written in order from log.base, so the failing leaf is log.written bytes on. */
  private writeFailed(status: MapStatus, log: MapLog, paddr: number, size: number): false {
    return this.fail(status === MapStatus.NoMem ? MapError.NoMem : MapError.Exists, log.base + log.written, paddr, size);
  }

  private fail(error: MapError, iova: number, paddr: number, size: number): false {
    this.error = error;
    this.errorIova = iova;
    this.errorPaddr = paddr;
    this.errorSize = size;
    return false;
  }

  private encoding(prot: number, level: number): LeafEncoding {
    const key = prot * 4 + level;
    return (this.encodings[key] ??= new LeafEncoding(this.pgtable.geo, prot, level));
  }
}

/**
 * The index after the run that continues physically to `end` from entry i on (entries merge while
 * each starts where the run so far ends), below n. A whole block of the index in which no entry
 * starts a run (`breaks[block] === -1`) continues the run: it is skipped without reading its
 * entries. Kept as a small function so it compiles to a tight loop.
 */
function runEnd(pairs: Float64Array, breaks: Int32Array, i: number, n: number, end: number): number {
  while (i < n) {
    if ((i & (BLOCK - 1)) === 0 && i + BLOCK <= n && breaks[i >> BLOCK_SHIFT] === -1) {
      // So do the blocks after it that are alike, up to n: only the last one's last entry is read
      // (reading one per block was a cache miss per 64 entries of a long run).
      const full = n >> BLOCK_SHIFT;
      let b = (i >> BLOCK_SHIFT) + 1;
      while (b < full && breaks[b] === -1) b++;
      i = b << BLOCK_SHIFT;
      end = pairs[2 * i - 2]! + pairs[2 * i - 1]!;
      continue;
    }
    if (pairs[2 * i] !== end) break;
    end += pairs[2 * i + 1]!;
    i++;
  }
  return i;
}
