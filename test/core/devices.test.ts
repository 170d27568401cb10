/**
 * The device side: attach/detach, translate (a device's DMA) and its faults, the IOTLB staleness a
 * device can observe (strict vs deferred invalidation), and dirty tracking (SEMANTICS §5–§6,
 * CONTRACT §2).
 */
import test from 'ava';
import { Iommu, IommuError, Prot, SgTable, type DeviceFault, type Domain } from '../../src/index.js';
import { rejectsWith, throwsWith } from '../helpers/errno.js';
import { faultOf, faults } from '../helpers/faults.js';
import { G1, K16, K4, K64, M2, M32, M512, setup } from '../helpers/fixtures.js';
import { armWalk } from '../helpers/walker.js';

const R = Prot.READ;
const W = Prot.WRITE;
const RW = Prot.READ | Prot.WRITE;

// ---------------------------------------------------------------------------------------------
// Faults: each reason, their order, and how they are reported
// ---------------------------------------------------------------------------------------------

test('fault no-domain: a device that was never attached, whatever the iova', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0x10_0000, 0x80_0000, K4, RW);
  iommu.attachDevice(1, dom);
  t.is(iommu.translate(1, 0x10_0000, 'read'), 0x80_0000);
  // Device 2 is not attached: no-domain even for an iova mapped in some domain, or beyond any ias.
  const f = faults(t, iommu, 2, 0x10_0000, 'read', 'no-domain');
  t.is(f?.domain, undefined);
  faults(t, iommu, 2, 2 ** 48, 'write', 'no-domain');
  faults(t, iommu, 0, 0, 'read', 'no-domain');
  faults(t, iommu, 0xffffffff, 2 ** 53 - 1, 'write', 'no-domain');
});

test('fault address-size: iova >= 2^ias, checked before the tables', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(3, dom);
  const f = faults(t, iommu, 3, 2 ** 48, 'read', 'address-size');
  t.is(f?.domain, dom.id);
  faults(t, iommu, 3, 2 ** 48 + K4, 'write', 'address-size');
  faults(t, iommu, 3, 2 ** 53 - 1, 'read', 'address-size');
  // Just below the limit is within ias: unmapped there is a translation fault.
  faults(t, iommu, 3, 2 ** 48 - 1, 'read', 'translation');

  // A 32-bit domain: its limit is 2^32, mapped or not.
  const d32 = iommu.allocDomain({ ias: 32 });
  await d32.map(2 ** 32 - K4, 0x5000, K4, RW);
  iommu.attachDevice(4, d32);
  t.is(iommu.translate(4, 2 ** 32 - 1, 'write'), 0x5fff);
  faults(t, iommu, 4, 2 ** 32, 'read', 'address-size');
  faults(t, iommu, 4, 2 ** 40, 'write', 'address-size');
  faults(t, iommu, 4, 2 ** 32 - 2 * K4, 'read', 'translation');
});

test('fault translation: unmapped iova, on either side of a mapping and after unmap', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(5, dom);
  faults(t, iommu, 5, 0, 'read', 'translation');
  await dom.map(0x20_0000 + K4, 0x40_0000, 2 * K4, RW);
  faults(t, iommu, 5, 0x20_0000, 'read', 'translation');
  faults(t, iommu, 5, 0x20_0000 + K4 - 1, 'write', 'translation');
  t.is(iommu.translate(5, 0x20_0000 + K4, 'read'), 0x40_0000);
  t.is(iommu.translate(5, 0x20_0000 + 3 * K4 - 1, 'write'), 0x40_0000 + 2 * K4 - 1);
  faults(t, iommu, 5, 0x20_0000 + 3 * K4, 'write', 'translation');
  const f = faults(t, iommu, 5, 0x1_0000_0000, 'read', 'translation');
  t.is(f?.domain, dom.id);
});

test('fault permission: the access the leaf does not grant', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(6, dom);
  await dom.map(0x1000, 0x9000, K4, R);
  t.is(iommu.translate(6, 0x1234, 'read'), 0x9234);
  const f = faults(t, iommu, 6, 0x1234, 'write', 'permission');
  t.is(f?.domain, dom.id);
});

test('fault order: no-domain, then address-size, then translation, then permission', async (t) => {
  const { iommu, dom } = await setup(t, { ias: 36 });
  await dom.map(0x1000, 0x2000, K4, R);
  // Every condition fails: not attached wins.
  faults(t, iommu, 9, 2 ** 40, 'write', 'no-domain');
  faults(t, iommu, 9, 0x1000, 'write', 'no-domain');
  iommu.attachDevice(9, dom);
  // Beyond ias (and so unmapped, and a write): address-size.
  faults(t, iommu, 9, 2 ** 36, 'write', 'address-size');
  faults(t, iommu, 9, 2 ** 36 + 0x1000, 'write', 'address-size');
  // Within ias, unmapped, a write: translation, not permission.
  faults(t, iommu, 9, 0x3000, 'write', 'translation');
  // Mapped READ-only, a write: permission.
  faults(t, iommu, 9, 0x1000, 'write', 'permission');
  t.is(iommu.translate(9, 0x1000, 'read'), 0x2000);
  iommu.detachDevice(9);
  faults(t, iommu, 9, 0x1000, 'read', 'no-domain');
});

