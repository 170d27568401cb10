/**
 * The IOTLB: the translations devices have cached, and the one place invalidation batches complete.
 *
 * Two caches, both bounded and tagged by domain, as in an SMMU:
 *   - leaf entries: (domain, leaf) -> output address, leaf size, what it permits;
 *   - walk entries: (domain, region of one last-level table) -> that table's offset, so a miss walks
 *     only the last level.
 * An entry stays until an invalidation removes it: after an unmap whose invalidation was deferred, a
 * device keeps using the old translation, exactly as real hardware would. Invalidation commands:
 *   range with a leaf size  -> leaf entries overlapping the range (a leaf-only TLBI);
 *   range without (pgsize 0, iotlb_sync_map or a rollback), walk -> leaf and walk entries in range;
 *   all -> everything of the domain;
 *   and, outside any domain's gather, a global invalidation (invalidateAll) -> everything cached.
 * `sync` applies a batch, counts it, and only then frees the batch's table pages: a walk entry can
 * never point at a page that has been reused.
 */
import type { TableOwner } from '../pgtable/account.js';
import type { TableMemory } from '../pgtable/memory.js';
import type { Gather, InvalidationCommand } from './gather.js';

/** Invalidation commands issued, by kind: leaf ranges, walk caches, one domain whole, every domain. */
export interface InvalidationCounts {
  range: number;
  walk: number;
  domain: number;
  global: number;
}

export interface IotlbStats {
  /** Invalidation commands issued, inside batches (the sum of `commands`). */
  invalidations: number;
  commands: InvalidationCounts;
  /** Completed invalidation batches (syncs). */
  syncs: number;
  /** Translations served from the IOTLB. */
  hits: number;
  /** Translations that needed a table walk. */
  misses: number;
  /** Walks that started from a cached last-level table. */
  walkHits: number;
  /** Leaf entries evicted to make room. */
  evictions: number;
  /** Walk entries evicted to make room. */
  walkEvictions: number;
  /** Entries in the leaf cache now. */
  entries: number;
}

/** A cached translation. */
export interface TlbEntry {
  tag: number;
  /** First IOVA of the leaf, and its size. */
  start: number;
  size: number;
  /** Output address of the leaf. */
  phys: number;
  readable: boolean;
  writable: boolean;
  /** Descriptor index of the leaf in table memory (for dirty tracking). */
  slot: number;
}

interface WalkEntry {
  tag: number;
  start: number;
  size: number;
  table: number;
}

/** 2^38: room for an IOVA divided by the smallest leaf (4K, ias 48 -> 2^36) times 4 levels. */
const TAG_STRIDE = 2 ** 38;

export class Iotlb {
  readonly capacity: number;
  private readonly leaves = new Map<number, TlbEntry>();
  private readonly walks = new Map<number, WalkEntry>();
  private readonly counters = { invalidations: 0, syncs: 0, hits: 0, misses: 0, walkHits: 0, evictions: 0, walkEvictions: 0 };
  private readonly commands: InvalidationCounts = { range: 0, walk: 0, domain: 0, global: 0 };
  /** Cost model: modelled nanoseconds per sync and per command (0 = none), and the total so far. */
  private costPerSync = 0;
  private costPerCommand = 0;
  modelledNs = 0;

  constructor(
    private readonly mem: TableMemory,
    capacity = 4096,
  ) {
    this.capacity = capacity;
  }

  /** Gives each sync a modelled cost, so benchmarks can show what batching saves. */
  setCostModel(nsPerSync: number, nsPerCommand: number): void {
    this.costPerSync = nsPerSync;
    this.costPerCommand = nsPerCommand;
  }

  /**
   * Issues everything in `gather` for the domain that `owner` stands for (its IOTLB tag, and whose
   * table pages the gather frees) as one batch, and empties the gather.
   */
  sync(owner: TableOwner, gather: Gather): void {
    gather.close();
    for (const c of gather.commands) this.commands[c.kind === 'all' ? 'domain' : c.kind]++;
    this.counted(gather.commands.length);
    this.applyNow(owner, gather);
  }

