/**
 * The ARM VMSAv8-64 long-descriptor (LPAE) format, as Linux's io-pgtable-arm.c encodes it:
 * the geometry of a table walk (levels, shifts, indices) and the bits of a descriptor.
 *
 * Descriptors are 64-bit little-endian words. JavaScript has no cheap 64-bit integer, so a descriptor
 * is handled three ways, each where it is cheapest:
 *   - as two 32-bit halves (lo = bits 31:0, hi = bits 63:32) to build and decode it;
 *   - as the Float64 with the same bit pattern to store or load it whole: one 8-byte memory access,
 *     so a concurrent reader sees the old or the new descriptor, never half of each (V8 emits a single
 *     aligned 8-byte move for Float64Array accesses on every 64-bit target; see docs/design.md);
 *   - as "template + paddr * scale": for a fixed prot, the Float64 of a leaf descriptor is an exact
 *     affine function of its output address, because the address bits (47:12) sit inside the double's
 *     mantissa and the attribute bits that reach the exponent (54:53, XN) do not change with it. A run
 *     of leaves is then written by adding a constant per entry, with no allocation and no BigInt.
 *
 *   63      55 54 53 52        48 47                              12 11 10  9:8  7   6  5   4:2  1:0
 *  +---------+-----+--+----------+----------------------------------+--+--+----+---+---+--+-----+----+
 *  |    0    | XN  |C |    0     |         output address           |nG|AF| SH |AP2|AP1|NS|Attr |type|
 *  +---------+-----+--+----------+----------------------------------+--+--+----+---+---+--+-----+----+
 *  (stage 1; stage 2 puts S2AP read/write in bits 7:6 and MemAttr in bits 5:2)
 */
import { IommuError } from '../errors/errors.js';
import { Prot } from '../core/prot.js';

export type FormatName = 'arm-lpae-s1' | 'arm-lpae-s2';
export const FORMATS: readonly FormatName[] = ['arm-lpae-s1', 'arm-lpae-s2'];
export const GRANULES = [4096, 16384, 65536] as const;
export type Granule = (typeof GRANULES)[number];

/** Bits 1:0 of a descriptor. */
export const PTE_TYPE_MASK = 3;
export const PTE_TYPE_BLOCK = 1;
export const PTE_TYPE_TABLE = 3;
export const PTE_TYPE_PAGE = 3;
export const PTE_VALID = 1;

// Attribute bits shared by both stages (low word).
const PTE_AF = 1 << 10;
const PTE_SH_OS = 2 << 8; // outer shareable: non-cacheable memory
const PTE_SH_IS = 3 << 8; // inner shareable: with IOMMU_CACHE
const PTE_SH_MASK = 3 << 8;
// Execute-never, bits 54:53 (in the high word, bits 22:21).
const PTE_XN_HI = 3 << 21;
// Output address bits 47:32, in the high word.
const PTE_ADDR_HI_MASK = 0xffff;
// Dirty bit modifier, bit 51 (high word bit 19): with it, AP[2] set means writable-clean.
export const PTE_DBM_HI = 1 << 19;

// Stage 1 (low word).
const S1_NG = 1 << 11;
export const S1_AP_RDONLY = 1 << 7;
const S1_AP_UNPRIV = 1 << 6;
const S1_ATTRINDX_SHIFT = 2;
const S1_ATTRINDX_MASK = 7 << S1_ATTRINDX_SHIFT;
const MAIR_ATTR_IDX_NC = 0;
const MAIR_ATTR_IDX_CACHE = 1;
const MAIR_ATTR_IDX_DEV = 2;

// Stage 2 (low word).
const S2_HAP_READ = 1 << 6;
const S2_HAP_WRITE = 2 << 6;
const S2_MEMATTR_SHIFT = 2;
const S2_MEMATTR_MASK = 0xf << S2_MEMATTR_SHIFT;
const S2_MEMATTR_DEV = 0x1;
const S2_MEMATTR_OIWB = 0xf;
const S2_MEMATTR_NC = 0x5;

