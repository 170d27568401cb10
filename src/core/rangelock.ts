/**
 * A per-domain lock on IOVA ranges. Calls whose ranges overlap take effect one after the other, in
 * the order they arrived; calls on disjoint ranges run at once (their chunks may share tables, which
 * the walk installs with compare-and-swap). Every call starts on the main thread, so the lock lives
 * there; the shared-memory locks are the ones worker threads need (table memory's allocator).
 */
interface Holder {
  lo: number;
  hi: number;
  released: Promise<void>;
  release: () => void;
}

export class RangeLock {
  private readonly holders: Holder[] = [];

  /** No call holds or waits for any range: a synchronous call may run at once, without the lock. */
  get idle(): boolean {
    return this.holders.length === 0;
  }

  /** Waits until every earlier call on an overlapping range is done; resolves to the release function. */
  async acquire(lo: number, hi: number): Promise<() => void> {
    const earlier = this.holders.filter((h) => h.lo < hi && lo < h.hi).map((h) => h.released);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const holder: Holder = { lo, hi, released, release: () => undefined };
    holder.release = () => {
      const i = this.holders.indexOf(holder);
      if (i >= 0) this.holders.splice(i, 1);
      release();
    };
    this.holders.push(holder);
    if (earlier.length > 0) await Promise.all(earlier);
    return holder.release;
  }
}
