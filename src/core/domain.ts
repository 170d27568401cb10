/**
 * The domain API: iommu_map, iommu_unmap, iommu_map_sg, unmap_sg, iova_to_phys over one domain's
 * LPAE tables. Like drivers/iommu/iommu.c it is a thin core: check the arguments, choose page sizes,
 * loop, roll back on failure, sync once. The table work itself is IoPgtable's.
 */
import { IommuError } from '../errors/errors.js';
import { Gather } from '../iotlb/gather.js';
import type { Iotlb } from '../iotlb/iotlb.js';
import {
  PTE_DBM_HI,
  S1_AP_RDONLY,
  leafOutputAddress,
  leafProt,
  type FormatName,
  type Granule,
  type LpaeGeometry,
} from '../pgtable/format.js';
import type { TableOwner } from '../pgtable/account.js';
import type { TableMemory } from '../pgtable/memory.js';
import { IoPgtable, MapLog } from '../pgtable/pgtable.js';
import { checkAddress, checkBoolean, checkOptions, hex } from '../util/args.js';
import { MapError, MapLoop } from './maploop.js';
import { MAX_PIECED_ENTRIES, PARALLEL_MIN_PAGES, type DomainTables, type ParallelEngine } from './parallel.js';
import { RangeLock } from './rangelock.js';
import type { TableBudget } from './budget.js';
import type { TableSpec } from '../pool/tasks.js';
import { checkProt } from './prot.js';
import { sgView, type SgList, type SgView } from './sg.js';
import { appendAll } from '../util/arrays.js';

export interface DomainOptions {
  format?: FormatName;
  granule?: 4096 | 16384 | 65536;
  ias?: number;
  oas?: number;
  pgsizeBitmap?: number;
  invalidateOnMap?: boolean;
  /** Stage 1 only: track device writes in the descriptors (DBM), read with readAndClearDirty(). */
  dirtyTracking?: boolean;
  /** Draw table pages from this budget (Iommu.createTableBudget): beyond it, maps fail ENOMEM. */
  tableBudget?: TableBudget;
}

export interface DirtyOptions {
  /** Report without clearing (IOMMU_DIRTY_NO_CLEAR). */
  noClear?: boolean;
}

export interface SgOptions {
  /** Skip this call's invalidation (the seed's TLB_NO_INV); call iotlbSync() later. */
  deferInvalidate?: boolean;
}

export interface PageTableInfo {
  memory: SharedArrayBuffer;
  root: number;
  format: FormatName;
  granule: number;
  ias: number;
  oas: number;
  startLevel: number;
}

export interface LookupResult {
  phys: number;
  pageSize: number;
  prot: number;
}

/** What a Domain needs from the Iommu that owns it. */
export interface DomainHost {
  readonly memory: TableMemory;
  readonly iotlb: Iotlb;
  readonly parallel: ParallelEngine | null;
  checkOpen(): void;
  domainFreed(domain: Domain): void;
}

const DIRTY_OPTIONS = ['noClear'] as const;
/** 2^30 pages: a 128 MiB bitmap. */
const MAX_DIRTY_PAGES = 2 ** 30;

const SG_OPTIONS = ['deferInvalidate'] as const;

