/**
 * What `iommud stress` runs against: an Iommu in this process, or a running daemon over its socket.
 * Both are driven through one small async interface, so the clients, the checks and the report do not
 * know which it is. Over the socket every client has its own connection, and all of them join one
 * named tenant so that they share the stress domain (CONTRACT §4: a named tenant's objects are shared
 * by its connections and outlive them, which is what lets a client drop its connection and go on).
 */
import { IommudClient, type RemoteDomain } from '../client/client.js';
import type { Domain, DomainOptions } from '../core/domain.js';
import { Iommu } from '../core/iommu.js';
import { HELPERS_FIRST_CHUNK, type FaultPlan } from '../core/parallel.js';
import type { SgTable } from '../core/sg.js';
import { IommuError } from '../errors/errors.js';

/** Test-only bugs that the in-process target can plant in its domain, to show that stress finds them. */
export const PLANTED_BUGS = ['lost-rollback', 'lost-invalidation'] as const;
export type PlantedBug = (typeof PLANTED_BUGS)[number];

/** One client's handle on the stress domain. Every call is async; errors are IommuError. */
export interface ClientPort {
  map(iova: number, paddr: number, size: number, prot: number): Promise<void>;
  unmap(iova: number, size: number): Promise<number>;
  mapSg(iova: number, sg: SgTable, prot: number, defer: boolean): Promise<number>;
  unmapSg(iova: number, sg: SgTable, defer: boolean): Promise<number>;
  iotlbSync(): Promise<void>;
  iovaToPhys(iova: number): Promise<number | null>;
  translate(device: number, iova: number, access: 'read' | 'write'): Promise<number>;
  attach(device: number): Promise<void>;
  /** Drops the connection and makes a new one (daemon only). */
  reconnect(): Promise<void>;
  close(): Promise<void>;
}

export interface StressTarget {
  readonly description: string;
  /** Whether test-only engine hooks (worker kills, planted bugs) reach the engine. */
  readonly inProcess: boolean;
  /** Worker threads of the engine, where known. */
  readonly workers: number | null;
  allocDomain(options: DomainOptions): Promise<void>;
  client(index: number): Promise<ClientPort>;
  /** Test-only: kill or break a worker in the next parallel call (in-process only); false if no plan was taken. */
  injectWorkerFault(plan: FaultPlan): boolean;
  plantBug(bug: PlantedBug): void;
  stats(): Promise<{ syncs: number; invalidations: number; tablePages: number }>;
  freeDomain(): Promise<void>;
  close(): Promise<void>;
}

/** How an in-process target with callerRuns describes itself (a trace keeps it, replay reads it). */
export const CALLER_RUNS = 'the caller maps a share';

export class InProcessTarget implements StressTarget {
  readonly inProcess = true;
  private domain: Domain | null = null;

  private constructor(
    readonly iommu: Iommu,
    readonly callerRuns: boolean,
  ) {}

  /**
   * By default callerRuns is off, as in the daemon: a big call then runs on the pool alone (unmaps
   * too), and the other clients' calls keep running on this thread meanwhile — more interleaving to
   * check. With `callerRuns` (the library's default) this thread maps a share of each big map and
   * waits for the helpers' chunks in shared memory, and unmaps run inline; big maps go to the pool by
   * their size alone (as the tests drive it), so the 64Ki-entry calls still do.
   */
  static async create(workers: number, tableMemoryBytes: number, callerRuns = false): Promise<InProcessTarget> {
    const iommu = await Iommu.create({ workers, tableMemoryBytes, callerRuns });
    if (callerRuns && iommu.parallel) iommu.parallel.bySizeOnly = true;
    return new InProcessTarget(iommu, callerRuns);
  }

  get workers(): number {
    return this.iommu.workers;
  }

  get description(): string {
    return `in-process Iommu, ${this.iommu.workers} worker${this.iommu.workers === 1 ? '' : 's'}${this.callerRuns ? `, ${CALLER_RUNS}` : ''}`;
  }

  async allocDomain(options: DomainOptions): Promise<void> {
    this.domain = this.iommu.allocDomain(options);
  }

  private get dom(): Domain {
    if (!this.domain) throw new IommuError('ENOENT', 'the stress domain is not allocated');
    return this.domain;
  }