test('faults are counted per reason in stats().faults, with a total', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0x10000, K4, R);
  t.deepEqual(iommu.stats().faults, { translation: 0, permission: 0, 'address-size': 0, 'no-domain': 0, total: 0 });
  faultOf(t, () => iommu.translate(1, 0, 'read'));
  iommu.attachDevice(1, dom);
  faultOf(t, () => iommu.translate(1, 2 ** 48, 'read'));
  faultOf(t, () => iommu.translate(1, 2 ** 49, 'read'));
  faultOf(t, () => iommu.translate(1, K4, 'read'));
  faultOf(t, () => iommu.translate(1, 0, 'write'));
  faultOf(t, () => iommu.translate(1, 0, 'write')); // an IOTLB hit faults and counts too
  faultOf(t, () => iommu.translate(1, 0, 'write'));
  iommu.translate(1, 0, 'read'); // not a fault
  t.deepEqual(iommu.stats().faults, { translation: 1, permission: 3, 'address-size': 2, 'no-domain': 1, total: 7 });
});

test('argument errors of translate are EINVAL/ERANGE, not faults', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0x10000, K4, RW);
  iommu.attachDevice(1, dom);
  for (const id of [-1, 1.5, NaN, 2 ** 32, '1', null, undefined]) {
    throwsWith(t, () => iommu.translate(id as number, 0, 'read'), 'EINVAL', `device ${String(id)}`);
  }
  for (const access of ['exec', 'READ', '', undefined, 1]) {
    throwsWith(t, () => iommu.translate(1, 0, access as 'read'), 'EINVAL', `access ${String(access)}`);
  }
  for (const iova of [-1, 0.5, NaN, '0', undefined]) {
    const err = t.throws(() => iommu.translate(1, iova as number, 'read'), { instanceOf: IommuError });
    t.true(err?.code === 'EINVAL' || err?.code === 'ERANGE', `iova ${String(iova)}: ${err?.code}`);
  }
  const err = t.throws(() => iommu.translate(1, 2 ** 53, 'read'), { instanceOf: IommuError });
  t.true(err?.code === 'EINVAL' || err?.code === 'ERANGE', `iova 2^53: ${err?.code}`);
  t.is(iommu.stats().faults.total, 0);
  t.deepEqual(iommu.recentFaults(), []);
});

test('onFault: every fault reaches every listener with the data the error carries; unsubscribe stops it', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0x10000, K4, R);
  const a: DeviceFault[] = [];
  const b: DeviceFault[] = [];
  const offA = iommu.onFault((f) => a.push(f));
  iommu.onFault((f) => b.push(f));
  const f1 = faultOf(t, () => iommu.translate(4, 0, 'read'));
  iommu.attachDevice(4, dom);
  const f2 = faultOf(t, () => iommu.translate(4, 0, 'write'));
  t.deepEqual(a, [f1, f2]);
  t.deepEqual(b, [f1, f2]);
  t.like(a[1], { reason: 'permission', deviceId: 4, iova: 0, access: 'write' });
  offA();
  const f3 = faultOf(t, () => iommu.translate(4, K4, 'read'));
  t.is(a.length, 2);
  t.deepEqual(b, [f1, f2, f3]);
  // Successful translations are not delivered.
  iommu.translate(4, 0, 'read');
  t.is(b.length, 3);
  throwsWith(t, () => iommu.onFault('nope' as unknown as () => void), 'EINVAL');
});

test('a throwing onFault listener does not change what translate throws, nor stop other listeners', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(2, dom);
  const seen: DeviceFault[] = [];
  iommu.onFault(() => {
    throw new Error('listener bug');
  });
  iommu.onFault(() => {
    throw new IommuError('EPERM', 'a listener throwing an IommuError');
  });
  iommu.onFault((f) => seen.push(f));
  const f = faults(t, iommu, 2, 0x7000, 'read', 'translation');
  t.is(seen.length, 1);
  t.deepEqual(seen[0], f);
  faults(t, iommu, 3, 0x7000, 'write', 'no-domain');
  t.is(seen.length, 2);
  t.is(iommu.stats().faults.total, 2);
});

test('recentFaults: oldest first, bounded to 256 with the oldest dropped, a copy', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  for (let i = 0; i < 10; i++) faultOf(t, () => iommu.translate(1, i * K4, 'read'));
  let recent = iommu.recentFaults();
  t.deepEqual(
    recent.map((f) => f.iova),
    Array.from({ length: 10 }, (_, i) => i * K4),
  );
  for (let i = 10; i < 300; i++) faultOf(t, () => iommu.translate(1, i * K4, i % 2 ? 'write' : 'read'));
  recent = iommu.recentFaults();
  t.is(recent.length, 256);
  t.is(recent[0]!.iova, 44 * K4);
  t.is(recent[255]!.iova, 299 * K4);
  t.true(recent.every((f, i) => f.iova === (44 + i) * K4 && f.access === ((44 + i) % 2 ? 'write' : 'read')));
  t.is(iommu.stats().faults.translation, 300);
  // Mutating the returned array does not change the record.
  recent.length = 0;
  t.is(iommu.recentFaults().length, 256);
  faultOf(t, () => iommu.translate(77, 0, 'read'));
  recent = iommu.recentFaults();
  t.is(recent.length, 256);
  t.is(recent[0]!.iova, 45 * K4);
  t.like(recent[255], { reason: 'no-domain', deviceId: 77 });
});

// ---------------------------------------------------------------------------------------------
// Permissions (SEMANTICS §5)
// ---------------------------------------------------------------------------------------------

/** translate read and write of iova on device 1, from a walk and then again from the IOTLB. */
function accessResults(iommu: Iommu, dom: Domain, iova: number, deviceId: number): string[] {
  const out: string[] = [];
  for (const pass of ['walk', 'hit']) {
    if (pass === 'walk') dom.flushIotlbAll();
    for (const access of ['read', 'write'] as const) {
      try {
        out.push(`${pass} ${access} 0x${iommu.translate(deviceId, iova, access).toString(16)}`);
      } catch (e) {
        out.push(`${pass} ${access} ${(e as { fault?: DeviceFault }).fault?.reason ?? String(e)}`);
      }
    }
  }
  return out;
}

