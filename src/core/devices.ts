/**
 * Devices and their DMA: stream ids attached to domains, and translate() — a device's access to an
 * IOVA, as the SMMU would do it: attached? within ias? in the IOTLB, else a table walk (starting from
 * the walk cache when it can), then the permission the leaf grants. A failure is a fault: data
 * (reason, device, iova, access), counted, logged, delivered to listeners, and thrown only to the
 * caller of translate — as report_iommu_fault hands it to the domain's handler.
 */
import { IommuError } from '../errors/errors.js';
import { leafOutputAddress, leafProt, PTE_DBM_HI, S1_AP_RDONLY } from '../pgtable/format.js';
import type { Iotlb, TlbEntry } from '../iotlb/iotlb.js';
import { checkAddress, describe } from '../util/args.js';
import type { Domain } from './domain.js';
import { Prot } from './prot.js';

export type FaultReason = 'translation' | 'permission' | 'address-size' | 'no-domain';
export type Access = 'read' | 'write';

export interface DeviceFault {
  reason: FaultReason;
  deviceId: number;
  iova: number;
  access: Access;
  /** The domain the device was attached to (absent for no-domain). */
  domain?: number;
}

export type FaultListener = (fault: DeviceFault) => void;

/** The IommuError a faulting translate throws: code EFAULT, with the fault as data. */
export class FaultError extends IommuError {
  readonly fault: DeviceFault;
  constructor(fault: DeviceFault) {
    super('EFAULT', `device ${fault.deviceId} ${fault.access} of iova 0x${fault.iova.toString(16)}: ${fault.reason} fault`);
    this.fault = fault;
  }
}

const RECENT_FAULTS = 256;

export class Devices {
  private readonly attached = new Map<number, Domain>();
  private readonly listeners = new Set<FaultListener>();
  private readonly recent: DeviceFault[] = [];
  readonly faultCounts: Record<FaultReason, number> = { translation: 0, permission: 0, 'address-size': 0, 'no-domain': 0 };

  constructor(private readonly iotlb: Iotlb) {}

  get count(): number {
    return this.attached.size;
  }

  attach(deviceId: unknown, domain: Domain): void {
    this.attached.set(checkDeviceId(deviceId), domain);
  }

  detach(deviceId: unknown): void {
    const id = checkDeviceId(deviceId);
    if (!this.attached.delete(id)) throw new IommuError('ENOENT', `device ${id} is not attached`);
  }

  /** Detaches every device of a domain that is being freed. */
  detachDomain(domain: Domain): void {
    for (const [id, d] of this.attached) if (d === domain) this.attached.delete(id);
  }

  domainOf(deviceId: number): Domain | undefined {
    return this.attached.get(deviceId);
  }

  translate(deviceIdArg: unknown, iovaArg: unknown, accessArg: unknown): number {
    const deviceId = checkDeviceId(deviceIdArg);
    const iova = checkAddress('iova', iovaArg);
    if (accessArg !== 'read' && accessArg !== 'write') {
      throw new IommuError('EINVAL', `access must be 'read' or 'write', got ${describe(accessArg)}`);
    }
    const access: Access = accessArg;
    const dom = this.attached.get(deviceId);
    if (dom === undefined) return this.fault({ reason: 'no-domain', deviceId, iova, access });
    const geo = dom.geometry;
    if (iova >= geo.iasLimit) return this.fault({ reason: 'address-size', deviceId, iova, access, domain: dom.id });
    const entry = this.iotlb.lookup(dom.tag, iova, dom.leafSizes, dom.leafLevels) ?? this.walk(dom, iova);
    if (entry === null) return this.fault({ reason: 'translation', deviceId, iova, access, domain: dom.id });
    const write = access === 'write';
    if (!(write ? entry.writable : entry.readable)) return this.fault({ reason: 'permission', deviceId, iova, access, domain: dom.id });
    if (write && geo.dirtyTracking) markDirty(dom, entry);
    return entry.phys + (iova - entry.start);
  }

  /** A miss: walk the tables (from the walk cache's last-level table when it has one), cache the leaf. */
  private walk(dom: Domain, iova: number): TlbEntry | null {
    const pt = dom.pgtable;
    const geo = pt.geo;
    const last = geo.lastLevel;
    const region = geo.startLevel < last ? geo.blockSize(last - 1) : 0;
    const cached = region > 0 ? this.iotlb.walkLookup(dom.tag, iova, region) : -1;
    const level = cached >= 0 ? pt.walkLeafFrom(cached, last, iova) : pt.walkLeaf(iova);
    if (level < 0) return null;
    const size = geo.blockSize(level);
    const start = Math.floor(iova / size) * size;
    // What a map in flight is writing may yet be rolled back: use it, but cache none of it.
    const regionStart = region > 0 ? Math.floor(iova / region) * region : start;
    const cacheable = !dom.mappingOverlaps(Math.min(start, regionStart), Math.max(start + size, regionStart + region));
    if (cacheable && cached < 0 && level === last && region > 0) this.iotlb.walkInsert(dom.tag, iova, region, pt.leafTable);
    const prot = leafProt(geo, pt.leafLo, pt.leafHi);
    const entry: TlbEntry = {
      tag: dom.tag,
      start,
      size,
      phys: leafOutputAddress(geo, pt.leafLo, pt.leafHi, level),
      readable: (prot & Prot.READ) !== 0,
      writable: (prot & Prot.WRITE) !== 0,
      slot: pt.leafSlot,
    };
    if (cacheable) this.iotlb.insert(entry, level);
    else this.iotlb.countMiss();
    return entry;
  }

  private fault(fault: DeviceFault): never {
    Object.freeze(fault); // one record, shared by the log, the listeners and the error: none may edit it
    this.faultCounts[fault.reason]++;
    if (this.recent.length === RECENT_FAULTS) this.recent.shift();
    this.recent.push(fault);
    for (const listener of this.listeners) {
      try {
        listener(fault);
      } catch {
        // A listener's own failure must not turn a device fault into something else.
      }
    }
    throw new FaultError(fault);
  }

  onFault(listener: FaultListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  recentFaults(): DeviceFault[] {
    return this.recent.slice();
  }
}

/**
 * A write through a leaf of a dirty-tracking domain: what the SMMU's HTTU does — clear AP[2] of a
 * writable-clean leaf (DBM set), atomically, so a concurrent readAndClearDirty never loses it.
 */
function markDirty(dom: Domain, entry: TlbEntry): void {
  const i32 = dom.pgtable.mem.i32;
  const lo = 2 * entry.slot;
  for (;;) {
    const seen = Atomics.load(i32, lo);
    if ((seen & 1) === 0 || (seen & S1_AP_RDONLY) === 0) return; // unmapped meanwhile, or already dirty
    if ((Atomics.load(i32, lo + 1) & PTE_DBM_HI) === 0) return;
    if (Atomics.compareExchange(i32, lo, seen, seen & ~S1_AP_RDONLY) === seen) return;
  }
}

function checkDeviceId(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new IommuError('EINVAL', `deviceId must be a stream id (an integer from 0 to 2^32-1), got ${describe(value)}`);
  }
  return value;
}
