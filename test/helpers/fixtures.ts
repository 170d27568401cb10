import type { ExecutionContext } from 'ava';
import { Iommu, type DomainOptions, type Domain } from '../../src/index.js';

/** An inline (no pool) Iommu and one domain, closed when the test ends. */
export async function setup(
  t: ExecutionContext,
  opts?: DomainOptions,
  tableMemoryBytes?: number,
): Promise<{ iommu: Iommu; dom: Domain }> {
  const iommu = await Iommu.create(tableMemoryBytes === undefined ? { workers: 0 } : { workers: 0, tableMemoryBytes });
  t.teardown(() => iommu.close());
  return { iommu, dom: iommu.allocDomain(opts) };
}

/** The leaves covering [iova, iova + size), walking with lookup: [pageSize, phys] per leaf; throws at a hole. */
export function leavesOf(dom: Domain, iova: number, size: number): { iova: number; phys: number; pageSize: number }[] {
  const out: { iova: number; phys: number; pageSize: number }[] = [];
  for (let a = iova; a < iova + size; ) {
    const l = dom.lookup(a);
    if (!l) throw new Error(`hole at 0x${a.toString(16)}`);
    out.push({ iova: a, phys: l.phys, pageSize: l.pageSize });
    a += l.pageSize - (a % l.pageSize);
  }
  return out;
}

export const K4 = 0x1000;
export const K16 = 0x4000;
export const K64 = 0x1_0000;
export const M2 = 0x20_0000;
export const M32 = 0x200_0000;
export const M512 = 0x2000_0000;
export const G1 = 0x4000_0000;
