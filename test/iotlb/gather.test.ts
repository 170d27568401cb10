import test from 'ava';
import fc from 'fast-check';
import { Iommu, Prot } from '../../src/index.js';
import { Gather, type InvalidationCommand } from '../../src/iotlb/gather.js';

const K4 = 0x1000;
const M2 = 0x20_0000;
const G1 = 0x4000_0000;

interface Range {
  iova: number;
  size: number;
  pgsize: number;
}

/**
 * Linux's iommu_iotlb_gather_add_page (include/linux/iommu.h), one page at a time, with `end`
 * inclusive as in Linux; where Linux calls iommu_iotlb_sync, the pending range becomes a command.
 */
class LinuxGather {
  start = Number.MAX_SAFE_INTEGER;
  end = 0;
  pgsize = 0;
  readonly commands: Range[] = [];

  private isDisjoint(iova: number, size: number): boolean {
    const start = iova;
    const end = start + size - 1;
    return this.end !== 0 && (end + 1 < this.start || start > this.end + 1);
  }

  addPage(iova: number, size: number): void {
    if ((this.pgsize && this.pgsize !== size) || this.isDisjoint(iova, size)) this.sync();
    this.pgsize = size;
    // iommu_iotlb_gather_add_range
    const end = iova + size - 1;
    if (this.start > iova) this.start = iova;
    if (this.end < end) this.end = end;
  }

  sync(): void {
    if (this.pgsize !== 0) this.commands.push({ iova: this.start, size: this.end + 1 - this.start, pgsize: this.pgsize });
    this.start = Number.MAX_SAFE_INTEGER;
    this.end = 0;
    this.pgsize = 0;
  }
}

function ranges(commands: readonly InvalidationCommand[]): Range[] {
  return commands.map((c) => {
    if (c.kind !== 'range') throw new Error(`unexpected ${c.kind} command`);
    return { iova: c.iova, size: c.size, pgsize: c.pgsize };
  });
}

/** The commands a gather holds once its pending range is closed. */
function closed(g: Gather): InvalidationCommand[] {
  g.close();
  return [...g.commands];
}

test('same-size contiguous pages merge into one command', (t) => {
  const g = new Gather();
  for (let i = 0; i < 8; i++) g.addPages(0x10_0000 + i * K4, K4, K4);
  t.deepEqual(closed(g), [{ kind: 'range', iova: 0x10_0000, size: 8 * K4, pgsize: K4 }]);
});

test('a change of leaf size closes the pending range', (t) => {
  const g = new Gather();
  g.addPages(M2 - 2 * K4, 2 * K4, K4);
  g.addPages(M2, M2, M2);
  g.addPages(2 * M2, K4, K4);
  t.deepEqual(closed(g), [
    { kind: 'range', iova: M2 - 2 * K4, size: 2 * K4, pgsize: K4 },
    { kind: 'range', iova: M2, size: M2, pgsize: M2 },
    { kind: 'range', iova: 2 * M2, size: K4, pgsize: K4 },
  ]);
});

test('a disjoint range closes the pending one; adjacent ranges (either side) merge', (t) => {
  const g = new Gather();
  g.addPages(0x10_0000, K4, K4);
  g.addPages(0x10_2000, K4, K4); // a one-page gap: disjoint
  t.deepEqual(ranges(closed(g)), [
    { iova: 0x10_0000, size: K4, pgsize: K4 },
    { iova: 0x10_2000, size: K4, pgsize: K4 },
  ]);
  const h = new Gather();
  h.addPages(0x10_2000, K4, K4);
  h.addPages(0x10_1000, K4, K4); // adjacent below
  h.addPages(0x10_3000, 2 * K4, K4); // adjacent above
  h.addPages(0x10_2000, K4, K4); // inside
  t.deepEqual(ranges(closed(h)), [{ iova: 0x10_1000, size: 4 * K4, pgsize: K4 }]);
});

