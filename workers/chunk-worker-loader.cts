/**
 * The file the pool gives piscina. piscina loads a task file with require() first; on Node 20.20
 * require() of an ES module (chunk-worker.js) went through require(esm), which twice in this
 * project's test runs killed the whole process with "FATAL ERROR: v8::Module::IsGraphAsync must be
 * used on an instantiated module" while a worker started. This CommonJS file loads the worker
 * module with import() instead, and hands each task to it.
 */
import type { ChunkTask, ScanResult } from '../src/pool/tasks.js';

type Run = (task: ChunkTask) => ScanResult | number;

/**
 * The handler, as a promise under the name piscina looks up ('default'): piscina awaits it before
 * the worker reports ready and parks in Atomics.wait for tasks, which stops the worker's event loop.
 * So the worker module is loaded, and its warm-up run (src/pool/warmup.ts), as the pool starts. A
 * handler exported as a plain async function let the import wait for the first task: it then took
 * 70-110 ms to start, not 0-20.
 */
export = { __esModule: true, default: import('./chunk-worker.js').then((m): Run => m.default) };
