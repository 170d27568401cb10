/**
 * The domain API: iommu_map, iommu_unmap, iommu_map_sg, unmap_sg, iova_to_phys over one domain's
 * LPAE tables. Like drivers/iommu/iommu.c it is a thin core: check the arguments, choose page sizes,
 * loop, roll back on failure, sync once. The table work itself is IoPgtable's.
 */
import { IommuError } from '../errors/errors.js';
import { Gather } from '../iotlb/gather.js';
import type { Iotlb } from '../iotlb/iotlb.js';
import {
  leafOutputAddress,
  leafProt,
  type FormatName,
  type LpaeGeometry,
} from '../pgtable/format.js';
import type { TableMemory } from '../pgtable/memory.js';
import { IoPgtable, MapLog } from '../pgtable/pgtable.js';
import { checkAddress, checkBoolean, checkOptions, hex } from '../util/args.js';
import { MapError, MapLoop, sgBytes } from './maploop.js';
import { checkProt } from './prot.js';
import { sgPairs, type SgList } from './sg.js';

export interface DomainOptions {
  format?: FormatName;
  granule?: 4096 | 16384 | 65536;
  ias?: number;
  oas?: number;
  pgsizeBitmap?: number;
  invalidateOnMap?: boolean;
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
  checkOpen(): void;
  domainFreed(domain: Domain): void;
}

const SG_OPTIONS = ['deferInvalidate'] as const;

export class Domain {
  readonly id: number;
  readonly pgsizeBitmap: number;
  readonly invalidateOnMap: boolean;
  readonly geometry: LpaeGeometry;
  /** @internal the table walker; shared with the IOTLB's device walks. */
  readonly pgtable: IoPgtable;
  private readonly host: DomainHost;
  private readonly loop: MapLoop;
  private readonly minPgsize: number;
  /** Invalidations deferred by calls that asked so, issued by iotlbSync(). */
  private readonly deferred = new Gather();
  private freed = false;

  /** @internal Use Iommu.allocDomain(). */
  constructor(host: DomainHost, id: number, geometry: LpaeGeometry, root: number, pgsizeBitmap: number, invalidateOnMap: boolean) {
    this.host = host;
    this.id = id;
    this.geometry = geometry;
    this.pgsizeBitmap = pgsizeBitmap;
    this.invalidateOnMap = invalidateOnMap;
    this.pgtable = new IoPgtable(geometry, host.memory, root);
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
    const log = new MapLog(iova);
    if (!loop.map(iova, paddr, size, prot, log)) this.failMap(log, loop.toError());
    this.commitMap(iova, size, log, false);
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
    const pairs = sgPairs(sg);
    prot = checkProt(prot);
    const defer = this.deferOption(opts);
    const log = new MapLog(iova);
    const mapped = this.loop.mapSg(iova, pairs, 0, pairs.length / 2, prot, log);
    if (mapped < 0) this.failMap(log, this.loop.toError());
    this.commitMap(iova, mapped, log, defer);
    return mapped;
  }

  /** unmap_sg: unmaps [iova, iova + sum of lengths) as unmap does, with one sync. */
  async unmapSg(iova: number, sg: SgList, opts?: SgOptions): Promise<number> {
    this.checkLive();
    iova = checkAddress('iova', iova);
    const pairs = sgPairs(sg);
    const defer = this.deferOption(opts);
    const size = sgBytes(pairs);
    if (size >= 2 ** 53) throw new IommuError('ERANGE', 'the sg list is longer than 2^53 bytes');
    this.checkUnmapRange(iova, size);
    return this.unmapRange(iova, size, defer);
  }

  /** Issues, as one batch, every invalidation deferred so far. */
  iotlbSync(): void {
    this.checkLive();
    this.host.iotlb.sync(this.id, this.deferred);
  }

  /** Invalidates everything cached for this domain (one batch, one command). */
  flushIotlbAll(): void {
    this.checkLive();
    const gather = new Gather();
    gather.addFlushAll();
    gather.freeTables(this.deferred.freePages);
    this.deferred.reset();
    this.host.iotlb.sync(this.id, gather);
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

  /** Frees the domain: detaches its devices and returns every table page. */
  async free(): Promise<void> {
    this.checkLive();
    this.freed = true;
    const mem = this.host.memory;
    const pages = this.pgtable.allTables();
    for (let i = 0; i < pages.length; i += 2) mem.free(pages[i]!, pages[i + 1]!);
    const parked = this.deferred.freePages;
    for (let i = 0; i < parked.length; i += 2) mem.free(parked[i]!, parked[i + 1]!);
    this.deferred.reset();
    this.host.domainFreed(this);
  }

  get isFreed(): boolean {
    return this.freed;
  }

  // --- the core loop -------------------------------------------------------------------------

  /**
   * A map that succeeded: the subtrees its blocks replaced get a walk invalidation before their pages
   * are freed; on an invalidateOnMap domain the mapped range is invalidated too (iotlb_sync_map),
   * now or — when deferred — at the next iotlbSync().
   */
  private commitMap(iova: number, mapped: number, log: MapLog, defer: boolean): void {
    const gather = new Gather();
    const r = log.replaced;
    for (let i = 0; i < r.length; i += 4) gather.addWalk(r[i + 2]!, r[i + 3]!);
    gather.freeTables(log.replacedPages);
    if (!this.invalidateOnMap) {
      if (!gather.isEmpty) this.deferred.append(gather);
      return;
    }
    if (mapped > 0) gather.addRange(iova, mapped);
    if (defer) this.deferred.append(gather);
    else this.host.iotlb.sync(this.id, gather);
  }

  /**
   * Undoes everything the call wrote and throws `error`. If it had written anything, the rollback is
   * invalidated in one batch of its own (even when the call asked to defer), so that no device keeps
   * a translation of a call that failed.
   */
  private failMap(log: MapLog, error: IommuError): never {
    const { base, written } = log;
    this.pgtable.rollback(log);
    if (written > 0) {
      const gather = new Gather();
      gather.addRange(base, written);
      this.host.iotlb.sync(this.id, gather);
    }
    throw error;
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

  private unmapRange(iova: number, size: number, defer: boolean): number {
    const gather = new Gather();
    const unmapped = this.pgtable.unmapLeaves(iova, size, gather);
    if (defer) this.deferred.append(gather);
    else this.host.iotlb.sync(this.id, gather);
    return unmapped;
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
