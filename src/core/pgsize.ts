/**
 * Page-size selection, exactly as Linux's iommu_pgsize() (drivers/iommu/iommu.c): the largest
 * supported size that fits and that iova and paddr are both aligned to, and a count that stops at the
 * next larger size's boundary when the step after it could use that larger size.
 */
export class PgsizeChooser {
  /** Supported sizes, largest first. */
  private readonly sizes: number[];
  /** The result of the last choose(): how many pages of the chosen size to map. */
  count = 0;

  constructor(bitmap: number) {
    this.sizes = [];
    for (let bit = 31; bit >= 0; bit--) if (bitmap & (2 ** bit)) this.sizes.push(2 ** bit);
  }

  get minPgsize(): number {
    return this.sizes[this.sizes.length - 1]!;
  }

  /**
   * The longest run that is mapped with smallest pages only, whatever its alignment: one byte short
   * of the next supported size (iommu_pgsize never picks a size above the run's length).
   */
  get maxSmallRun(): number {
    const n = this.sizes.length;
    return n > 1 ? this.sizes[n - 2]! - this.sizes[n - 1]! : Infinity;
  }

  /** Returns pgsize for mapping `size` bytes at iova -> paddr, and sets `count`. */
  choose(iova: number, paddr: number, size: number): number {
    const sizes = this.sizes;
    let i = 0;
    // 1+2: candidates <= size, and aligned for both iova and paddr; 3: the largest.
    // Leaf sizes are at most 1 GiB, so the low 32 bits (what `|` sees of a number) decide alignment.
    const addrs = iova | paddr;
    while (i < sizes.length && (sizes[i]! > size || (addrs & (sizes[i]! - 1)) !== 0)) i++;
    const pgsize = sizes[i]!;
    let count = Math.floor(size / pgsize);
    // 4: if the next larger size is supported and iova/paddr agree modulo it, stop at its boundary
    //    so that the following step can use it — provided a whole one still fits after the boundary.
    if (i > 0) {
      const next = sizes[i - 1]!;
      const iovaMod = iova - Math.floor(iova / next) * next;
      if (iovaMod === paddr - Math.floor(paddr / next) * next) {
        const offset = next - iovaMod;
        if (offset + next <= size) count = offset / pgsize;
      }
    }
    this.count = count;
    return pgsize;
  }
}
