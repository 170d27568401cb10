/**
 * The engine thread's side of iommud/embed: one Iommu, its domains by id, and the calls the main thread
 * makes (workers/embed-host.ts exposes them with comlink). Every call answers an Outcome rather than
 * throwing, so the main thread gets the IommuError's code back (see wire.ts).
 *
 * Calls run in the order their messages arrive, and each reaches the engine synchronously, so the
 * engine sees the main thread's calls in the order they were made: its range lock orders overlapping
 * calls on a domain exactly as in-process. While a big call awaits its worker pool, this thread's
 * event loop is free and later calls (reads, calls on other ranges) go ahead.
 */
import type { MessagePort } from 'node:worker_threads';
import type { TableBudget } from '../core/budget.js';
import type { Access } from '../core/devices.js';
import type { Domain, DomainOptions } from '../core/domain.js';
import { Iommu, type IommuOptions } from '../core/iommu.js';
import { IommuError } from '../errors/errors.js';
import { describe } from '../util/args.js';
import { sgFromWire, toWireError, type Outcome, type WireSg } from './wire.js';

/** The Domain methods the main thread may call by name. */
export const DOMAIN_CALLS = [
  'map', 'unmap', 'mapSg', 'unmapSg', 'iotlbSync', 'flushIotlbAll', 'iovaToPhys', 'lookup', 'readAndClearDirty', 'pageTable', 'free',
] as const;
export type DomainCall = (typeof DOMAIN_CALLS)[number];

/** A TableBudget as it crosses: its number in the engine thread. */
export interface WireBudget {
  budget: number;
}

/** Test hook states of stall()'s flag word. */
export const STALL = { WAITING: 0, STALLED: 1, RESUME: 2, EXIT: 3, THROW: 4 } as const;

export class IommuHost {
  private iommu: Iommu | null = null;
  private readonly domains = new Map<number, Domain>();
  /** Open budgets by number (our own: the engine reuses a closed budget's). */
  private readonly budgets = new Map<number, TableBudget>();
  private nextBudget = 1;
  private stopFaults: (() => void) | null = null;

  /** `events`: where device faults go while the main thread listens for them. */
  constructor(private readonly events: MessagePort) {}

  async open(options: IommuOptions | undefined): Promise<{ workers: number }> {
    if (this.iommu) throw new IommuError('EBUSY', 'the engine thread already has an Iommu');
    this.iommu = await Iommu.create(options);
    return { workers: this.iommu.workers };
  }

  /** `options.tableBudget`, if any, is a WireBudget. */
  allocDomain(options: DomainOptions | undefined): { id: number; pgsizeBitmap: number } {
    const wire = (options as { tableBudget?: WireBudget } | undefined)?.tableBudget;
    if (wire !== undefined) options = { ...options, tableBudget: this.budget(wire.budget) };
    const dom = this.engine().allocDomain(options);
    this.domains.set(dom.id, dom);
    return { id: dom.id, pgsizeBitmap: dom.pgsizeBitmap };
  }

  async domainCall(id: number, method: DomainCall, args: unknown[]): Promise<unknown> {
    const dom = this.domain(id);
    if (!DOMAIN_CALLS.includes(method)) throw new IommuError('EINVAL', `no domain call ${describe(method)}`);
    if (method === 'mapSg' || method === 'unmapSg') args[1] = sgFromWire(args[1] as WireSg);
    const call = dom[method] as (...a: unknown[]) => unknown;
    const result = await call.apply(dom, args);
    if (method === 'free') this.domains.delete(id);
    return result;
  }

  /** A domain's table memory in bytes (a getter in-process). */
  tableBytes(id: number): number {
    return this.domain(id).tableBytes;
  }

  createTableBudget(limitBytes: number): WireBudget & { limitBytes: number } {
    const budget = this.engine().createTableBudget(limitBytes);
    const id = this.nextBudget++;
    this.budgets.set(id, budget);
    return { budget: id, limitBytes: budget.limitBytes };
  }