export interface FormatConfig {
  format: FormatName;
  granule: Granule;
  ias: number;
  oas: number;
  /** Stage 1 hardware dirty tracking (DBM): writable leaves carry DBM, and a write clears AP[2]. */
  dirtyTracking?: boolean;
}

/**
 * The walk geometry of one configuration: how many levels, where the walk starts, and for each level
 * the shift of its index and the size a leaf there maps. Levels are numbered as ARM numbers them, so
 * the last level is always 3.
 */
export class LpaeGeometry {
  readonly format: FormatName;
  readonly stage2: boolean;
  readonly dirtyTracking: boolean;
  readonly granule: number;
  readonly granuleShift: number;
  readonly ias: number;
  readonly oas: number;
  /** log2(entries per table) = log2(granule) - 3. */
  readonly bitsPerLevel: number;
  readonly entriesPerTable: number;
  readonly levels: number;
  readonly startLevel: number;
  /** Entries in the root table (fewer than entriesPerTable when ias does not fill the top level). */
  readonly rootEntries: number;
  /** Every leaf size this granule supports (4K: 4K|2M|1G; 16K: 16K|32M; 64K: 64K|512M). */
  readonly supportedPgsizes: number;
  readonly lastLevel = 3;
  /** 2^ias and 2^oas: the first IOVA and physical address out of range. */
  readonly iasLimit: number;
  readonly oasLimit: number;

  private readonly shifts: number[] = [];
  // Precomputed so hot paths never call Math.pow (which is what `2 ** x` becomes for a variable x).
  private readonly sizes: number[] = [];

  constructor(cfg: FormatConfig) {
    this.format = cfg.format;
    this.stage2 = cfg.format === 'arm-lpae-s2';
    this.dirtyTracking = cfg.dirtyTracking === true;
    this.granule = cfg.granule;
    this.granuleShift = Math.log2(cfg.granule);
    this.ias = cfg.ias;
    this.oas = cfg.oas;
    this.bitsPerLevel = this.granuleShift - 3;
    this.entriesPerTable = 2 ** this.bitsPerLevel;
    this.levels = Math.ceil((cfg.ias - this.granuleShift) / this.bitsPerLevel);
    this.startLevel = 4 - this.levels;
    for (let l = 0; l <= 3; l++) {
      this.shifts[l] = this.granuleShift + (3 - l) * this.bitsPerLevel;
      this.sizes[l] = 2 ** this.shifts[l]!;
    }
    this.iasLimit = 2 ** cfg.ias;
    this.oasLimit = 2 ** cfg.oas;
    this.rootEntries = 2 ** (cfg.ias - this.shifts[this.startLevel]!);
    let sizes = 0;
    for (let l = Math.max(this.startLevel, this.firstBlockLevel()); l <= 3; l++) sizes += 2 ** this.shifts[l]!;
    this.supportedPgsizes = sizes;
  }

  /** Without 52-bit addressing, blocks exist at level 1 only for the 4K granule; always at level 2. */
  private firstBlockLevel(): number {
    return this.granule === 4096 ? 1 : 2;
  }

  levelShift(level: number): number {
    return this.shifts[level]!;
  }

  /** Bytes mapped by one leaf at this level. */
  blockSize(level: number): number {
    return this.sizes[level]!;
  }

  /** The level whose leaves are `pgsize` bytes, or -1. */
  levelOfPgsize(pgsize: number): number {
    for (let l = this.startLevel; l <= 3; l++) if (this.sizes[l] === pgsize) return l;
    return -1;
  }

  canHoldLeaf(level: number): boolean {
    return level >= this.firstBlockLevel() && level >= this.startLevel;
  }

  /** Index of iova's entry in a table at `level`. */
  index(iova: number, level: number): number {
    const entries = level === this.startLevel ? this.rootEntries : this.entriesPerTable;
    return Math.floor(iova / this.sizes[level]!) % entries;
  }

