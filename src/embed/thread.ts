/**
 * The engine thread of iommud/embed as the main thread sees it: a worker thread running an IommuHost
 * behind comlink, and the calls in flight to it.
 *
 * Comlink alone would leave a call pending forever if the thread died (it only ever waits for an
 * answer), so every call is tracked here: when the thread exits — crash, process.exit, terminate() —
 * every call in flight rejects with EIO (it may or may not have taken effect, and the engine is gone
 * with its tables), and every later call rejects with ENODEV.
 *
 * The thread holds the process open only while calls are in flight, as an in-process Iommu's idle
 * worker pool does not: a program that forgets close() still exits.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import * as Comlink from 'comlink';
import { IommuError } from '../errors/errors.js';
import type { GuardedHost } from './host.js';
import { fromWireError, type Outcome } from './wire.js';

const HOST_URL = new URL('../../workers/embed-host.js', import.meta.url);

export type Host = Comlink.Remote<GuardedHost>;

export class EngineThread {
  private readonly worker: Worker;
  private readonly host: Host;
  private readonly port: MessagePort;
  /** Device faults, while the main thread listens for them. */
  readonly events: MessagePort;
  /** Reject functions of the calls in flight. */
  private readonly pending = new Set<(error: IommuError) => void>();
  private idleWaiters: (() => void)[] = [];
  /** Why calls are refused (ENODEV); null while they are not. */
  private refusal: IommuError | null = null;
  /** Why calls in flight failed when the thread ended (EIO). */
  private ending: IommuError | null = null;
  /** The thread's uncaught error, if it had one. */
  private crash: string | null = null;
  private closing: Promise<void> | null = null;
  /** Resolves with the thread's exit code once it has ended. */
  readonly exited: Promise<number>;

  constructor() {
    const calls = new MessageChannel();
    const events = new MessageChannel();
    this.worker = new Worker(HOST_URL, {
      workerData: { port: calls.port2, events: events.port2 },
      transferList: [calls.port2, events.port2],
    });
    this.port = calls.port1;
    this.events = events.port1;
    this.host = Comlink.wrap<GuardedHost>(this.port as unknown as Comlink.Endpoint);
    this.worker.on('error', (err) => (this.crash = `${err.name}: ${err.message}`));
    this.exited = new Promise((resolve) => this.worker.once('exit', (code) => resolve(this.onExit(code))));
    this.setRef(false);
  }

  /**
   * Makes one call: resolves with its value, or rejects with its IommuError — ENODEV at once if the
   * thread is closed or gone, EIO if it ends while the call is in flight. `invoke` may throw (a bad
   * argument found on this side): that rejects the call.
   */
  call<T>(invoke: (host: Host) => Promise<Outcome<T>>): Promise<T> {
    if (this.refusal) return Promise.reject(this.refusal);
    return this.send(invoke);
  }

  /** Waits for the calls in flight, then closes the engine and ends the thread. Later calls: ENODEV. */
  close(): Promise<void> {
    this.closing ??= this.closeWhenIdle();
    return this.closing;
  }

  private async closeWhenIdle(): Promise<void> {
    this.refusal ??= new IommuError('ENODEV', 'the Iommu has been closed');
    await this.idle();
    if (this.ending) return; // gone already
    this.ending = new IommuError('EIO', 'the engine thread ended while closing');
    try {
      await this.send((h) => h.close());
    } finally {
      await this.worker.terminate();
    }
  }

  /** Ends the thread now: calls in flight reject with EIO, later ones with ENODEV. */
  async terminate(): Promise<void> {
    this.refusal ??= new IommuError('ENODEV', 'the embedded Iommu has been terminated');
    this.ending ??= new IommuError('EIO', 'the embedded Iommu was terminated during the call; the call may or may not have taken effect');
    await this.worker.terminate();
    await this.exited;
  }

  /** Resolves once no call is in flight. */
  private idle(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private send<T>(invoke: (host: Host) => Promise<Outcome<T>>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const fail = (error: IommuError): void => {
        if (this.pending.delete(fail)) this.settled();
        reject(error);
      };
      if (this.pending.size === 0) this.setRef(true);
      this.pending.add(fail);
      let answer: Promise<Outcome<T>>;
      try {
        answer = invoke(this.host);
      } catch (e) {
        fail(e instanceof IommuError ? e : new IommuError('EIO', String(e)));
        return;
      }
      answer.then(
        (outcome) => {
          if (!this.pending.delete(fail)) return; // the thread ended first: already rejected
          this.settled();
          if (outcome.ok) resolve(outcome.value);
          else reject(fromWireError(outcome.error));
        },
        (e: unknown) => fail(postError(e)),
      );
    });
  }

  private settled(): void {
    if (this.pending.size > 0) return;
    this.setRef(false);
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private setRef(on: boolean): void {
    if (on) {
      this.worker.ref();
      this.port.ref();
    } else {
      this.worker.unref();
      this.port.unref();
    }
  }

  private onExit(code: number): number {
    const how = this.crash ? `failed (${this.crash})` : `exited with code ${code}`;
    this.refusal ??= new IommuError('ENODEV', `the engine thread ${how}: the embedded Iommu is gone`);
    const error = this.ending ?? new IommuError('EIO', `the engine thread ${how} during the call; the call may or may not have taken effect`);
    this.ending = error;
    for (const fail of [...this.pending]) fail(error);
    this.port.close();
    this.events.close();
    return code;
  }
}

/** Why comlink could not send a call: an argument that cannot be cloned is the caller's EINVAL. */
function postError(e: unknown): IommuError {
  if (e instanceof IommuError) return e;
  const err = e as Error;
  if (err?.name === 'DataCloneError') return new IommuError('EINVAL', `an argument cannot be sent to the engine thread: ${err.message}`);
  return new IommuError('EIO', `the call could not reach the engine thread: ${err?.message ?? String(e)}`);
}
