/**
 * Assertions on device faults: a faulting translate throws a FaultError (an IommuError with code
 * EFAULT) whose `fault` says why. `faultOf` checks all of that and hands back the fault.
 */
import type { ExecutionContext } from 'ava';
import { FaultError, IommuError, type DeviceFault, type FaultReason, type Iommu } from '../../src/index.js';

/** `call` throws a FaultError with code EFAULT; returns its `.fault` (undefined when it did not throw). */
export function faultOf(t: ExecutionContext, call: () => unknown, message?: string): DeviceFault | undefined {
  const err = t.throws(call, { instanceOf: FaultError }, message);
  if (!err) return undefined;
  t.true(err instanceof IommuError, message);
  t.true(err instanceof Error, message);
  t.is(err.code, 'EFAULT', message);
  return err.fault;
}

/** translate(device, iova, access) faults with `reason`, and the fault names the device, iova and access. */
export function faults(
  t: ExecutionContext,
  iommu: Iommu,
  deviceId: number,
  iova: number,
  access: 'read' | 'write',
  reason: FaultReason,
  message?: string,
): DeviceFault | undefined {
  const fault = faultOf(t, () => iommu.translate(deviceId, iova, access), message);
  t.like(fault, { reason, deviceId, iova, access }, message);
  return fault;
}

/** The IOTLB counters that move on a translate, as a plain object. */
export function tlbCounters(iommu: Iommu): { hits: number; misses: number; walkHits: number; evictions: number; entries: number } {
  const { hits, misses, walkHits, evictions, entries } = iommu.stats().iotlb;
  return { hits, misses, walkHits, evictions, entries };
}
