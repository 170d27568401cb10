/**
 * The map loop skips, unread, the blocks of the sg index in which no entry starts a run. Lists whose
 * run breaks fall just before, on and just after block boundaries must map exactly as the reference
 * model says (the runs of iommu_map_sg's merge, then iommu_pgsize), inline and on the pool, and a
 * skipped block must still end its run where the next block's first break says.
 */
import test from 'ava';
import { Prot, SgTable } from '../../src/index.js';
import { sgView } from '../../src/core/sg.js';
import { BLOCK } from '../../src/core/sgindex.js';
import { K4, M2 } from '../helpers/fixtures.js';
import { bigList, leafDump, makeIommu, modelDump, modelLeaves, PARALLEL_MIN_PAGES, rng, type Seg } from '../helpers/parallel.js';

const RW = Prot.READ | Prot.WRITE;

/** Pages in runs of the given lengths (in pages), each run at its own physical place. */
function runsOfPages(lengths: number[], phys0: number): Seg[] {
  const segs: Seg[] = [];
  let phys = phys0;
  for (const n of lengths) {
    for (let k = 0; k < n; k++) segs.push({ phys: phys + k * K4, length: K4 });
    phys += (n + 3) * K4; // a gap: the next run starts a new one
  }
  return segs;
}

/** Run lengths that put breaks at every position around block boundaries, and runs over many blocks. */
function awkwardLengths(total: number, seed: number): number[] {
  const r = rng(seed);
  const lengths: number[] = [BLOCK - 1, 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 3 * BLOCK, 1, 1, 5 * BLOCK + 7, BLOCK - 2, 2];
  let sum = lengths.reduce((a, b) => a + b, 0);
  while (sum < total) {
    const pick = r();
    const n = pick < 0.3 ? 1 + Math.floor(r() * 3) : pick < 0.6 ? BLOCK - 1 + Math.floor(r() * 3) : 1 + Math.floor(r() * 8 * BLOCK);
    lengths.push(Math.min(n, total - sum));
    sum += lengths[lengths.length - 1]!;
  }
  return lengths;
}

test('runs that break around index block boundaries map as the reference model, inline and in parallel', async (t) => {
  const segs = runsOfPages(awkwardLengths(PARALLEL_MIN_PAGES + 3 * BLOCK + 5, 0x5eed), 2 ** 36);
  const list = bigList('awkward runs', segs);
  for (const bitmap of [0x1000, 0x4020_1000]) {
    const iova = 2 ** 33 + 7 * K4; // a run's page sizes depend on where it falls: 2M blocks only when aligned
    const want = modelDump(modelLeaves(bitmap, iova, segs, RW), K4);
    for (const workers of [0, 2]) {
      const iommu = await makeIommu(t, workers);
      const dom = iommu.allocDomain({ pgsizeBitmap: bitmap });
      t.is(await dom.mapSg(iova, list.table, RW), list.bytes);
      t.deepEqual(leafDump(dom), want, `bitmap ${bitmap.toString(16)}, workers ${workers}`);
      // The same entries as a plain array (their own index) give the same.
      const other = iommu.allocDomain({ pgsizeBitmap: bitmap });
      t.is(await other.mapSg(iova, segs, RW), list.bytes);
      t.deepEqual(leafDump(other), want, `array, bitmap ${bitmap.toString(16)}, workers ${workers}`);
    }
  }
});

test('a contiguous list mapped without reading its entries still ends its run at the last entry', async (t) => {
  const iommu = await makeIommu(t, 0);
  for (const n of [BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 3 * BLOCK + 1, 513]) {
    const sg = new SgTable();
    for (let k = 0; k < n; k++) sg.push(2 ** 36 + k * K4, K4);
    // One more entry that breaks the run, right after it.
    sg.push(2 ** 37, K4);
    const dom = iommu.allocDomain();
    t.is(await dom.mapSg(M2, sg, RW), (n + 1) * K4);
    t.is(dom.iovaToPhys(M2 + (n - 1) * K4), 2 ** 36 + (n - 1) * K4, `${n}: last page of the run`);
    t.is(dom.iovaToPhys(M2 + n * K4), 2 ** 37, `${n}: the entry after it`);
    if (n >= 512) t.is(dom.lookup(M2)?.pageSize, M2, `${n}: a 2M block where the run covers one`);
  }
});

test('runStart and runEnd find the run around any entry, as a scan of the list does (one run, and many)', (t) => {
  const lists = [
    runsOfPages([3 * BLOCK + 5], 2 ** 30), // one run over several blocks
    runsOfPages(awkwardLengths(12 * BLOCK, 0x5ca1), 2 ** 30),
    runsOfPages([1, 1, 1, BLOCK, 2], 2 ** 30),
  ];
  for (const segs of lists) {
    const table = new SgTable(segs.length);
    for (const s of segs) table.push(s.phys, s.length);
    const { pairs, index } = sgView(table);
    const n = segs.length;
    // By a scan: run starts are the entries that do not continue the one before.
    const starts = segs.map((s, i) => i === 0 || s.phys !== segs[i - 1]!.phys + segs[i - 1]!.length);
    t.is(index.runs, starts.filter(Boolean).length);
    let start = 0;
    for (let i = 0; i < n; i++) {
      if (starts[i]) start = i;
      let end = i + 1;
      while (end < n && !starts[end]) end++;
      if (index.runStart(pairs, i) !== start || index.runEnd(pairs, i) !== end) {
        t.fail(`entry ${i} of ${n}: run [${index.runStart(pairs, i)}, ${index.runEnd(pairs, i)}), expected [${start}, ${end})`);
        return;
      }
    }
    t.pass();
  }
});
