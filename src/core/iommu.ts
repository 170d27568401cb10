/**
 * The Iommu: owns the table memory, the IOTLB and the domains. Everything here runs on the thread that
 * created it; worker threads only ever see table memory and the chunks of work handed to them.
 */
import { availableParallelism } from 'node:os';
import { IommuError } from '../errors/errors.js';
import type { IotlbStats } from '../iotlb/iotlb.js';
import { Iotlb } from '../iotlb/iotlb.js';
import { checkFormatConfig, LITTLE_ENDIAN, LpaeGeometry } from '../pgtable/format.js';
import { MAX_DOMAIN_TAGS, NO_BUDGET, TableAccounts, TableOwner } from '../pgtable/account.js';
import { TableMemory } from '../pgtable/memory.js';
import { IoPgtable } from '../pgtable/pgtable.js';
import { checkAddress, checkBoolean, checkCount, checkOptions, hex } from '../util/args.js';
import { TableBudget } from './budget.js';
import { Domain, type DomainHost, type DomainOptions } from './domain.js';
import { ParallelEngine } from './parallel.js';
import { Devices, type Access, type DeviceFault, type FaultListener, type FaultReason } from './devices.js';
import { ChunkPool } from '../pool/pool.js';

export interface IommuOptions {
  /** Worker threads for parallel map_sg/unmap_sg; 0 = no pool. Default: os.availableParallelism(). */
  workers?: number;
  /** Ceiling of page-table memory, in bytes (shared memory, grown on demand). Default 1 GiB. */
  tableMemoryBytes?: number;
  /**
   * The calling thread maps a share of a big parallel call itself, instead of waiting for the pool:
   * faster (one helper fewer to wake), but the caller's event loop is busy meanwhile. Default true;
   * the daemon sets it false so a big map_sg never stalls other connections.
   */
  callerRuns?: boolean;
  /** Leaf entries the IOTLB holds (and as many walk entries). Default 4096. */
  iotlbEntries?: number;
  /** Cost model: modelled ns per invalidation batch and per command (stats().iotlb.modelledNs). */
  invalidationCost?: { perSync: number; perCommand: number };
}

export interface IommuStats {
  iotlb: IotlbStats & { modelledNs: number };
  tables: { pages: number; bytes: number };
  domains: number;
  devices: number;
  faults: Record<FaultReason, number> & { total: number };
}

const IOMMU_OPTIONS = ['workers', 'tableMemoryBytes', 'iotlbEntries', 'invalidationCost', 'callerRuns'] as const;
const DOMAIN_OPTIONS = ['format', 'granule', 'ias', 'oas', 'pgsizeBitmap', 'invalidateOnMap', 'dirtyTracking', 'tableBudget'] as const;
/** Domain tags are IOTLB key prefixes and table-account slots: small, and recycled when a domain is freed. */
const MAX_DOMAINS = MAX_DOMAIN_TAGS;

export class Iommu implements DomainHost {
  /** @internal */
  readonly memory: TableMemory;
  /** @internal */
  readonly iotlb: Iotlb;
  /** @internal Table memory held by each domain and budget. */
  readonly accounts = TableAccounts.create();
  readonly workers: number;
  /** @internal The worker pool's side of big calls; null with workers: 0. */
  readonly parallel: ParallelEngine | null;
  private readonly pool: ChunkPool | null;
  private readonly domains = new Map<number, Domain>();
  private readonly devices: Devices;
  private nextDomainId = 1;
  private readonly freeTags: number[] = [];
  private nextTag = 0;
  private closed = false;

  static async create(options?: IommuOptions): Promise<Iommu> {
    const o = checkOptions('options', options, IOMMU_OPTIONS);
    const workers = o.workers === undefined ? availableParallelism() : checkCount('workers', o.workers, 256);
    const tableMemoryBytes = o.tableMemoryBytes === undefined ? 2 ** 30 : checkAddress('tableMemoryBytes', o.tableMemoryBytes);
    const iotlbEntries = o.iotlbEntries === undefined ? 4096 : checkCount('iotlbEntries', o.iotlbEntries, 2 ** 24);
    if (iotlbEntries < 1) throw new IommuError('EINVAL', 'iotlbEntries must be at least 1');
    const cost = checkCost(o.invalidationCost);
    if (!LITTLE_ENDIAN) throw new IommuError('ENODEV', 'iommud needs a little-endian machine: descriptors are little-endian words');
    const callerRuns = o.callerRuns === undefined ? true : checkBoolean('callerRuns', o.callerRuns);
    const iommu = new Iommu(TableMemory.create(tableMemoryBytes), workers, iotlbEntries, callerRuns);
    if (cost) iommu.iotlb.setCostModel(cost.perSync, cost.perCommand);
    return iommu;
  }

  private constructor(memory: TableMemory, workers: number, iotlbEntries: number, callerRuns: boolean) {
    this.memory = memory;
    this.iotlb = new Iotlb(memory, iotlbEntries);
    this.devices = new Devices(this.iotlb);
    this.workers = workers;
    this.pool = workers > 0 ? new ChunkPool(workers, memory, this.accounts) : null;
    this.parallel = this.pool ? new ParallelEngine(this.pool, memory, callerRuns) : null;
  }

