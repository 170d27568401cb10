/**
 * The messages between the main thread and the chunk workers. Everything large (table memory, sg
 * lists, journals) is a SharedArrayBuffer, so a task is a few numbers and no copy of the data.
 */
import type { GatherSnapshot } from '../iotlb/gather.js';
import type { FormatName } from '../pgtable/format.js';

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

/** A chunk of a parallel map_sg (or of a big map): write the leaves that start in [spanStart, spanEnd). */
export interface MapTask {
  kind: 'map';
  table: TableSpec;
  sg: SharedArrayBuffer;
  first: number;
  end: number;
  spanStart: number;
  spanEnd: number;
  head: number[] | null;
  tail: number[] | null;
  prot: number;
  journal: SharedArrayBuffer;
  journalOffset: number;
  fault?: FaultSpec;
}

/** A map chunk as planned, before its journal is allocated. */
export type MapChunk = Omit<MapTask, 'journal' | 'journalOffset' | 'fault'>;

export interface MapResult {
  ok: boolean;
  error: number;
  errorIova: number;
  errorPaddr: number;
  errorSize: number;
  base: number;
  written: number;
  installed: number[];
  replaced: number[];
  replacedPages: number[];
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

export type ChunkTask = MapTask | ScanTask | ClearTask;
