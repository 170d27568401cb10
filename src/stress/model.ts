/**
 * The reference model that `iommud stress` checks the engine against: one domain's mappings as
 * SEMANTICS.md §1–§5 define them, written again from that text with nothing shared with the engine
 * (src/core, src/pgtable), so that a bug there is not also a bug here.
 *
 * Mappings are kept as *steps*: what one iteration of iommu_map's loop writes, `count` leaves of one
 * size back to back. A step is the unit that keeps the model small (a 4 GiB map of 4K pages is one
 * step, not a million leaves) while staying exact at leaf granularity: unmap removes whole leaves, so
 * it only ever trims or splits a step at a leaf boundary. Steps are sorted by iova and never overlap.
 *
 * All arithmetic is on JavaScript numbers below 2^53; page sizes are powers of two, so `%` and `/`
 * by them are exact.
 */

export const READ = 1;
export const WRITE = 2;
const ALL_PROT = 0x3f;

/** count leaves of `pgsize` bytes: [iova, iova + pgsize * count) -> [paddr, ...). */
export interface Step {
  iova: number;
  paddr: number;
  pgsize: number;
  count: number;
  prot: number;
}

/** One leaf as the model sees it. */
export interface ModelLeaf {
  iova: number;
  paddr: number;
  size: number;
  prot: number;
}

/** What an operation returned: a value, or an errno code. */
export type Outcome = { ok: true; value: number | null } | { ok: false; code: string };

export interface SgPiece {
  phys: number;
  length: number;
}

export interface ModelConfig {
  pgsizeBitmap: number;
  ias: number;
  oas: number;
  stage2: boolean;
}

const ok = (value: number | null = null): Outcome => ({ ok: true, value });
const err = (code: string): Outcome => ({ ok: false, code });

/** Page sizes of a bitmap, smallest first. */
function sizesOf(bitmap: number): number[] {
  const out: number[] = [];
  for (let s = 1; s <= bitmap; s *= 2) if (Math.floor(bitmap / s) % 2 === 1) out.push(s);
  return out;
}

/** The largest power of two dividing x (x > 0): the alignment of x. */
function alignmentOf(x: number): number {
  let a = 1;
  while (x % (a * 2) === 0) a *= 2;
  return a;
}

/**
 * iommu_pgsize (SEMANTICS §1): the leaf size for the next step of mapping `size` bytes at iova ->
 * paddr, and how many such leaves the step maps.
 */
export function pgsizeStep(sizes: readonly number[], iova: number, paddr: number, size: number): { pgsize: number; count: number } {
  const merged = iova + paddr === 0 ? Infinity : Math.min(iova === 0 ? Infinity : alignmentOf(iova), paddr === 0 ? Infinity : alignmentOf(paddr));
  let pick = -1;
  for (let i = 0; i < sizes.length; i++) if (sizes[i]! <= size && sizes[i]! <= merged) pick = i;
  if (pick < 0) throw new Error(`model: no page size for iova ${iova} paddr ${paddr} size ${size}`);
  const pgsize = sizes[pick]!;
  let count = Math.floor(size / pgsize);
  const next = sizes[pick + 1];
  if (next !== undefined && iova % next === paddr % next) {
    // Stop at the next-size boundary when a whole larger leaf fits after it.
    const offset = next - (iova % next);
    if (offset + next <= size) count = offset / pgsize;
  }
  return { pgsize, count };
}

export class ModelDomain {
  /** Sorted by iova, never overlapping. */
  steps: Step[] = [];
  readonly sizes: readonly number[];
  readonly minPgsize: number;

  constructor(readonly config: ModelConfig) {
    this.sizes = sizesOf(config.pgsizeBitmap);
    this.minPgsize = this.sizes[0]!;
  }

  /** A copy that can diverge from this one (to try an operation and keep or drop the result). */
  clone(): ModelDomain {
    const m = new ModelDomain(this.config);
    m.steps = this.steps.map((s) => ({ ...s }));
    return m;
  }

