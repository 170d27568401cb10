/**
 * The Iommu: owns the table memory, the IOTLB and the domains. Everything here runs on the thread that
 * created it; worker threads only ever see table memory and the chunks of work handed to them.
 */
import { availableParallelism } from 'node:os';
import { IommuError } from '../errors/errors.js';
import type { IotlbStats } from '../iotlb/iotlb.js';
import { Iotlb } from '../iotlb/iotlb.js';
import { checkFormatConfig, LITTLE_ENDIAN, LpaeGeometry } from '../pgtable/format.js';
import { TableMemory } from '../pgtable/memory.js';
import { IoPgtable } from '../pgtable/pgtable.js';
import { checkAddress, checkBoolean, checkCount, checkOptions, hex } from '../util/args.js';
import { Domain, type DomainHost, type DomainOptions } from './domain.js';
import { ParallelEngine } from './parallel.js';
import { ChunkPool } from '../pool/pool.js';

export interface IommuOptions {
  /** Worker threads for parallel map_sg/unmap_sg; 0 = no pool. Default: os.availableParallelism(). */
  workers?: number;
  /** Ceiling of page-table memory, in bytes (shared memory, grown on demand). Default 1 GiB. */
  tableMemoryBytes?: number;
}

export interface IommuStats {
  iotlb: IotlbStats;
  tables: { pages: number; bytes: number };
  domains: number;
  devices: number;
}

const IOMMU_OPTIONS = ['workers', 'tableMemoryBytes'] as const;
const DOMAIN_OPTIONS = ['format', 'granule', 'ias', 'oas', 'pgsizeBitmap', 'invalidateOnMap'] as const;

export class Iommu implements DomainHost {
  /** @internal */
  readonly memory: TableMemory;
  /** @internal */
  readonly iotlb: Iotlb;
  readonly workers: number;
  /** @internal The worker pool's side of big calls; null with workers: 0. */
  readonly parallel: ParallelEngine | null;
  private readonly pool: ChunkPool | null;
  private readonly domains = new Map<number, Domain>();
  private nextDomainId = 1;
  private closed = false;

  static async create(options?: IommuOptions): Promise<Iommu> {
    const o = checkOptions('options', options, IOMMU_OPTIONS);
    const workers = o.workers === undefined ? availableParallelism() : checkCount('workers', o.workers, 256);
    const tableMemoryBytes = o.tableMemoryBytes === undefined ? 2 ** 30 : checkAddress('tableMemoryBytes', o.tableMemoryBytes);
    if (!LITTLE_ENDIAN) throw new IommuError('ENODEV', 'iommud needs a little-endian machine: descriptors are little-endian words');
    return new Iommu(TableMemory.create(tableMemoryBytes), workers);
  }

  private constructor(memory: TableMemory, workers: number) {
    this.memory = memory;
    this.iotlb = new Iotlb(memory);
    this.workers = workers;
    this.pool = workers > 0 ? new ChunkPool(workers, memory) : null;
    this.parallel = this.pool ? new ParallelEngine(this.pool, memory) : null;
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
    const root = IoPgtable.allocRoot(geometry, this.memory);
    if (root < 0) throw new IommuError('ENOMEM', 'page-table memory exhausted allocating a root table');
    const domain = new Domain(this, this.nextDomainId++, geometry, root, bitmap, invalidateOnMap);
    this.domains.set(domain.id, domain);
    return domain;
  }

  stats(): IommuStats {
    this.checkOpen();
    return {
      iotlb: this.iotlb.stats(),
      tables: { pages: this.memory.pagesInUse, bytes: this.memory.bytesInUse },
      domains: this.domains.size,
      devices: 0,
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
  }
}
