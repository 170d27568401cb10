/**
 * The operations of a stress run and the seeded generator that makes them.
 *
 * IOVA layout of the one stress domain (4K granule, 48-bit):
 *
 *   2^40 + c * 2^34   client c's private window, 16 GiB, only ever touched by client c:
 *                     +0 .. 64 MiB   small dense calls (collisions, holes, 2M blocks)
 *                     +1 .. 4 GiB    1 GiB blocks
 *                     +8 .. 16 GiB   big scatter-gather lists (64Ki entries: the worker pool)
 *   2^44 + k * 2^29   shared slot k, mapped and unmapped whole by every client at once
 *
 * Physical addresses: client c's private ones lie in [c * 2^40, (c + 1) * 2^40); a shared map's lie
 * in [2^46, 2^47), at a *signature* address that names the map that wrote them (see SharedSlots), so
 * that any address read back from a shared slot says which call put it there.
 *
 * A client's stream depends only on the seed, its index and its own model (which is deterministic
 * while the engine agrees with it), never on timing: the same seed gives the same operations.
 */
import type { FaultPlan } from '../core/parallel.js';
import { SgTable } from '../core/sg.js';
import { mulberry32 as rng } from '../util/rng.js';
import type { ModelDomain, ModelLeaf, SgPiece } from './model.js';

export const PAGE = 4096;
const M2 = 2 ** 21;
const G1 = 2 ** 30;
/** Entries of a big list: enough for the worker pool (PARALLEL_MIN_PAGES). */
export const BIG_ENTRIES = 65536;
export const MAX_CLIENTS = 64;

export const PRIVATE_BASE = 2 ** 40;
export const PRIVATE_SPAN = 2 ** 34;
export const DENSE_SPAN = 64 * 2 ** 20;
const BLOCK_AREA = G1;
const BIG_AREA = 8 * G1;
const BIG_SLOT_SPAN = 2 ** 29;
const BIG_SLOTS = 16;

export const SHARED_BASE = 2 ** 44;
export const SLOT_SPAN = 2 ** 29;
export const SIGNATURE_BASE = 2 ** 46;
/** Signature addresses are this far apart: room for the largest slot. */
export const SIGNATURE_STRIDE = 2 ** 28;
/** Distinct signatures: [2^46, 2^46 + 2^19 * 2^28) stays below 2^48 (oas). */
export const SIGNATURES = 2 ** 19;

/** A scatter-gather list, stored compactly: an explicit list, or n entries of len bytes laid out. */
export type SgSpec =
  | { kind: 'list'; pairs: number[] }
  /** Entry i at phys + i * len: one physical run. */
  | { kind: 'contig'; phys: number; n: number; len: number }
  /** Entry i at phys + (i ^ 1) * len: neighbours swapped, so no entry continues the one before. */
  | { kind: 'swap'; phys: number; n: number; len: number };

export type StressOp =
  | { op: 'map'; iova: number; paddr: number; size: number; prot: number }
  | { op: 'unmap'; iova: number; size: number; kill?: FaultPlan }
  | { op: 'map_sg'; iova: number; sg: SgSpec; prot: number; defer: boolean; kill?: FaultPlan }
  | { op: 'unmap_sg'; iova: number; sg: SgSpec; defer: boolean; kill?: FaultPlan }
  | { op: 'iotlb_sync' }
  | { op: 'iova_to_phys'; iova: number }
  | { op: 'translate'; iova: number; access: 'read' | 'write' }
  /** Drop the connection with a request in flight, and connect again (daemon only). */
  | { op: 'drop' };

export type OpName = StressOp['op'];
export const OP_NAMES: readonly OpName[] = ['map', 'unmap', 'map_sg', 'unmap_sg', 'iotlb_sync', 'iova_to_phys', 'translate', 'drop'];

export function sgEntries(sg: SgSpec): number {
  return sg.kind === 'list' ? sg.pairs.length / 2 : sg.n;
}

/** Calls `each` with every entry of the list, in order. */
function forEachEntry(sg: SgSpec, each: (phys: number, length: number) => void): void {
  if (sg.kind === 'list') {
    for (let i = 0; i < sg.pairs.length; i += 2) each(sg.pairs[i]!, sg.pairs[i + 1]!);
  } else {
    for (let i = 0; i < sg.n; i++) each(sg.phys + (sg.kind === 'swap' ? i ^ 1 : i) * sg.len, sg.len);
  }
}

