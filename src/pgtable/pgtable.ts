/**
 * The table walk: map, unmap and read leaves of one domain's LPAE tables in table memory.
 * This is iommud's io-pgtable-arm. It is the only code that walks or writes tables, and it runs
 * unchanged on the main thread (inline calls) and in the pool's workers (chunks of a big call).
 *
 * Concurrency rules it relies on (the domain layer enforces them):
 *   - two calls that write overlapping IOVA ranges never run at the same time;
 *   - calls on disjoint ranges may run at once, and may need the same missing table: it is installed
 *     with compare-and-swap, and the loser frees its page (as arm_lpae_install_table does);
 *   - a leaf is written and cleared with one 8-byte store, so a reader (iovaToPhys, lookup, a device
 *     walk) sees the whole old or the whole new descriptor.
 */
import {
  LeafEncoding,
  LpaeGeometry,
  PTE_TYPE_MASK,
  PTE_TYPE_TABLE,
  PTE_VALID,
  splitDouble,
  splitHi,
  splitLo,
  tableDescriptorLo,
  tableOffsetOf,
} from './format.js';
import type { TableOwner } from './account.js';
import { MapLog } from './maplog.js';
import { TableMemory } from './memory.js';

export { MapLog };

/** Outcome of writing leaves; anything but Ok means the caller must roll back. */
export const enum MapStatus {
  Ok = 0,
  /** Something is already mapped in the range (EEXIST). */
  Exists = 1,
  /** Table memory is exhausted (ENOMEM). */
  NoMem = 2,
}

/** How walkLeaves treats what it meets; see there. */
export const enum WalkMode {
  Scan = 0,
  Clear = 1,
  SkipStraddler = 2,
  SkipHoles = 4,
}

/** Receives leaves as they are removed (an invalidation gather). */
export interface LeafSink {
  addPages(iova: number, size: number, pgsize: number): void;
}

/** Receives unlinked tables: the walks through them to invalidate, then their pages to free (a gather). */
export interface TableSink {
  addWalk(iova: number, size: number): void;
  freeTables(pages: readonly number[]): void;
}

export class IoPgtable {
  readonly geo: LpaeGeometry;
  readonly mem: TableMemory;
  readonly root: number;
  /** Whom the domain's table pages are charged to (and whose budget may refuse one). */
  readonly owner: TableOwner;
  /** Bytes of every table page (the root is given a whole granule too). */
  private readonly tableBytes: number;
  /** 2^-levelShift(level), so that an index is a multiply, not a division. */
  private readonly invBlock: number[] = [];
  private readonly entryMask: number[] = [];

  /**
   * A one-entry walk cache for writers: the table last reached for a level, and the IOVA region it
   * covers. A call writes many runs into one table; this saves the walk from the root for each.
   * Valid for one call only (resetWalkCache): tables can be freed between calls.
   */
  private cacheLevel = -1;
  private cacheBase = 0;
  private cacheEnd = 0;
  private cacheTable = 0;

  /** The last leaf found by walkLeaf: its level, and descriptor halves. */
  leafLo = 0;
  leafHi = 0;

  constructor(geo: LpaeGeometry, mem: TableMemory, root: number, owner: TableOwner) {
    this.geo = geo;
    this.mem = mem;
    this.root = root;
    this.owner = owner;
    this.tableBytes = geo.granule;
    // The root may lie beyond this thread's views if another thread grew table memory since.
    mem.ensureMapped(root + geo.granule);
    for (let l = 0; l <= 3; l++) {
      this.invBlock[l] = 2 ** -geo.levelShift(l);
      this.entryMask[l] = (l === geo.startLevel ? geo.rootEntries : geo.entriesPerTable) - 1;
    }
  }

  /** Allocates an empty root table charged to `owner`; -1 when table memory or the budget is exhausted. */
  static allocRoot(geo: LpaeGeometry, mem: TableMemory, owner: TableOwner): number {
    return owner.allocPage(mem, geo.granule);
  }

  /** Descriptor index (in 8-byte units of table memory) of iova's entry in the table at `table`. */
  private slotOf(table: number, iova: number, level: number): number {
    return table / 8 + ((Math.floor(iova * this.invBlock[level]!) >>> 0) & this.entryMask[level]!);
  }

