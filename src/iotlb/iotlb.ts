/**
 * The IOTLB: where invalidation batches are issued and counted. `sync` is the one place a batch
 * completes: it applies the batch's commands, counts them, and only then returns the batch's freed
 * table pages to table memory, so that no cached walk can reach a page that has been reused.
 */
import type { TableMemory } from '../pgtable/memory.js';
import type { Gather } from './gather.js';

export interface IotlbStats {
  /** Invalidation commands issued, inside batches. */
  invalidations: number;
  /** Completed invalidation batches (syncs). */
  syncs: number;
  /** Translations served from the IOTLB. */
  hits: number;
  /** Translations that needed a table walk. */
  misses: number;
}

export class Iotlb {
  private readonly counters: IotlbStats = { invalidations: 0, syncs: 0, hits: 0, misses: 0 };

  constructor(private readonly mem: TableMemory) {}

  /** Issues everything in `gather` for domain `domainId` as one batch, and empties the gather. */
  sync(_domainId: number, gather: Gather): void {
    gather.close();
    this.counters.invalidations += gather.commands.length;
    this.counters.syncs += 1;
    const pages = gather.freePages;
    for (let i = 0; i < pages.length; i += 2) this.mem.free(pages[i]!, pages[i + 1]!);
    gather.reset();
  }

  stats(): IotlbStats {
    return { ...this.counters };
  }
}