  /** Bytes of one table at this level (the root may be smaller than a granule). */
  tableBytes(level: number): number {
    return (level === this.startLevel ? this.rootEntries : this.entriesPerTable) * 8;
  }
}

/** Checks a requested configuration and returns it with defaults applied; bad values are EINVAL. */
export function checkFormatConfig(opts: {
  format?: unknown;
  granule?: unknown;
  ias?: unknown;
  oas?: unknown;
  dirtyTracking?: unknown;
}): FormatConfig {
  const format = opts.format ?? 'arm-lpae-s1';
  if (!FORMATS.includes(format as FormatName)) {
    throw new IommuError('EINVAL', `format must be one of ${FORMATS.join(', ')}, got ${String(format)}`);
  }
  const granule = opts.granule ?? 4096;
  if (!GRANULES.includes(granule as Granule)) {
    throw new IommuError('EINVAL', `granule must be 4096, 16384 or 65536, got ${String(granule)}`);
  }
  const bits = (name: string, v: unknown): number => {
    const n = v ?? 48;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 32 || n > 48) {
      throw new IommuError('EINVAL', `${name} must be an integer from 32 to 48, got ${String(n)}`);
    }
    return n;
  };
  const dirtyTracking = opts.dirtyTracking ?? false;
  if (typeof dirtyTracking !== 'boolean') throw new IommuError('EINVAL', `dirtyTracking must be a boolean, got ${String(dirtyTracking)}`);
  if (dirtyTracking && format !== 'arm-lpae-s1') throw new IommuError('EINVAL', 'dirtyTracking is available on arm-lpae-s1 domains');
  return { format: format as FormatName, granule: granule as Granule, ias: bits('ias', opts.ias), oas: bits('oas', opts.oas), dirtyTracking };
}

// Scratch for moving between a Float64 and its two 32-bit halves without allocating.
const scratch = new ArrayBuffer(8);
const scratchF64 = new Float64Array(scratch);
const scratchU32 = new Uint32Array(scratch);

/** Machine word order: the tables are little-endian by contract; so must the typed-array views be. */
export const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export function bitsToDouble(lo: number, hi: number): number {
  scratchU32[0] = lo;
  scratchU32[1] = hi;
  return scratchF64[0]!;
}

/** Splits a descriptor read as a Float64; read the halves with `splitLo()` / `splitHi()`. */
export function splitDouble(d: number): void {
  scratchF64[0] = d;
}
export function splitLo(): number {
  return scratchU32[0]!;
}
export function splitHi(): number {
  return scratchU32[1]!;
}

/**
 * The encoding of leaves for one (geometry, prot, level): the descriptor halves with a zero output
 * address, and the affine form used by the write loop: Float64(desc(paddr)) = template + paddr * scale.
 */
export class LeafEncoding {
  readonly lo: number;
  readonly hi: number;
  readonly template: number;
  /** (2^52 + paddr) * UNIT_A * unitB is the descriptor's binade leading bit plus paddr (see at()). */
  private readonly unitB: number;
  /** template - the binade's leading bit: add (2^52 + paddr) in that binade to get the descriptor. */
  private readonly offset: number;

  constructor(geo: LpaeGeometry, prot: number, level: number) {
    const type = level === geo.lastLevel ? PTE_TYPE_PAGE : PTE_TYPE_BLOCK;
    const [lo, hi] = geo.stage2 ? s2Attrs(prot) : s1Attrs(prot, geo.dirtyTracking);
    this.lo = (lo | type) >>> 0;
    this.hi = hi >>> 0;
    this.template = bitsToDouble(this.lo, this.hi);
    // The Float64 exponent field is bits 62:52, i.e. bits 30:20 of hi. With it zero the value is
    // subnormal, mantissa * 2^-1074; otherwise (2^52 + mantissa) * 2^(exp - 1075). Either way the
    // output address adds to the mantissa, in units of 2^(max(exp, 1) - 1075).
    const exp = Math.max((this.hi >>> 20) & 0x7ff, 1);
    this.unitB = 2 ** (exp - 1075 + 537);
    this.offset = this.template - 2 ** (exp - 1023);
  }