test('an empty gather closes to nothing; addPages of 0 bytes is ignored', (t) => {
  const g = new Gather();
  t.true(g.isEmpty);
  g.addPages(0x1000, 0, K4);
  t.true(g.isEmpty);
  t.deepEqual(closed(g), []);
});

/** A sequence of removed leaves: pages of one of three sizes, at aligned addresses in a small window. */
const leafSeq = fc.array(
  fc.oneof(
    { weight: 4, arbitrary: fc.nat(40).map((i) => ({ iova: 0x4000_0000 + i * K4, pgsize: K4 })) },
    { weight: 2, arbitrary: fc.nat(6).map((i) => ({ iova: 0x4000_0000 + i * M2, pgsize: M2 })) },
    { weight: 1, arbitrary: fc.nat(2).map((i) => ({ iova: i * G1, pgsize: G1 })) },
  ),
  { maxLength: 30 },
);

test('Gather.addPages page by page gives exactly the commands of Linux add_page rules', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(leafSeq, (leaves) => {
        const g = new Gather();
        const linux = new LinuxGather();
        for (const l of leaves) {
          g.addPages(l.iova, l.pgsize, l.pgsize);
          linux.addPage(l.iova, l.pgsize);
        }
        linux.sync();
        const got = ranges(closed(g));
        if (JSON.stringify(got) !== JSON.stringify(linux.commands)) {
          throw new Error(`got ${JSON.stringify(got)}, Linux ${JSON.stringify(linux.commands)}`);
        }
      }),
      { numRuns: 2000 },
    ),
  );
});

/** The leaves one unmap call removes: ascending and non-overlapping, as the table walk finds them. */
const oneCall = leafSeq.map((leaves) => {
  const sorted = [...leaves].sort((x, y) => x.iova - y.iova || x.pgsize - y.pgsize);
  const out: typeof leaves = [];
  for (const l of sorted) {
    const prev = out[out.length - 1];
    if (!prev || prev.iova + prev.pgsize <= l.iova) out.push(l);
  }
  return out;
});

test('append() of one gather to another gives the commands of adding all leaves to one gather in order', (t) => {
  // Domain's deferred path: each call gathers its leaves, then the call's gather is appended to the
  // domain's deferred gather. The result must be what one gather fed every leaf in order holds.
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.array(oneCall, { minLength: 1, maxLength: 4 }), fc.boolean(), (calls, closeEach) => {
        const one = new Gather();
        const deferred = new Gather();
        for (const leaves of calls) {
          const g = new Gather();
          for (const l of leaves) {
            one.addPages(l.iova, l.pgsize, l.pgsize);
            g.addPages(l.iova, l.pgsize, l.pgsize);
          }
          if (closeEach) g.close();
          deferred.append(g);
          if (!g.isEmpty) throw new Error('append() must empty the other gather');
        }
        const want = JSON.stringify(closed(one));
        const got = JSON.stringify(closed(deferred));
        if (got !== want) throw new Error(`calls ${JSON.stringify(calls)}: appended ${got}, one gather ${want}`);
      }),
      { numRuns: 2000 },
    ),
  );
});

test('append() into an empty gather reproduces the other gather exactly', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(oneCall, (leaves) => {
        const g = new Gather();
        const copy = new Gather();
        for (const l of leaves) {
          g.addPages(l.iova, l.pgsize, l.pgsize);
          copy.addPages(l.iova, l.pgsize, l.pgsize);
        }
        const into = new Gather();
        into.append(g);
        if (JSON.stringify(closed(into)) !== JSON.stringify(closed(copy))) throw new Error('differs');
      }),
      { numRuns: 1000 },
    ),
  );
});

