/**
 * Transient JS heap allocation per operation: how many bytes of (short-lived) JS objects — including
 * the HeapNumbers V8 allocates to box doubles passed between functions — one map_sg page, one
 * iovaToPhys or one map()+unmap() pair allocates. Retained objects are measured elsewhere (heapUsed
 * after GC); this counts garbage, which costs time in the young-generation collector.
 *
 * Run in a child process by the core suite, with a young generation large enough that no
 * collection happens inside a measured region (checked: new-space usage must only grow):
 *   node --max-semi-space-size=256 --min-semi-space-size=256 dist/src/bench/alloc-probe.js
 * Prints one JSON object: { "<name>, <unit>": bytesPerOp, ... }.
 */
import { getHeapSpaceStatistics } from 'node:v8';
import { Iommu, Prot, type Domain, type SgTable } from '../index.js';
import { PAGE, contiguousPhys, scatteredPhys, toSgTable } from './sglists.js';

const IOVA = 2 ** 32;
const PROT = Prot.READ | Prot.WRITE;

function newSpaceUsed(): number {
  const s = getHeapSpaceStatistics().find((x) => x.space_name === 'new_space');
  return s ? s.space_used_size : NaN;
}

/**
 * Bytes allocated by `fn` per op: the minimum of 5 runs after 10 warm-ups (NaN if a GC interfered
 * every time). The minimum, because code that is not (yet) optimized boxes more doubles: what is
 * wanted is what the optimized steady state allocates. Varies between processes with V8's inlining.
 */
async function allocated(ops: number, fn: () => Promise<unknown>): Promise<number> {
  const out: number[] = [];
  for (let r = 0; r < 15; r++) {
    const a = newSpaceUsed();
    await fn();
    const b = newSpaceUsed();
    if (r >= 10 && b >= a) out.push((b - a) / ops);
  }
  return out.length > 0 ? Math.min(...out) : NaN;
}

async function main(): Promise<void> {
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 128 * 2 ** 20 });
  const dom: Domain = iommu.allocDomain({ pgsizeBitmap: 0x1000 });
  const contig: SgTable = toSgTable(contiguousPhys(2 ** 20, 2 ** 36));
  const scatter: SgTable = toSgTable(scatteredPhys(2 ** 18, 2 ** 40, 0x10bb0d));
  const result: Record<string, number> = {};
  for (const [name, sg] of [
    ['contiguous', contig],
    ['scattered', scatter],
  ] as const) {
    result[`map_sg+unmap_sg ${name} (SgTable), B/page`] = await allocated(sg.length, async () => {
      await dom.mapSg(IOVA, sg, PROT);
      await dom.unmapSg(IOVA, sg);
    });
  }
  await dom.mapSg(IOVA, scatter, PROT);
  const calls = 20_000;
  result['iovaToPhys, B/call'] = await allocated(calls, async () => {
    for (let i = 0; i < calls; i++) dom.iovaToPhys(IOVA + i * PAGE);
  });
  await dom.unmapSg(IOVA, scatter);
  result['map()+unmap() one 4K page, B/pair'] = await allocated(calls, async () => {
    for (let i = 0; i < calls; i++) {
      await dom.map(2 ** 40, 2 ** 38, PAGE, PROT);
      await dom.unmap(2 ** 40, PAGE);
    }
  });
  await iommu.close();
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e: unknown) => {
  process.stderr.write(`alloc-probe: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