  /**
   * Writes `count` leaves of level `level` mapping iova -> paddr onwards. Stops at the first slot
   * that is in use (Exists) or when a table cannot be allocated (NoMem); `log.written` then says how
   * far it got. A block may take the place of a table that maps nothing (the subtree is unlinked and
   * logged; its pages are freed when the call commits).
   */
  mapLeaves(iova: number, paddr: number, level: number, count: number, enc: LeafEncoding, log: MapLog): MapStatus {
    const size = this.geo.blockSize(level);
    const last = level === this.geo.lastLevel;
    const perTable = this.entryMask[level]! + 1;
    while (count > 0) {
      const table = this.walkToTable(iova, level, log);
      if (table < 0) return -table as MapStatus;
      const first = this.slotOf(table, iova, level);
      const end = first + Math.min(count, perTable - (first - table / 8));
      // Check before writing: every slot must be empty (a table that maps nothing is unlinked so a
      // block can go there). So the slots about to be written are known to be ours alone.
      let stop = this.firstUsedSlot(first, end);
      while (stop < end && !last && this.unlinkEmptySubtree(stop, level, iova + (stop - first) * size, log)) {
        stop = this.firstUsedSlot(stop + 1, end);
      }
      if (stop > first) {
        log.intent(first, stop);
        enc.writeRun(this.mem.f64, first, stop, paddr, size);
        log.wrote((stop - first) * size);
      }
      if (stop < end) return MapStatus.Exists;
      const done = (end - first) * size;
      iova += done;
      paddr += done;
      count -= end - first;
    }
    return MapStatus.Ok;
  }

  /**
   * The first slot in [first, end) that is not empty, or end. Four slots a turn, one branch for all
   * four (a contiguous map_sg: 1.9 -> 1.4 ns/page, docs/performance.md), then one at a time.
   */
  private firstUsedSlot(first: number, end: number): number {
    const i32 = this.mem.i32;
    let s = first;
    for (let w = 2 * s; s + 4 <= end; s += 4, w += 8) if ((i32[w]! | i32[w + 2]! | i32[w + 4]! | i32[w + 6]!) !== 0) break;
    while (s < end && i32[2 * s] === 0) s++;
    return s;
  }

  /**
   * The scattered-list fast path of map_sg: writes leaves of `level` for the entries from `i` on that
   * are each a run of exactly one leaf (length = leaf size, aligned, not continued by the next entry),
   * mapped back to back from iova, as far as iova's table goes and while each slot is empty. Entries
   * below `limit` are taken; `end` bounds the look at the next entry. One walk, one intent and one
   * `wrote` per table instead of per leaf. Returns the entries written: 0 where the first entry is not
   * such a run, its slot is in use, or its table cannot be reached (the general path then decides,
   * and reports the error in the right place).
   */
  mapSinglePages(pairs: Float64Array, i: number, limit: number, end: number, iova: number, level: number, enc: LeafEncoding, log: MapLog): number {
    const first = this.runSlot(iova, level, log);
    if (first < 0) return 0;
    const size = this.geo.blockSize(level);
    const room = Math.min(this.runRoom, limit - i);
    const i32 = this.mem.i32;
    const oasLimit = this.geo.oasLimit;
    const perSize = 1 / size;
    // Check every entry and slot before writing one, so the intent covers only slots known empty.
    // The loop steps pair indices and slot words, and carries each entry's successor (read for the
    // run check) into the next turn (docs/performance.md: faster than indexing by entry).
    const lastNext = 2 * end - 2;
    const pStop = 2 * (i + room);
    let p = 2 * i;
    let w = 2 * first;
    let phys = pairs[p]!;
    for (; p < pStop; p += 2, w += 2) {
      // Aligned: phys / size is whole (a multiply and a floor; `&` on a double above 2^31 is slow).
      if (pairs[p + 1] !== size || Math.floor(phys * perSize) * size !== phys || phys + size > oasLimit) break;
      const next = p < lastNext ? pairs[p + 2]! : -1;
      if (next === phys + size) break; // the entry starts a longer run
      if (i32[w] !== 0) break;
      phys = next;
    }
    const n = (p - 2 * i) / 2;
    if (n === 0) return 0;
    log.intent(first, first + n);
    enc.writeEach(this.mem.f64, first, pairs, 2 * i, n);
    log.wrote(n * size);
    return n;
  }

