/**
 * The messages between the main thread and the chunk workers. Everything large (table memory, sg
 * lists, journals) is a SharedArrayBuffer, so a task is a few numbers and no copy of the data.
 */
import type { GatherSnapshot } from '../iotlb/gather.js';
import type { FormatName } from '../pgtable/format.js';
import type { StandbyTask } from './standby.js';

/** Enough to rebuild a domain's table walker in a worker. */
export interface TableSpec {
  format: FormatName;
  granule: 4096 | 16384 | 65536;
  ias: number;
  oas: number;
  root: number;
  pgsizeBitmap: number;
  dirtyTracking: boolean;
  /** The domain's table account slot (its IOTLB tag) and budget (NO_BUDGET for none). */
  tag: number;
  budget: number;
}

/** Test-only: make the worker die or throw once it has done `afterBytes` of its chunk. */
export interface FaultSpec {
  afterBytes: number;
  how: 'exit' | 'throw';
}

/**
 * A parallel map (src/core/mapcall.ts): take chunks of the call in `call` until none is left. The
 * calling thread runs the same loop; each helper of the pool gets one of these per call.
 */
export interface MapTask {
  kind: 'map';
  table: TableSpec;
  /** The scatter-gather list: (paddr, length) pairs as Float64. */
  sg: SharedArrayBuffer;
  /** Its index's run breaks per block (Int32; SgIndex.breaks). */
  breaks: SharedArrayBuffer;
  /** The MapCall: claim counter, chunk plan and journals. */
  call: SharedArrayBuffer;
  /** This helper's number in the call (where it records its threadId). */
  helper: number;
  prot: number;
  fault?: FaultSpec & { chunk: number };
}

/** One chunk of a parallel map_sg (or of a big map): write the leaves that start in [spanStart, spanEnd). */
export interface MapChunk {
  /** Entries [first, end) of the list. */
  first: number;
  end: number;
  spanStart: number;
  spanEnd: number;
  /** The runs crossing into and out of the chunk, whole, as [iova, paddr, size]; null if none. */
  head: number[] | null;
  tail: number[] | null;
}

/** A parallel map as planned: the list, the prot, the chunks. */
export interface MapPlan {
  sg: SharedArrayBuffer;
  breaks: SharedArrayBuffer;
  prot: number;
  chunks: MapChunk[];
}

/** Phase A of a parallel unmap: find, without changing anything, the leaves of [lo, hi). */
export interface ScanTask {
  kind: 'scan';
  table: TableSpec;
  lo: number;
  hi: number;
  /** The first piece of the call: a leaf straddling lo stops the walk (instead of being skipped). */
  first: boolean;
  fault?: FaultSpec;
}

export interface ScanResult {
  /** Where a sequential unmap would stop in this piece (a hole), or -1. */
  stop: number;
  /** End of the last leaf visited. */
  end: number;
  gather: GatherSnapshot;
}

/** Phase B of a parallel unmap: remove the leaves that start in [lo, hi). */
export interface ClearTask {
  kind: 'clear';
  table: TableSpec;
  lo: number;
  hi: number;
  fault?: FaultSpec;
}

export type ChunkTask = MapTask | ScanTask | ClearTask | StandbyTask;
