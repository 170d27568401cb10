import { Worker } from 'node:worker_threads';
import test from 'ava';
import { Iommu, IommuError, Prot } from '../../src/index.js';
import { TableMemory } from '../../src/pgtable/memory.js';
import { rejectsWith } from '../helpers/errno.js';

const SIZES = [4096, 16384, 65536] as const;

/** Every byte of [offset, offset + bytes) is zero. */
function isZeroed(mem: TableMemory, offset: number, bytes: number): boolean {
  const u8 = new Uint8Array(mem.sab, offset, bytes);
  return u8.every((b) => b === 0);
}

test('alloc returns zeroed pages aligned to their size, distinct and inside the buffer', (t) => {
  const mem = TableMemory.create(64 * 1024 * 1024);
  const seen: [number, number][] = [];
  for (let i = 0; i < 30; i++) {
    const bytes = SIZES[i % 3]!;
    const off = mem.alloc(bytes);
    t.true(off > 0, 'offset 0 is the allocator header');
    t.is(off % bytes, 0, `${bytes}-byte page at ${off} is aligned`);
    t.true(off + bytes <= mem.sab.byteLength);
    t.true(isZeroed(mem, off, bytes));
    for (const [o, b] of seen) t.true(off + bytes <= o || o + b <= off, 'pages do not overlap');
    seen.push([off, bytes]);
    // Dirty it, so a later reuse must zero it again.
    new Uint8Array(mem.sab, off, bytes).fill(0xa5);
  }
  for (const [o, b] of seen) mem.free(o, b);
  for (let i = 0; i < 30; i++) {
    const bytes = SIZES[i % 3]!;
    const off = mem.alloc(bytes);
    t.true(isZeroed(mem, off, bytes), 'a reused page is zeroed');
  }
});

test('free then alloc of the same size reuses the page', (t) => {
  const mem = TableMemory.create(16 * 1024 * 1024);
  for (const bytes of SIZES) {
    const a = mem.alloc(bytes);
    mem.alloc(bytes);
    mem.free(a, bytes);
    t.is(mem.alloc(bytes), a);
  }
});

test('pagesInUse and bytesInUse count allocated pages and their bytes', (t) => {
  const mem = TableMemory.create(16 * 1024 * 1024);
  t.is(mem.pagesInUse, 0);
  t.is(mem.bytesInUse, 0);
  const a = mem.alloc(4096);
  const b = mem.alloc(16384);
  const c = mem.alloc(65536);
  t.is(mem.pagesInUse, 3);
  t.is(mem.bytesInUse, 4096 + 16384 + 65536);
  mem.free(b, 16384);
  t.is(mem.pagesInUse, 2);
  t.is(mem.bytesInUse, 4096 + 65536);
  mem.free(a, 4096);
  mem.free(c, 65536);
  t.is(mem.pagesInUse, 0);
  t.is(mem.bytesInUse, 0);
});

test('alloc rejects sizes that are not 4K, 16K or 64K', (t) => {
  const mem = TableMemory.create(1024 * 1024);
  for (const bad of [0, 8192, 2048, 131072]) {
    const err = t.throws(() => mem.alloc(bad), { instanceOf: IommuError });
    t.is(err?.code, 'EINVAL');
  }
});

test('memory grows past the initial 256 KiB and the views follow', (t) => {
  const mem = TableMemory.create(32 * 1024 * 1024);
  const initial = mem.sab.byteLength;
  t.true(initial <= 256 * 1024);
  const pages: number[] = [];
  // 4 MiB of 64K pages: far beyond the initial buffer.
  for (let i = 0; i < 64; i++) pages.push(mem.alloc(65536));
  t.true(pages.every((p) => p > 0));
  t.true(mem.sab.byteLength > initial);
  const last = pages[pages.length - 1]!;
  t.true(last + 65536 <= mem.sab.byteLength);
  t.true(mem.f64.length * 8 >= last + 65536, 'the Float64 view covers the newest page');
  t.true(mem.i32.length * 4 >= last + 65536, 'the Int32 view covers the newest page');
  // Writes through the view land in the shared buffer.
  mem.f64[(last + 65528) / 8] = 1.5;
  t.is(new Float64Array(mem.sab, last + 65528, 1)[0], 1.5);
  t.is(mem.pagesInUse, 64);
});

