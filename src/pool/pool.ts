/**
 * The worker pool: piscina threads that run chunks of big calls on the shared table memory. Each
 * worker gets the table memory once, at start (workerData); tasks carry only small numbers and
 * SharedArrayBuffers. Fixed size (min = max threads, never idle-reaped): on a 2-core machine a thread
 * that exits and restarts costs more than the chunks it would save. A worker may also run a standby
 * helper (standby.ts): one long task that takes jobs of call after call without a task each.
 */
import type { MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { IommuError } from '../errors/errors.js';
import type { TableAccounts } from '../pgtable/account.js';
import type { TableMemory } from '../pgtable/memory.js';
import { StandbyHelper } from './standby.js';
import type { ChunkTask } from './tasks.js';

/** A chunk that failed in its worker (EIO); `died` if the worker thread itself is gone. */
export class WorkerFailure extends IommuError {
  readonly died: boolean;
  constructor(died: boolean, message: string) {
    super('EIO', message);
    this.died = died;
  }
}

/** What each worker receives once, at start. */
export interface PoolData {
  memory: SharedArrayBuffer;
  /** Its free stacks (TableMemory.stacksSab). */
  freeStacks: SharedArrayBuffer;
  accounts: SharedArrayBuffer;
  /** Int32 [0]: workers that have started and warmed up (each adds one, then notifies). */
  started: SharedArrayBuffer;
}

const WORKER_URL = new URL('../../workers/chunk-worker-loader.cjs', import.meta.url);
/**
 * How long a standby helper waits for its next job before it leaves. Calls of a busy caller come
 * far closer together; an idle Iommu then holds no task, so the process can exit without close().
 */
const STANDBY_IDLE_MS = 100;

export class ChunkPool {
  readonly threads: number;
  private readonly piscina: Piscina;
  private destroyed = false;
  /** Tasks dispatched and not yet settled. */
  private readonly inflight = new Set<Promise<unknown>>();
  /** Helpers kept awake between calls, started on first use (standby.ts). */
  private readonly standbys: StandbyHelper[] = [];
  /** PoolData.started, here. */
  private readonly started = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    threads: number,
    private readonly memory: TableMemory,
    accounts: TableAccounts,
  ) {
    this.threads = threads;
    this.piscina = new Piscina({
      filename: WORKER_URL.href,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: Infinity,
      workerData: { memory: memory.sab, freeStacks: memory.stacksSab, accounts: accounts.sab, started: this.started.buffer as SharedArrayBuffer } satisfies PoolData,
      // Each worker runs one synchronous chunk at a time; more in flight would only queue there.
      concurrentTasksPerWorker: 1,
    });
  }

  /**
   * Whether every worker has started: loaded, and warmed up its map code (src/pool/warmup.ts). That
   * takes 0.15-0.3 s after the pool is made on the 2-vCPU machine (docs/performance.md); a task or
   * standby job given a worker before then waits for it. (A worker that replaces a dead one counts
   * again, so after a death this stays true while the new worker starts.)
   */
  get ready(): boolean {
    return Atomics.load(this.started, 0) >= this.threads;
  }

  /** Resolves true once `ready`, or false after `timeoutMs` if it is not (a worker cannot start). */
  async whenReady(timeoutMs = Infinity): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    for (let n = Atomics.load(this.started, 0); n < this.threads; n = Atomics.load(this.started, 0)) {
      const left = deadline - performance.now();
      if (left <= 0) return false;
      const wait = Atomics.waitAsync(this.started, 0, n, left);
      if (wait.async) await wait.value;
    }
    return true;
  }

  /**
   * Runs one task. A task whose worker dies (exit, crash, termination) rejects with EIO; the pool
   * replaces the worker by itself.
   */
  async run<R>(task: ChunkTask, transfer?: MessagePort): Promise<R> {
    if (this.destroyed) throw new IommuError('ENODEV', 'the worker pool has been shut down');
    const result = this.piscina.run(task, transfer ? { transferList: [transfer] } : undefined);
    this.inflight.add(result);
    try {
      return (await result) as R;
    } catch (e) {
      const message = (e as Error).message;
      // piscina reports a worker that exited (or was terminated) with this message; a task that
      // threw leaves its worker alive, with the error it threw.
      throw new WorkerFailure(/^worker exited/.test(message), `a worker failed running a ${task.kind} chunk: ${message}`);
    } finally {
      this.inflight.delete(result);
    }
  }

  /**
   * Standby helper `i` (i < threads). Its worker, if it dies, may hold the table memory's allocator
   * lock: that is released at once, since other threads may be waiting for it.
   */
  standby(i: number): StandbyHelper {
    while (this.standbys.length <= i) {
      this.standbys.push(
        new StandbyHelper(
          (task, port) => this.run(task, port),
          (tid) => this.memory.releaseLockOfDeadThread(tid),
          STANDBY_IDLE_MS,
        ),
      );
    }
    return this.standbys[i]!;
  }

  /**
   * Claims standby helpers 0..wanted-1 for one job each; the ones busy with another call's job (or
   * leaving just then) are left out. A helper that must be started is a piscina task, which queues
   * behind tasks whose results this thread has not handled yet (one that left, say): those are let
   * in first.
   */
  async claimStandbys(wanted: number): Promise<StandbyHelper[]> {
    for (let i = 0; i < wanted; i++) {
      if (this.standby(i).asleep) {
        await this.catchUp();
        break;
      }
    }
    const claimed: StandbyHelper[] = [];
    for (let i = 0; i < wanted; i++) {
      const helper = this.standby(i);
      if (helper.claim()) claimed.push(helper);
    }
    return claimed;
  }

  /** Asks the running idle standby helpers 0..wanted-1 to wait awake for a job about to come. */
  wakeStandbys(wanted: number): void {
    for (let i = 0; i < Math.min(wanted, this.standbys.length); i++) this.standbys[i]!.wake();
  }

  /** Lets every standby helper go, so that tasks queued on the pool find its workers free. */
  async retireStandbys(): Promise<void> {
    await Promise.all(this.standbys.map((h) => h.retire()));
  }

  /**
   * piscina counts a worker busy until its task's result message has been handled on this thread, so
   * a task dispatched before then queues behind it. A caller that returns before its helpers' tasks
   * settle (it waited for their chunks in shared memory) and calls again at once, in microtasks,
   * would have its next helper queue and start too late to help. While tasks are unsettled this
   * resolves after one turn of the event loop, in which their messages are handled.
   */
  async catchUp(): Promise<void> {
    if (this.inflight.size > 0) await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /**
   * Ends the pool once the tasks in flight have settled. A call may return before its helpers' tasks
   * do (the caller waits for their chunks in shared memory); such a task has nothing left to do, and
   * piscina must not be torn down under it.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    await this.retireStandbys();
    this.destroyed = true;
    await Promise.allSettled([...this.inflight]);
    await this.piscina.destroy();
  }
}
