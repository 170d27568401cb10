/**
 * The file the pool gives piscina. piscina loads a task file with require() first; on Node 20.20
 * require() of an ES module (chunk-worker.js) went through require(esm), which twice in this
 * project's test runs killed the whole process with "FATAL ERROR: v8::Module::IsGraphAsync must be
 * used on an instantiated module" while a worker started. This CommonJS file loads the worker
 * module with import() instead, and hands each task to it.
 */
import type { ChunkTask, ScanResult } from '../src/pool/tasks.js';

const worker = import('./chunk-worker.js');

export = async function run(task: ChunkTask): Promise<ScanResult | number> {
  return (await worker).default(task);
};