test('exhaustion returns -1 without changing the counts, and freeing makes room again', (t) => {
  const mem = TableMemory.create(128 * 1024); // 32 units, one of which is the header
  const pages: number[] = [];
  for (;;) {
    const p = mem.alloc(4096);
    if (p < 0) break;
    pages.push(p);
    if (pages.length > 64) break;
  }
  t.is(pages.length, 31);
  t.is(mem.alloc(4096), -1);
  t.is(mem.alloc(65536), -1);
  t.is(mem.pagesInUse, 31);
  mem.free(pages[3]!, 4096);
  t.is(mem.alloc(4096), pages[3]!);
  t.is(mem.alloc(4096), -1);
});

test('a second TableMemory on the same SharedArrayBuffer shares the allocator state', (t) => {
  const a = TableMemory.create(8 * 1024 * 1024);
  const p1 = a.alloc(4096);
  const b = new TableMemory(a.sab, a.stacksSab);
  t.is(b.pagesInUse, 1);
  const p2 = b.alloc(4096);
  t.not(p2, p1);
  t.is(a.pagesInUse, 2);
  t.is(a.bytesInUse, 8192);
  // A page freed by one is reused by the other.
  a.free(p1, 4096);
  t.is(b.pagesInUse, 1);
  t.is(b.alloc(4096), p1);
  // Growth by one is seen by the other, which remaps its views on demand.
  const big: number[] = [];
  for (let i = 0; i < 20; i++) big.push(a.alloc(65536));
  const far = big[big.length - 1]!;
  b.free(far, 65536);
  t.is(a.alloc(65536), far, 'b pushed the page on the shared free stack');
  // b's views were made before a grew the memory; a page of its own beyond them is zeroed through them.
  const beyond = b.alloc(65536);
  t.true(beyond > far);
  t.true(b.mappedBytes >= beyond + 65536);
  t.is(a.pagesInUse, b.pagesInUse);
  t.is(a.limitBytes, b.limitBytes);
});

test('a page freed by a thread whose views end before it is zeroed all the same', (t) => {
  const a = TableMemory.create(8 * 1024 * 1024);
  const b = new TableMemory(a.sab, a.stacksSab);
  const before = b.mappedBytes;
  // a grows the memory past b's views and writes into its pages, as a table's descriptors.
  const pages: number[] = [];
  for (let i = 0; i < 8; i++) pages.push(a.alloc(65536));
  const far = pages[pages.length - 1]!;
  t.true(far >= before, 'the page lies beyond the views b made');
  for (let i = 0; i < 65536 / 8; i++) a.f64[far / 8 + i] = i + 1;
  b.free(far, 65536);
  t.true(isZeroed(a, far, 65536), 'freed pages wait zeroed');
  t.is(a.alloc(65536), far);
});

test('TableMemory.create refuses ceilings below 128 KiB or above 4 GiB', (t) => {
  for (const bytes of [0, 4096, 128 * 1024 - 1, 2 ** 32 + 4096]) {
    const err = t.throws(() => TableMemory.create(bytes), { instanceOf: IommuError });
    t.is(err?.code, 'ERANGE', String(bytes));
  }
});

test('ENOMEM from map rolls back completely, and a smaller map then succeeds', async (t) => {
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 128 * 1024 });
  // 4K pages only, so every 2 MiB needs its own level-3 table.
  const dom = iommu.allocDomain({ pgsizeBitmap: 0x1000 });
  const before = iommu.stats().tables.pages;
  t.is(before, 1, 'the root');
  // 64 MiB of 4K pages needs 32 level-3 tables + 2: more than the 30 pages left.
  await rejectsWith(t, () => dom.map(0x4000_0000, 0x1_0000_0000, 64 * 1024 * 1024, Prot.READ), 'ENOMEM');
  t.is(iommu.stats().tables.pages, before, 'every table the call installed is freed');
  for (let a = 0x4000_0000; a < 0x4000_0000 + 64 * 1024 * 1024; a += 0x1f_f000) t.is(dom.iovaToPhys(a), null);
  await dom.map(0x4000_0000, 0x1_0000_0000, 8 * 1024 * 1024, Prot.READ);
  t.is(dom.iovaToPhys(0x4000_0000 + 0x7f_f123), 0x1_0000_0000 + 0x7f_f123);
  t.is(iommu.stats().tables.pages, before + 2 + 4);
  await dom.free();
  t.is(iommu.stats().tables.pages, 0);
  await iommu.close();
});

