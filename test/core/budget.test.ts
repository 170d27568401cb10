/**
 * Table accounting and budgets: every table page is charged to its domain until it is freed, and a
 * domain drawing on a budget cannot take the budget past its limit — the map fails ENOMEM and leaves
 * nothing, on the main thread and in the workers alike.
 */
import test from 'ava';
import { Iommu, IommuError, Prot, SgTable, type Domain } from '../../src/index.js';
import { throwsWith } from '../helpers/errno.js';
import { K4, M2, setup } from '../helpers/fixtures.js';
import { makeIommu, PARALLEL_MIN_PAGES, scatteredSegs } from '../helpers/parallel.js';

const RW = Prot.READ | Prot.WRITE;

/** Table pages reachable from the domain's root, in bytes. */
function reachableBytes(dom: Domain): number {
  const pairs = dom.pgtable.allTables();
  let bytes = 0;
  for (let i = 1; i < pairs.length; i += 2) bytes += pairs[i]!;
  return bytes;
}

test('a domain holds its root; a first page adds one table per level below it', async (t) => {
  const { iommu, dom } = await setup(t);
  t.is(dom.tableBytes, K4);
  await dom.map(0, 0x8000_0000, K4, RW);
  t.is(dom.tableBytes, 4 * K4, 'root (level 0) + levels 1, 2, 3');
  t.is(dom.tableBytes, reachableBytes(dom));
  t.is(iommu.stats().tables.bytes, dom.tableBytes);
  const other = iommu.allocDomain({ granule: 65536, ias: 42 });
  await other.map(0, 0, 0x1_0000, RW);
  t.is(other.tableBytes, reachableBytes(other));
  t.is(iommu.stats().tables.bytes, dom.tableBytes + other.tableBytes, 'every page is some domain\'s');
  await dom.free();
  t.is(dom.tableBytes, 0);
  t.is(iommu.stats().tables.bytes, other.tableBytes);
});

test('a table a block replaced is uncharged by the map itself, once the walks through it are dropped', async (t) => {
  const { dom } = await setup(t);
  await dom.map(0, 0, K4, RW);
  await dom.unmap(0, K4); // io-pgtable-arm keeps the now empty level-3 table
  const before = dom.tableBytes;
  await dom.map(0, 0, M2, RW); // the block takes the empty table's place; no batch of its own
  t.is(dom.lookup(0)?.pageSize, M2);
  t.is(dom.tableBytes, before - K4, 'freed by the map');
  t.is(reachableBytes(dom), before - K4);
  dom.iotlbSync();
  t.is(dom.tableBytes, before - K4, 'nothing more to free');
});

test('a budget refuses the table that would pass its limit: ENOMEM, and the map leaves nothing', async (t) => {
  const { iommu } = await setup(t);
  const budget = iommu.createTableBudget(5 * K4);
  t.is(budget.limitBytes, 5 * K4);
  const dom = iommu.allocDomain({ tableBudget: budget });
  t.is(budget.usedBytes, K4);
  await dom.map(0, 0, K4, RW); // 4 pages
  t.is(budget.usedBytes, 4 * K4);
  // 1 GiB away: a new level-1 entry needs a level-2 and a level-3 table, one more than the budget has.
  const err = await t.throwsAsync(dom.map(0x4000_0000, 0, K4, RW), { instanceOf: IommuError });
  t.is(err?.code, 'ENOMEM');
  t.regex(err!.message, /table budget/);
  t.is(dom.iovaToPhys(0x4000_0000), null);
  t.is(budget.usedBytes, 4 * K4, 'the table the failed call installed was given back');
  t.is(dom.tableBytes, reachableBytes(dom));
  // Inside the existing tables there is room: no new table needed.
  await dom.map(K4, K4, 511 * K4, RW);
  t.is(dom.iovaToPhys(K4 * 511), K4 * 511);
  // An Iommu-wide domain without a budget is not limited by it.
  const free = iommu.allocDomain();
  await free.map(0x4000_0000, 0, K4, RW);
  // Another domain on the same budget shares its limit: its root fits (5th page), nothing more does.
  const second = iommu.allocDomain({ tableBudget: budget });
  await t.throwsAsync(second.map(0, 0, K4, RW), { instanceOf: IommuError, code: 'ENOMEM' });
  throwsWith(t, () => iommu.allocDomain({ tableBudget: budget }), 'ENOMEM');
  t.is(budget.usedBytes, 5 * K4);
  await second.free();
  t.is(budget.usedBytes, 4 * K4);
  await dom.map(0x4000_0000, 0, K4, RW).catch(() => undefined);
  t.is(dom.iovaToPhys(0x4000_0000), null, 'still one table short');
  // Unmapping keeps tables (as io-pgtable-arm does); freeing the domain gives everything back.
  await dom.unmap(0, M2);
  t.is(budget.usedBytes, 4 * K4);
  throwsWith(t, () => budget.close(), 'EBUSY');
  await dom.free();
  t.is(budget.usedBytes, 0);
  budget.close();
  throwsWith(t, () => iommu.allocDomain({ tableBudget: budget }), 'EINVAL');
});

test('tableBudget must be an open budget of this Iommu', async (t) => {
  const { iommu } = await setup(t);
  const other = await Iommu.create({ workers: 0 });
  t.teardown(() => other.close());
  throwsWith(t, () => iommu.allocDomain({ tableBudget: other.createTableBudget(K4 * 16) }), 'EINVAL');
  throwsWith(t, () => iommu.allocDomain({ tableBudget: {} as never }), 'EINVAL');
  throwsWith(t, () => iommu.createTableBudget(-1), 'EINVAL');
  const tiny = iommu.createTableBudget(K4 - 1);
  t.is(tiny.limitBytes, 0, 'rounded down to whole 4 KiB units');
  throwsWith(t, () => iommu.allocDomain({ tableBudget: tiny }), 'ENOMEM');
  t.is(tiny.usedBytes, 0);
});

test('workers charge the tables they install; over budget, a parallel map_sg rolls back whole', async (t) => {
  const iommu = await makeIommu(t, 2);
  const n = PARALLEL_MIN_PAGES * 2;
  const sg = SgTable.from(scatteredSegs(n, K4, 7));
  // Enough for the tables of the whole list: 1 root, 1 level-1, 1 level-2 (1 GiB), n/512 level-3.
  const need = (3 + n / 512) * K4;
  const exact = iommu.createTableBudget(need);
  const dom = iommu.allocDomain({ tableBudget: exact });
  t.is(await dom.mapSg(0, sg, RW), n * K4);
  t.is(exact.usedBytes, need);
  t.is(dom.tableBytes, reachableBytes(dom));

  const short = iommu.createTableBudget(need - K4);
  const tight = iommu.allocDomain({ tableBudget: short });
  const err = await t.throwsAsync(tight.mapSg(0, sg, RW), { instanceOf: IommuError });
  t.is(err?.code, 'ENOMEM');
  t.is(tight.iovaToPhys(0), null);
  t.is(tight.iovaToPhys((n - 1) * K4), null);
  t.is(short.usedBytes, K4, 'only the root is left');
  t.is(tight.tableBytes, K4);
  t.is(iommu.stats().tables.bytes, dom.tableBytes + tight.tableBytes);
});