  async client(): Promise<ClientPort> {
    const dom = this.dom;
    const iommu = this.iommu;
    return {
      map: (iova, paddr, size, prot) => dom.map(iova, paddr, size, prot),
      unmap: (iova, size) => dom.unmap(iova, size),
      mapSg: (iova, sg, prot, defer) => dom.mapSg(iova, sg, prot, { deferInvalidate: defer }),
      unmapSg: (iova, sg, defer) => dom.unmapSg(iova, sg, { deferInvalidate: defer }),
      iotlbSync: async () => dom.iotlbSync(),
      iovaToPhys: async (iova) => dom.iovaToPhys(iova),
      translate: async (device, iova, access) => iommu.translate(device, iova, access),
      attach: async (device) => iommu.attachDevice(device, dom),
      reconnect: async () => {
        throw new IommuError('EINVAL', 'an in-process client has no connection to drop');
      },
      close: async () => undefined,
    };
  }

  injectWorkerFault(plan: FaultPlan): boolean {
    // One plan at a time: the next parallel call, whichever it is, takes it.
    if (!this.iommu.parallel || this.iommu.parallel.faultPlan !== null) return false;
    // With the caller mapping too, a map's helper fails in the first chunk it takes, while the caller
    // goes on: the caller then finds that chunk unfinished.
    this.iommu.parallel.faultPlan = this.callerRuns && plan.phase === 'map' ? { ...plan, chunk: HELPERS_FIRST_CHUNK } : plan;
    return true;
  }

  plantBug(bug: PlantedBug): void {
    this.dom.plantedBug = bug;
  }

  async stats(): Promise<{ syncs: number; invalidations: number; tablePages: number }> {
    const s = this.iommu.stats();
    return { syncs: s.iotlb.syncs, invalidations: s.iotlb.invalidations, tablePages: s.tables.pages };
  }

  async freeDomain(): Promise<void> {
    await this.domain?.free();
    this.domain = null;
  }

  async close(): Promise<void> {
    await this.iommu.close();
  }
}

export class DaemonTarget implements StressTarget {
  readonly inProcess = false;
  readonly workers = null;
  private domainId = 0;
  private pgsizeBitmap = 0;
  private readonly clients: IommudClient[] = [];

  private constructor(
    private readonly socket: string,
    private readonly tenant: string,
    private readonly admin: IommudClient,
  ) {}

  static async connect(socket: string, tenant: string): Promise<DaemonTarget> {
    return new DaemonTarget(socket, tenant, await IommudClient.connect(socket, { tenant }));
  }

  get description(): string {
    return `daemon at ${this.socket} (${this.admin.info.server}), tenant ${this.tenant}`;
  }

  async allocDomain(options: DomainOptions): Promise<void> {
    const d = await this.admin.allocDomain(options);
    this.domainId = d.id;
    this.pgsizeBitmap = d.pgsizeBitmap;
  }

  async client(): Promise<ClientPort> {
    let conn = await IommudClient.connect(this.socket, { tenant: this.tenant });
    this.clients.push(conn);
    let dom: RemoteDomain = conn.domain(this.domainId, this.pgsizeBitmap);
    return {
      map: (iova, paddr, size, prot) => dom.map(iova, paddr, size, prot),
      unmap: (iova, size) => dom.unmap(iova, size),
      mapSg: (iova, sg, prot, defer) => dom.mapSg(iova, sg, prot, { deferInvalidate: defer }),
      unmapSg: (iova, sg, defer) => dom.unmapSg(iova, sg, { deferInvalidate: defer }),
      iotlbSync: () => dom.iotlbSync(),
      iovaToPhys: (iova) => dom.iovaToPhys(iova),
      translate: (device, iova, access) => conn.translate(device, iova, access),
      attach: (device) => conn.attachDevice(device, dom),
      reconnect: async () => {
        conn.destroy();
        this.forget(conn);
        conn = await IommudClient.connect(this.socket, { tenant: this.tenant });
        this.clients.push(conn);
        dom = conn.domain(this.domainId, this.pgsizeBitmap);
      },
      close: async () => {
        await conn.close();
        this.forget(conn);
      },
    };
  }

  private forget(conn: IommudClient): void {
    const i = this.clients.indexOf(conn);
    if (i >= 0) this.clients.splice(i, 1);
  }

  injectWorkerFault(): boolean {
    throw new IommuError('EINVAL', 'worker faults can only be injected in-process');
  }

  plantBug(): void {
    throw new IommuError('EINVAL', 'bugs can only be planted in-process');
  }

  async stats(): Promise<{ syncs: number; invalidations: number; tablePages: number }> {
    const s = await this.admin.stats();
    return { syncs: s.iotlb.syncs, invalidations: s.iotlb.invalidations, tablePages: s.tenant.tablePages };
  }

  async freeDomain(): Promise<void> {
    if (this.domainId) await this.admin.domain(this.domainId).free();
    this.domainId = 0;
  }

  async close(): Promise<void> {
    for (const c of this.clients.splice(0)) await c.close();
    await this.admin.close();
  }
}