  /**
   * The short-run fast path of map_sg: writes the leaves of the runs that start at entry `i` and
   * follow it, mapped back to back from iova, each run shorter than `maxRun + 1` bytes so that all its
   * leaves are of `level` (the smallest size), as far as iova's table goes and while the slots are
   * empty. Entries below `limit` are taken; `end` bounds the look at the entry after a run. A run is
   * taken whole or not at all, and its entries must each be whole leaves. One walk, one intent and
   * one `wrote` per table instead of per run. Returns the entries written: 0 where the first run is
   * not such a run, its slots are in use, or its table cannot be reached (the general path then
   * decides, and reports any error in the right place).
   */
  mapShortRuns(pairs: Float64Array, i: number, limit: number, end: number, iova: number, level: number, maxRun: number, enc: LeafEncoding, log: MapLog): number {
    // The first run must be short before anything is walked: the walk installs a last-level table,
    // which a longer run may not want (a block goes in its place).
    const paddr0 = pairs[2 * i]!;
    let len0 = 0;
    let k0 = i;
    do len0 += pairs[2 * k0++ + 1]!;
    while (k0 < end && len0 <= maxRun && pairs[2 * k0] === paddr0 + len0);
    if (len0 > maxRun || (k0 < end && pairs[2 * k0] === paddr0 + len0)) return 0;
    const first = this.runSlot(iova, level, log);
    if (first < 0) return 0;
    const size = this.geo.blockSize(level);
    const room = this.runRoom;
    const oasLimit = this.geo.oasLimit;
    const perSize = 1 / size;
    // Pass 1: whole runs that qualify, and whose slots are all empty, so the intent covers only slots
    // known empty. `&` on a double above 2^31 is slow: alignment is a multiply and a floor.
    let e = i;
    let leaves = 0;
    while (e < limit) {
      const paddr = pairs[2 * e]!;
      if (Math.floor(paddr * perSize) * size !== paddr) break;
      // Merge no further than the run may go: a longer one is the general path's (a long contiguous
      // run is merged there block by block, without reading its entries).
      const cap = Math.min(maxRun, (room - leaves) * size);
      let len = 0;
      let k = e;
      do {
        const l = pairs[2 * k + 1]!;
        if (Math.floor(l * perSize) * size !== l) break;
        len += l;
        k++;
      } while (k < end && len <= cap && pairs[2 * k] === paddr + len);
      // Not whole entries, a run continued past `limit` (the tail's) or too long, or out of range.
      if (k < end && pairs[2 * k] === paddr + len) break;
      if (k > limit || len > cap || paddr + len > oasLimit) break;
      const n = len * perSize;
      const stop = first + leaves + n;
      if (this.firstUsedSlot(first + leaves, stop) < stop) break;
      leaves += n;
      e = k;
    }
    if (leaves === 0) return 0;
    // Pass 2: write them, entry by entry.
    log.intent(first, first + leaves);
    enc.writeEntries(this.mem.f64, first, pairs, i, e, size);
    log.wrote(leaves * size);
    this.shortRunBytes = leaves * size;
    return e - i;
  }

  /** Bytes of IOVA the last mapShortRuns mapped. */
  shortRunBytes = 0;

  /**
   * For the short-run paths: the slot of iova's leaf of `level` (walking there, installing tables),
   * with `runRoom` set to the leaves left from it in its table and below 2^ias; or -1 when iova is not
   * aligned to a leaf (after a misaligned run) or the table cannot be reached — the general path then
   * reports the error.
   */
  private runSlot(iova: number, level: number, log: MapLog): number {
    const size = this.geo.blockSize(level);
    if ((iova & (size - 1)) !== 0) return -1; // leaf sizes are at most 1 GiB: the low 32 bits decide
    const table = this.walkToTable(iova, level, log);
    if (table < 0) return -1;
    const slot = this.slotOf(table, iova, level);
    this.runRoom = Math.min(this.entryMask[level]! + 1 - (slot - table / 8), Math.floor((this.geo.iasLimit - iova) / size));
    return slot;
  }

  /** Set by runSlot. */
  private runRoom = 0;