  /**
   * The Float64 of the leaf descriptor mapping `paddr` (paddr aligned to the leaf size, below 2^48):
   * the template's bit pattern plus paddr's. Computed without a subnormal operand or product — x86
   * takes a ~100-cycle microcode assist for a multiply that makes a subnormal, and descriptors without
   * execute-never bits are subnormal as doubles. (2^52 + paddr) times the binade's unit (split in two
   * normal factors) is a normal number whose mantissa is paddr; adding the offset (template less the
   * binade's leading bit) is exact, because paddr's bits and the template's are disjoint, and an add is
   * fast even when its result is subnormal.
   */
  at(paddr: number): number {
    return encode(this.offset, this.unitB, paddr);
  }

  /**
   * Writes the leaves mapping paddr, paddr + size, paddr + 2 * size, ... into f64[first, stop).
   * Consecutive leaves differ by `size` in the address bits, so each is the one four slots before
   * plus a constant: an exact add (the address never carries into the exponent). Four independent
   * chains, not one: one chain waits for each add in turn (contiguous map_sg 1.37 -> 1.10 ns/page,
   * docs/performance.md).
   */
  writeRun(f64: Float64Array, first: number, stop: number, paddr: number, size: number): void {
    let d0 = this.at(paddr);
    let d1 = this.at(paddr + size);
    let d2 = this.at(paddr + 2 * size);
    let d3 = this.at(paddr + 3 * size);
    const step4 = this.at(paddr + 4 * size) - d0;
    let s = first;
    for (; s + 4 <= stop; s += 4) {
      f64[s] = d0;
      f64[s + 1] = d1;
      f64[s + 2] = d2;
      f64[s + 3] = d3;
      d0 += step4;
      d1 += step4;
      d2 += step4;
      d3 += step4;
    }
    const step = d1 - d0;
    for (; s < stop; s++, d0 += step) f64[s] = d0;
  }

  /**
   * Writes the leaves of the entries [from, to) of `pairs` ([phys, length] pairs, each length a
   * whole number of leaves of `size`, each phys aligned to it) into `f64` from slot `slot` on, back
   * to back; returns the slot after the last. An entry of one leaf is one at(); a longer one is a
   * run (writeRun).
   */
  writeEntries(f64: Float64Array, slot: number, pairs: Float64Array, from: number, to: number, size: number): number {
    const offset = this.offset;
    const unitB = this.unitB;
    let s = slot;
    for (let p = 2 * from, pEnd = 2 * to; p < pEnd; p += 2) {
      const length = pairs[p + 1]!;
      if (length === size) f64[s++] = encode(offset, unitB, pairs[p]!);
      else {
        const stop = s + length / size;
        this.writeRun(f64, s, stop, pairs[p]!, size);
        s = stop;
      }
    }
    return s;
  }

  /**
   * Writes `n` leaves into `f64` from slot `slot` on, the k-th mapping `pairs[from + 2k]` (every
   * other element: the physical addresses of [phys, length] pairs), each as at() computes it, with
   * the fields read once (faster than at() per leaf: docs/performance.md).
   */
  writeEach(f64: Float64Array, slot: number, pairs: Float64Array, from: number, n: number): void {
    const offset = this.offset;
    const unitB = this.unitB;
    const end = slot + n;
    for (let s = slot, p = from; s < end; s++, p += 2) f64[s] = encode(offset, unitB, pairs[p]!);
  }
}

const TWO_52 = 2 ** 52;
/** 2^-537: with unitB, two normal factors of a binade's unit (at least 2^-1074, itself subnormal). */
const UNIT_A = 2 ** -537;

/** The descriptor arithmetic of LeafEncoding.at (see there), for its callers that read the fields once. */
function encode(offset: number, unitB: number, paddr: number): number {
  return offset + (paddr + TWO_52) * UNIT_A * unitB;
}