export class Domain implements DomainTables {
  readonly id: number;
  readonly pgsizeBitmap: number;
  readonly invalidateOnMap: boolean;
  readonly geometry: LpaeGeometry;
  /** The budget its table pages are drawn from, if any. */
  readonly tableBudget: TableBudget | null;
  /** @internal Small number tagging this domain's IOTLB entries (recycled after free). */
  readonly tag: number;
  /** @internal Leaf sizes of the bitmap (smallest first) and their levels, for IOTLB lookups. */
  readonly leafSizes: readonly number[];
  readonly leafLevels: readonly number[];
  /** @internal the table walker; shared with the IOTLB's device walks. */
  readonly pgtable: IoPgtable;
  private readonly host: DomainHost;
  /** @internal */
  readonly loop: MapLoop;
  /** Calls in flight that hold a range, and the lock that orders overlapping ones. */
  private readonly lock = new RangeLock();
  private inflight = 0;
  /** Tables that failed calls installed but could not free at once, as MapLog.installed quads. */
  private readonly orphans: number[] = [];
  /** IOVA ranges that parallel maps are writing right now. */
  private readonly mapping: number[][] = [];
  private readonly minPgsize: number;
  /** Invalidations deferred by calls that asked so, issued by iotlbSync(). */
  private readonly deferred = new Gather();
  private freed = false;
  /**
   * @internal Test-only: a bug planted on purpose, so that `iommud stress --plant-bug` can show that
   * its checks find it. 'lost-rollback': a failed map leaves what it wrote; 'lost-invalidation':
   * batches are dropped instead of issued, so devices keep stale translations.
   */
  plantedBug: 'lost-rollback' | 'lost-invalidation' | null = null;

  /** @internal Use Iommu.allocDomain(). */
  constructor(
    host: DomainHost,
    id: number,
    owner: TableOwner,
    geometry: LpaeGeometry,
    root: number,
    pgsizeBitmap: number,
    invalidateOnMap: boolean,
    tableBudget: TableBudget | null,
  ) {
    this.host = host;
    this.id = id;
    this.tag = owner.tag;
    this.tableBudget = tableBudget;
    const sizes: number[] = [];
    for (let l = 3; l >= geometry.startLevel; l--) if (pgsizeBitmap & geometry.blockSize(l)) sizes.push(geometry.blockSize(l));
    this.leafSizes = sizes;
    this.leafLevels = sizes.map((size) => geometry.levelOfPgsize(size));
    this.geometry = geometry;
    this.pgsizeBitmap = pgsizeBitmap;
    this.invalidateOnMap = invalidateOnMap;
    this.pgtable = new IoPgtable(geometry, host.memory, root, owner);
    this.loop = new MapLoop(this.pgtable, pgsizeBitmap);
    this.minPgsize = this.loop.minPgsize;
  }

  /** iommu_map: maps [iova, iova + size) to paddr with prot. */
  async map(iova: number, paddr: number, size: number, prot: number): Promise<void> {
    this.checkLive();
    iova = checkAddress('iova', iova);
    paddr = checkAddress('paddr', paddr);
    size = checkAddress('size', size);
    prot = checkProt(prot);
    const loop = this.loop;
    // The §2 checks fail before anything is written: no rollback, no invalidation.
    if (loop.checkRun(iova, paddr, size) !== MapError.None) throw loop.toError();
    const par = this.host.parallel;
    if (par && par.mapIsBig(1, size / this.minPgsize) && par.mapWorthIt(loop.estimateNs(1, loop.leavesOf(iova, paddr, size)))) {
      par.wakeHelpers();
      await this.exclusive(iova, iova + size, () =>
        this.whileMapping(iova, iova + size, async () => {
          const out = await par.runMap(this, iova, par.planMap(this, iova, paddr, size, prot));
          this.finishMap(iova, out.mapped, out.logs, out.error, out.failedAt, false);
        }),
      );
      return;
    }
    await this.exclusiveSync(iova, () => iova + size, () => {
      const log = new MapLog(iova);
      const ok = loop.map(iova, paddr, size, prot, log);
      this.finishMap(iova, size, [log], ok ? null : loop.toError(), loop.errorIova, false);
    });
  }

  /** iommu_unmap: resolves to the bytes unmapped (stops at a hole; a large leaf goes whole). */
  async unmap(iova: number, size: number): Promise<number> {
    this.checkLive();
    iova = checkAddress('iova', iova);
    size = checkAddress('size', size);
    this.checkUnmapRange(iova, size);
    return this.unmapRange(iova, size, false);
  }