test('stage 1 permissions: READ-only refuses writes; WRITE-only is readable and reads back READ|WRITE', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  await dom.map(0x1000, 0xa000, K4, R);
  await dom.map(0x2000, 0xb000, K4, W);
  await dom.map(0x3000, 0xc000, K4, RW);
  t.deepEqual(accessResults(iommu, dom, 0x1010, 1), ['walk read 0xa010', 'walk write permission', 'hit read 0xa010', 'hit write permission']);
  t.deepEqual(accessResults(iommu, dom, 0x2010, 1), ['walk read 0xb010', 'walk write 0xb010', 'hit read 0xb010', 'hit write 0xb010']);
  t.deepEqual(accessResults(iommu, dom, 0x3010, 1), ['walk read 0xc010', 'walk write 0xc010', 'hit read 0xc010', 'hit write 0xc010']);
  t.is(dom.lookup(0x1000)!.prot & RW, R);
  t.is(dom.lookup(0x2000)!.prot & RW, RW);
  // The write-only leaf's cached entry also permits the read when the read comes first.
  dom.flushIotlbAll();
  t.is(iommu.translate(1, 0x2000, 'read'), 0xb000);
  t.is(iommu.translate(1, 0x2000, 'write'), 0xb000);
  // The read-only leaf refuses a write whether it comes first (walk) or after a read (hit).
  dom.flushIotlbAll();
  faults(t, iommu, 1, 0x1000, 'write', 'permission');
  t.is(iommu.translate(1, 0x1000, 'read'), 0xa000);
  faults(t, iommu, 1, 0x1000, 'write', 'permission');
});

test('stage 2 permissions: WRITE-only refuses reads, READ-only refuses writes', async (t) => {
  const { iommu, dom } = await setup(t, { format: 'arm-lpae-s2' });
  iommu.attachDevice(1, dom);
  await dom.map(0x1000, 0xa000, K4, R);
  await dom.map(0x2000, 0xb000, K4, W);
  await dom.map(0x3000, 0xc000, K4, RW | Prot.CACHE);
  t.deepEqual(accessResults(iommu, dom, 0x1ff8, 1), ['walk read 0xaff8', 'walk write permission', 'hit read 0xaff8', 'hit write permission']);
  t.deepEqual(accessResults(iommu, dom, 0x2ff8, 1), ['walk read permission', 'walk write 0xbff8', 'hit read permission', 'hit write 0xbff8']);
  t.deepEqual(accessResults(iommu, dom, 0x3ff8, 1), ['walk read 0xcff8', 'walk write 0xcff8', 'hit read 0xcff8', 'hit write 0xcff8']);
  t.is(dom.lookup(0x2000)!.prot & RW, W);
  t.is(dom.lookup(0x1000)!.prot & RW, R);
  const f = faults(t, iommu, 1, 0x2000, 'read', 'permission');
  t.is(f?.domain, dom.id);
});

// ---------------------------------------------------------------------------------------------
// Addresses: leaf base + offset, every leaf size of every granule
// ---------------------------------------------------------------------------------------------

interface LeafCase {
  name: string;
  granule: 4096 | 16384 | 65536;
  iova: number;
  paddr: number;
  size: number;
}

const LEAF_CASES: LeafCase[] = [
  { name: '4K page', granule: 4096, iova: 0x7_0000_3000, paddr: 0x12_3456_7000, size: K4 },
  { name: '2M block', granule: 4096, iova: 0x40_0000, paddr: 0x1_2340_0000, size: M2 },
  { name: '1G block', granule: 4096, iova: 3 * G1, paddr: 0x7d * G1, size: G1 },
  { name: '16K page', granule: 16384, iova: 0x12_0000_c000, paddr: 0x3_0001_4000, size: K16 },
  { name: '32M block', granule: 16384, iova: 5 * M32, paddr: 0x123 * M32, size: M32 },
  { name: '64K page', granule: 65536, iova: 0xabc_0005_0000, paddr: 0x1234_5678_0000, size: K64 },
  { name: '512M block', granule: 65536, iova: 7 * M512, paddr: 0x3ff * M512, size: M512 },
];

for (const c of LEAF_CASES) {
  test(`translate: ${c.name} gives leaf base + offset, as the ARM walk does`, async (t) => {
    const { iommu, dom } = await setup(t, { granule: c.granule });
    await dom.map(c.iova, c.paddr, c.size, RW);
    t.is(dom.lookup(c.iova)?.pageSize, c.size, 'mapped as one leaf of that size');
    iommu.attachDevice(11, dom);
    const offsets = [0, 1, 8, c.size / 2 + 24, c.size - 8, c.size - 1];
    for (const off of offsets) {
      for (const access of ['read', 'write'] as const) {
        // The first translate walks, the rest hit: both must give the same address.
        const phys = iommu.translate(11, c.iova + off, access);
        t.is(phys, c.paddr + off, `offset 0x${off.toString(16)} ${access}`);
        t.is(armWalk(dom.pageTable(), c.iova + off)?.phys, phys);
      }
    }
    faults(t, iommu, 11, c.iova - 1, 'read', 'translation');
    faults(t, iommu, 11, c.iova + c.size, 'read', 'translation');
  });
}

