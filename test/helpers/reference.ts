/**
 * Independent reference implementations, written from SEMANTICS.md and the Linux sources with BigInt
 * (no code shared with src/), for tests to compare the engine against.
 */

export const READ = 1;
export const WRITE = 2;
export const CACHE = 4;
export const NOEXEC = 8;
export const MMIO = 16;
export const PRIV = 32;

/** Index of the most significant set bit (Linux __fls). */
export function fls(x: bigint): number {
  if (x <= 0n) throw new Error('fls(0)');
  return x.toString(2).length - 1;
}

/** Index of the least significant set bit (Linux __ffs). */
export function ffs(x: bigint): number {
  if (x <= 0n) throw new Error('ffs(0)');
  let i = 0;
  while (((x >> BigInt(i)) & 1n) === 0n) i++;
  return i;
}

/** Linux GENMASK(h, l): bits h..l set. */
export function genmask(h: number, l: number): bigint {
  return ((1n << BigInt(h + 1)) - 1n) & ~((1n << BigInt(l)) - 1n);
}

/**
 * drivers/iommu/iommu.c iommu_pgsize(), transcribed line by line on 64-bit integers.
 * Returns the page size and the count of pages the step maps.
 */
export function iommuPgsize(
  pgsizeBitmap: bigint,
  iova: bigint,
  paddr: bigint,
  size: bigint,
): { pgsize: bigint; count: bigint } {
  const addrMerge = paddr | iova;
  // Page sizes supported by the hardware and small enough for @size
  let pgsizes = pgsizeBitmap & genmask(fls(size), 0);
  // Constrain the page sizes further based on the maximum alignment
  if (addrMerge !== 0n) pgsizes &= genmask(ffs(addrMerge), 0);
  if (pgsizes === 0n) throw new Error('BUG_ON(!pgsizes)');
  // Pick the biggest page size remaining
  const pgsizeIdx = fls(pgsizes);
  const pgsize = 1n << BigInt(pgsizeIdx);
  let remaining = size;
  // Find the next biggest support page size, if it exists
  const bigger = pgsizeBitmap & ~genmask(pgsizeIdx, 0);
  if (bigger !== 0n) {
    const pgsizeNext = 1n << BigInt(ffs(bigger));
    // No point trying a bigger page size unless iova and paddr are similarly offset within it
    if (((iova ^ paddr) & (pgsizeNext - 1n)) === 0n) {
      // Offset to the next page size alignment boundary
      const offset = pgsizeNext - (addrMerge & (pgsizeNext - 1n));
      // If size is big enough to accommodate the larger page, reduce the number of smaller pages
      if (offset + pgsizeNext <= size) remaining = offset;
    }
  }
  return { pgsize, count: remaining >> BigInt(pgsizeIdx) };
}

/** The leaves (iova, paddr, size) iommu_map writes for one range, by repeated iommuPgsize. */
export function leavesFor(
  pgsizeBitmap: number,
  iova: number,
  paddr: number,
  size: number,
): { iova: number; paddr: number; size: number }[] {
  const out: { iova: number; paddr: number; size: number }[] = [];
  let i = BigInt(iova);
  let p = BigInt(paddr);
  let left = BigInt(size);
  while (left > 0n) {
    const { pgsize, count } = iommuPgsize(BigInt(pgsizeBitmap), i, p, left);
    for (let k = 0n; k < count; k++) {
      out.push({ iova: Number(i), paddr: Number(p), size: Number(pgsize) });
      i += pgsize;
      p += pgsize;
    }
    left -= pgsize * count;
  }
  return out;
}

/**
 * A leaf descriptor as SEMANTICS §7 (io-pgtable-arm's arm_lpae_prot_to_pte) builds it.
 * `page`: a level-3 page (type 0b11) rather than a block (0b01).
 */
export function leafDescriptor(stage2: boolean, prot: number, paddr: bigint, page: boolean): bigint {
  let d = paddr | (page ? 3n : 1n);
  d |= 1n << 10n; // AF
  d |= (prot & CACHE ? 3n : 2n) << 8n; // shareability
  if (prot & NOEXEC) d |= 3n << 53n; // UXN | PXN (stage 2: XN[1:0])
  if (!stage2) {
    d |= 1n << 11n; // nG
    if (prot & READ && !(prot & WRITE)) d |= 1n << 7n; // AP[2]: read-only
    if (!(prot & PRIV)) d |= 1n << 6n; // AP[1]: unprivileged
    const attrIndx = prot & MMIO ? 2n : prot & CACHE ? 1n : 0n;
    d |= attrIndx << 2n;
  } else {
    if (prot & READ) d |= 1n << 6n; // S2AP read
    if (prot & WRITE) d |= 1n << 7n; // S2AP write
    const memAttr = prot & MMIO ? 0x1n : prot & CACHE ? 0xfn : 0x5n;
    d |= memAttr << 2n;
  }
  return d;
}

/** What lookup().prot must report for a leaf mapped with `prot` (SEMANTICS §5, CONTRACT §2). */
export function grantedProt(stage2: boolean, prot: number): number {
  // Stage 1 cannot encode write-only (it reads back READ|WRITE); stage 2 has no PRIV bit.
  return stage2 ? prot & ~PRIV : prot | READ;
}

/** Every prot of the six flags that includes READ or WRITE. */
export const ALL_VALID_PROTS: readonly number[] = Array.from({ length: 64 }, (_, p) => p).filter(
  (p) => (p & (READ | WRITE)) !== 0,
);