  /**
   * Walks from the root to the table at `level` that holds iova's entry, installing missing tables.
   * Returns its byte offset, or -MapStatus when a block already maps the range or memory ran out.
   */
  private walkToTable(iova: number, level: number, log: MapLog): number {
    if (level === this.cacheLevel && iova >= this.cacheBase && iova < this.cacheEnd) return this.cacheTable;
    let table = this.root;
    for (let l = this.geo.startLevel; l < level; l++) {
      const s = this.slotOf(table, iova, l);
      let lo = this.mem.i32[2 * s]!;
      if (lo === 0) {
        const page = this.owner.allocPage(this.mem, this.tableBytes);
        if (page < 0) return -MapStatus.NoMem;
        const desc = tableDescriptorLo(page);
        // Publish the zeroed table; if another call got there first, use theirs and give ours back.
        const seen = Atomics.compareExchange(this.mem.i32, 2 * s, 0, desc);
        if (seen === 0) {
          const span = this.geo.blockSize(l);
          log.addInstalled(s, page, Math.floor(iova / span) * span, span);
          lo = desc;
        } else {
          this.freePage(page);
          lo = seen;
        }
      }
      if ((lo & PTE_TYPE_MASK) !== PTE_TYPE_TABLE) return -MapStatus.Exists; // a block maps it already
      table = tableOffsetOf(lo, this.geo.granule);
      this.mem.ensureMapped(table + this.tableBytes);
    }
    const coverage = level > this.geo.startLevel ? this.geo.blockSize(level - 1) : this.geo.iasLimit;
    this.cacheLevel = level;
    this.cacheBase = Math.floor(iova / coverage) * coverage;
    this.cacheEnd = this.cacheBase + coverage;
    this.cacheTable = table;
    return table;
  }

  /** Forgets the writers' walk cache; every call that writes starts with this. */
  resetWalkCache(): void {
    this.cacheLevel = -1;
  }

  /** If the table at `slot` (level `level`) maps nothing, unlink it so a block can go there. */
  private unlinkEmptySubtree(slot: number, level: number, iova: number, log: MapLog): boolean {
    const lo = this.mem.i32[2 * slot]!;
    if ((lo & PTE_TYPE_MASK) !== PTE_TYPE_TABLE) return false; // a block: mapped
    const table = tableOffsetOf(lo, this.geo.granule);
    if (this.hasLeaves(table, level + 1)) return false;
    this.resetWalkCache();
    log.addReplaced(slot, this.mem.f64[slot]!, iova, this.geo.blockSize(level));
    this.collectTables(table, level + 1, log.replacedPages);
    this.mem.f64[slot] = 0;
    return true;
  }

  /** Does the table at `table` (level `level`), or any table below it, hold a leaf? */
  hasLeaves(table: number, level: number): boolean {
    this.mem.ensureMapped(table + this.tableBytes);
    const i32 = this.mem.i32;
    const first = table / 8;
    const end = first + this.entryMask[level]! + 1;
    for (let s = first; s < end; s++) {
      const lo = i32[2 * s]!;
      if ((lo & PTE_VALID) === 0) continue;
      if (level === this.geo.lastLevel || (lo & PTE_TYPE_MASK) !== PTE_TYPE_TABLE) return true;
      if (this.hasLeaves(tableOffsetOf(lo, this.geo.granule), level + 1)) return true;
    }
    return false;
  }

  /** Appends (offset, bytes) of the table at `table` and of every table below it to `out`. */
  collectTables(table: number, level: number, out: number[]): void {
    this.mem.ensureMapped(table + this.tableBytes);
    if (level < this.geo.lastLevel) {
      const first = table / 8;
      const end = first + this.entryMask[level]! + 1;
      for (let s = first; s < end; s++) {
        const lo = this.mem.i32[2 * s]!;
        if ((lo & PTE_TYPE_MASK) === PTE_TYPE_TABLE) {
          this.collectTables(tableOffsetOf(lo, this.geo.granule), level + 1, out);
        }
      }
    }
    out.push(table, this.tableBytes);
  }

  /**
   * Removes leaves from iova onwards until `size` bytes are unmapped, a hole is reached, or iova falls
   * inside a larger leaf (which is left whole). A leaf whose first byte is reached goes whole, so the
   * result may exceed `size`. Removed leaves go to `sink`. Tables are kept (as io-pgtable-arm does).
   */
  unmapLeaves(iova: number, size: number, sink: LeafSink | null): number {
    this.walkLeaves(iova, iova + size, WalkMode.Clear, sink);
    return this.walkEnd - iova;
  }

  /** Where the last walkLeaves ended: the end of the last leaf it visited (or where it started). */
  walkEnd = 0;

