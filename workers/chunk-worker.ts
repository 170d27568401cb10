/**
 * A chunk worker of the pool: it holds the Iommu's table memory (received once, as workerData) and
 * runs pieces of big calls on it with the very same walk and map loop the main thread uses inline.
 * Tasks are synchronous: a worker never has two at once and never waits for anything but the table
 * memory's allocator lock.
 */
import { threadId, workerData } from 'node:worker_threads';
import { MapLoop } from '../src/core/maploop.js';
import { Gather } from '../src/iotlb/gather.js';
import { LpaeGeometry } from '../src/pgtable/format.js';
import { J, MapLog } from '../src/pgtable/maplog.js';
import { TableMemory } from '../src/pgtable/memory.js';
import { IoPgtable, WalkMode } from '../src/pgtable/pgtable.js';
import type { ChunkTask, FaultSpec, MapResult, ScanResult, TableSpec } from '../src/pool/tasks.js';

const memory = new TableMemory((workerData as { memory: SharedArrayBuffer }).memory);

/** Walkers by domain, rebuilt only when a new domain (or a reused root) shows up. */
const loops = new Map<string, MapLoop>();

function loopFor(t: TableSpec): MapLoop {
  const key = `${t.root}/${t.format}/${t.granule}/${t.ias}/${t.oas}/${t.pgsizeBitmap}/${t.dirtyTracking}`;
  let loop = loops.get(key);
  if (!loop) {
    const geo = new LpaeGeometry({ format: t.format, granule: t.granule, ias: t.ias, oas: t.oas, dirtyTracking: t.dirtyTracking });
    loop = new MapLoop(new IoPgtable(geo, memory, t.root), t.pgsizeBitmap);
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

function map(task: Extract<ChunkTask, { kind: 'map' }>): MapResult {
  const loop = loopFor(task.table);
  const journal = new Float64Array(task.journal);
  journal[task.journalOffset + J.ThreadId] = threadId;
  const log = new MapLog(task.spanStart, journal, task.journalOffset);
  if (task.fault) {
    log.faultAfter = task.fault.afterBytes;
    log.onFault = injectFault(task.fault);
  }
  const pairs = new Float64Array(task.sg);
  const done = loop.mapChunk(pairs, task.first, task.end, task.spanStart, task.spanEnd, task.head, task.tail, task.prot, log);
  return {
    ok: done >= 0,
    error: done >= 0 ? 0 : loop.error,
    errorIova: loop.errorIova,
    errorPaddr: loop.errorPaddr,
    errorSize: loop.errorSize,
    base: log.base,
    written: log.written,
    installed: log.installed,
    replaced: log.replaced,
    replacedPages: log.replacedPages,
  };
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

export default function run(task: ChunkTask): MapResult | ScanResult | number {
  switch (task.kind) {
    case 'map':
      return map(task);
    case 'scan':
      return scan(task);
    case 'clear':
      return clear(task);
  }
}
