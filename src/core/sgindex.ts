/**
 * A coarse index over a scatter-gather list, kept up to date as entries are appended, so that a big
 * map_sg can be cut into chunks without a pass over the whole list. For every block of 64 entries
 * it keeps the bytes before the block, and the first and last entry in the block that start a run
 * (an entry starts a run unless it continues the previous entry physically). From that, the IOVA
 * offset of any entry and the run around any entry are found by looking at one or two blocks, and
 * the map loop skips, unread, every block that only continues a run (`breaks`; a physically
 * contiguous list is then mapped without reading its entries). 0.25 bytes per entry.
 */
export const BLOCK_SHIFT = 6;
export const BLOCK = 1 << BLOCK_SHIFT;

export class SgIndex {
  private bytesBefore: Float64Array;
  private firstBreak: Int32Array;
  private lastBreak: Int32Array;
  private total = 0;
  private count = 0;
  private runCount = 0;

  constructor(capacity = BLOCK) {
    const blocks = Math.max(1, Math.ceil(capacity / BLOCK));
    this.bytesBefore = new Float64Array(blocks);
    this.firstBreak = sharedBreaks(blocks);
    this.lastBreak = new Int32Array(blocks).fill(-1);
  }

  /** Records entry `i` (= the number recorded so far) of `pairs`. */
  add(pairs: Float64Array, i: number): void {
    const b = i >> BLOCK_SHIFT;
    if ((i & (BLOCK - 1)) === 0) {
      if (b === this.bytesBefore.length) this.grow();
      this.bytesBefore[b] = this.total;
      this.firstBreak[b] = -1;
      this.lastBreak[b] = -1;
    }
    if (i === 0 || pairs[2 * i] !== pairs[2 * i - 2]! + pairs[2 * i - 1]!) {
      if (this.firstBreak[b] === -1) this.firstBreak[b] = i;
      this.lastBreak[b] = i;
      this.runCount++;
    }
    this.total += pairs[2 * i + 1]!;
    this.count = i + 1;
  }

  /**
   * Per block, the first entry in it that starts a run, or -1 if every entry in it continues the run
   * before (see runEnd in maploop.ts). In shared memory, so a parallel map hands it to the workers as
   * it is. Valid until the next add().
   */
  get breaks(): Int32Array {
    return this.firstBreak;
  }

  get bytes(): number {
    return this.total;
  }

  /** Runs in the list: entries that do not continue the one before physically (map_sg's merges). */
  get runs(): number {
    return this.runCount;
  }

  get length(): number {
    return this.count;
  }

  /** Bytes of the entries before entry i. */
  offsetOf(pairs: Float64Array, i: number): number {
    if (i >= this.count) return this.total;
    let off = this.bytesBefore[i >> BLOCK_SHIFT]!;
    for (let k = i & ~(BLOCK - 1); k < i; k++) off += pairs[2 * k + 1]!;
    return off;
  }

  /** Does entry i start a run? */
  startsRun(pairs: Float64Array, i: number): boolean {
    return i === 0 || i >= this.count || pairs[2 * i] !== pairs[2 * i - 2]! + pairs[2 * i - 1]!;
  }

  /** The entry that starts the run containing entry i. */
  runStart(pairs: Float64Array, i: number): number {
    // One run (a contiguous list): no blocks to search, which for 1Mi entries took 16Ki steps.
    if (this.runCount === 1) return 0;
    for (let k = i; k >= (i & ~(BLOCK - 1)); k--) if (this.startsRun(pairs, k)) return k;
    for (let b = (i >> BLOCK_SHIFT) - 1; b >= 0; b--) if (this.lastBreak[b] !== -1) return this.lastBreak[b]!;
    return 0;
  }

  /** The entry after the run containing entry i (the next run's first entry, or the count). */
  runEnd(pairs: Float64Array, i: number): number {
    if (this.runCount === 1) return this.count;
    const blockEnd = Math.min(((i >> BLOCK_SHIFT) + 1) << BLOCK_SHIFT, this.count);
    for (let k = i + 1; k < blockEnd; k++) if (this.startsRun(pairs, k)) return k;
    for (let b = (i >> BLOCK_SHIFT) + 1; b < this.firstBreak.length && b << BLOCK_SHIFT < this.count; b++) {
      if (this.firstBreak[b] !== -1) return this.firstBreak[b]!;
    }
    return this.count;
  }

  private grow(): void {
    const n = this.bytesBefore.length * 2;
    const bytesBefore = new Float64Array(n);
    bytesBefore.set(this.bytesBefore);
    const firstBreak = sharedBreaks(n);
    firstBreak.set(this.firstBreak);
    const lastBreak = new Int32Array(n).fill(-1);
    lastBreak.set(this.lastBreak);
    this.bytesBefore = bytesBefore;
    this.firstBreak = firstBreak;
    this.lastBreak = lastBreak;
  }
}

/** A breaks array in shared memory, every block "no break" (-1) until entries say otherwise. */
function sharedBreaks(blocks: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(blocks * 4)).fill(-1);
}