  /**
   * Applies `gather`'s invalidations to the caches at once and frees its pages; sync() counts them as
   * a batch first. Called alone, it is part of the table change that made them (nothing is counted): a map on a domain without
   * invalidateOnMap has no batch (CONTRACT), yet the walks cached through tables its blocks replaced
   * must go before the map returns, or devices would walk the old, empty tables and fault on the new
   * blocks. io-pgtable-arm flushes those walks at once too (__arm_lpae_unmap, tlb_flush_walk).
   */
  applyNow(owner: TableOwner, gather: Gather): void {
    gather.close();
    if (this.leaves.size > 0 || this.walks.size > 0) for (const c of gather.commands) this.apply(owner.tag, c);
    // Only now, with the walk invalidations applied, may the tables the gather unlinked be reused.
    owner.freePages(this.mem, gather.freePages);
    gather.reset();
  }

  /**
   * Invalidates everything every domain has cached, leaves and walks, as one batch of one global
   * command (an SMMU's TLBI_NSNH_ALL). Invalidations that domains deferred stay pending: issuing
   * them later invalidates nothing more, but frees their table pages then, as always.
   */
  invalidateAll(): void {
    this.leaves.clear();
    this.walks.clear();
    this.commands.global++;
    this.counted(1);
  }

  private counted(commands: number): void {
    this.counters.invalidations += commands;
    this.counters.syncs += 1;
    this.modelledNs += this.costPerSync + this.costPerCommand * commands;
  }

  private apply(tag: number, c: InvalidationCommand): void {
    if (c.kind === 'all') {
      this.dropDomain(tag);
      return;
    }
    const lo = c.iova;
    const hi = c.iova + c.size;
    for (const [key, e] of this.leaves) if (e.tag === tag && e.start < hi && lo < e.start + e.size) this.leaves.delete(key);
    if (c.kind === 'walk' || c.pgsize === 0) {
      for (const [key, w] of this.walks) if (w.tag === tag && w.start < hi && lo < w.start + w.size) this.walks.delete(key);
    }
  }

  /** Forgets everything cached for a domain (it is being freed, or flushed whole). */
  dropDomain(tag: number): void {
    for (const [key, e] of this.leaves) if (e.tag === tag) this.leaves.delete(key);
    for (const [key, w] of this.walks) if (w.tag === tag) this.walks.delete(key);
  }

  /** The cached leaf of `tag` covering iova among leaf sizes `sizes`, or undefined (counts a hit). */
  lookup(tag: number, iova: number, sizes: readonly number[], levels: readonly number[]): TlbEntry | undefined {
    for (let i = 0; i < sizes.length; i++) {
      const e = this.leaves.get(tag * TAG_STRIDE + Math.floor(iova / sizes[i]!) * 4 + levels[i]!);
      if (e !== undefined) {
        this.counters.hits++;
        return e;
      }
    }
    return undefined;
  }

  /** Caches a leaf found by a walk (counts a miss), evicting the oldest entry when full. */
  insert(e: TlbEntry, level: number): void {
    this.counters.misses++;
    if (this.leaves.size >= this.capacity && this.evictOldest(this.leaves)) this.counters.evictions++;
    this.leaves.set(e.tag * TAG_STRIDE + Math.floor(e.start / e.size) * 4 + level, e);
  }

  /** A translation that needed a walk but may not be cached. */
  countMiss(): void {
    this.counters.misses++;
  }

  /** The cached last-level table of `tag` for the region of `size` bytes around iova, or -1. */
  walkLookup(tag: number, iova: number, size: number): number {
    const w = this.walks.get(tag * TAG_STRIDE + Math.floor(iova / size));
    if (w === undefined) return -1;
    this.counters.walkHits++;
    return w.table;
  }

  walkInsert(tag: number, iova: number, size: number, table: number): void {
    if (this.walks.size >= this.capacity && this.evictOldest(this.walks)) this.counters.walkEvictions++;
    const start = Math.floor(iova / size) * size;
    this.walks.set(tag * TAG_STRIDE + Math.floor(iova / size), { tag, start, size, table });
  }

  private evictOldest(map: Map<number, unknown>): boolean {
    const oldest = map.keys().next();
    return !oldest.done && map.delete(oldest.value);
  }

  stats(): IotlbStats {
    return { ...this.counters, commands: { ...this.commands }, entries: this.leaves.size };
  }
}