  /** Index of the first step that ends after addr. */
  private firstEndingAfter(addr: number): number {
    let lo = 0;
    let hi = this.steps.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const s = this.steps[mid]!;
      if (s.iova + s.pgsize * s.count <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** How many steps lie wholly below addr (they are the first ones: steps are sorted). */
  stepsBelow(addr: number): number {
    return this.firstEndingAfter(addr);
  }

  /** The leaf that maps addr, or null. */
  leafAt(addr: number): ModelLeaf | null {
    const s = this.steps[this.firstEndingAfter(addr)];
    if (!s || s.iova > addr) return null;
    const k = Math.floor((addr - s.iova) / s.pgsize);
    return { iova: s.iova + k * s.pgsize, paddr: s.paddr + k * s.pgsize, size: s.pgsize, prot: s.prot };
  }

  /** Every leaf, in iova order (for small models: a step of n leaves becomes n objects). */
  leaves(): ModelLeaf[] {
    const out: ModelLeaf[] = [];
    for (const s of this.steps) {
      for (let k = 0; k < s.count; k++) out.push({ iova: s.iova + k * s.pgsize, paddr: s.paddr + k * s.pgsize, size: s.pgsize, prot: s.prot });
    }
    return out;
  }

  iovaToPhys(addr: number): number | null {
    const l = this.leafAt(addr);
    return l ? l.paddr + (addr - l.iova) : null;
  }

  /** The prot a leaf's descriptor grants (stage 1 cannot say write-only; stage 2 has no PRIV). */
  grantedProt(prot: number): number {
    return this.config.stage2 ? prot & ~32 : prot | READ;
  }

  /** Is any byte of [iova, iova + size) mapped? */
  overlaps(iova: number, size: number): boolean {
    const s = this.steps[this.firstEndingAfter(iova)];
    return s !== undefined && s.iova < iova + size;
  }

  /** Bytes mapped in total. */
  get mappedBytes(): number {
    let n = 0;
    for (const s of this.steps) n += s.pgsize * s.count;
    return n;
  }

  private static validProt(prot: number): boolean {
    return Number.isInteger(prot) && (prot & (READ | WRITE)) !== 0 && (prot & ~ALL_PROT) === 0;
  }

  private aligned(v: number): boolean {
    return v % this.minPgsize === 0;
  }

  /** §2's checks of one run, in order. */
  private checkRun(iova: number, paddr: number, size: number): string | null {
    if (!this.aligned(iova) || !this.aligned(paddr) || !this.aligned(size)) return 'EINVAL';
    if (size === 0) return 'EINVAL';
    if (iova + size > 2 ** this.config.ias || paddr + size > 2 ** this.config.oas) return 'ERANGE';
    return null;
  }

  /** The steps iommu_map writes for one run (§1). */
  stepsFor(iova: number, paddr: number, size: number, prot: number): Step[] {
    const out: Step[] = [];
    while (size > 0) {
      const { pgsize, count } = pgsizeStep(this.sizes, iova, paddr, size);
      out.push({ iova, paddr, pgsize, count, prot });
      iova += pgsize * count;
      paddr += pgsize * count;
      size -= pgsize * count;
    }
    return out;
  }

  /** Inserts steps that lie in a range where nothing is mapped (one splice for a whole call). */
  private insert(iova: number, fresh: Step[]): void {
    const i = this.firstEndingAfter(iova);
    this.steps = this.steps.slice(0, i).concat(fresh, this.steps.slice(i));
  }

  map(iova: number, paddr: number, size: number, prot: number): Outcome {
    if (!ModelDomain.validProt(prot)) return err('EINVAL');
    const code = this.checkRun(iova, paddr, size) ?? (this.overlaps(iova, size) ? 'EEXIST' : null);
    if (code) return err(code);
    this.insert(iova, this.stepsFor(iova, paddr, size, prot));
    return ok();
  }

  /** iommu_map_sg (§4): physically contiguous entries merge into runs; any failure undoes the call. */
  mapSg(iova: number, sg: readonly SgPiece[], prot: number): Outcome {
    if (!ModelDomain.validProt(prot)) return err('EINVAL');
    // The runs lie back to back from iova, so none overlaps another: each is checked against what
    // was mapped before the call, and the first that fails decides the error (nothing is written).
    const fresh: Step[] = [];
    let mapped = 0;
    for (const r of mergeRuns(sg)) {
      const at = iova + mapped;
      const code = this.checkRun(at, r.phys, r.length) ?? (this.overlaps(at, r.length) ? 'EEXIST' : null);
      if (code) return err(code);
      for (const step of this.stepsFor(at, r.phys, r.length, prot)) fresh.push(step);
      mapped += r.length;
    }
    if (fresh.length > 0) this.insert(iova, fresh);
    return ok(mapped);
  }

  /**
   * §3: walk forward from iova; stop at a hole or inside a large leaf; a leaf reached at its first
   * byte goes whole (so the result may exceed size). `removed` receives the leaves taken away.
   */
  unmap(iova: number, size: number, removed?: ModelLeaf[]): Outcome {
    if (!this.aligned(iova) || !this.aligned(size)) return err('EINVAL');
    if (iova + size > 2 ** this.config.ias) return err('ERANGE');
    let at = iova;
    const i0 = this.firstEndingAfter(at);
    let i = i0;
    let before: Step | null = null;
    let after: Step | null = null;
    while (at - iova < size) {
      const s = this.steps[i];
      if (!s || s.iova > at || (at - s.iova) % s.pgsize !== 0) break;
      // Whole leaves of this step from `at` on, as many as the range still asks for (at least one).
      const first = (at - s.iova) / s.pgsize;
      const take = Math.min(s.count - first, Math.max(1, Math.ceil((size - (at - iova)) / s.pgsize)));
      removed?.push({ iova: at, paddr: s.paddr + first * s.pgsize, size: s.pgsize * take, prot: s.prot });
      if (first > 0) before = { ...s, count: first };
      const rest = s.count - first - take;
      if (rest > 0) after = { ...s, iova: at + take * s.pgsize, paddr: s.paddr + (first + take) * s.pgsize, count: rest };
      at += take * s.pgsize;
      i++;
    }
    const kept = [before, after].filter((x): x is Step => x !== null);
    if (i > i0) this.steps = this.steps.slice(0, i0).concat(kept, this.steps.slice(i));
    return ok(at - iova);
  }

  unmapSg(iova: number, sg: readonly SgPiece[], removed?: ModelLeaf[]): Outcome {
    return this.unmap(iova, sgBytes(sg), removed);
  }

  /** What a device access gets through the tables alone: the physical address or a fault reason. */
  translate(addr: number, access: 'read' | 'write'): { phys: number } | { fault: string } {
    if (addr >= 2 ** this.config.ias) return { fault: 'address-size' };
    const l = this.leafAt(addr);
    if (!l) return { fault: 'translation' };
    const granted = this.grantedProt(l.prot);
    if ((granted & (access === 'write' ? WRITE : READ)) === 0) return { fault: 'permission' };
    return { phys: l.paddr + (addr - l.iova) };
  }
}

/** Entries merged into physically contiguous runs, as iommu_map_sg merges them. */
export function mergeRuns(sg: readonly SgPiece[]): SgPiece[] {
  const runs: SgPiece[] = [];
  for (const e of sg) {
    const last = runs[runs.length - 1];
    if (last && e.phys === last.phys + last.length) last.length += e.length;
    else runs.push({ phys: e.phys, length: e.length });
  }
  return runs;
}

export function sgBytes(sg: readonly SgPiece[]): number {
  let n = 0;
  for (const e of sg) n += e.length;
  return n;
}