  /**
   * Visits, in order, the leaves that start in [lo, hi), and stops at the first hole (unless
   * SkipHoles). A leaf that covers lo but starts before it stops the walk at lo — or, with
   * SkipStraddler, is skipped as belonging to whoever owns the range before lo. With Clear the leaves
   * are removed. Returns the IOVA where it stopped early, or -1 if it reached hi; sets walkEnd.
   */
  walkLeaves(lo: number, hi: number, mode: WalkMode, sink: LeafSink | null): number {
    let iova = lo;
    this.walkEnd = lo;
    while (iova < hi) {
      const level = this.walkLeaf(iova);
      if (level < 0) {
        if ((mode & WalkMode.SkipHoles) === 0) return iova;
        const bs = this.geo.blockSize(this.holeLevel);
        iova = Math.floor(iova / bs) * bs + bs; // past the empty entry
        continue;
      }
      const leafSize = this.geo.blockSize(level);
      const leafStart = Math.floor(iova / leafSize) * leafSize;
      if (leafStart !== iova) {
        if ((mode & WalkMode.SkipStraddler) === 0) return iova;
        iova = leafStart + leafSize;
        this.walkEnd = iova;
        continue;
      }
      const first = this.leafSlot;
      // Tables are aligned to their size, so the table's first slot is `first` with the index bits clear.
      const tableEnd = first - (first & (this.geo.entriesPerTable - 1)) + this.entryMask[level]!;
      // Consecutive leaves of this table that start before hi.
      const limit = Math.min(tableEnd + 1, first + Math.ceil((hi - iova) / leafSize));
      const stop = this.leafRunEnd(first, limit, level, (mode & WalkMode.Clear) !== 0);
      const end = iova + (stop - first) * leafSize;
      sink?.addPages(iova, end - iova, leafSize);
      iova = end;
      this.walkEnd = end;
    }
    return -1;
  }

  /**
   * The first slot in [first, limit) that is not a leaf of `level` (or limit); with `clear`, each leaf
   * on the way is removed (one 8-byte store).
   */
  private leafRunEnd(first: number, limit: number, level: number, clear: boolean): number {
    const i32 = this.mem.i32;
    const f64 = this.mem.f64;
    let s = first;
    // Last level: every valid entry is a page, so one bit decides (the hot loop of every unmap:
    // 2.0 -> 1.4 ns/page against the general test below). Four entries a turn, one branch for all
    // four (1.4 -> 0.86 ns/page, docs/performance.md); each leaf is still removed by one store.
    if (level === this.geo.lastLevel) {
      for (let w = 2 * s; s + 4 <= limit; s += 4, w += 8) {
        if ((i32[w]! & i32[w + 2]! & i32[w + 4]! & i32[w + 6]! & PTE_VALID) === 0) break;
        if (clear) {
          f64[s] = 0;
          f64[s + 1] = 0;
          f64[s + 2] = 0;
          f64[s + 3] = 0;
        }
      }
      for (; s < limit && (i32[2 * s]! & PTE_VALID) !== 0; s++) if (clear) f64[s] = 0;
      return s;
    }
    while (s < limit) {
      const lo = i32[2 * s]!;
      if ((lo & PTE_VALID) === 0 || (lo & PTE_TYPE_MASK) === PTE_TYPE_TABLE) break;
      if (clear) f64[s] = 0;
      s++;
    }
    return s;
  }

  private holeLevel = 0;

  /**
   * A reader's walk (iova_to_phys, lookup, a device's translation): returns the leaf's level with
   * leafLo/leafHi set, or -1 if iova is not mapped. Each descriptor is loaded with one 8-byte read, so
   * a writer on another thread is seen before or after its store, never in between.
   */
  walkLeaf(iova: number): number {
    return this.walkLeafFrom(this.root, this.geo.startLevel, iova);
  }

  /**
   * walkLeaf from the table at `table` (level `level`) down: for a device walk that starts from a
   * cached last-level table. Sets leafLo/leafHi, leafSlot and leafTable; on a hole, holeLevel.
   */
  walkLeafFrom(table: number, level: number, iova: number): number {
    this.mem.ensureMapped(table + this.tableBytes);
    for (let l = level; ; l++) {
      const s = this.slotOf(table, iova, l);
      splitDouble(this.mem.f64[s]!);
      const lo = splitLo();
      if ((lo & PTE_VALID) === 0) {
        this.holeLevel = l;
        return -1;
      }
      if (l < this.geo.lastLevel && (lo & PTE_TYPE_MASK) === PTE_TYPE_TABLE) {
        table = tableOffsetOf(lo, this.geo.granule);
        this.mem.ensureMapped(table + this.tableBytes);
        continue;
      }
      this.leafLo = lo;
      this.leafHi = splitHi();
      this.leafSlot = s;
      this.leafTable = table;
      return l;
    }
  }