  /** iommu_map_sg: maps the list's physically contiguous runs back to back from iova. */
  async mapSg(iova: number, sg: SgList, prot: number, opts?: SgOptions): Promise<number> {
    this.checkLive();
    iova = checkAddress('iova', iova);
    const view = sgView(sg);
    const pairs = view.pairs;
    prot = checkProt(prot);
    const defer = this.deferOption(opts);
    const n = pairs.length / 2;
    const par = this.host.parallel;
    // Many entries, or few that cover many pages: work for the pool, if it is worth the dispatch.
    const pages = view.index.bytes / this.minPgsize;
    if (par && par.mapIsBig(n, pages) && par.mapWorthIt(this.estimateSgNs(iova, view))) {
      par.wakeHelpers();
      const plan = par.planSg(this, iova, view, prot);
      const end = iova + view.index.bytes;
      return this.exclusive(iova, end, () =>
        this.whileMapping(iova, end, async () => {
          const out = await par.runMap(this, iova, plan);
          this.finishMap(iova, out.mapped, out.logs, out.error, out.failedAt, defer);
          return out.mapped;
        }),
      );
    }
    const inline = (): number => {
      const log = new MapLog(iova);
      const mapped = this.loop.mapSg(iova, pairs, view.index.breaks, 0, n, prot, log);
      this.finishMap(iova, mapped, [log], mapped < 0 ? this.loop.toError() : null, this.loop.errorIova, defer);
      return mapped;
    };
    // The range (a pass over the list) is only needed when another call is in flight on this domain.
    return this.exclusiveSync(iova, () => iova + view.index.bytes, inline);
  }

  /** The inline time of a map_sg of the list, estimated for the pool decision. */
  private estimateSgNs(iova: number, { pairs, index }: SgView): number {
    const n = index.length;
    // A short list's leaves are counted; a long one's are guessed from its mean run.
    return n <= MAX_PIECED_ENTRIES ? this.loop.estimateNs(index.runs, this.sgLeaves(iova, pairs, n)) : this.loop.estimateSgNs(index.bytes, index.runs);
  }

  /**
   * The leaves a short list's runs would write (its runs merged as map_sg merges them); a run that
   * fails its checks counts as none, since the call will fail there.
   */
  private sgLeaves(iova: number, pairs: Float64Array, n: number): number {
    const loop = this.loop;
    let leaves = 0;
    for (let i = 0; i < n; ) {
      const paddr = pairs[2 * i]!;
      let size = pairs[2 * i + 1]!;
      for (i++; i < n && pairs[2 * i] === paddr + size; i++) size += pairs[2 * i + 1]!;
      if (loop.checkRun(iova, paddr, size) === MapError.None) leaves += loop.leavesOf(iova, paddr, size);
      iova += size;
    }
    return leaves;
  }

  /** unmap_sg: unmaps [iova, iova + sum of lengths) as unmap does, with one sync. */
  async unmapSg(iova: number, sg: SgList, opts?: SgOptions): Promise<number> {
    this.checkLive();
    iova = checkAddress('iova', iova);
    const { index } = sgView(sg);
    const defer = this.deferOption(opts);
    const size = index.bytes;
    if (size >= 2 ** 53) throw new IommuError('ERANGE', 'the sg list is longer than 2^53 bytes');
    this.checkUnmapRange(iova, size);
    return this.unmapRange(iova, size, defer);
  }

  /** Issues, as one batch, every invalidation deferred so far. */
  iotlbSync(): void {
    this.checkLive();
    const gather = new Gather();
    gather.append(this.deferred);
    this.issue(gather);
  }

  /** Invalidates everything cached for this domain (one batch, one command). */
  flushIotlbAll(): void {
    this.checkLive();
    const gather = new Gather();
    gather.addFlushAll();
    gather.freeTables(this.deferred.freePages);
    this.deferred.reset();
    this.issue(gather);
  }

  /** The physical address iova translates to, or null where nothing is mapped. */
  iovaToPhys(iova: number): number | null {
    const found = this.lookup(iova);
    return found === null ? null : found.phys;
  }