test('translate: many leaves of mixed sizes from one map, each page at its own address', async (t) => {
  const { iommu, dom } = await setup(t);
  // 4K pages up to 2M, one 2M block, then 4K pages.
  const iova = M2 - 4 * K4;
  const paddr = 0x4000_0000 - 4 * K4;
  const size = 4 * K4 + M2 + 3 * K4;
  await dom.map(iova, paddr, size, RW);
  iommu.attachDevice(0, dom);
  for (let a = iova; a < iova + size; a += 0x3000 + 0x10) {
    t.is(iommu.translate(0, a, a & 0x10 ? 'write' : 'read'), paddr + (a - iova));
  }
  t.is(iommu.translate(0, iova + size - 1, 'read'), paddr + size - 1);
});

// ---------------------------------------------------------------------------------------------
// attach / detach / re-attach
// ---------------------------------------------------------------------------------------------

test('attach, detach and re-attach: translations come from the domain the device is attached to now', async (t) => {
  const { iommu, dom: a } = await setup(t);
  const b = iommu.allocDomain();
  await a.map(0x10000, 0xa_0000, K4, RW);
  await b.map(0x10000, 0xb_0000, K4, R);
  await b.map(0x20000, 0xb_1000, K4, RW);
  t.is(iommu.stats().devices, 0);
  iommu.attachDevice(42, a);
  t.is(iommu.stats().devices, 1);
  t.is(iommu.translate(42, 0x10008, 'write'), 0xa_0008); // cached in a's IOTLB entries
  faults(t, iommu, 42, 0x20000, 'read', 'translation');

  // Moving to b: no detach needed, b's tables (and permissions) now apply.
  iommu.attachDevice(42, b);
  t.is(iommu.stats().devices, 1);
  t.is(iommu.translate(42, 0x10008, 'read'), 0xb_0008);
  const f = faults(t, iommu, 42, 0x10008, 'write', 'permission');
  t.is(f?.domain, b.id);
  t.is(iommu.translate(42, 0x20010, 'write'), 0xb_1010);

  // And back to a.
  iommu.attachDevice(42, a);
  t.is(iommu.translate(42, 0x10008, 'write'), 0xa_0008);
  faults(t, iommu, 42, 0x20000, 'read', 'translation');

  // Attaching to the same domain again is allowed and changes nothing.
  iommu.attachDevice(42, a);
  t.is(iommu.stats().devices, 1);
  t.is(iommu.translate(42, 0x10008, 'read'), 0xa_0008);

  // Two devices on one domain, another on the other.
  iommu.attachDevice(43, a);
  iommu.attachDevice(44, b);
  t.is(iommu.stats().devices, 3);
  t.is(iommu.translate(43, 0x10000, 'read'), 0xa_0000);
  t.is(iommu.translate(44, 0x10000, 'read'), 0xb_0000);

  iommu.detachDevice(42);
  t.is(iommu.stats().devices, 2);
  faults(t, iommu, 42, 0x10008, 'read', 'no-domain');
  t.is(iommu.translate(43, 0x10000, 'read'), 0xa_0000, 'detaching one device leaves the others');
  throwsWith(t, () => iommu.detachDevice(42), 'ENOENT', 'detached twice');
  iommu.attachDevice(42, b);
  t.is(iommu.translate(42, 0x10000, 'read'), 0xb_0000);
  t.is(iommu.stats().devices, 3);
});

test('detach of a device that was never attached is ENOENT', async (t) => {
  const { iommu } = await setup(t);
  throwsWith(t, () => iommu.detachDevice(0), 'ENOENT');
  throwsWith(t, () => iommu.detachDevice(0xffffffff), 'ENOENT');
  t.is(iommu.stats().devices, 0);
});

test('bad device ids are EINVAL for attach and detach', async (t) => {
  const { iommu, dom } = await setup(t);
  for (const id of [-1, 1.5, NaN, Infinity, 2 ** 32, 2 ** 53, '1', 1n, null, undefined, {}]) {
    throwsWith(t, () => iommu.attachDevice(id as number, dom), 'EINVAL', `attach ${String(id)}`);
    throwsWith(t, () => iommu.detachDevice(id as number), 'EINVAL', `detach ${String(id)}`);
  }
  t.is(iommu.stats().devices, 0);
  // The extremes of the stream id range are fine.
  iommu.attachDevice(0, dom);
  iommu.attachDevice(0xffffffff, dom);
  t.is(iommu.stats().devices, 2);
});

test('attaching something that is not a live domain of this Iommu fails and attaches nothing', async (t) => {
  const { iommu, dom } = await setup(t);
  const freed = iommu.allocDomain();
  await freed.free();
  const err = t.throws(() => iommu.attachDevice(1, freed), { instanceOf: IommuError });
  t.true(err?.code === 'ENOENT' || err?.code === 'EINVAL', `freed domain: ${err?.code}`);
  for (const bogus of [null, undefined, {}, { id: dom.id }, dom.id]) {
    throwsWith(t, () => iommu.attachDevice(1, bogus as unknown as Domain), 'EINVAL', `attach to ${JSON.stringify(bogus)}`);
  }
  const other = await Iommu.create({ workers: 0 });
  t.teardown(() => other.close());
  const foreign = other.allocDomain();
  const err2 = t.throws(() => iommu.attachDevice(1, foreign), { instanceOf: IommuError });
  t.true(err2?.code === 'ENOENT' || err2?.code === 'EINVAL', `foreign domain: ${err2?.code}`);
  t.is(iommu.stats().devices, 0);
  faults(t, iommu, 1, 0, 'read', 'no-domain');
  // A device that was attached keeps its domain when re-attaching to a freed one fails.
  await dom.map(0, 0x5000, K4, RW);
  iommu.attachDevice(1, dom);
  t.throws(() => iommu.attachDevice(1, freed), { instanceOf: IommuError });
  t.is(iommu.translate(1, 0, 'read'), 0x5000);
});

