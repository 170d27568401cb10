/**
 * The worker pool: piscina threads that run chunks of big calls on the shared table memory. Each
 * worker gets the table memory once, at start (workerData); tasks carry only small numbers and
 * SharedArrayBuffers. Fixed size (min = max threads, never idle-reaped): on a 2-core machine a thread
 * that exits and restarts costs more than the chunks it would save.
 */
import { Piscina } from 'piscina';
import { IommuError } from '../errors/errors.js';
import type { TableMemory } from '../pgtable/memory.js';
import type { ChunkTask } from './tasks.js';

const WORKER_URL = new URL('../../workers/chunk-worker.js', import.meta.url);

export class ChunkPool {
  readonly threads: number;
  private readonly piscina: Piscina;
  private destroyed = false;

  constructor(threads: number, memory: TableMemory) {
    this.threads = threads;
    this.piscina = new Piscina({
      filename: WORKER_URL.href,
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: Infinity,
      workerData: { memory: memory.sab },
      // Each worker runs one synchronous chunk at a time; more in flight would only queue there.
      concurrentTasksPerWorker: 1,
    });
  }

  /**
   * Runs one task. A task whose worker dies (exit, crash, termination) rejects with EIO; the pool
   * replaces the worker by itself.
   */
  async run<R>(task: ChunkTask): Promise<R> {
    if (this.destroyed) throw new IommuError('ENODEV', 'the worker pool has been shut down');
    try {
      return (await this.piscina.run(task)) as R;
    } catch (e) {
      throw new IommuError('EIO', `a worker failed running a ${task.kind} chunk: ${(e as Error).message}`);
    }
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await this.piscina.destroy();
  }
}
