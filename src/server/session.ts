/**
 * What one connection acts with: the daemon's shared parts and the connection's current tenant.
 */
import type { Logger } from 'pino';
import type { Iommu } from '../core/iommu.js';
import { IommuError } from '../errors/errors.js';
import type { DaemonMetrics } from './metrics.js';
import type { Tenant, Tenants } from './tenants.js';

/** The daemon's parts every connection shares. */
export interface Daemon {
  readonly iommu: Iommu;
  readonly tenants: Tenants;
  readonly serverName: string;
  readonly maxFrame: number;
  /** Requests one connection may have in flight or waiting before the server stops reading it. */
  readonly maxInflight: number;
  /** Request counts and latencies, when the daemon serves metrics. */
  readonly metrics: DaemonMetrics | null;
  readonly log: Logger;
}

export class Session {
  tenant: Tenant;
  /**
   * Where this connection's requests received so far will have left each device (attach, detach,
   * domain_free), whether or not they have run yet. Ordering keys for device calls are computed on
   * arrival, and must name the domain the device will be on when the call runs.
   */
  private readonly projected = new Map<number, number | null>();
  /** hello requests received and not yet done: until they are, device ids may name another tenant's. */
  pendingHellos = 0;

  constructor(readonly daemon: Daemon) {
    this.tenant = daemon.tenants.anonymous();
    this.tenant.connections++;
  }

  /**
   * Makes the connection one of a named tenant's. Allowed while the connection's anonymous tenant owns
   * nothing (its objects cannot change hands), and again for the same tenant.
   */
  joinTenant(name: string, token: string | undefined): void {
    const current = this.tenant;
    if (current.name !== null && current.name !== name) {
      throw new IommuError('EBUSY', `this connection already acts for tenant '${current.name}'`);
    }
    if (current.name === null && !current.isEmpty) {
      throw new IommuError('EBUSY', 'this connection owns anonymous domains or devices; say hello before creating any');
    }
    const joined = this.daemon.tenants.join(name, token);
    if (joined === current) return;
    this.clearProjections();
    current.connections--;
    joined.connections++;
    this.tenant = joined;
  }

  /** The domains a device call that arrives now may find the device on: where it is, where it will be. */
  deviceDomains(device: number): number[] {
    const out: number[] = [];
    const now = this.tenant.deviceDomain(device);
    if (now !== undefined) out.push(now);
    const later = this.projected.get(device);
    if (later !== undefined && later !== null && later !== now) out.push(later);
    return out;
  }

  /** Records, on arrival, that a request will move `device` to `domain` (null: detached). */
  projectDevice(device: number, domain: number | null): void {
    this.projected.set(device, domain);
  }

  /** Records, on arrival, that a request will free `domain`, detaching its devices. */
  projectDomainFree(domain: number): void {
    for (const [device, d] of this.projected) if (d === domain) this.projected.set(device, null);
  }

  /** Forgets the projections (the connection changed tenant: device ids mean other devices now). */
  clearProjections(): void {
    this.projected.clear();
  }

  /** The connection is gone: an anonymous tenant's objects are freed; a named tenant's stay. */
  async end(): Promise<void> {
    this.tenant.connections--;
    if (this.tenant.name === null) await this.tenant.releaseAll();
  }
}
