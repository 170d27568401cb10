/**
 * Tenants: who owns which domains and devices. Every connection acts for one tenant — its own
 * anonymous one until it says `hello` with a tenant name. A tenant numbers its domains and its devices
 * itself, so nothing it is told reveals another tenant's objects: a domain id it does not own is
 * ENOENT, exactly as one that never existed.
 *
 *   tenant "a": domain 1 ──> engine Domain #7      device 0 ──> stream id 12 (engine)
 *   tenant "b": domain 1 ──> engine Domain #9      device 0 ──> stream id 13
 *
 * The engine's stream ids are handed out here (StreamIds) and go back when a device is detached.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { TableBudget } from '../core/budget.js';
import { FaultError, type Access, type DeviceFault } from '../core/devices.js';
import type { Domain, DomainOptions } from '../core/domain.js';
import type { Iommu } from '../core/iommu.js';
import { IommuError } from '../errors/errors.js';

export interface TenantLimits {
  /** Domains one tenant may hold at once; beyond, domain_alloc is EDQUOT. */
  maxDomains: number;
  /** Devices one tenant may have attached at once; beyond, attach is EDQUOT. */
  maxDevices: number;
  /** Page-table memory one tenant's domains may hold, in bytes; beyond, the call needing more is ENOMEM. null: no quota. */
  maxTableBytes: number | null;
}

export interface TenantUsage {
  domains: number;
  devices: number;
  tablePages: number;
  /** Table memory the tenant's domains hold (what counts against its quota), in bytes. */
  tableBytes: number;
  /** The tenant's quota of table memory, or null. */
  maxTableBytes: number | null;
}

/** The engine's stream ids: the largest one is never attached, so translating it is a no-domain fault. */
const UNATTACHED_STREAM = 0xffffffff;

class StreamIds {
  private next = 0;
  private readonly free: number[] = [];

  take(): number {
    const id = this.free.pop();
    if (id !== undefined) return id;
    if (this.next >= UNATTACHED_STREAM) throw new IommuError('ENOMEM', 'no stream ids left');
    return this.next++;
  }

  give(id: number): void {
    this.free.push(id);
  }
}

interface DeviceEntry {
  stream: number;
  domain: number;
}

export class Tenant {
  private readonly domains = new Map<number, Domain>();
  private nextDomain = 1;
  private readonly devices = new Map<number, DeviceEntry>();
  /** The tenant's table-memory quota, shared by all its domains: opened with its first domain. */
  private budget: TableBudget | null = null;
  /** Connections acting for this tenant now. */
  connections = 0;

  constructor(
    /** The tenant's name, or null for a connection's own anonymous tenant. */
    readonly name: string | null,
    private readonly iommu: Iommu,
    private readonly streams: StreamIds,
    private readonly limits: TenantLimits,
  ) {}

  get isEmpty(): boolean {
    return this.domains.size === 0 && this.devices.size === 0;
  }

  allocDomain(options: DomainOptions): { domain: number; pgsizeBitmap: number } {
    if (this.domains.size >= this.limits.maxDomains) {
      throw new IommuError('EDQUOT', `the tenant already holds its limit of ${this.limits.maxDomains} domains`);
    }
    const limit = this.limits.maxTableBytes;
    if (limit !== null) this.budget ??= this.iommu.createTableBudget(limit);
    const dom = this.iommu.allocDomain(this.budget ? { ...options, tableBudget: this.budget } : options);
    const id = this.nextDomain++;
    this.domains.set(id, dom);
    return { domain: id, pgsizeBitmap: dom.pgsizeBitmap };
  }

  /** The tenant's domain `id`, or ENOENT (whether or not another tenant has one of that number). */
  domain(id: number): Domain {
    const dom = this.domains.get(id);
    if (dom === undefined) throw new IommuError('ENOENT', `no domain ${id}`);
    return dom;
  }

  hasDomain(id: number): boolean {
    return this.domains.has(id);
  }

  async freeDomain(id: number): Promise<void> {
    const dom = this.domain(id);
    await dom.free(); // EBUSY while another connection's call on it is in flight; then nothing changes
    this.domains.delete(id);
    // The engine detached the domain's devices; their stream ids come back.
    for (const [device, entry] of this.devices) {
      if (entry.domain === id) {
        this.devices.delete(device);
        this.streams.give(entry.stream);
      }
    }
  }