test('dom.free() detaches its devices (no-domain), leaves other domains\' devices, and stats().devices drops', async (t) => {
  const { iommu, dom: a } = await setup(t);
  const b = iommu.allocDomain();
  await a.map(0, 0xa000, K4, RW);
  await b.map(0, 0xb000, K4, RW);
  iommu.attachDevice(1, a);
  iommu.attachDevice(2, a);
  iommu.attachDevice(3, b);
  t.is(iommu.translate(1, 0, 'read'), 0xa000); // cached
  t.is(iommu.translate(3, 0, 'read'), 0xb000);
  t.is(iommu.stats().devices, 3);
  await a.free();
  t.is(iommu.stats().devices, 1);
  t.is(iommu.stats().domains, 1);
  faults(t, iommu, 1, 0, 'read', 'no-domain');
  faults(t, iommu, 2, 0, 'write', 'no-domain');
  throwsWith(t, () => iommu.detachDevice(1), 'ENOENT');
  t.is(iommu.translate(3, 0, 'read'), 0xb000);
  // A new domain (which may reuse the freed one's IOTLB tag) sees none of the old entries.
  const c = iommu.allocDomain();
  iommu.attachDevice(1, c);
  faults(t, iommu, 1, 0, 'read', 'translation');
  await c.map(0, 0xc000, K4, RW);
  t.is(iommu.translate(1, 0, 'read'), 0xc000);
});

test('after close, attach/detach/translate throw ENODEV', async (t) => {
  const { iommu, dom } = await setup(t);
  await dom.map(0, 0x1000, K4, RW);
  iommu.attachDevice(1, dom);
  await iommu.close();
  throwsWith(t, () => iommu.translate(1, 0, 'read'), 'ENODEV');
  throwsWith(t, () => iommu.attachDevice(2, dom), 'ENODEV');
  throwsWith(t, () => iommu.detachDevice(1), 'ENODEV');
});

// ---------------------------------------------------------------------------------------------
// Strict vs deferred invalidation, as a device sees it (SEMANTICS §6)
// ---------------------------------------------------------------------------------------------

test('strict unmap: a cached translation faults immediately after unmap resolves', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  await dom.map(0x10_0000, 0x30_0000, 4 * K4, RW);
  await dom.map(0x40_0000, 0x80_0000, M2, RW);
  for (let i = 0; i < 4; i++) t.is(iommu.translate(1, 0x10_0000 + i * K4, 'read'), 0x30_0000 + i * K4);
  t.is(iommu.translate(1, 0x40_1000, 'write'), 0x80_1000);
  const hits = iommu.stats().iotlb.hits;
  t.is(iommu.translate(1, 0x10_0000, 'read'), 0x30_0000);
  t.is(iommu.stats().iotlb.hits, hits + 1, 'the translation is cached');

  t.is(await dom.unmap(0x10_0000, 2 * K4), 2 * K4);
  faults(t, iommu, 1, 0x10_0000, 'read', 'translation');
  faults(t, iommu, 1, 0x10_1000, 'write', 'translation');
  t.is(iommu.translate(1, 0x10_2000, 'read'), 0x30_2000, 'the rest stays');
  t.is(await dom.unmapSg(0x10_2000, [{ phys: 0x30_2000, length: 2 * K4 }]), 2 * K4);
  faults(t, iommu, 1, 0x10_3000, 'read', 'translation');
  t.is(await dom.unmap(0x40_0000, M2), M2);
  faults(t, iommu, 1, 0x40_1000, 'write', 'translation');
});

test('deferred unmapSg: a cached translation keeps the OLD address until iotlbSync; an uncached one faults at once', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  iommu.attachDevice(2, dom);
  const sg = SgTable.from([
    { phys: 0x100_0000, length: 2 * K4 },
    { phys: 0x200_0000, length: K4 },
  ]);
  t.is(await dom.mapSg(0x50_0000, sg, RW), 3 * K4);
  // Device 1 caches the first and third page; the second is never translated.
  t.is(iommu.translate(1, 0x50_0010, 'read'), 0x100_0010);
  t.is(iommu.translate(1, 0x50_2020, 'write'), 0x200_0020);

  const before = iommu.stats().iotlb;
  t.is(await dom.unmapSg(0x50_0000, sg, { deferInvalidate: true }), 3 * K4);
  t.is(iommu.stats().iotlb.syncs, before.syncs, 'no sync yet');
  t.is(dom.iovaToPhys(0x50_0000), null, 'the tables are already clear');

  // Stale but cached: the old physical address, an IOTLB hit.
  t.is(iommu.translate(1, 0x50_0010, 'read'), 0x100_0010);
  t.is(iommu.translate(1, 0x50_2020, 'write'), 0x200_0020);
  // The IOTLB is tagged by domain: another device of the same domain hits the same stale entry.
  t.is(iommu.translate(2, 0x50_0ff0, 'write'), 0x100_0ff0);
  const mid = iommu.stats().iotlb;
  t.is(mid.hits, before.hits + 3);
  t.is(mid.misses, before.misses);
  // Never cached: the walk finds nothing.
  faults(t, iommu, 1, 0x50_1000, 'read', 'translation');
  faults(t, iommu, 2, 0x50_1000, 'write', 'translation');

  dom.iotlbSync();
  t.is(iommu.stats().iotlb.syncs, before.syncs + 1);
  faults(t, iommu, 1, 0x50_0010, 'read', 'translation');
  faults(t, iommu, 1, 0x50_2020, 'write', 'translation');
  faults(t, iommu, 2, 0x50_0ff0, 'write', 'translation');
});

