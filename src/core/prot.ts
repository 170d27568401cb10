import { IommuError } from '../errors/errors.js';
import { describe } from '../util/args.js';

/** The IOMMU_* protection flags of include/linux/iommu.h, with the same bit values. */
export const Prot = Object.freeze({
  READ: 1,
  WRITE: 2,
  CACHE: 4,
  NOEXEC: 8,
  MMIO: 16,
  PRIV: 32,
} as const);

export const PROT_ALL = 0x3f;

/** A prot for map: known bits only, and READ or WRITE (a mapping granting nothing is EINVAL, as in Linux). */
export function checkProt(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new IommuError('EINVAL', `prot must be a non-negative integer of Prot flags, got ${describe(value)}`);
  }
  if ((value & ~PROT_ALL) !== 0 || value > PROT_ALL) {
    throw new IommuError('EINVAL', `prot has unknown bits: 0x${value.toString(16)} (known: 0x3f)`);
  }
  if ((value & (Prot.READ | Prot.WRITE)) === 0) {
    throw new IommuError('EINVAL', 'prot must include Prot.READ or Prot.WRITE');
  }
  return value;
}