  /** The domain a device is attached to, if it is. */
  deviceDomain(device: number): number | undefined {
    return this.devices.get(device)?.domain;
  }

  attach(device: number, domainId: number): void {
    const dom = this.domain(domainId);
    const entry = this.devices.get(device);
    if (entry !== undefined) {
      this.iommu.attachDevice(entry.stream, dom); // a device attached elsewhere moves
      entry.domain = domainId;
      return;
    }
    if (this.devices.size >= this.limits.maxDevices) {
      throw new IommuError('EDQUOT', `the tenant already has its limit of ${this.limits.maxDevices} devices attached`);
    }
    const stream = this.streams.take();
    try {
      this.iommu.attachDevice(stream, dom);
    } catch (e) {
      this.streams.give(stream);
      throw e;
    }
    this.devices.set(device, { stream, domain: domainId });
  }

  detach(device: number): void {
    const entry = this.devices.get(device);
    if (entry === undefined) throw new IommuError('ENOENT', `device ${device} is not attached`);
    this.iommu.detachDevice(entry.stream);
    this.devices.delete(device);
    this.streams.give(entry.stream);
  }

  /**
   * A device's DMA. The engine does the translation (and counts the fault); a fault is re-issued in
   * the tenant's own device numbering, without the engine's domain id.
   */
  translate(device: number, iova: number, access: Access): number {
    const stream = this.devices.get(device)?.stream ?? UNATTACHED_STREAM;
    try {
      return this.iommu.translate(stream, iova, access);
    } catch (e) {
      if (e instanceof FaultError) {
        const fault: DeviceFault = { reason: e.fault.reason, deviceId: device, iova: e.fault.iova, access: e.fault.access };
        throw new FaultError(fault);
      }
      throw e;
    }
  }

  usage(): TenantUsage {
    let tablePages = 0;
    let tableBytes = 0;
    // Every page of a domain's tables, its root included, is one granule.
    for (const dom of this.domains.values()) {
      tablePages += dom.tableBytes / dom.geometry.granule;
      tableBytes += dom.tableBytes;
    }
    return { domains: this.domains.size, devices: this.devices.size, tablePages, tableBytes, maxTableBytes: this.limits.maxTableBytes };
  }

  /**
   * Detaches every device and frees every domain (an anonymous tenant whose connection closed), then
   * gives its quota back to the engine. Goes on past a failure, so one stuck domain does not leak the
   * rest; throws the first failure at the end.
   */
  async releaseAll(): Promise<void> {
    let first: unknown = null;
    for (const device of [...this.devices.keys()]) {
      try {
        this.detach(device);
      } catch (e) {
        first ??= e;
      }
    }
    for (const id of [...this.domains.keys()]) {
      try {
        await this.freeDomain(id);
      } catch (e) {
        first ??= e;
      }
    }
    if (this.domains.size === 0) {
      this.budget?.close();
      this.budget = null;
    }
    if (first !== null) throw first;
  }
}

export class Tenants {
  private readonly named = new Map<string, Tenant>();
  private readonly tokens = new Map<string, Buffer>();
  private readonly streams = new StreamIds();

  constructor(
    private readonly iommu: Iommu,
    readonly limits: TenantLimits,
    tokens: ReadonlyMap<string, string>,
  ) {
    for (const [name, token] of tokens) this.tokens.set(name, digest(token));
  }

  /** A new anonymous tenant, for a connection that has not said hello with a tenant. */
  anonymous(): Tenant {
    return new Tenant(null, this.iommu, this.streams, this.limits);
  }

  /** The named tenant, created on first use; EPERM if it has a token and `token` is not it. */
  join(name: string, token: string | undefined): Tenant {
    if (name.length === 0) throw new IommuError('EINVAL', 'a tenant name must not be empty');
    const expected = this.tokens.get(name);
    if (expected !== undefined && (token === undefined || !timingSafeEqual(digest(token), expected))) {
      throw new IommuError('EPERM', `wrong or missing token for tenant '${name}'`);
    }
    let tenant = this.named.get(name);
    if (tenant === undefined) {
      tenant = new Tenant(name, this.iommu, this.streams, this.limits);
      this.named.set(name, tenant);
    }
    return tenant;
  }

  get namedCount(): number {
    return this.named.size;
  }
}

/** Tokens are compared as digests: equal lengths for timingSafeEqual, whatever was sent. */
function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