  /** A new, empty domain. */
  allocDomain(options?: DomainOptions): Domain {
    this.checkOpen();
    const o = checkOptions('domain options', options, DOMAIN_OPTIONS);
    const geometry = new LpaeGeometry(checkFormatConfig(o));
    let bitmap = geometry.supportedPgsizes;
    if (o.pgsizeBitmap !== undefined) {
      const asked = checkAddress('pgsizeBitmap', o.pgsizeBitmap);
      if (asked === 0 || asked > 0xffffffff || (asked & ~geometry.supportedPgsizes) !== 0) {
        throw new IommuError(
          'EINVAL',
          `pgsizeBitmap ${hex(asked)} must be a non-empty subset of the granule's leaf sizes ${hex(geometry.supportedPgsizes)}`,
        );
      }
      bitmap = asked;
    }
    const invalidateOnMap = o.invalidateOnMap === undefined ? false : checkBoolean('invalidateOnMap', o.invalidateOnMap);
    const budget = o.tableBudget === undefined ? null : this.checkBudget(o.tableBudget);
    if (this.freeTags.length === 0 && this.nextTag === MAX_DOMAINS) {
      throw new IommuError('ENOMEM', `at most ${MAX_DOMAINS} domains can exist at once`);
    }
    const tag = this.freeTags.pop() ?? this.nextTag++;
    const owner = new TableOwner(this.accounts, tag, budget ? budget.id : NO_BUDGET);
    const root = IoPgtable.allocRoot(geometry, this.memory, owner);
    if (root < 0) {
      this.freeTags.push(tag);
      throw new IommuError('ENOMEM', `${owner.exhausted(this.memory, geometry.granule)} exhausted allocating a root table`);
    }
    const domain = new Domain(this, this.nextDomainId++, owner, geometry, root, bitmap, invalidateOnMap, budget);
    if (budget) budget.domains++;
    this.domains.set(domain.id, domain);
    return domain;
  }

  /**
   * A ceiling on the table memory of the domains allocated with it (allocDomain's `tableBudget`):
   * a daemon tenant's quota. Rounded down to whole 4 KiB units.
   */
  createTableBudget(limitBytes: number): TableBudget {
    this.checkOpen();
    return new TableBudget(this.accounts, checkAddress('limitBytes', limitBytes));
  }

  private checkBudget(value: unknown): TableBudget {
    if (!(value instanceof TableBudget) || value.isClosed || !value.belongsTo(this.accounts)) {
      throw new IommuError('EINVAL', 'tableBudget must be an open TableBudget of this Iommu');
    }
    return value;
  }

  /** Attaches a device (a stream id) to a domain; a device already attached elsewhere moves. */
  attachDevice(deviceId: number, domain: Domain): void {
    this.checkOpen();
    if (!(domain instanceof Domain) || this.domains.get(domain.id) !== domain) {
      throw new IommuError(domain instanceof Domain ? 'ENOENT' : 'EINVAL', 'attachDevice needs a live domain of this Iommu');
    }
    this.devices.attach(deviceId, domain);
  }

  detachDevice(deviceId: number): void {
    this.checkOpen();
    this.devices.detach(deviceId);
  }

  /**
   * A device's DMA to iova: the physical address, or IommuError EFAULT whose `fault` says why
   * ('no-domain', 'address-size', 'translation', 'permission'). Uses the IOTLB first.
   */
  translate(deviceId: number, iova: number, access: Access): number {
    this.checkOpen();
    return this.devices.translate(deviceId, iova, access);
  }

  /**
   * Invalidates everything the IOTLB holds for every domain (one batch of one global command), as
   * after an SMMU reset. Translations are then walked again from the tables.
   */
  invalidateAll(): void {
    this.checkOpen();
    this.iotlb.invalidateAll();
  }

  /** Calls `listener` with every device fault; returns the function that unsubscribes it. */
  onFault(listener: FaultListener): () => void {
    if (typeof listener !== 'function') throw new IommuError('EINVAL', 'onFault needs a function');
    return this.devices.onFault(listener);
  }

  /** The last 256 device faults, oldest first. */
  recentFaults(): DeviceFault[] {
    return this.devices.recentFaults();
  }

  stats(): IommuStats {
    this.checkOpen();
    const counts = this.devices.faultCounts;
    return {
      iotlb: { ...this.iotlb.stats(), modelledNs: this.iotlb.modelledNs },
      tables: { pages: this.memory.pagesInUse, bytes: this.memory.bytesInUse },
      domains: this.domains.size,
      devices: this.devices.count,
      faults: { ...counts, total: counts.translation + counts.permission + counts['address-size'] + counts['no-domain'] },
    };
  }

  /** Ends the worker pool; every later call throws ENODEV. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool?.destroy();
  }

  /** @internal */
  checkOpen(): void {
    if (this.closed) throw new IommuError('ENODEV', 'the Iommu has been closed');
  }

  /** @internal */
  domainFreed(domain: Domain): void {
    this.domains.delete(domain.id);
    this.devices.detachDomain(domain);
    this.iotlb.dropDomain(domain.tag);
    this.freeTags.push(domain.tag);
    if (domain.tableBudget) domain.tableBudget.domains--;
  }
}

function checkCost(value: unknown): { perSync: number; perCommand: number } | null {
  if (value === undefined) return null;
  const o = checkOptions('invalidationCost', value, ['perSync', 'perCommand'] as const);
  return { perSync: checkAddress('invalidationCost.perSync', o.perSync ?? 0), perCommand: checkAddress('invalidationCost.perCommand', o.perCommand ?? 0) };
}
