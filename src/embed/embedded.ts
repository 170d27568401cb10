/**
 * iommud/embed: an Iommu in its own worker thread, for Node servers whose event loop must never run
 * table work. The API is the library's (docs/api.md), with every call async: a call is a message to
 * the engine thread and its answer. See docs/api.md, "Embedding", for what else differs and why.
 */
import type { Access, DeviceFault, FaultListener } from '../core/devices.js';
import type { DirtyOptions, Domain, DomainOptions, LookupResult, PageTableInfo, SgOptions } from '../core/domain.js';
import type { IommuOptions, IommuStats } from '../core/iommu.js';
import type { SgList } from '../core/sg.js';
import { IommuError } from '../errors/errors.js';
import type { DomainCall, WireBudget } from './host.js';
import { EngineThread } from './thread.js';
import { sgToWire } from './wire.js';

/** Test hook (test/embed): parks the engine thread inside a call; see IommuHost.stall. */
export const STALL_ENGINE = Symbol('iommud.embed.stall');

export class EmbeddedIommu {
  private readonly faultListeners = new Set<FaultListener>();

  private constructor(
    private readonly thread: EngineThread,
    /** Worker threads of the engine's pool (they run beside the engine thread); 0 = none. */
    readonly workers: number,
  ) {
    thread.events.on('message', (fault: DeviceFault) => {
      for (const listener of this.faultListeners) {
        try {
          listener(Object.freeze(fault));
        } catch {
          // As in-process: a listener's own failure is not the engine's.
        }
      }
    });
    thread.events.unref();
  }

  /** Starts the engine thread and an Iommu in it; options as Iommu.create's. */
  static async create(options?: IommuOptions): Promise<EmbeddedIommu> {
    const thread = new EngineThread();
    try {
      const { workers } = await thread.call((h) => h.open(options));
      return new EmbeddedIommu(thread, workers);
    } catch (e) {
      await thread.terminate();
      throw e;
    }
  }

  /** As Iommu.allocDomain; `tableBudget` is an EmbeddedTableBudget of this Iommu. */
  async allocDomain(options?: EmbeddedDomainOptions): Promise<EmbeddedDomain> {
    const { id, pgsizeBitmap } = await this.thread.call((h) => h.allocDomain(this.wireOptions(options)));
    return new EmbeddedDomain(this.thread, id, pgsizeBitmap);
  }

  /** As Iommu.createTableBudget: a ceiling on the table memory of the domains allocated with it. */
  async createTableBudget(limitBytes: number): Promise<EmbeddedTableBudget> {
    const { budget, limitBytes: limit } = await this.thread.call((h) => h.createTableBudget(limitBytes));
    return new EmbeddedTableBudget(this.thread, budget, limit);
  }

  attachDevice(deviceId: number, domain: EmbeddedDomain): Promise<void> {
    return this.thread.call((h) => h.attachDevice(deviceId, this.domainId(domain)));
  }

  detachDevice(deviceId: number): Promise<void> {
    return this.thread.call((h) => h.detachDevice(deviceId));
  }

  /** A device's DMA: the physical address, or a FaultError (EFAULT) whose `fault` says why. */
  translate(deviceId: number, iova: number, access: Access): Promise<number> {
    return this.thread.call((h) => h.translate(deviceId, iova, access));
  }

  stats(): Promise<IommuStats> {
    return this.thread.call((h) => h.stats());
  }

  recentFaults(): Promise<DeviceFault[]> {
    return this.thread.call((h) => h.recentFaults());
  }

  /**
   * Calls `listener` with every device fault, on this thread, shortly after it happened (it may come
   * after the faulting translate has rejected). Returns the function that unsubscribes it.
   */
  onFault(listener: FaultListener): () => void {
    if (typeof listener !== 'function') throw new IommuError('EINVAL', 'onFault needs a function');
    if (this.faultListeners.size === 0) this.forwardFaults(true);
    this.faultListeners.add(listener);
    return () => {
      if (this.faultListeners.delete(listener) && this.faultListeners.size === 0) this.forwardFaults(false);
    };
  }

  /** Waits for the calls in flight, closes the engine and ends its thread. Later calls reject ENODEV. */
  close(): Promise<void> {
    return this.thread.close();
  }

  /** Ends the engine thread now: calls in flight reject EIO, later calls ENODEV. */
  terminate(): Promise<void> {
    return this.thread.terminate();
  }

  /** @internal */
  [STALL_ENGINE](flag: Int32Array): Promise<void> {
    return this.thread.call((h) => h.stall(flag));
  }