test('ENOMEM from mapSg rolls back every run of the call', async (t) => {
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 128 * 1024 });
  const dom = iommu.allocDomain({ pgsizeBitmap: 0x1000 });
  await dom.map(0, 0x5000_0000, 0x1000, Prot.READ);
  const before = iommu.stats().tables.pages;
  // Runs of 2 MiB each at distinct physical places: each run needs a level-3 table.
  const sg = Array.from({ length: 40 }, (_, i) => ({ phys: 0x10_0000_0000 + i * 0x40_0000, length: 0x20_0000 }));
  await rejectsWith(t, () => dom.mapSg(0x8000_0000, sg, Prot.READ | Prot.WRITE), 'ENOMEM');
  t.is(iommu.stats().tables.pages, before);
  for (let i = 0; i < 40; i++) t.is(dom.iovaToPhys(0x8000_0000 + i * 0x20_0000), null);
  t.is(dom.iovaToPhys(0), 0x5000_0000, 'the earlier mapping is untouched');
  const mapped = await dom.mapSg(0x8000_0000, sg.slice(0, 8), Prot.READ | Prot.WRITE);
  t.is(mapped, 8 * 0x20_0000);
  t.is(dom.iovaToPhys(0x8000_0000 + 7 * 0x20_0000 + 0x1000), 0x10_0000_0000 + 7 * 0x40_0000 + 0x1000);
  await iommu.close();
});

test('allocDomain reports ENOMEM when no page is left for a root table', async (t) => {
  const iommu = await Iommu.create({ workers: 0, tableMemoryBytes: 128 * 1024 });
  const doms = [];
  for (let i = 0; i < 31; i++) doms.push(iommu.allocDomain());
  const err = t.throws(() => iommu.allocDomain(), { instanceOf: IommuError });
  t.is(err?.code, 'ENOMEM');
  t.is(iommu.stats().domains, 31);
  t.is(iommu.stats().tables.pages, 31);
  await doms[0]!.free();
  t.truthy(iommu.allocDomain());
  await iommu.close();
});

/** A worker thread running `body` with `mem`, attached to the same table memory as `mem` here. */
function allocWorker(mem: TableMemory, body: string): Worker {
  const url = new URL('../../src/pgtable/memory.js', import.meta.url).href;
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(${JSON.stringify(url)}).then(({ TableMemory }) => {
      const mem = new TableMemory(workerData.sab, workerData.stacks);
      ${body}
      parentPort.postMessage('done');
    });`;
  return new Worker(code, { eval: true, workerData: { sab: mem.sab, stacks: mem.stacksSab } });
}

const finished = (w: Worker): Promise<unknown> =>
  new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });

test('threads allocating and freeing at once never share a page, and every page comes back', async (t) => {
  const mem = TableMemory.create(64 * 1024 * 1024);
  // Each thread stamps a page it holds with its own mark and checks the mark before it frees it.
  const body = `
    const mark = Math.floor(Math.random() * 2 ** 30) + 1;
    const held = [];
    for (let i = 0; i < 60000; i++) {
      const p = mem.alloc(4096);
      if (p < 0) throw new Error('out of memory');
      mem.ensureMapped(p + 4096);
      if (mem.i32[p / 4 + 1] !== 0) throw new Error('page not zeroed: another thread still holds it');
      mem.i32[p / 4 + 1] = mark;
      held.push(p);
      if (held.length > 8) {
        const q = held.shift();
        if (mem.i32[q / 4 + 1] !== mark) throw new Error('a page held here was written by another thread');
        mem.i32[q / 4 + 1] = 0;
        mem.free(q, 4096);
      }
    }
    for (const q of held) { mem.i32[q / 4 + 1] = 0; mem.free(q, 4096); }`;
  const workers = [0, 1, 2].map(() => allocWorker(mem, body));
  await Promise.all(workers.map(finished));
  await Promise.all(workers.map((w) => w.terminate()));
  t.is(mem.pagesInUse, 0);
  t.is(mem.bytesInUse, 0);
});

test('a thread that finds the allocator lock held parks, counted as a waiter, and goes on once it is released', async (t) => {
  const mem = TableMemory.create(8 * 1024 * 1024);
  const header = new Int32Array(mem.sab, 0, 16);
  const DEAD = 4242; // a holder that never unlocks: as a thread that died holding the lock
  Atomics.store(header, 0, DEAD + 1);
  const w = allocWorker(mem, `mem.alloc(4096);`);
  const done = finished(w);
  // It spins a little, then parks, counting itself (slot 8 of the header).
  const deadline = Date.now() + 20_000;
  while (Atomics.load(header, 8) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  t.is(Atomics.load(header, 8), 1, 'the worker counted itself as waiting');
  t.is(mem.pagesInUse, 0, 'and has not allocated');
  t.true(mem.releaseLockOfDeadThread(DEAD));
  await done;
  await w.terminate();
  t.is(mem.pagesInUse, 1, 'it allocated once the lock was free');
  t.is(Atomics.load(header, 8), 0, 'and no longer counts as waiting');
});
