/**
 * The helper thread of the parallel suite's memory-bandwidth probe. It waits on a control word
 * (Atomics.wait, no event loop in the way), then fills or sums its part of a shared Float64Array and
 * signals completion, so that the probe times the memory work and not message passing.
 *
 * Control (Int32Array over workerData.control): [0] generation (bumped by the main thread to start),
 * [1] completions, [2] first element, [3] end element, [4] op (0 fill, 1 sum, 2 spin, -1 exit).
 * The helper writes when it started and finished its part (process.hrtime.bigint() as numbers, one
 * clock for all threads) to workerData.times (Float64Array): [0] start, [1] end.
 * "spin" touches no memory: (end - first) steps of an integer recurrence, to tell whether two threads
 * get two cores' worth of CPU at all.
 */
import { workerData } from 'node:worker_threads';

export const Ctl = { Generation: 0, Done: 1, First: 2, End: 3, Op: 4 } as const;

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

function serve(data: Float64Array, ctl: Int32Array, times: Float64Array): void {
  let seen = 0;
  for (;;) {
    Atomics.wait(ctl, Ctl.Generation, seen);
    seen = Atomics.load(ctl, Ctl.Generation);
    const op = ctl[Ctl.Op]!;
    if (op < 0) return;
    times[0] = Number(process.hrtime.bigint());
    sink += touch(data, ctl[Ctl.First]!, ctl[Ctl.End]!, op, seen);
    times[1] = Number(process.hrtime.bigint());
    Atomics.add(ctl, Ctl.Done, 1);
    Atomics.notify(ctl, Ctl.Done);
  }
}

const wd = workerData as { data?: SharedArrayBuffer; control?: SharedArrayBuffer; times?: SharedArrayBuffer } | null;
if (wd?.data && wd.control && wd.times) serve(new Float64Array(wd.data), new Int32Array(wd.control), new Float64Array(wd.times));