  /** The leaf that maps iova: physical address, leaf size, and the prot its descriptor grants. */
  lookup(iova: number): LookupResult | null {
    this.checkLive();
    iova = checkAddress('iova', iova);
    if (iova >= this.geometry.iasLimit) return null;
    const pt = this.pgtable;
    const level = pt.walkLeaf(iova);
    if (level < 0) return null;
    const pageSize = this.geometry.blockSize(level);
    const base = leafOutputAddress(this.geometry, pt.leafLo, pt.leafHi, level);
    return {
      phys: base + (iova - Math.floor(iova / pageSize) * pageSize),
      pageSize,
      prot: leafProt(this.geometry, pt.leafLo, pt.leafHi),
    };
  }

  /**
   * Dirty tracking (iommufd's read_and_clear_dirty): one bit per smallest page of [iova, iova + size),
   * least significant bit first, set where a device wrote through the leaf since the last clear (a
   * leaf starts dirty when mapped, as in Linux). Clears the bits it reports unless noClear; what it
   * cleared is then invalidated in one batch, so devices record their next write again.
   */
  readAndClearDirty(iova: number, size: number, opts?: DirtyOptions): Uint8Array {
    this.checkLive();
    iova = checkAddress('iova', iova);
    size = checkAddress('size', size);
    const o = checkOptions('opts', opts, DIRTY_OPTIONS);
    const noClear = o.noClear === undefined ? false : checkBoolean('opts.noClear', o.noClear);
    if (!this.geometry.dirtyTracking) throw new IommuError('EINVAL', `domain ${this.id} was not allocated with dirtyTracking`);
    this.checkUnmapRange(iova, size);
    const min = this.minPgsize;
    if (size / min > MAX_DIRTY_PAGES) {
      throw new IommuError('ERANGE', `readAndClearDirty covers at most ${MAX_DIRTY_PAGES} pages (a ${MAX_DIRTY_PAGES / 8 / 2 ** 20} MiB bitmap) per call`);
    }
    const bitmap = new Uint8Array(Math.ceil(size / min / 8));
    const pt = this.pgtable;
    const i32 = pt.mem.i32;
    const end = iova + size;
    let cleared = false;
    for (let a = iova; a < end; ) {
      const level = pt.walkLeaf(a);
      if (level < 0) {
        const hole = this.geometry.blockSize(pt.lastHoleLevel);
        a = Math.floor(a / hole) * hole + hole;
        continue;
      }
      const leafSize = this.geometry.blockSize(level);
      const leafStart = Math.floor(a / leafSize) * leafSize;
      const leafEnd = Math.min(leafStart + leafSize, end);
      if (pt.leafHi & PTE_DBM_HI && (pt.leafLo & S1_AP_RDONLY) === 0) {
        for (let p = (Math.max(leafStart, iova) - iova) / min; p < (leafEnd - iova) / min; p++) bitmap[p >> 3]! |= 1 << (p & 7);
        // Back to writable-clean, unless a device dirtied or someone unmapped it meanwhile (then it stays).
        if (!noClear) cleared = Atomics.compareExchange(i32, 2 * pt.leafSlot, pt.leafLo, pt.leafLo | S1_AP_RDONLY) === pt.leafLo || cleared;
      }
      a = leafEnd;
    }
    if (cleared) {
      const gather = new Gather();
      gather.addRange(iova, size);
      this.issue(gather);
    }
    return bitmap;
  }

  /** Where the tables are, for readers that walk them by the ARM rules. */
  pageTable(): PageTableInfo {
    this.checkLive();
    const g = this.geometry;
    return {
      memory: this.host.memory.sab,
      root: this.pgtable.root,
      format: g.format,
      granule: g.granule,
      ias: g.ias,
      oas: g.oas,
      startLevel: g.startLevel,
    };
  }

