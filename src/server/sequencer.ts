/**
 * The order in which one connection's requests take effect. Requests on one domain must take effect
 * in the order sent, yet many may be in flight. The engine already orders calls on overlapping IOVA
 * ranges (its per-domain range lock is FIFO) as long as they are *issued* in arrival order, so range
 * calls (map, unmap, map_sg, unmap_sg) are issued at once, in order, without waiting for each other.
 * What the range lock does not order is sequenced here:
 *
 *   - a barrier (domain_free, iotlb_sync, flush_iotlb_all, iova_to_phys, lookup, attach, detach,
 *     translate) runs only when every earlier call of this connection on its keys has finished;
 *   - any call waits behind an earlier call on a shared key that has not been issued yet, so nothing
 *     overtakes a waiting barrier;
 *   - 'all' (hello) waits for every earlier call of the connection, and every later call waits for it;
 *   - 'now' calls (domain_alloc, stats) touch nothing earlier calls could change and go at once.
 *
 * Keys name what a call touches ("d<id>" a domain, "v<id>" a device) in the connection's tenant.
 * Calls of different connections are not ordered with each other (the protocol promises nothing there).
 */

export type Order =
  | { readonly kind: 'now' }
  | { readonly kind: 'range'; readonly keys: readonly string[] }
  | { readonly kind: 'barrier'; readonly keys: readonly string[] }
  | { readonly kind: 'all' };

export interface Task {
  readonly order: Order;
  /** Issues the call: its answer, or a promise of it. May throw. */
  run(): unknown;
  /** Called once with the outcome. */
  done(ok: boolean, value: unknown): void;
}

interface Running {
  range: number;
  barrier: number;
}

const NO_KEYS: readonly string[] = [];

function keysOf(order: Order): readonly string[] {
  return order.kind === 'range' || order.kind === 'barrier' ? order.keys : NO_KEYS;
}

export class Sequencer {
  private readonly running = new Map<string, Running>();
  private runningCount = 0;
  private runningAll = 0;
  private readonly queue: Task[] = [];
  private idleWaiters: (() => void)[] = [];

  /** Calls issued and not finished, plus calls waiting to be issued. */
  get outstanding(): number {
    return this.runningCount + this.queue.length;
  }

  submit(task: Task): void {
    if (this.queue.length === 0 ? this.canStart(task.order) : this.canOvertakeQueue(task.order)) this.start(task);
    else this.queue.push(task);
  }

  /** Resolves when nothing is running or waiting. */
  whenIdle(): Promise<void> {
    if (this.outstanding === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Whether a call with `order` may be issued now, given only what is running. */
  private canStart(order: Order): boolean {
    if (this.runningAll > 0) return false;
    switch (order.kind) {
      case 'now':
        return true;
      case 'all':
        return this.runningCount === 0;
      case 'range':
        return order.keys.every((k) => (this.running.get(k)?.barrier ?? 0) === 0);
      case 'barrier':
        return order.keys.every((k) => !this.running.has(k));
    }
  }

  /** With calls waiting: may this new one go first? Only if it shares nothing with any of them. */
  private canOvertakeQueue(order: Order): boolean {
    if (order.kind === 'all') return false;
    const keys = keysOf(order);
    for (const waiting of this.queue) {
      if (waiting.order.kind === 'all') return false;
      if (keys.length > 0 && keysOf(waiting.order).some((k) => keys.includes(k))) return false;
    }
    return this.canStart(order);
  }

  private start(task: Task): void {
    const keys = keysOf(task.order);
    const field = task.order.kind === 'barrier' ? 'barrier' : 'range';
    for (const k of keys) {
      const r = this.running.get(k);
      if (r) r[field]++;
      else this.running.set(k, { range: field === 'range' ? 1 : 0, barrier: field === 'barrier' ? 1 : 0 });
    }
    this.runningCount++;
    if (task.order.kind === 'all') this.runningAll++;
    let answer: unknown;
    try {
      answer = task.run();
    } catch (e) {
      this.finish(task, false, e, false);
      return;
    }
    if (answer instanceof Promise) {
      answer.then(
        (v: unknown) => this.finish(task, true, v, true),
        (e: unknown) => this.finish(task, false, e, true),
      );
    } else {
      this.finish(task, true, answer, false);
    }
  }

  private finish(task: Task, ok: boolean, value: unknown, async: boolean): void {
    const field = task.order.kind === 'barrier' ? 'barrier' : 'range';
    for (const k of keysOf(task.order)) {
      const r = this.running.get(k)!;
      r[field]--;
      if (r.range === 0 && r.barrier === 0) this.running.delete(k);
    }
    this.runningCount--;
    if (task.order.kind === 'all') this.runningAll--;
    task.done(ok, value);
    // A call that finished synchronously was started by submit() or drain(), which go on by themselves.
    if (async) this.drain();
    this.notifyIfIdle();
  }

  /** Issues, in order, every waiting call that nothing earlier holds up any more. */
  private drain(): void {
    if (this.queue.length === 0) return;
    const heldKeys = new Set<string>();
    let heldAll = false;
    let i = 0;
    while (i < this.queue.length) {
      const task = this.queue[i]!;
      const order = task.order;
      const keys = keysOf(order);
      const heldUp = heldAll || (order.kind === 'all' && i > 0) || keys.some((k) => heldKeys.has(k));
      if (!heldUp && this.canStart(order)) {
        this.queue.splice(i, 1);
        this.start(task);
        continue;
      }
      if (order.kind === 'all') heldAll = true;
      for (const k of keys) heldKeys.add(k);
      i++;
    }
  }

  private notifyIfIdle(): void {
    if (this.outstanding !== 0 || this.idleWaiters.length === 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