test('deferred: iotlbSync issues every deferred unmap at once; a strict unmap in between does not', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  await dom.map(0, 0x100000, 8 * K4, RW);
  for (let i = 0; i < 8; i++) iommu.translate(1, i * K4, 'read');
  await dom.unmapSg(0, [{ phys: 0x100000, length: K4 }], { deferInvalidate: true });
  await dom.unmapSg(4 * K4, [{ phys: 0x104000, length: K4 }], { deferInvalidate: true });
  await dom.unmap(6 * K4, K4); // strict: only its own range
  faults(t, iommu, 1, 6 * K4, 'read', 'translation');
  t.is(iommu.translate(1, 0, 'read'), 0x100000, 'still deferred after an unrelated strict unmap');
  t.is(iommu.translate(1, 4 * K4, 'read'), 0x104000);
  dom.iotlbSync();
  faults(t, iommu, 1, 0, 'read', 'translation');
  faults(t, iommu, 1, 4 * K4, 'read', 'translation');
  t.is(iommu.translate(1, K4, 'read'), 0x101000);
});

test('deferred: a remap of the same iova is not seen by a device until iotlbSync (stale old address)', async (t) => {
  const { iommu, dom } = await setup(t);
  iommu.attachDevice(1, dom);
  await dom.map(0x9000, 0xa_0000, K4, RW);
  t.is(iommu.translate(1, 0x9000, 'read'), 0xa_0000);
  await dom.unmapSg(0x9000, [{ phys: 0xa_0000, length: K4 }], { deferInvalidate: true });
  await dom.map(0x9000, 0xb_0000, K4, RW);
  t.is(dom.iovaToPhys(0x9000), 0xb_0000);
  t.is(iommu.translate(1, 0x9000, 'read'), 0xa_0000, 'the stale entry wins, as on hardware');
  dom.iotlbSync();
  t.is(iommu.translate(1, 0x9000, 'read'), 0xb_0000);
});

test('flushIotlbAll drops every cached entry of its domain and only of its domain', async (t) => {
  const { iommu, dom: a } = await setup(t);
  const b = iommu.allocDomain();
  for (const [d, base] of [
    [a, 0xa0_0000],
    [b, 0xb0_0000],
  ] as const) {
    await d.map(0, base, 4 * K4, RW);
  }
  iommu.attachDevice(1, a);
  iommu.attachDevice(2, b);
  for (let i = 0; i < 4; i++) {
    iommu.translate(1, i * K4, 'read');
    iommu.translate(2, i * K4, 'read');
  }
  const s0 = iommu.stats().iotlb;
  t.is(s0.entries, 8);
  a.flushIotlbAll();
  const s1 = iommu.stats().iotlb;
  t.is(s1.entries, 4, "only b's entries remain");
  t.is(s1.syncs, s0.syncs + 1);
  t.is(s1.invalidations, s0.invalidations + 1);
  for (let i = 0; i < 4; i++) t.is(iommu.translate(2, i * K4, 'read'), 0xb0_0000 + i * K4);
  const s2 = iommu.stats().iotlb;
  t.is(s2.hits, s1.hits + 4, 'b: all hits');
  t.is(s2.misses, s1.misses);
  for (let i = 0; i < 4; i++) t.is(iommu.translate(1, i * K4, 'read'), 0xa0_0000 + i * K4);
  const s3 = iommu.stats().iotlb;
  t.is(s3.misses, s2.misses + 4, 'a: all misses');
  t.is(s3.hits, s2.hits);

  // And it ends deferred staleness too.
  await a.unmapSg(0, [{ phys: 0xa0_0000, length: K4 }], { deferInvalidate: true });
  t.is(iommu.translate(1, 0, 'read'), 0xa0_0000);
  a.flushIotlbAll();
  faults(t, iommu, 1, 0, 'read', 'translation');
});

test('iotlbSync and flushIotlbAll on a freed domain are ENOENT', async (t) => {
  const { iommu } = await setup(t);
  const d = iommu.allocDomain();
  await d.free();
  throwsWith(t, () => d.iotlbSync(), 'ENOENT');
  throwsWith(t, () => d.flushIotlbAll(), 'ENOENT');
  throwsWith(t, () => d.readAndClearDirty(0, K4), 'ENOENT');
});

// ---------------------------------------------------------------------------------------------
// Dirty tracking
// ---------------------------------------------------------------------------------------------

async function dirtySetup(t: Parameters<typeof setup>[0]) {
  const { iommu, dom } = await setup(t, { dirtyTracking: true });
  iommu.attachDevice(1, dom);
  return { iommu, dom };
}

function bytes(a: Uint8Array): number[] {
  return Array.from(a);
}

test('dirtyTracking: EINVAL on stage 2 or a non-boolean; readAndClearDirty EINVAL without it', async (t) => {
  const { iommu, dom } = await setup(t);
  throwsWith(t, () => iommu.allocDomain({ format: 'arm-lpae-s2', dirtyTracking: true }), 'EINVAL');
  for (const v of ['yes', 'true', 1, 0, {}, []]) {
    throwsWith(t, () => iommu.allocDomain({ dirtyTracking: v as unknown as boolean }), 'EINVAL', `dirtyTracking ${JSON.stringify(v)}`);
  }
  t.is(iommu.stats().domains, 1, 'nothing was allocated');
  // Explicit false, and stage 2 without tracking, are fine.
  iommu.allocDomain({ dirtyTracking: false });
  iommu.allocDomain({ format: 'arm-lpae-s2', dirtyTracking: false });
  await dom.map(0, 0x1000, K4, RW);
  throwsWith(t, () => dom.readAndClearDirty(0, K4), 'EINVAL');
  throwsWith(t, () => dom.readAndClearDirty(0, K4, { noClear: true }), 'EINVAL');
});