  /** @internal What a worker needs to rebuild this domain's walker. */
  get spec(): TableSpec {
    const g = this.geometry;
    const { root, owner } = this.pgtable;
    return {
      format: g.format,
      granule: g.granule as Granule,
      ias: g.ias,
      oas: g.oas,
      root,
      pgsizeBitmap: this.pgsizeBitmap,
      dirtyTracking: g.dirtyTracking,
      tag: owner.tag,
      budget: owner.budget,
    };
  }

  /**
   * The page-table memory this domain holds, in bytes: its root and every table below, and tables it
   * unlinked that wait for an invalidation before they are freed.
   */
  get tableBytes(): number {
    // A freed domain's tag (and account slot) may already be another domain's.
    return this.freed ? 0 : this.pgtable.owner.accounts.domainBytes(this.tag);
  }

  /** Frees the domain: detaches its devices and returns every table page. */
  async free(): Promise<void> {
    this.checkLive();
    if (!this.lock.idle || this.inflight > 0) throw new IommuError('EBUSY', `domain ${this.id} has calls in flight`);
    this.freed = true;
    const mem = this.host.memory;
    const owner = this.pgtable.owner;
    owner.freePages(mem, this.pgtable.allTables());
    owner.freePages(mem, this.deferred.freePages);
    this.deferred.reset();
    this.host.domainFreed(this);
  }

  get isFreed(): boolean {
    return this.freed;
  }

  // --- the core loop -------------------------------------------------------------------------

  /**
   * Ends a map call, inline or parallel. On success: the subtrees its blocks replaced get a walk
   * invalidation before their pages are freed, and on an invalidateOnMap domain the mapped range is
   * invalidated (iotlb_sync_map), now or — when deferred — at the next iotlbSync(). On failure:
   * everything is undone; if a single thread would have written anything before failing (at
   * `failedAt`), the rollback is invalidated in one batch of its own (even when the call asked to
   * defer), so that no device keeps a translation of a failed call.
   */
  private finishMap(iova: number, mapped: number, logs: MapLog[], error: IommuError | null, failedAt: number, defer: boolean): void {
    if (error) {
      if (this.plantedBug === 'lost-rollback') throw error;
      const installed: number[] = [];
      for (const log of logs) {
        this.pgtable.rollback(log);
        appendAll(installed, log.installed);
      }
      if (failedAt > iova) {
        const gather = new Gather();
        gather.addRange(iova, failedAt - iova);
        // Not issue(): a failed call changes nothing else, not even when pending pages are freed.
        this.host.iotlb.sync(this.pgtable.owner, gather);
      }
      // Tables the call installed may be in use by another call in flight: then they are freed later.
      if (this.inflight <= 1) this.reclaim(installed);
      else appendAll(this.orphans, installed);
      throw error;
    }
    const gather = new Gather();
    for (const log of logs) {
      const r = log.replaced;
      for (let i = 0; i < r.length; i += 4) gather.addWalk(r[i + 2]!, r[i + 3]!);
      gather.freeTables(log.replacedPages);
    }
    if (!this.invalidateOnMap || defer) {
      // No batch now (none at all without invalidateOnMap, CONTRACT), but the walks through the
      // replaced tables must not outlive the call: a device would walk the old, empty tables and
      // fault on the new blocks. A deferred iotlb_sync_map defers only the mapped range.
      if (!gather.isEmpty) this.host.iotlb.applyNow(this.pgtable.owner, gather);
      if (defer && this.invalidateOnMap && mapped > 0) this.deferred.addRange(iova, mapped);
      return;
    }
    if (mapped > 0) gather.addRange(iova, mapped);
    this.issue(gather);
  }

  /**
   * Runs synchronous `work` as a call on [lo, hi()): at once when nothing is in flight on the domain
   * (nothing can interleave with it), else in turn with the calls on overlapping ranges.
   */
  private async exclusiveSync<T>(lo: number, hi: () => number, work: () => T): Promise<T> {
    if (this.lock.idle) return work();
    return this.exclusive(lo, hi(), work);
  }

