/**
 * A table walker written from the ARM rules (VMSAv8-64 long descriptors), independent of src/: it
 * reads `dom.pageTable().memory` as little-endian 64-bit descriptors from `root` at `startLevel`.
 *   - a level resolves log2(granule) - 3 bits of the address (the root level: what is left of ias);
 *   - at levels 0..2, bits 1:0 = 0b11 is a table whose address field is the next table's byte offset,
 *     0b01 a block; at level 3, 0b11 is a page; bit 0 clear is invalid.
 */
export interface PageTableLike {
  memory: SharedArrayBuffer;
  root: number;
  granule: number;
  ias: number;
  startLevel: number;
}

export interface WalkResult {
  /** The physical address iova translates to. */
  phys: number;
  /** Bytes the leaf maps. */
  pageSize: number;
  level: number;
  /** The raw leaf descriptor. */
  desc: bigint;
}

const ADDR_MASK_47 = (1n << 48n) - 1n;

export function armWalk(pt: PageTableLike, iova: number): WalkResult | null {
  const mem = new DataView(pt.memory);
  const g = BigInt(Math.log2(pt.granule));
  const bitsPerLevel = g - 3n;
  const va = BigInt(iova);
  if (va >> BigInt(pt.ias) !== 0n) return null;
  let table = BigInt(pt.root);
  for (let level = pt.startLevel; level <= 3; level++) {
    const shift = g + BigInt(3 - level) * bitsPerLevel;
    const indexBits = level === pt.startLevel ? BigInt(pt.ias) - shift : bitsPerLevel;
    const index = (va >> shift) & ((1n << indexBits) - 1n);
    const desc = mem.getBigUint64(Number(table + index * 8n), true);
    if ((desc & 1n) === 0n) return null;
    const type = desc & 3n;
    if (level < 3 && type === 3n) {
      // Next-level table address: bits 47:granule-shift.
      table = desc & ADDR_MASK_47 & ~((1n << g) - 1n);
      continue;
    }
    if (level === 3 && type !== 3n) return null; // 0b01 at level 3 is reserved (invalid)
    const leafMask = (1n << shift) - 1n;
    const out = desc & ADDR_MASK_47 & ~leafMask;
    return { phys: Number(out | (va & leafMask)), pageSize: Number(1n << shift), level, desc };
  }
  return null;
}

/** Every leaf reachable from the root, in IOVA order: [iova, desc, size]. */
export function allLeaves(pt: PageTableLike): { iova: number; phys: number; size: number; desc: bigint }[] {
  const mem = new DataView(pt.memory);
  const g = BigInt(Math.log2(pt.granule));
  const bitsPerLevel = g - 3n;
  const out: { iova: number; phys: number; size: number; desc: bigint }[] = [];
  const visit = (table: bigint, level: number, base: bigint): void => {
    const shift = g + BigInt(3 - level) * bitsPerLevel;
    const entries = 1n << (level === pt.startLevel ? BigInt(pt.ias) - shift : bitsPerLevel);
    for (let i = 0n; i < entries; i++) {
      const desc = mem.getBigUint64(Number(table + i * 8n), true);
      if ((desc & 1n) === 0n) continue;
      const va = base + (i << shift);
      if (level < 3 && (desc & 3n) === 3n) {
        visit(desc & ADDR_MASK_47 & ~((1n << g) - 1n), level + 1, va);
        continue;
      }
      const size = 1n << shift;
      out.push({ iova: Number(va), phys: Number(desc & ADDR_MASK_47 & ~(size - 1n)), size: Number(size), desc });
    }
  };
  visit(BigInt(pt.root), pt.startLevel, 0n);
  return out;
}