test('readAndClearDirty: argument checks', async (t) => {
  const { dom } = await dirtySetup(t);
  await dom.map(0, 0x10_0000, 8 * K4, RW);
  throwsWith(t, () => dom.readAndClearDirty(0x800, K4), 'EINVAL');
  throwsWith(t, () => dom.readAndClearDirty(0, 0x800), 'EINVAL');
  throwsWith(t, () => dom.readAndClearDirty(-K4, K4), 'EINVAL');
  throwsWith(t, () => dom.readAndClearDirty(0, K4, { noClear: 'yes' as unknown as boolean }), 'EINVAL');
  throwsWith(t, () => dom.readAndClearDirty(0, K4, { bogus: true } as unknown as { noClear: boolean }), 'EINVAL');
  throwsWith(t, () => dom.readAndClearDirty(2 ** 48 - K4, 2 * K4), 'ERANGE');
  // None of the failed calls cleared anything.
  t.deepEqual(bytes(dom.readAndClearDirty(0, 8 * K4)), [0xff]);
});

test('readAndClearDirty over the whole 48-bit space fails with an IommuError, not a RangeError', async (t) => {
  const { dom } = await dirtySetup(t);
  await dom.map(0, 0x10_0000, K4, RW);
  // 2^48 / 4K pages = 2^36 bits = 8 GiB of bitmap: too big to return, but a valid range (CONTRACT §2:
  // errors are IommuError with an errno code).
  const err = t.throws(() => dom.readAndClearDirty(0, 2 ** 48));
  t.true(err instanceof IommuError, `threw ${err?.constructor.name}: ${err?.message}`);
  // Nothing was cleared by the failed call.
  t.deepEqual(bytes(dom.readAndClearDirty(0, K4)), [1]);
});

test('dirty: leaves start dirty (writable ones only); a clear then reports nothing; bitmap size is one bit per page', async (t) => {
  const { dom } = await dirtySetup(t);
  await dom.map(0, 0x100_0000, 8 * K4, RW);
  await dom.map(8 * K4, 0x200_0000, 8 * K4, R);
  await dom.map(16 * K4, 0x300_0000, 4 * K4, W);
  const first = dom.readAndClearDirty(0, 24 * K4);
  t.true(first instanceof Uint8Array);
  t.deepEqual(bytes(first), [0xff, 0x00, 0x0f]);
  t.deepEqual(bytes(dom.readAndClearDirty(0, 24 * K4)), [0, 0, 0]);
  t.is(dom.readAndClearDirty(0, K4).length, 1);
  t.is(dom.readAndClearDirty(0, 9 * K4).length, 2);
  t.is(dom.readAndClearDirty(0, 64 * K4).length, 8);
});

test('dirty: device writes to every other page give 0b01010101 per byte; noClear reports without clearing', async (t) => {
  const { iommu, dom } = await dirtySetup(t);
  const n = 64;
  await dom.map(0x40_0000, 0x800_0000, n * K4, RW);
  dom.readAndClearDirty(0x40_0000, n * K4);
  // Cached before the writes, by reads: reads do not dirty, and the cached entries still record writes.
  for (let i = 0; i < n; i++) iommu.translate(1, 0x40_0000 + i * K4 + 8, 'read');
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000, n * K4, { noClear: true })), new Array(8).fill(0), 'reads do not dirty');
  for (let i = 0; i < n; i += 2) t.is(iommu.translate(1, 0x40_0000 + i * K4 + 0x10, 'write'), 0x800_0000 + i * K4 + 0x10);
  const expected = new Array(n / 8).fill(0b01010101);
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000, n * K4, { noClear: true })), expected);
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000, n * K4, { noClear: true })), expected, 'noClear did not clear');
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000, n * K4, { noClear: false })), expected, 'clearing call reports it too');
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000, n * K4)), new Array(n / 8).fill(0), 'then it is clear');
  // A sub-range reports its own pages from bit 0: pages 1..16 of the range.
  for (let i = 1; i < n; i += 2) iommu.translate(1, 0x40_0000 + i * K4, 'write');
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000 + K4, 16 * K4, { noClear: true })), [0b01010101, 0b01010101]);
  t.deepEqual(bytes(dom.readAndClearDirty(0x40_0000, n * K4)), new Array(n / 8).fill(0b10101010));
});

test('dirty: a write after a clear is recorded again, even when the device had the entry cached', async (t) => {
  const { iommu, dom } = await dirtySetup(t);
  await dom.map(0, 0x10_0000, 2 * K4, RW);
  dom.readAndClearDirty(0, 2 * K4);
  for (let round = 0; round < 3; round++) {
    iommu.translate(1, K4, 'write');
    iommu.translate(1, K4 + 4, 'write'); // a hit
    t.deepEqual(bytes(dom.readAndClearDirty(0, 2 * K4)), [0b10], `round ${round}`);
    t.deepEqual(bytes(dom.readAndClearDirty(0, 2 * K4)), [0], `round ${round} cleared`);
  }
});