export function sgPieces(sg: SgSpec): SgPiece[] {
  const out: SgPiece[] = [];
  forEachEntry(sg, (phys, length) => out.push({ phys, length }));
  return out;
}

export function sgTable(sg: SgSpec): SgTable {
  const t = new SgTable(sgEntries(sg));
  forEachEntry(sg, (phys, length) => t.push(phys, length));
  return t;
}

/** Bytes of IOVA a list covers. */
export function sgSpan(sg: SgSpec): number {
  if (sg.kind !== 'list') return sg.n * sg.len;
  let n = 0;
  for (let i = 1; i < sg.pairs.length; i += 2) n += sg.pairs[i]!;
  return n;
}

/** A call that the worker pool runs (so a worker fault can hit it). */
export function isParallel(op: StressOp): boolean {
  if (op.op === 'map') return op.size / PAGE >= BIG_ENTRIES;
  if (op.op === 'map_sg') return sgEntries(op.sg) >= BIG_ENTRIES;
  if (op.op === 'unmap') return op.size / PAGE >= BIG_ENTRIES;
  if (op.op === 'unmap_sg') return sgSpan(op.sg) / PAGE >= BIG_ENTRIES;
  return false;
}

export function privateWindow(client: number): { base: number; end: number } {
  const base = PRIVATE_BASE + client * PRIVATE_SPAN;
  return { base, end: base + PRIVATE_SPAN };
}

/** Shared slot k: where it is, how big, and whether its calls go to the pool. */
export function slotGeometry(k: number, bigSlots: number): { iova: number; size: number } {
  const iova = SHARED_BASE + k * SLOT_SPAN;
  if (k < bigSlots) return { iova, size: BIG_ENTRIES * PAGE };
  return { iova, size: k % 2 === 0 ? M2 : 16 * PAGE };
}

/** What shapes every client's stream (StressConfig extends it). */
export interface WorkloadConfig {
  seed: number;
  clients: number;
  slots: number;
  bigSlots: number;
  /** Big (64Ki-entry) calls in the private window. */
  big: boolean;
  /** Some unmaps defer their invalidation (with translates around them to see the staleness). */
  defer: boolean;
  /** Some big calls carry a worker fault (in-process only). */
  workerFaults: boolean;
  /** Some operations drop the connection (daemon only). */
  drops: boolean;
}

export interface WorkloadOptions extends WorkloadConfig {
  client: number;
}

/** A shared-slot operation, told apart from private ones by its iova. */
export function slotOf(iova: number, slots: number): number {
  if (iova < SHARED_BASE) return -1;
  const k = Math.floor((iova - SHARED_BASE) / SLOT_SPAN);
  return k < slots ? k : -1;
}

/** The signature address of shared map number `serial`. */
export function signature(serial: number): number {
  return SIGNATURE_BASE + (serial % SIGNATURES) * SIGNATURE_STRIDE;
}

const PROTS = [1, 2, 3, 3 | 4, 1 | 8, 2 | 4 | 8, 3 | 32, 3 | 16];

export class Workload {
  private readonly random: () => number;
  private readonly queue: StressOp[] = [];
  private readonly window: { base: number; end: number };
  private readonly physBase: number;
  private count = 0;
  /** Shared maps this client has made: their serials are unique across clients. */
  private sharedMaps = 0;

  constructor(
    private readonly o: WorkloadOptions,
    private readonly model: ModelDomain,
    /** Leaves whose invalidation this client deferred and has not synced yet. */
    private readonly stale: readonly ModelLeaf[],
  ) {
    this.random = rng((o.seed ^ Math.imul(o.client + 1, 0x9e3779b1)) >>> 0);
    this.window = privateWindow(o.client);
    this.physBase = o.client * 2 ** 40;
  }

  /** How many operations this client has been given. */
  get issued(): number {
    return this.count;
  }