function s1Attrs(prot: number, dirtyTracking: boolean): [number, number] {
  let lo = S1_NG | PTE_AF;
  let hi = prot & Prot.NOEXEC ? PTE_XN_HI : 0;
  lo |= prot & Prot.CACHE ? PTE_SH_IS : PTE_SH_OS;
  if (prot & Prot.READ && !(prot & Prot.WRITE)) lo |= S1_AP_RDONLY;
  // As io-pgtable-arm with IO_PGTABLE_QUIRK_ARM_HD: a writable leaf starts writable-dirty.
  else if (dirtyTracking) hi |= PTE_DBM_HI;
  if (!(prot & Prot.PRIV)) lo |= S1_AP_UNPRIV;
  if (prot & Prot.MMIO) lo |= MAIR_ATTR_IDX_DEV << S1_ATTRINDX_SHIFT;
  else if (prot & Prot.CACHE) lo |= MAIR_ATTR_IDX_CACHE << S1_ATTRINDX_SHIFT;
  else lo |= MAIR_ATTR_IDX_NC << S1_ATTRINDX_SHIFT;
  return [lo, hi];
}

function s2Attrs(prot: number): [number, number] {
  let lo = PTE_AF;
  lo |= prot & Prot.CACHE ? PTE_SH_IS : PTE_SH_OS;
  if (prot & Prot.READ) lo |= S2_HAP_READ;
  if (prot & Prot.WRITE) lo |= S2_HAP_WRITE;
  if (prot & Prot.MMIO) lo |= S2_MEMATTR_DEV << S2_MEMATTR_SHIFT;
  else if (prot & Prot.CACHE) lo |= S2_MEMATTR_OIWB << S2_MEMATTR_SHIFT;
  else lo |= S2_MEMATTR_NC << S2_MEMATTR_SHIFT;
  return [lo, prot & Prot.NOEXEC ? PTE_XN_HI : 0];
}

/** What a leaf descriptor grants, as Prot flags (stage 1 has no write-only: WRITE reads back R|W). */
export function leafProt(geo: LpaeGeometry, lo: number, hi: number): number {
  let prot = 0;
  if ((lo & PTE_SH_MASK) === PTE_SH_IS) prot |= Prot.CACHE;
  if (hi & PTE_XN_HI) prot |= Prot.NOEXEC;
  if (geo.stage2) {
    if (lo & S2_HAP_READ) prot |= Prot.READ;
    if (lo & S2_HAP_WRITE) prot |= Prot.WRITE;
    if (((lo & S2_MEMATTR_MASK) >>> S2_MEMATTR_SHIFT) === S2_MEMATTR_DEV) prot |= Prot.MMIO;
  } else {
    prot |= Prot.READ;
    if (!(lo & S1_AP_RDONLY) || hi & PTE_DBM_HI) prot |= Prot.WRITE;
    if (!(lo & S1_AP_UNPRIV)) prot |= Prot.PRIV;
    if (((lo & S1_ATTRINDX_MASK) >>> S1_ATTRINDX_SHIFT) === MAIR_ATTR_IDX_DEV) prot |= Prot.MMIO;
  }
  return prot;
}

/** The output address of a leaf at `level` (bits 47:levelShift of the descriptor). */
export function leafOutputAddress(geo: LpaeGeometry, lo: number, hi: number, level: number): number {
  const lowMask = geo.blockSize(level) - 1; // leaf sizes are at most 1 GiB, so this fits in 32 bits
  return (hi & PTE_ADDR_HI_MASK) * 2 ** 32 + ((lo & ~lowMask) >>> 0);
}

/** A table descriptor: the next table's byte offset (always below 4 GiB, so hi is 0) | 0b11. */
export function tableDescriptorLo(tableOffset: number): number {
  return (tableOffset | PTE_TYPE_TABLE) >>> 0;
}

/** The next-level table's byte offset in a table descriptor's low word. */
export function tableOffsetOf(lo: number, granule: number): number {
  return (lo & ~(granule - 1)) >>> 0;
}
