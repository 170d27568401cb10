/**
 * A standby helper: a pool worker kept awake between calls, so that handing it a job costs a message
 * and a wake-up, not a piscina task. Measured on the 2-vCPU machine (docs/performance.md): piscina's
 * `run` takes 0.08-0.2 ms of the caller's time per task (its bookkeeping, the message, the wake-up)
 * and counts a worker busy until the result is handled on the caller's thread; a standby job costs
 * the caller ~0.03 ms (postMessage of a few SharedArrayBuffers, one Atomics.notify).
 *
 * The helper is a long-running piscina task (`kind: 'standby'`): piscina still starts it, replaces a
 * worker that dies, and reports the death through the task. Between jobs it parks in Atomics.wait on
 * its control words; after `idleMs` without a job it leaves (so an idle Iommu holds no task and the
 * process may exit), and the next call starts it again.
 *
 *   control (Int32): [Seq] bumped once per job (and once to retire) | [State] Idle, Busy or Gone |
 *                    [Thread] the helper's threadId + 1 once it runs | [Retire] 1: leave now |
 *                    [Served] jobs done | [Spin] 1: a job is coming, wait for it awake |
 *                    [Spinning] 1 while the helper waits awake (a job then needs no notify)
 *
 * Waking a parked thread takes 0.07-0.12 ms here, and the caller's own notify 0.03 ms. So a caller
 * that is about to plan a big call asks its idle helpers to spin first (wake): they wake while it
 * plans, and its job finds them awake. A woken helper spins at most SPIN_MS for the job, then parks.
 * Neither side misses the other: the caller bumps Seq and then reads Spinning; the helper clears
 * Spinning and then parks only while Seq is unchanged (all sequentially consistent).
 *
 * A caller claims the helper with a compare-and-swap of State from Idle (or Busy) to Busy, then posts
 * the job and bumps Seq: jobs queue on the port, so a helper still finishing an earlier call's job
 * (one that woke late, say) takes the next one after it. The helper leaves on idle only by a
 * compare-and-swap from Idle to Gone, after a wait that saw no job posted, so a claimed job is never
 * left to a helper that is going. It takes each job with receiveMessageOnPort.
 */
import { MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';

const enum S {
  Seq = 0,
  State = 1,
  Thread = 2,
  Retire = 3,
  Served = 4,
  Spin = 5,
  Spinning = 6,
  Words = 16, // a cache line of its own
}

/** How long a woken helper waits awake for the job it was woken for, before it parks again. */
const SPIN_MS = 1;

/** How often a caller waiting for a busy helper looks again (it is also woken when the helper is done). */
const RECHECK_MS = 50;

const enum State {
  Idle = 0,
  Busy = 1,
  Gone = 2,
}

/** What the worker side needs (a piscina task; the port is transferred). */
export interface StandbyTask {
  kind: 'standby';
  control: SharedArrayBuffer;
  port: MessagePort;
  idleMs: number;
}

/**
 * The worker side: serves jobs posted on `task.port` until idle for `task.idleMs` or retired.
 * Returns how many jobs it served. A job that throws ends the helper (the task rejects with it).
 */
export function serveStandby(task: StandbyTask, threadId: number, run: (job: unknown) => void): number {
  const ctl = new Int32Array(task.control);
  Atomics.store(ctl, S.Thread, threadId + 1);
  let taken = 0;
  for (;;) {
    if (Atomics.load(ctl, S.Seq) === taken) {
      if (Atomics.exchange(ctl, S.Spin, 0) === 1) {
        spinFor(ctl, taken);
        continue;
      }
      if (Atomics.wait(ctl, S.Seq, taken, task.idleMs) === 'timed-out' && Atomics.compareExchange(ctl, S.State, State.Idle, State.Gone) === State.Idle) {
        return taken;
      }
      continue; // a job was posted (or claimed just now: it follows)
    }
    if (Atomics.load(ctl, S.Retire) !== 0) {
      Atomics.store(ctl, S.State, State.Gone);
      return taken;
    }
    const job = receiveMessageOnPort(task.port);
    taken++;
    if (job) run(job.message);
    Atomics.store(ctl, S.Served, taken);
    if (Atomics.load(ctl, S.Seq) === taken) {
      Atomics.compareExchange(ctl, S.State, State.Busy, State.Idle);
      Atomics.notify(ctl, S.State);
    }
  }
}

/** Waits awake, for at most SPIN_MS, until Seq moves past `taken` (a job, or retirement). */
function spinFor(ctl: Int32Array, taken: number): void {
  Atomics.store(ctl, S.Spinning, 1);
  const until = performance.now() + SPIN_MS;
  while (Atomics.load(ctl, S.Seq) === taken && performance.now() < until);
  Atomics.store(ctl, S.Spinning, 0);
}

/** The caller's side of one standby helper. */
export class StandbyHelper {
  private ctl = new Int32Array(new SharedArrayBuffer(S.Words * 4));
  private port: MessagePort | null = null;
  /** The helper's task while it runs; settles when it leaves (idle, retired) or fails. */
  private task: Promise<unknown> | null = null;

  /**
   * @param start runs the helper's task on the pool (transferring the port), returning its outcome
   * @param onDeath called with the dead helper's threadId if its worker died (locks it may hold)
   */
  constructor(
    private readonly start: (task: StandbyTask, transfer: MessagePort) => Promise<unknown>,
    private readonly onDeath: (threadId: number) => void,
    /** How long the helper waits for a job before it leaves (read when it starts). */
    public idleMs: number,
  ) {}

  /** Jobs the running helper has done since it started (0 when none runs). */
  get served(): number {
    return this.asleep ? 0 : Atomics.load(this.ctl, S.Served);
  }

  /** Whether the next claim starts the helper (it is not running, or it has left). */
  get asleep(): boolean {
    return this.task === null || Atomics.load(this.ctl, S.State) === State.Gone;
  }

  /**
   * Reserves the helper for one job, starting it if it is not running. False only if it left between
   * the check and the claim (the call then goes without it).
   */
  claim(): boolean {
    // A helper that has left may not have settled its task here yet (this thread was busy): a new
    // one is started at once rather than after that message.
    if (this.asleep) this.launch();
    for (;;) {
      const state = Atomics.load(this.ctl, S.State);
      if (state === State.Gone) return false;
      if (Atomics.compareExchange(this.ctl, S.State, state, State.Busy) === state) return true;
    }
  }

  /**
   * Asks an idle running helper to wait awake for a job that is coming (SPIN_MS at most): it wakes
   * while the caller plans the call. Does nothing to a helper that is busy, or not running.
   */
  wake(): void {
    if (this.asleep || Atomics.load(this.ctl, S.State) !== State.Idle) return;
    Atomics.store(this.ctl, S.Spin, 1);
    Atomics.notify(this.ctl, S.Seq, 1);
  }

  /** Hands a claimed helper its job. */
  send(job: unknown): void {
    this.port!.postMessage(job);
    Atomics.add(this.ctl, S.Seq, 1);
    if (Atomics.load(this.ctl, S.Spinning) === 0) Atomics.notify(this.ctl, S.Seq, 1);
  }

  /**
   * Resolves once the helper is done with its jobs: it is idle again, or gone (it left, threw, or its
   * worker died). Never rejects.
   */
  async released(): Promise<void> {
    const task = this.task;
    if (task === null) return;
    const gone = task.then(
      () => true,
      () => true,
    );
    for (;;) {
      const wait = Atomics.waitAsync(this.ctl, S.State, State.Busy, RECHECK_MS);
      if (!wait.async) return;
      if ((await Promise.race([wait.value, gone])) === true) return;
    }
  }

  /** Tells a running helper to leave (at once if idle, after its job if busy); resolves when it has. */
  async retire(): Promise<void> {
    const task = this.task;
    if (task === null) return;
    Atomics.store(this.ctl, S.Retire, 1);
    Atomics.add(this.ctl, S.Seq, 1);
    Atomics.notify(this.ctl, S.Seq, 1);
    await task.then(
      () => undefined,
      () => undefined,
    );
  }

  private launch(): void {
    const control = new SharedArrayBuffer(S.Words * 4);
    const ctl = new Int32Array(control);
    const { port1, port2 } = new MessageChannel();
    // A helper that left, and whose task has not settled here yet, reads its port no more.
    this.port?.close();
    this.ctl = ctl;
    port1.unref();
    this.port = port1;
    const task = this.start({ kind: 'standby', control, port: port2, idleMs: this.idleMs }, port2);
    this.task = task;
    const done = (): void => {
      // The next claim starts a new helper (piscina has replaced a worker that died).
      if (this.task === task) {
        this.task = null;
        this.port = null;
        port1.close();
      }
    };
    task.then(done, (e: unknown) => {
      const tid = Atomics.load(ctl, S.Thread) - 1;
      if ((e as { died?: boolean }).died && tid >= 0) this.onDeath(tid);
      done();
    });
  }
}