  /** A closed budget holds nothing. */
  budgetUsedBytes(id: number): number {
    this.engine();
    return this.budgets.get(id)?.usedBytes ?? 0;
  }

  /** As TableBudget.close(): EBUSY while a live domain draws on it; closing twice is nothing. */
  closeBudget(id: number): void {
    this.engine();
    this.budgets.get(id)?.close();
    this.budgets.delete(id);
  }

  attachDevice(deviceId: number, domainId: number): void {
    this.engine().attachDevice(deviceId, this.domain(domainId));
  }

  detachDevice(deviceId: number): void {
    this.engine().detachDevice(deviceId);
  }

  translate(deviceId: number, iova: number, access: Access): number {
    return this.engine().translate(deviceId, iova, access);
  }

  stats(): ReturnType<Iommu['stats']> {
    return this.engine().stats();
  }

  recentFaults(): ReturnType<Iommu['recentFaults']> {
    return this.engine().recentFaults();
  }

  /** Starts or stops posting every device fault to the events port. */
  forwardFaults(on: boolean): void {
    if (on && !this.stopFaults) this.stopFaults = this.engine().onFault((fault) => this.events.postMessage(fault));
    if (!on && this.stopFaults) {
      this.stopFaults();
      this.stopFaults = null;
    }
  }

  async close(): Promise<void> {
    await this.iommu?.close();
  }

  /**
   * Test hook: parks this thread inside a call (Atomics.wait) until `flag` leaves STALLED, then
   * returns (RESUME), ends the thread (EXIT) or throws outside any call (THROW: an uncaught error).
   */
  stall(flag: Int32Array): void {
    Atomics.store(flag, 0, STALL.STALLED);
    Atomics.notify(flag, 0);
    Atomics.wait(flag, 0, STALL.STALLED);
    const next = Atomics.load(flag, 0);
    if (next === STALL.EXIT) process.exit(70);
    if (next === STALL.THROW) {
      // Thrown outside comlink's try/catch: an uncaught error, before any queued call runs.
      queueMicrotask(() => {
        throw new Error('injected failure of the engine thread');
      });
    }
  }

  private engine(): Iommu {
    if (!this.iommu) throw new IommuError('ENODEV', 'the engine thread has no Iommu yet');
    this.iommu.checkOpen();
    return this.iommu;
  }

  private budget(id: number): TableBudget {
    this.engine();
    const budget = this.budgets.get(id);
    // The engine's own words for a closed budget.
    if (budget === undefined) throw new IommuError('EINVAL', 'tableBudget must be an open TableBudget of this Iommu');
    return budget;
  }

  private domain(id: number): Domain {
    this.engine();
    const dom = this.domains.get(id);
    // Ids come from allocDomain only: one that is not here was freed.
    if (dom === undefined) throw new IommuError('ENOENT', `domain ${describe(id)} has been freed`);
    return dom;
  }
}

/** The calls the main thread may make. */
export const HOST_CALLS = [
  'open', 'allocDomain', 'domainCall', 'tableBytes', 'createTableBudget', 'budgetUsedBytes', 'closeBudget', 'attachDevice', 'detachDevice', 'translate', 'stats', 'recentFaults', 'forwardFaults', 'close', 'stall',
] as const satisfies readonly (keyof IommuHost)[];

type HostCall = (typeof HOST_CALLS)[number];

/** The host's calls as the main thread sees them: never throwing, always an Outcome. */
export type GuardedHost = {
  [K in HostCall]: IommuHost[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Outcome<Awaited<R>>> : never;
};

/** The host's calls, each turning whatever it returns or throws into an Outcome. */
export function guarded(host: IommuHost): GuardedHost {
  const out: Record<string, (...args: unknown[]) => Promise<Outcome<unknown>>> = {};
  for (const name of HOST_CALLS) {
    const call = host[name] as (...args: unknown[]) => unknown;
    out[name] = async (...args) => {
      try {
        return { ok: true, value: await call.apply(host, args) };
      } catch (e) {
        return { ok: false, error: toWireError(e) };
      }
    };
  }
  return out as unknown as GuardedHost;
}
