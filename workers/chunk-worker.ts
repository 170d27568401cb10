/**
 * A chunk worker of the pool: it holds the Iommu's table memory (received once, as workerData) and
 * runs pieces of big calls on it with the very same walk and map loop the main thread uses inline.
 * Tasks are synchronous: a worker never has two at once and never waits for anything but the table
 * memory's allocator lock, or, as a standby helper, for its next job.
 */
import { threadId, workerData } from 'node:worker_threads';
import { MapCall } from '../src/core/mapcall.js';
import { MapLoop } from '../src/core/maploop.js';
import { Gather } from '../src/iotlb/gather.js';
import { TableAccounts, TableOwner } from '../src/pgtable/account.js';
import { LpaeGeometry } from '../src/pgtable/format.js';
import { TableMemory } from '../src/pgtable/memory.js';
import { IoPgtable, WalkMode } from '../src/pgtable/pgtable.js';
import type { PoolData } from '../src/pool/pool.js';
import { serveStandby } from '../src/pool/standby.js';
import { warmUp } from '../src/pool/warmup.js';
import type { ChunkTask, FaultSpec, ScanResult, TableSpec } from '../src/pool/tasks.js';

const data = workerData as PoolData;
const memory = new TableMemory(data.memory, data.freeStacks);
const accounts = new TableAccounts(data.accounts);

// Before the first task: the map paths optimized on memory of this worker's own (src/pool/warmup.ts).
// Only speed depends on it: a warm-up that failed (it cannot, short of a bug its test would catch)
// leaves the worker serving tasks, as a cold one.
try {
  warmUp(threadId);
} catch {
  // cold, then
}
// Started: the main thread hands big calls to the pool only once every worker is (ChunkPool.ready).
const started = new Int32Array(data.started);
Atomics.add(started, 0, 1);
Atomics.notify(started, 0);

/** Walkers by domain, rebuilt only when a new domain (or a reused root) shows up. */
const loops = new Map<string, MapLoop>();

function loopFor(t: TableSpec): MapLoop {
  const key = `${t.root}/${t.format}/${t.granule}/${t.ias}/${t.oas}/${t.pgsizeBitmap}/${t.dirtyTracking}/${t.tag}/${t.budget}`;
  let loop = loops.get(key);
  if (!loop) {
    const geo = new LpaeGeometry({ format: t.format, granule: t.granule, ias: t.ias, oas: t.oas, dirtyTracking: t.dirtyTracking });
    loop = new MapLoop(new IoPgtable(geo, memory, t.root, new TableOwner(accounts, t.tag, t.budget)), t.pgsizeBitmap);
    if (loops.size > 256) loops.clear();
    loops.set(key, loop);
  }
  return loop;
}

function injectFault(f: FaultSpec): () => void {
  return () => {
    if (f.how === 'exit') process.exit(70);
    throw new Error(`injected fault after ${f.afterBytes} bytes`);
  };
}

/** Takes chunks of a parallel map until none is left (the caller and the other helpers do too). */
function map(task: Extract<ChunkTask, { kind: 'map' }>): number {
  const call = new MapCall(task.call);
  const f = task.fault;
  const fault = f ? { chunk: f.chunk, afterBytes: f.afterBytes, trip: injectFault(f) } : null;
  return call.runClaimed(loopFor(task.table), new Float64Array(task.sg), new Int32Array(task.breaks), task.prot, task.helper, threadId, fault);
}

/** A gather that can also trip an injected fault once enough bytes went through it. */
class FaultingGather extends Gather {
  private bytes = 0;
  constructor(private readonly fault: FaultSpec | undefined) {
    super();
  }
  override addPages(iova: number, size: number, pgsize: number): void {
    super.addPages(iova, size, pgsize);
    this.bytes += size;
    if (this.fault && this.bytes >= this.fault.afterBytes) injectFault(this.fault)();
  }
}

function scan(task: Extract<ChunkTask, { kind: 'scan' }>): ScanResult {
  const pt = loopFor(task.table).pgtable;
  const gather = new FaultingGather(task.fault);
  const mode = task.first ? WalkMode.Scan : WalkMode.SkipStraddler;
  const stop = pt.walkLeaves(task.lo, task.hi, mode, gather);
  return { stop, end: pt.walkEnd, gather: gather.snapshot() };
}

function clear(task: Extract<ChunkTask, { kind: 'clear' }>): number {
  const pt = loopFor(task.table).pgtable;
  pt.walkLeaves(task.lo, task.hi, WalkMode.Clear | WalkMode.SkipStraddler | WalkMode.SkipHoles, new FaultingGather(task.fault));
  return pt.walkEnd;
}

export default function run(task: ChunkTask): ScanResult | number {
  switch (task.kind) {
    case 'map':
      return map(task);
    case 'standby':
      // Map calls, one after another, until idle or retired (src/pool/standby.ts).
      return serveStandby(task, threadId, (job) => map(job as Extract<ChunkTask, { kind: 'map' }>));
    case 'scan':
      return scan(task);
    case 'clear':
      return clear(task);
  }
}
