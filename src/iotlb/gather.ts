/**
 * The invalidation gather: what one call must invalidate, collected as it goes and issued as one
 * batch at the end (Linux's struct iommu_iotlb_gather). Removed leaves widen a pending [start, end)
 * range; where Linux would sync early — a leaf of another size, or a range disjoint from the pending
 * one — the pending range is closed into a command and a new one starts, so a call still ends in
 * exactly one sync. Freed table pages wait on the gather's free list until their walk-cache
 * invalidation has been issued, so no walk can reach a page after it is reused.
 */
import { appendAll } from '../util/arrays.js';

export type InvalidationCommand =
  /** Invalidate leaf translations in [iova, iova + size); `pgsize` is the leaf size (0 if mixed). */
  | { kind: 'range'; iova: number; size: number; pgsize: number }
  /** Invalidate cached walks (non-leaf entries) through [iova, iova + size): a table was freed. */
  | { kind: 'walk'; iova: number; size: number }
  /** Invalidate everything cached for the domain. */
  | { kind: 'all' };

/** A gather as plain data, to cross a thread boundary (structured clone). */
export interface GatherSnapshot {
  commands: InvalidationCommand[];
  firsts: number[];
  start: number;
  end: number;
  pgsize: number;
  first: number;
}

export class Gather {
  private start = 0;
  private end = 0;
  /** Leaf size of the pending range; 0 while there is none. */
  private pgsize = 0;
  /** The first page added to the pending range (what Linux's disjointness test saw). */
  private first = 0;
  readonly commands: InvalidationCommand[] = [];
  /** For each command, the first page added to it (NaN for non-range commands), so append() can replay. */
  private readonly firsts: number[] = [];
  /** Table pages to free once the batch is issued, as (offset, bytes) pairs. */
  readonly freePages: number[] = [];

  /**
   * Adds `size` bytes of contiguous leaves of `pgsize` each, removed in ascending order from `iova`:
   * the same as adding each page in turn, because only the first can be disjoint from the pending range.
   */
  addPages(iova: number, size: number, pgsize: number): void {
    this.addRun(iova, iova, size, pgsize);
  }

  /** As addPages, for a run of pages whose first added page was `first` (not always its lowest). */
  private addRun(first: number, iova: number, size: number, pgsize: number): void {
    if (size === 0) return;
    if (this.pgsize !== 0 && (this.pgsize !== pgsize || this.isDisjoint(first, pgsize))) this.close();
    if (this.pgsize === 0) {
      this.start = iova;
      this.end = iova + size;
      this.first = first;
    } else {
      this.start = Math.min(this.start, iova);
      this.end = Math.max(this.end, iova + size);
    }
    this.pgsize = pgsize;
  }

  /** Linux's iommu_iotlb_gather_is_disjoint: adjacent ranges are not disjoint. */
  private isDisjoint(iova: number, size: number): boolean {
    return iova + size < this.start || iova > this.end;
  }

  /** A whole-range invalidation (iotlb_sync_map, or a rollback): one command of its own. */
  addRange(iova: number, size: number): void {
    this.close();
    this.push({ kind: 'range', iova, size, pgsize: 0 });
  }

  /** Tables were unlinked from [iova, iova + size): cached walks through it must go. */
  addWalk(iova: number, size: number): void {
    this.push({ kind: 'walk', iova, size });
  }

  /** Table pages, as (offset, bytes) pairs, to free once this gather's batch has been issued. */
  freeTables(pages: readonly number[]): void {
    for (const p of pages) this.freePages.push(p);
  }

  addFlushAll(): void {
    this.close();
    this.push({ kind: 'all' });
  }

  /** Moves everything of `other` into this gather, as if its leaves had been added here, in order. */
  append(other: Gather): void {
    other.commands.forEach((c, i) => {
      if (c.kind === 'range' && c.pgsize !== 0) this.addRun(other.firsts[i]!, c.iova, c.size, c.pgsize);
      else if (c.kind === 'walk') this.push(c);
      else {
        this.close();
        this.push(c);
      }
    });
    if (other.pgsize !== 0) this.addRun(other.first, other.start, other.end - other.start, other.pgsize);
    for (const p of other.freePages) this.freePages.push(p);
    other.reset();
  }

  /** Closes the pending range into a command. */
  close(): void {
    if (this.pgsize === 0) return;
    this.commands.push({ kind: 'range', iova: this.start, size: this.end - this.start, pgsize: this.pgsize });
    this.firsts.push(this.first);
    this.pgsize = 0;
  }

  private push(c: InvalidationCommand): void {
    this.commands.push(c);
    this.firsts.push(NaN);
  }

  snapshot(): GatherSnapshot {
    return { commands: this.commands, firsts: this.firsts, start: this.start, end: this.end, pgsize: this.pgsize, first: this.first };
  }

  static fromSnapshot(s: GatherSnapshot): Gather {
    const g = new Gather();
    appendAll(g.commands, s.commands);
    appendAll(g.firsts, s.firsts);
    g.start = s.start;
    g.end = s.end;
    g.pgsize = s.pgsize;
    g.first = s.first;
    return g;
  }

  get isEmpty(): boolean {
    return this.pgsize === 0 && this.commands.length === 0 && this.freePages.length === 0;
  }

  reset(): void {
    this.pgsize = 0;
    this.commands.length = 0;
    this.firsts.length = 0;
    this.freePages.length = 0;
  }
}