  private forwardFaults(on: boolean): void {
    // Ordered with the calls that follow; a closed or dead engine has no faults to send.
    this.thread.call((h) => h.forwardFaults(on)).catch(() => undefined);
  }

  /** Domain options with the budget as its number; anything else goes as it is, for the engine to check. */
  private wireOptions(options: unknown): DomainOptions | undefined {
    if (typeof options !== 'object' || options === null || !('tableBudget' in options) || options.tableBudget === undefined) {
      return options as DomainOptions | undefined;
    }
    const budget = options.tableBudget;
    if (!(budget instanceof EmbeddedTableBudget) || !budget.isOf(this.thread)) {
      throw new IommuError('EINVAL', 'tableBudget must be an open TableBudget of this Iommu');
    }
    return { ...options, tableBudget: budget.wire } as unknown as DomainOptions;
  }

  private domainId(domain: unknown): number {
    if (!(domain instanceof EmbeddedDomain)) throw new IommuError('EINVAL', 'attachDevice needs a domain of this embedded Iommu');
    if (!domain.isOf(this.thread)) throw new IommuError('ENOENT', 'attachDevice needs a live domain of this embedded Iommu');
    return domain.id;
  }
}

/** Domain options, with an EmbeddedTableBudget where the library takes a TableBudget. */
export type EmbeddedDomainOptions = Omit<DomainOptions, 'tableBudget'> & { tableBudget?: EmbeddedTableBudget };

/** A TableBudget in the engine thread. */
export class EmbeddedTableBudget {
  /** @internal Use EmbeddedIommu.createTableBudget(). */
  constructor(
    private readonly thread: EngineThread,
    private readonly id: number,
    /** The ceiling, in bytes (a multiple of 4 KiB). */
    readonly limitBytes: number,
  ) {}

  /** Table memory its domains hold now, in bytes (a getter in-process). */
  usedBytes(): Promise<number> {
    return this.thread.call((h) => h.budgetUsedBytes(this.id));
  }

  /** Gives the budget back; EBUSY while a live domain still draws on it. */
  close(): Promise<void> {
    return this.thread.call((h) => h.closeBudget(this.id));
  }

  /** @internal */
  get wire(): WireBudget {
    return { budget: this.id };
  }

  /** @internal */
  isOf(thread: EngineThread): boolean {
    return this.thread === thread;
  }
}

type DomainResult<M extends DomainCall> = Awaited<ReturnType<Domain[M]>>;

/** A domain in the engine thread: the Domain API, every call async. */
export class EmbeddedDomain {
  /** @internal Use EmbeddedIommu.allocDomain(). */
  constructor(
    private readonly thread: EngineThread,
    readonly id: number,
    readonly pgsizeBitmap: number,
  ) {}

  map(iova: number, paddr: number, size: number, prot: number): Promise<void> {
    return this.call('map', iova, paddr, size, prot);
  }

  unmap(iova: number, size: number): Promise<number> {
    return this.call('unmap', iova, size);
  }

  /** An SgTable crosses to the engine thread without its segments being copied (shared memory). */
  mapSg(iova: number, sg: SgList, prot: number, opts?: SgOptions): Promise<number> {
    return this.call('mapSg', iova, sgToWire(sg), prot, opts);
  }

  unmapSg(iova: number, sg: SgList, opts?: SgOptions): Promise<number> {
    return this.call('unmapSg', iova, sgToWire(sg), opts);
  }

  iotlbSync(): Promise<void> {
    return this.call('iotlbSync');
  }

  flushIotlbAll(): Promise<void> {
    return this.call('flushIotlbAll');
  }

  iovaToPhys(iova: number): Promise<number | null> {
    return this.call('iovaToPhys', iova);
  }

  lookup(iova: number): Promise<LookupResult | null> {
    return this.call('lookup', iova);
  }

  readAndClearDirty(iova: number, size: number, opts?: DirtyOptions): Promise<Uint8Array> {
    return this.call('readAndClearDirty', iova, size, opts);
  }

  /** `memory` is the engine's SharedArrayBuffer itself: this thread can walk the tables directly. */
  pageTable(): Promise<PageTableInfo> {
    return this.call('pageTable');
  }

  free(): Promise<void> {
    return this.call('free');
  }

  /** The table memory this domain holds, in bytes (a getter in-process). */
  tableBytes(): Promise<number> {
    return this.thread.call((h) => h.tableBytes(this.id));
  }

  /** @internal */
  isOf(thread: EngineThread): boolean {
    return this.thread === thread;
  }

  private call<M extends DomainCall>(method: M, ...args: unknown[]): Promise<DomainResult<M>> {
    return this.thread.call((h) => h.domainCall(this.id, method, args)) as Promise<DomainResult<M>>;
  }
}