test('dirty: a 2M block written once marks all 512 of its 4K bits; unmapped ranges give 0 bits', async (t) => {
  const { iommu, dom } = await dirtySetup(t);
  await dom.map(M2, 0x4000_0000, M2, RW);
  await dom.map(2 * M2, 0x5000_0000, 8 * K4, RW);
  t.is(dom.lookup(M2)?.pageSize, M2);
  // Range: one unmapped 2M region, the block, 8 pages, then 8 unmapped pages: 2M + 2M + 32K + 32K.
  const size = 2 * M2 + 16 * K4;
  const first = dom.readAndClearDirty(0, size);
  t.is(first.length, size / K4 / 8);
  t.deepEqual(bytes(first.subarray(0, 64)), new Array(64).fill(0), 'hole');
  t.deepEqual(bytes(first.subarray(64, 128)), new Array(64).fill(0xff), 'the block starts dirty');
  t.deepEqual(bytes(first.subarray(128)), [0xff, 0], 'pages, then a hole');
  t.true(dom.readAndClearDirty(0, size).every((b) => b === 0));

  t.is(iommu.translate(1, M2 + 0x12_3456, 'write'), 0x4000_0000 + 0x12_3456);
  const bm = dom.readAndClearDirty(0, size, { noClear: true });
  t.deepEqual(bytes(bm.subarray(64, 128)), new Array(64).fill(0xff));
  t.is(
    bm.reduce((n, b) => n + (b === 0xff ? 8 : b === 0 ? 0 : NaN), 0),
    512,
  );
  // Part of the block asked for: its pages in that range only.
  t.deepEqual(bytes(dom.readAndClearDirty(M2 + M2 - 2 * K4, 4 * K4, { noClear: true })), [0b0011]);
  // Unmapped far away: all zero, and cheap (holes are skipped a table at a time).
  t.true(dom.readAndClearDirty(2 ** 40, 2 ** 30).every((b) => b === 0));
});

test('dirty: read-only leaves never dirty (writes fault); a tracked writable leaf still reports WRITE', async (t) => {
  const { iommu, dom } = await dirtySetup(t);
  await dom.map(0, 0x10_0000, K4, R);
  await dom.map(K4, 0x20_0000, K4, RW);
  faults(t, iommu, 1, 0, 'write', 'permission');
  t.deepEqual(bytes(dom.readAndClearDirty(0, 2 * K4)), [0b10]);
  // Clean now: the descriptor is writable-clean, still WRITE as far as lookup and devices go.
  t.is(dom.lookup(K4)!.prot & RW, RW);
  t.is(dom.lookup(0)!.prot & RW, R);
  t.is(iommu.translate(1, K4, 'write'), 0x20_0000);
  t.is(dom.lookup(K4)!.prot & RW, RW);
  faults(t, iommu, 1, 0, 'write', 'permission');
  t.deepEqual(bytes(dom.readAndClearDirty(0, 2 * K4)), [0b10]);
  // WRITE-only on stage 1 is writable too, and tracked.
  await dom.map(2 * K4, 0x30_0000, K4, W);
  t.deepEqual(bytes(dom.readAndClearDirty(2 * K4, K4)), [1]);
  t.is(dom.lookup(2 * K4)!.prot & RW, RW);
  iommu.translate(1, 2 * K4, 'read');
  t.deepEqual(bytes(dom.readAndClearDirty(2 * K4, K4)), [0]);
  iommu.translate(1, 2 * K4, 'write');
  t.deepEqual(bytes(dom.readAndClearDirty(2 * K4, K4)), [1]);
});

test('dirty: a clearing readAndClearDirty issues one sync when it cleared something, none otherwise', async (t) => {
  const { iommu, dom } = await dirtySetup(t);
  await dom.map(0, 0x10_0000, 16 * K4, RW);
  const syncs = (): number => iommu.stats().iotlb.syncs;
  const s0 = syncs();
  dom.readAndClearDirty(0, 16 * K4, { noClear: true });
  t.is(syncs(), s0, 'noClear: no sync');
  dom.readAndClearDirty(0, 16 * K4);
  t.is(syncs(), s0 + 1, 'cleared 16 pages: one sync');
  dom.readAndClearDirty(0, 16 * K4);
  t.is(syncs(), s0 + 1, 'nothing to clear: no sync');
  iommu.translate(1, 3 * K4, 'write');
  iommu.translate(1, 9 * K4, 'write');
  dom.readAndClearDirty(0, 16 * K4, { noClear: true });
  t.is(syncs(), s0 + 1);
  dom.readAndClearDirty(0, 16 * K4);
  t.is(syncs(), s0 + 2, 'two dirty pages: still one sync');
  // The sync dropped the device's cached entries in the range, so its next write walks again.
  const misses = iommu.stats().iotlb.misses;
  iommu.translate(1, 3 * K4, 'write');
  t.is(iommu.stats().iotlb.misses, misses + 1);
});

test('dirty: unmapped pages report nothing; a new map over them starts dirty again', async (t) => {
  const { iommu, dom } = await dirtySetup(t);
  await dom.map(0, 0x10_0000, 4 * K4, RW);
  dom.readAndClearDirty(0, 4 * K4);
  iommu.translate(1, 0, 'write');
  t.is(await dom.unmap(0, 4 * K4), 4 * K4);
  t.deepEqual(bytes(dom.readAndClearDirty(0, 4 * K4)), [0], 'unmapped pages report nothing');
  await dom.map(0, 0x20_0000, 4 * K4, RW);
  t.deepEqual(bytes(dom.readAndClearDirty(0, 4 * K4)), [0x0f], 'a new map starts dirty again');
  t.is(iommu.translate(1, 0, 'write'), 0x20_0000);
  await dom.free();
  await rejectsWith(t, () => dom.map(0, 0, K4, RW), 'ENOENT');
});
