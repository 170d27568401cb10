/**
 * A new pool worker's first chunks ran in V8's unoptimized tiers: each worker is an isolate of its
 * own, and it compiles the map loop only once it has run it a while. Measured on the 2-vCPU machine
 * (docs/performance.md): for about ten calls after an Iommu was created, a helper's 16Ki-page chunk
 * took milliseconds instead of 0.07 ms, the caller waited for it, and big calls ran slower on the pool
 * than inline. So each worker, as it starts, runs the paths a helper runs — MapCall.runClaimed over a
 * scattered, a contiguous and a short-run list, then the unmap walk — on table memory of its own.
 * It touches nothing of the Iommu's: its own TableMemory, accounts and call buffers.
 */
import { MapCall } from '../core/mapcall.js';
import { MapLoop } from '../core/maploop.js';
import { Prot } from '../core/prot.js';
import { SgTable, sgView } from '../core/sg.js';
import { Gather } from '../iotlb/gather.js';
import { NO_BUDGET, TableAccounts, TableOwner } from '../pgtable/account.js';
import { LpaeGeometry } from '../pgtable/format.js';
import { TableMemory } from '../pgtable/memory.js';
import { IoPgtable, WalkMode } from '../pgtable/pgtable.js';
import type { MapChunk } from './tasks.js';

const PAGE = 4096;
/** Pages per list: 64 leaf tables, enough turns of every hot loop for V8 to optimize it. */
const PAGES = 32768;
const CHUNKS = 4;
const ROUNDS = 6;
const IOVA = 2 ** 32;
const READ_WRITE = Prot.READ | Prot.WRITE;
const JOURNAL_CAPS = Array.from({ length: CHUNKS }, () => [32, 0] as const);

/**
 * Warms the map and unmap paths on a private domain. Returns the bytes it mapped (so that a test
 * can tell it ran); throws only on a bug, since its inputs are fixed.
 */
export function warmUp(threadId: number): number {
  const memory = TableMemory.create(PAGES * 8 * 2);
  const geo = new LpaeGeometry({ format: 'arm-lpae-s1', granule: PAGE, ias: 48, oas: 48 });
  const root = memory.alloc(PAGE);
  const loop = new MapLoop(new IoPgtable(geo, memory, root, new TableOwner(TableAccounts.create(), 0, NO_BUDGET)), PAGE);
  const lists = [scattered(), contiguous(), shortRuns()];
  let mapped = 0;
  for (let round = 0; round < ROUNDS; round++) {
    for (const { sg, chunks } of lists) {
      const { pairs, index } = sgView(sg);
      // Room for every table a chunk installs (32 MiB of IOVA: 16 leaf tables and two above), as a
      // real chunk's journal has: a full journal would warm the overflow path instead.
      const call = MapCall.create(chunks, JOURNAL_CAPS);
      call.runClaimed(loop, pairs, index.breaks, READ_WRITE, 0, threadId, null);
      for (let c = 0; c < chunks.length; c++) if (call.log(c).written !== chunks[c]!.spanEnd - chunks[c]!.spanStart) throw new Error('internal: warm-up map failed');
      mapped += index.bytes;
      const pt = loop.pgtable;
      if (pt.walkLeaves(IOVA, IOVA + index.bytes, WalkMode.Scan, new Gather()) !== -1) throw new Error('internal: warm-up scan found a hole');
      pt.walkLeaves(IOVA, IOVA + index.bytes, WalkMode.Clear | WalkMode.SkipStraddler | WalkMode.SkipHoles, new Gather());
    }
  }
  return mapped;
}

/** Chunks of equal entry counts that split no run (entries [first, end) at IOVA offset = bytes before). */
function byEntries(sg: SgTable, perRun: number): { sg: SgTable; chunks: MapChunk[] } {
  const per = sg.length / CHUNKS;
  if (per % perRun !== 0) throw new Error('internal: warm-up chunks would split a run');
  const chunks: MapChunk[] = [];
  for (let c = 0; c < CHUNKS; c++) {
    const first = c * per;
    const end = first + per;
    chunks.push({ first, end, spanStart: IOVA + first * PAGE, spanEnd: IOVA + end * PAGE, head: null, tail: null });
  }
  return { sg, chunks };
}

/** Single pages, no two physically adjacent: mapSinglePages. */
function scattered(): { sg: SgTable; chunks: MapChunk[] } {
  const sg = new SgTable(PAGES);
  for (let i = 0; i < PAGES; i++) sg.push(2 ** 36 + (((i * 7919) % PAGES) * 2 + 1) * PAGE, PAGE);
  return byEntries(sg, 1);
}

/** Runs of four pages: mapShortRuns. */
function shortRuns(): { sg: SgTable; chunks: MapChunk[] } {
  const sg = new SgTable(PAGES);
  for (let i = 0; i < PAGES; i++) sg.push(2 ** 37 + (Math.floor(i / 4) * 8 + (i % 4)) * PAGE, PAGE);
  return byEntries(sg, 4);
}

/** One run, cut into IOVA pieces that each write their own leaves of it: mapLeaves. */
function contiguous(): { sg: SgTable; chunks: MapChunk[] } {
  const sg = new SgTable(PAGES);
  for (let i = 0; i < PAGES; i++) sg.push(2 ** 38 + i * PAGE, PAGE);
  const run = [IOVA, 2 ** 38, PAGES * PAGE];
  const span = (PAGES * PAGE) / CHUNKS;
  const chunks: MapChunk[] = [];
  for (let c = 0; c < CHUNKS; c++) chunks.push({ first: 0, end: PAGES, spanStart: IOVA + c * span, spanEnd: IOVA + (c + 1) * span, head: run, tail: null });
  return { sg, chunks };
}