  /** Descriptor index and table of the last leaf walkLeaf found. */
  leafSlot = 0;
  leafTable = 0;

  /** The level at which the last walk met an invalid entry (its whole block there is unmapped). */
  get lastHoleLevel(): number {
    return this.holeLevel;
  }

  /**
   * Undoes a map call or chunk: clears the leaves it wrote (and a dead writer's partial batch) and puts
   * back the subtrees its blocks replaced. The tables it installed are left to reclaimTables (one
   * call's chunks may have installed a table inside another's).
   */
  rollback(log: MapLog): void {
    this.resetWalkCache();
    if (log.written > 0) this.unmapLeaves(log.base, log.written, null);
    // After the written leaves (they end at the first hole): a dead writer's partial batch.
    this.mem.ensureMapped(log.intentEnd * 8);
    for (let s = log.intentFirst; s < log.intentEnd; s++) this.mem.f64[s] = 0;
    const { replaced } = log;
    for (let i = 0; i < replaced.length; i += 4) {
      this.mem.ensureMapped((replaced[i]! + 1) * 8);
      this.mem.f64[replaced[i]!] = replaced[i + 1]!;
    }
  }

  /**
   * Unlinks, of the tables given as (slot, page, iova, size) quads (MapLog.installed), every one that
   * maps nothing — including those that only become empty once tables below them are unlinked — and
   * hands them to `gather`: a walk invalidation over the ranges they translated, and their pages to
   * free once it is issued. A device may have cached a walk through such a table (a later call wrote
   * leaves into it), so its page must not be reused before that walk is gone. Returns the quads kept.
   * The caller knows that no call is writing into these tables.
   */
  reclaimTables(quads: readonly number[], gather: TableSink): number[] {
    let left = quads.slice();
    const ranges: [number, number][] = [];
    for (let freed = true; freed && left.length > 0; ) {
      freed = false;
      const kept: number[] = [];
      for (let i = 0; i < left.length; i += 4) {
        const page = left[i + 1]!;
        const desc = tableDescriptorLo(page);
        if (this.isEmptyTable(page) && Atomics.compareExchange(this.mem.i32, 2 * left[i]!, desc, 0) === desc) {
          gather.freeTables([page, this.tableBytes]);
          ranges.push([left[i + 2]!, left[i + 2]! + left[i + 3]!]);
          freed = true;
        } else kept.push(left[i]!, page, left[i + 2]!, left[i + 3]!);
      }
      left = kept;
    }
    // One walk invalidation per stretch of IOVA (a call's tables are mostly side by side, and nest).
    ranges.sort((a, b) => a[0] - b[0]);
    for (let i = 0; i < ranges.length; ) {
      const lo = ranges[i]![0];
      let hi = ranges[i]![1];
      for (i++; i < ranges.length && ranges[i]![0] <= hi; i++) hi = Math.max(hi, ranges[i]![1]);
      gather.addWalk(lo, hi - lo);
    }
    return left;
  }

  /** Returns an unlinked table page to memory, and its charge to the owner. */
  private freePage(page: number): void {
    this.mem.free(page, this.tableBytes);
    this.owner.credit(this.tableBytes);
  }

  private isEmptyTable(table: number): boolean {
    this.mem.ensureMapped(table + this.tableBytes); // a worker may have grown the memory for it
    const first = table / 8;
    const end = first + this.tableBytes / 8;
    return this.firstUsedSlot(first, end) === end;
  }

  /**
   * The pages of the subtrees a log says its blocks replaced, as (offset, bytes) pairs: for a log
   * rebuilt from a journal. The subtrees are unlinked and held by the call, so nothing changes them.
   */
  replacedPages(log: MapLog): number[] {
    const out: number[] = [];
    const r = log.replaced;
    for (let i = 0; i < r.length; i += 4) {
      splitDouble(r[i + 1]!);
      this.collectTables(tableOffsetOf(splitLo(), this.geo.granule), this.geo.levelOfPgsize(r[i + 3]!) + 1, out);
    }
    return out;
  }

  /** Every table page of this domain, root included, as (offset, bytes) pairs. */
  allTables(): number[] {
    const out: number[] = [];
    this.collectTables(this.root, this.geo.startLevel, out);
    return out;
  }
}