  /**
   * Runs `work` as a call on [lo, hi): after every earlier call on an overlapping range, and before
   * any later one starts on it.
   */
  private async exclusive<T>(lo: number, hi: number, work: () => T | Promise<T>): Promise<T> {
    const release = await this.lock.acquire(lo, hi);
    this.inflight++;
    try {
      this.checkLive();
      return await work();
    } finally {
      this.inflight--;
      release();
      if (this.inflight === 0) this.reclaimOrphans();
    }
  }

  /**
   * Marks [lo, hi) as being mapped by workers while `work` runs. Devices may translate through leaves
   * there meanwhile, but the IOTLB caches nothing of it (nor the last-level tables around it): if the
   * call fails, its leaves and tables go, and no device may keep them.
   */
  private async whileMapping<T>(lo: number, hi: number, work: () => Promise<T>): Promise<T> {
    const range = [lo, hi];
    this.mapping.push(range);
    try {
      return await work();
    } finally {
      this.mapping.splice(this.mapping.indexOf(range), 1);
    }
  }

  /** @internal Is a parallel map in flight on any part of [lo, hi)? */
  mappingOverlaps(lo: number, hi: number): boolean {
    for (const r of this.mapping) if (r[0]! < hi && lo < r[1]!) return true;
    return false;
  }

  /** Completes one invalidation batch for this domain. */
  private issue(gather: Gather): void {
    if (this.plantedBug === 'lost-invalidation') return;
    this.host.iotlb.sync(this.pgtable.owner, gather);
  }

  /** Frees the tables that failed calls installed and could not free while others were in flight. */
  private reclaimOrphans(): void {
    this.reclaim(this.orphans);
    this.orphans.length = 0;
  }

  /**
   * Frees those of the given tables (MapLog.installed quads) that map nothing, once the walks that
   * devices cached through them are invalidated — part of the failed call's undo, so not a batch.
   */
  private reclaim(installed: readonly number[]): void {
    const gather = new Gather();
    this.pgtable.reclaimTables(installed, gather);
    if (!gather.isEmpty) this.host.iotlb.applyNow(this.pgtable.owner, gather);
  }

  private checkUnmapRange(iova: number, size: number): void {
    const min = this.minPgsize;
    if (((iova | size) & (min - 1)) !== 0) {
      throw new IommuError('EINVAL', `iova ${hex(iova)} and size ${hex(size)} must be aligned to the smallest page size ${hex(min)}`);
    }
    if (iova + size > this.geometry.iasLimit) {
      throw new IommuError('ERANGE', `iova range ${hex(iova)}+${hex(size)} exceeds the ${this.geometry.ias}-bit input address space`);
    }
  }

  private async unmapRange(iova: number, size: number, defer: boolean): Promise<number> {
    const finish = (unmapped: number, gather: Gather): number => {
      if (defer) this.deferred.append(gather);
      else this.issue(gather);
      return unmapped;
    };
    const par = this.host.parallel;
    if (par && par.unmapsOnPool && size / this.minPgsize >= PARALLEL_MIN_PAGES) {
      return this.exclusive(iova, iova + size, async () => {
        const { unmapped, gather } = await par.unmap(this, iova, size);
        return finish(unmapped, gather);
      });
    }
    return this.exclusiveSync(iova, () => iova + size, () => {
      const gather = new Gather();
      return finish(this.pgtable.unmapLeaves(iova, size, gather), gather);
    });
  }

  private deferOption(opts: unknown): boolean {
    const o = checkOptions('opts', opts, SG_OPTIONS);
    return o.deferInvalidate === undefined ? false : checkBoolean('opts.deferInvalidate', o.deferInvalidate);
  }

  private checkLive(): void {
    this.host.checkOpen();
    if (this.freed) throw new IommuError('ENOENT', `domain ${this.id} has been freed`);
  }
}