test('append() keeps walk, flush-all and whole-range commands, and moves freed pages', (t) => {
  const a = new Gather();
  a.addPages(0, K4, K4);
  const b = new Gather();
  b.addWalk(M2, M2);
  b.addRange(4 * M2, M2);
  b.addFlushAll();
  b.freeTables([0x5000, 4096]);
  a.append(b);
  t.true(b.isEmpty);
  t.deepEqual(a.freePages, [0x5000, 4096]);
  const cmds = closed(a);
  t.deepEqual(
    cmds.map((c) => c.kind),
    ['walk', 'range', 'range', 'all'],
  );
  t.deepEqual(cmds[0], { kind: 'walk', iova: M2, size: M2 });
  t.true(cmds.some((c) => c.kind === 'range' && c.iova === 0 && c.size === K4 && c.pgsize === K4));
  t.true(cmds.some((c) => c.kind === 'range' && c.iova === 4 * M2 && c.size === M2 && c.pgsize === 0));
});

test('unmap over the test_mixed range issues 3 range commands in 1 sync', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain();
  const start = 0x3_fe40_0000;
  const size = 0xc220_0000;
  await dom.map(start, start, size, Prot.READ);
  const before = iommu.stats().iotlb;
  t.is(await dom.unmap(start, size), size);
  const after = iommu.stats().iotlb;
  t.is(after.syncs - before.syncs, 1);
  t.is(after.invalidations - before.invalidations, 3);
  await iommu.close();
});

test('unmap of contiguous 4K pages spanning several tables is one range command', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain({ pgsizeBitmap: K4 });
  await dom.map(M2 - 16 * K4, 0x1_0000_0000, 2 * M2, Prot.READ);
  const before = iommu.stats().iotlb;
  t.is(await dom.unmap(M2 - 16 * K4, 2 * M2), 2 * M2);
  const after = iommu.stats().iotlb;
  t.is(after.syncs - before.syncs, 1);
  t.is(after.invalidations - before.invalidations, 1);
  await iommu.close();
});

test('deferred unmaps batch into one sync whose commands follow the add_page rules across calls', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain({ pgsizeBitmap: K4 });
  await dom.map(0x10_0000, 0x9000_0000, 16 * K4, Prot.READ);
  const before = iommu.stats().iotlb;
  // Three deferred calls whose pages are adjacent, in ascending order: one range.
  for (let i = 0; i < 3; i++) await dom.unmapSg(0x10_0000 + i * K4, [{ phys: 0, length: K4 }], { deferInvalidate: true });
  // A disjoint one: a second range.
  await dom.unmapSg(0x10_8000, [{ phys: 0, length: K4 }], { deferInvalidate: true });
  t.deepEqual(iommu.stats().iotlb, before, 'nothing issued yet');
  dom.iotlbSync();
  const after = iommu.stats().iotlb;
  t.is(after.syncs - before.syncs, 1);
  t.is(after.invalidations - before.invalidations, 2);
  await iommu.close();
});

test('deferred unmaps: a call whose first page is disjoint from the pending range closes it (as Linux add_page)', async (t) => {
  const iommu = await Iommu.create({ workers: 0 });
  const dom = iommu.allocDomain({ pgsizeBitmap: K4 });
  await dom.map(M2 - K4, 0x9000_0000, 3 * K4, Prot.READ);
  const before = iommu.stats().iotlb;
  // First call removes the page at M2 + 4K. The second removes M2 - 4K then M2 (two level-3 tables):
  // its first page is disjoint from [M2 + 4K, M2 + 8K), so by Linux's rule the pending range is
  // closed there; then M2 merges with M2 - 4K. Two commands.
  await dom.unmapSg(M2 + K4, [{ phys: 0, length: K4 }], { deferInvalidate: true });
  await dom.unmapSg(M2 - K4, [{ phys: 0, length: 2 * K4 }], { deferInvalidate: true });
  const linux = new LinuxGather();
  for (const iova of [M2 + K4, M2 - K4, M2]) linux.addPage(iova, K4);
  linux.sync();
  dom.iotlbSync();
  const after = iommu.stats().iotlb;
  t.is(after.syncs - before.syncs, 1);
  t.is(after.invalidations - before.invalidations, linux.commands.length);
  await iommu.close();
});
