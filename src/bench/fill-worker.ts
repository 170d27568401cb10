/**
 * The helper thread of the parallel suite's memory-bandwidth probe. It waits on a control word
 * (Atomics.wait, no event loop in the way), then fills or sums its part of a shared Float64Array and
 * signals completion, so that the probe times the memory work and not message passing.
 *
 * Control (Int32Array over workerData.control): [0] generation (bumped by the main thread to start),
 * [1] completions, [2] first element, [3] end element, [4] op (0 fill, 1 sum, 2 spin, 3 allocate
 * table pages from workerData.tables, 4 chase workerData.chase's second cycle, -1 exit).
 * The helper writes when it started and finished its part (process.hrtime.bigint() as numbers, one
 * clock for all threads) to workerData.times (Float64Array): [0] start, [1] end.
 * "spin" touches no memory: (end - first) steps of an integer recurrence, to tell whether two threads
 * get two cores' worth of CPU at all. "chase" follows (end - first) links of a random cycle, each load
 * waiting for the one before: memory latency, which the table walks and leaf checks of a map pay and
 * which the streaming fill and sum hide.
 */
import { workerData } from 'node:worker_threads';
import { TableAccounts, TableOwner } from '../pgtable/account.js';
import { TableMemory, UNIT } from '../pgtable/memory.js';

export const Ctl = { Generation: 0, Done: 1, First: 2, End: 3, Op: 4 } as const;

/** Op 3: allocate (end - first) 4K table pages, then free them all (the allocator's work per page). */
export const OP_ALLOC = 3;

/** Op 4: follow (end - first) links of a random cycle (ChaseCycles). */
export const OP_CHASE = 4;

/**
 * Two random cyclic permutations in one shared Int32Array: next[i] is the element after i. The first
 * cycle runs through [0, n/2), the second through [n/2, n), so two threads chase without sharing a line.
 */
export function chaseCycles(entries: number, seed: number): Int32Array {
  const next = new Int32Array(new SharedArrayBuffer(entries * 4));
  const half = entries / 2;
  let x = seed >>> 0;
  for (const base of [0, half]) {
    // Sattolo's shuffle of the identity makes one cycle through every element.
    for (let i = 0; i < half; i++) next[base + i] = base + i;
    for (let i = half - 1; i > 0; i--) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      const j = base + (x % i);
      const t = next[base + i]!;
      next[base + i] = next[j]!;
      next[j] = t;
    }
  }
  return next;
}

/** Follows `steps` links from `start`; returns where it ended (so the loads cannot be dropped). */
export function chase(next: Int32Array, start: number, steps: number): number {
  let p = start;
  for (let i = 0; i < steps; i++) p = next[p]!;
  return p;
}

/** Table memory both threads allocate from (TableMemory.create on the main thread). */
export interface AllocTables {
  memory: SharedArrayBuffer;
  stacks: SharedArrayBuffer;
  accounts: SharedArrayBuffer;
}

/** A thread's handle on the shared table memory, and an owner (tag 1, no budget) to charge. */
export function allocator(t: AllocTables): { mem: TableMemory; owner: TableOwner; held: number[] } {
  return { mem: new TableMemory(t.memory, t.stacks), owner: new TableOwner(new TableAccounts(t.accounts), 1, -1), held: [] };
}

/** Allocates `pages` zeroed, charged 4K table pages as the map path does, then frees them. */
export function allocRound(a: ReturnType<typeof allocator>, pages: number): number {
  const { mem, owner, held } = a;
  held.length = 0;
  for (let i = 0; i < pages; i++) {
    const p = owner.allocPage(mem, UNIT);
    if (p < 0) throw new Error('bench: table memory exhausted');
    held.push(p, UNIT);
  }
  owner.freePages(mem, held);
  return held.length;
}

/** Fills or sums data[first, end): the same loop the main thread runs for the 1-thread case. */
export function touch(data: Float64Array, first: number, end: number, op: number, value: number): number {
  if (op === 0) {
    data.fill(value, first, end);
    return 0;
  }
  if (op === 2) {
    let x = value | 0;
    for (let i = first; i < end; i++) x = (Math.imul(x, 1664525) + 1013904223) | 0;
    return x;
  }
  let sum = 0;
  for (let i = first; i < end; i++) sum += data[i]!;
  return sum;
}

/** Where results go, so that the compiler cannot drop the loops. */
export let sink = 0;

function serve(data: Float64Array, ctl: Int32Array, times: Float64Array, tables: ReturnType<typeof allocator> | null, next: Int32Array | null): void {
  let seen = 0;
  for (;;) {
    Atomics.wait(ctl, Ctl.Generation, seen);
    seen = Atomics.load(ctl, Ctl.Generation);
    const op = ctl[Ctl.Op]!;
    if (op < 0) return;
    times[0] = Number(process.hrtime.bigint());
    const steps = ctl[Ctl.End]! - ctl[Ctl.First]!;
    if (op === OP_ALLOC) sink += allocRound(tables!, steps);
    else if (op === OP_CHASE) sink += chase(next!, next!.length / 2, steps);
    else sink += touch(data, ctl[Ctl.First]!, ctl[Ctl.End]!, op, seen);
    times[1] = Number(process.hrtime.bigint());
    Atomics.add(ctl, Ctl.Done, 1);
    Atomics.notify(ctl, Ctl.Done);
  }
}

const wd = workerData as { data?: SharedArrayBuffer; control?: SharedArrayBuffer; times?: SharedArrayBuffer; tables?: AllocTables; chase?: SharedArrayBuffer } | null;
if (wd?.data && wd.control && wd.times) {
  serve(new Float64Array(wd.data), new Int32Array(wd.control), new Float64Array(wd.times), wd.tables ? allocator(wd.tables) : null, wd.chase ? new Int32Array(wd.chase) : null);
}