  next(): StressOp {
    this.count++;
    return this.queue.shift() ?? this.pick();
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private chance(p: number): boolean {
    return this.random() < p;
  }

  private choose<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  private pick(): StressOp {
    const o = this.o;
    const weights: [number, () => StressOp][] = [
      [18, () => this.smallMap()],
      [22, () => this.smallUnmap(false)],
      [12, () => this.smallMapSg()],
      [12, () => this.smallUnmap(true)],
      [10, () => ({ op: 'iova_to_phys', iova: this.denseAddress() })],
      [10, () => this.translateOp()],
      [3, () => this.blockOp()],
      [o.slots > 0 ? 12 : 0, () => this.sharedOp()],
      [o.big ? 2 : 0, () => this.bigOp()],
      [this.stale.length > 0 ? 4 : 1, () => ({ op: 'iotlb_sync' })],
      [o.drops ? 1 : 0, () => ({ op: 'drop' })],
    ];
    let total = 0;
    for (const [w] of weights) total += w;
    let r = this.random() * total;
    for (const [w, make] of weights) {
      if ((r -= w) < 0) return make();
    }
    return { op: 'iotlb_sync' };
  }

  private prot(): number {
    // Now and then a prot the engine must refuse (no READ or WRITE; an unknown bit).
    if (this.chance(0.02)) return this.choose([0, 4, 0x40 | 1]);
    return this.choose(PROTS);
  }

  /** Now and then half a page off, for EINVAL. */
  private skew(): number {
    return this.chance(0.02) ? PAGE / 2 : 0;
  }

  /**
   * An existing mapping (a step) of the dense area, or null. Only the dense area's steps are drawn
   * from, and they come first in the sorted model: the big and block areas, whose calls a worker
   * fault may fail depending on timing, never shape the stream.
   */
  private someStep(): { iova: number; size: number } | null {
    const n = this.model.stepsBelow(this.window.base + DENSE_SPAN);
    if (n === 0) return null;
    const s = this.model.steps[this.int(n)]!;
    return { iova: s.iova, size: s.pgsize * s.count };
  }

  private denseAddress(): number {
    const w = this.window.base;
    const step = this.chance(0.5) ? this.someStep() : null;
    if (step) return step.iova + this.int(step.size / PAGE) * PAGE + this.int(PAGE);
    return w + this.int(DENSE_SPAN);
  }

  private denseIova(): number {
    const w = this.window.base;
    if (this.chance(0.3)) return w + this.int(DENSE_SPAN / M2) * M2 + this.skew();
    if (this.chance(0.3)) {
      // Just after (or on) an existing mapping: a call that collides part-way through.
      const s = this.someStep();
      if (s) return s.iova + Math.max(0, s.size - (1 + this.int(4)) * PAGE);
    }
    return w + this.int(DENSE_SPAN / PAGE - 1024) * PAGE + this.skew();
  }

  private length(): number {
    const r = this.random();
    if (r < 0.6) return (1 + this.int(32)) * PAGE;
    if (r < 0.8) return (1 + this.int(2)) * M2;
    if (r < 0.97) return M2 + (1 + this.int(16)) * PAGE;
    return this.skew() || PAGE;
  }

  /** A paddr linked to the iova (so 2M blocks are possible), or anywhere. */
  private paddrFor(iova: number): number {
    if (this.chance(0.5)) return this.physBase + (iova - this.window.base) + this.int(4) * M2 + this.skew();
    return this.physBase + this.int(2 ** 26) * PAGE;
  }

  private smallMap(): StressOp {
    const iova = this.denseIova();
    return { op: 'map', iova, paddr: this.paddrFor(iova), size: this.length(), prot: this.prot() };
  }

  private smallMapSg(): StressOp {
    const iova = this.denseIova();
    const pairs: number[] = [];
    let phys = this.paddrFor(iova);
    const n = 1 + this.int(12);
    for (let i = 0; i < n; i++) {
      const len = this.chance(0.85) ? (1 + this.int(16)) * PAGE : this.length();
      pairs.push(phys, len);
      phys = this.chance(0.5) ? phys + len : this.physBase + this.int(2 ** 26) * PAGE;
    }
    return { op: 'map_sg', iova, sg: { kind: 'list', pairs }, prot: this.prot(), defer: this.o.defer && this.chance(0.2) };
  }

  /** unmap or unmap_sg in the dense area: of a mapping's range, or anywhere (holes, inside blocks). */
  private smallUnmap(sg: boolean): StressOp {
    const w = this.window.base;
    const s = this.chance(0.75) ? this.someStep() : null;
    const iova = s ? s.iova : w + this.int(DENSE_SPAN / PAGE) * PAGE + this.skew();
    const size = s && this.chance(0.5) ? s.size : this.length();
    const defer = sg && this.o.defer && this.chance(0.4);
    const op: StressOp = sg ? { op: 'unmap_sg', iova, sg: splitList(size, this.int(3) + 1), defer } : { op: 'unmap', iova, size };
    if (!defer) return op;
    // Translate before (to cache it) and after: the second may see the stale translation.
    this.queue.push(op, { op: 'translate', iova, access: 'read' });
    return { op: 'translate', iova, access: 'read' };
  }

  private translateOp(): StressOp {
    const access = this.chance(0.3) ? 'write' : 'read';
    if (this.stale.length > 0 && this.chance(0.3)) {
      const l = this.choose(this.stale);
      return { op: 'translate', iova: l.iova + this.int(l.size / PAGE) * PAGE, access };
    }
    return { op: 'translate', iova: this.denseAddress(), access };
  }

  /** 1 GiB blocks (or 2M and 4K leaves around them) in the block area. */
  private blockOp(): StressOp {
    const base = this.window.base + BLOCK_AREA + this.int(3) * G1;
    if (this.chance(0.5)) return { op: 'unmap', iova: base, size: this.chance(0.8) ? G1 : M2 };
    const size = this.choose([G1, G1 + M2, G1 - M2, M2 + PAGE]);
    return { op: 'map', iova: base, paddr: this.physBase + 2 ** 36 + (base - this.window.base), size, prot: this.choose(PROTS) };
  }

  /** A 64Ki-entry map_sg or unmap_sg in the big area: the worker pool's work. */
  private bigOp(): StressOp {
    const iova = this.window.base + BIG_AREA + this.int(BIG_SLOTS) * BIG_SLOT_SPAN;
    const kill = this.o.workerFaults && this.chance(0.5) ? this.workerFault() : undefined;
    const spec: SgSpec = { kind: this.chance(0.5) ? 'swap' : 'contig', phys: this.physBase + 2 ** 37 + this.int(2 ** 10) * M2, n: BIG_ENTRIES, len: PAGE };
    if (this.chance(0.5)) {
      return { op: 'unmap_sg', iova, sg: { kind: 'contig', phys: 0, n: BIG_ENTRIES, len: PAGE }, defer: false, ...(kill ? { kill: { ...kill, phase: this.chance(0.5) ? 'scan' : 'clear' } } : {}) };
    }
    return { op: 'map_sg', iova, sg: spec, prot: this.choose(PROTS), defer: false, ...(kill ? { kill } : {}) };
  }

  private workerFault(): FaultPlan {
    return { phase: 'map', chunk: this.int(2), fault: { afterBytes: this.int(64) * PAGE * 256, how: this.chance(0.5) ? 'exit' : 'throw' } };
  }

  /**
   * A whole-slot call on a shared slot, the same for any model state. A map writes the signature
   * address of its serial (unique across clients), laid out contiguously or with neighbours swapped.
   */
  private sharedOp(): StressOp {
    const o = this.o;
    const k = this.int(o.slots);
    const slot = slotGeometry(k, o.bigSlots);
    const pages = slot.size / PAGE;
    const r = this.random();
    if (r < 0.45) {
      const phys = signature(this.sharedMaps++ * o.clients + o.client);
      const how = this.random();
      if (how < 0.3) return { op: 'map', iova: slot.iova, paddr: phys, size: slot.size, prot: 3 };
      return { op: 'map_sg', iova: slot.iova, sg: { kind: how < 0.65 ? 'contig' : 'swap', phys, n: pages, len: PAGE }, prot: 3, defer: false };
    }
    if (r < 0.85) {
      if (this.chance(0.5)) return { op: 'unmap', iova: slot.iova, size: slot.size };
      return { op: 'unmap_sg', iova: slot.iova, sg: { kind: 'contig', phys: 0, n: pages, len: PAGE }, defer: false };
    }
    const iova = slot.iova + this.int(pages) * PAGE;
    return this.chance(0.5) ? { op: 'iova_to_phys', iova } : { op: 'translate', iova, access: 'read' };
  }
}

/** `size` bytes as a list of `parts` entries (page multiples), for unmap_sg. */
function splitList(size: number, parts: number): SgSpec {
  const pages = Math.max(1, Math.round(size / PAGE));
  const pairs: number[] = [];
  let left = pages;
  for (let i = 0; i < parts && left > 0; i++) {
    const take = i === parts - 1 ? left : Math.max(1, Math.floor(left / (parts - i)));
    pairs.push(0, take * PAGE);
    left -= take;
  }
  // An unaligned size (the EINVAL case) stays unaligned in the list.
  if (size % PAGE !== 0) pairs[pairs.length - 1] = pairs[pairs.length - 1]! + (size % PAGE) - PAGE;
  return { kind: 'list', pairs };
}
