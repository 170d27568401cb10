/**
 * A stress run: N clients issue seeded random operations at once on one domain, and every answer is
 * checked.
 *
 * - Private windows (one per client, touched by nobody else): the answer must be exactly the model's
 *   (src/stress/model.ts), call by call, including unmap byte counts and error codes. After a failed
 *   call the range is read back: a failed call leaves nothing. Translations may be stale only where the
 *   client deferred an invalidation and has not synced since (then the old translation or the new one).
 * - Shared slots (every client maps and unmaps the same ranges at once): any address read back must be
 *   one that a single map of that slot wrote at that offset (no mixed, torn or misplaced mapping), and
 *   never one of a map that had already failed; unmaps remove all of a slot or nothing; and whenever a
 *   slot is quiet, its contents must be what some order of the calls that succeeded leaves behind.
 */
import { performance, createHistogram, type RecordableHistogram } from 'node:perf_hooks';
import { FaultError } from '../core/devices.js';
import { isIommuError } from '../errors/errors.js';
import { ModelDomain, type ModelLeaf } from './model.js';
import type { ClientPort, PlantedBug, StressTarget } from './target.js';
import {
  isParallel,
  DENSE_SPAN,
  OP_NAMES,
  PAGE,
  PRIVATE_BASE,
  PRIVATE_SPAN,
  privateWindow,
  sgPieces,
  sgSpan,
  sgTable,
  signature,
  SIGNATURE_BASE,
  SIGNATURE_STRIDE,
  SIGNATURES,
  slotGeometry,
  slotOf,
  Workload,
  type OpName,
  type StressOp,
  type WorkloadConfig,
} from './workload.js';
import { mulberry32 as rng } from '../util/rng.js';

/** What a call returned: a value, or an errno code (and a fault reason for translate). */
export type Answer = { ok: true; value: number | null } | { ok: false; code: string; reason?: string };

export interface StressConfig extends WorkloadConfig {
  /** Stop after this many operations in all (each client does its share), or ... */
  ops: number | null;
  /** ... after this many seconds. */
  durationSeconds: number;
  plantBug: PlantedBug | null;
}

export interface Violation {
  client: number;
  /** The client's operation number (from 0), or -1 for a check at the end. */
  index: number;
  op: StressOp | null;
  message: string;
}

export interface OpStats {
  count: number;
  errors: number;
  /** Latency in microseconds. */
  p50: number;
  p99: number;
  max: number;
}

export interface StressResult {
  config: StressConfig;
  target: string;
  ops: number;
  violations: number;
  details: Violation[];
  durationMs: number;
  byOp: Partial<Record<OpName, OpStats>>;
  checks: { privateReads: number; slotReads: number; slotChecks: number; audits: number };
  faults: { workerFaultsPlanned: number; eio: number; drops: number; staleTranslations: number };
  /** Operations and answers per client, for --record. */
  trace: { ops: StressOp[]; answers: Answer[] }[] | null;
  /** Replays only: answers that differ from the recording where the answer is determined. */
  mismatches?: number;
  compared?: number;
}

export interface RunHooks {
  /** Called about every 100 ms with the operations so far. */
  progress?(ops: number, violations: number): void;
  /** Keep every operation and answer (for --record). */
  record?: boolean;
  /** Replay: each client's operations and the answers recorded for them, instead of the generator. */
  replay?: { ops: StressOp[]; answers: Answer[] }[];
}

const MAX_DETAILS = 20;

interface SlotOp {
  serial: number;
  layout: 'contig' | 'swap';
  /** Set when the map failed: the global clock then. */
  failedAt: number;
}

/** One shared slot's bookkeeping between quiet moments. */
class Slot {
  inflight = 0;
  /** The map whose pages the slot held at its last quiet moment, or -1 for empty. */
  owner = -1;
  /** Maps that succeeded, and unmaps that removed the whole slot, since then. */
  maps: number[] = [];
  unmaps = 0;
  /** A quiet-moment check in progress: new calls on the slot wait for it. */
  check: Promise<void> | null = null;

  constructor(
    readonly index: number,
    readonly iova: number,
    readonly size: number,
  ) {}
}

export async function runStress(target: StressTarget, config: StressConfig, hooks: RunHooks = {}): Promise<StressResult> {
  const run = new StressRun(target, config, hooks);
  return run.run();
}

class StressRun {
  private clock = 0;
  private totalOps = 0;
  private readonly violations: Violation[] = [];
  private violationCount = 0;
  private readonly histograms = new Map<OpName, { h: RecordableHistogram; count: number; errors: number }>();
  private readonly slots: Slot[] = [];
  private readonly sharedOps = new Map<number, SlotOp>();
  private readonly checks = { privateReads: 0, slotReads: 0, slotChecks: 0, audits: 0 };
  private readonly faults = { workerFaultsPlanned: 0, eio: 0, drops: 0, staleTranslations: 0 };
  private readonly checkRandom: () => number;
  private readonly trace: { ops: StressOp[]; answers: Answer[] }[] | null;
  private mismatches = 0;
  private compared = 0;
  private deadline = Infinity;

  constructor(
    private readonly target: StressTarget,
    private readonly config: StressConfig,
    private readonly hooks: RunHooks,
  ) {
    this.checkRandom = rng(config.seed ^ 0x5eed);
    this.trace = hooks.record ? Array.from({ length: config.clients }, () => ({ ops: [], answers: [] })) : null;
    for (let k = 0; k < config.slots; k++) {
      const g = slotGeometry(k, config.bigSlots);
      this.slots.push(new Slot(k, g.iova, g.size));
    }
  }

  async run(): Promise<StressResult> {
    const c = this.config;
    await this.target.allocDomain({});
    const before = await this.target.stats();
    if (c.plantBug) this.target.plantBug(c.plantBug);
    const ports: ClientPort[] = [];
    for (let i = 0; i < c.clients; i++) {
      const port = await this.target.client(i);
      await port.attach(i);
      ports.push(port);
    }
    const started = performance.now();
    this.deadline = c.ops === null && !this.hooks.replay ? started + c.durationSeconds * 1000 : Infinity;
    const timer = this.hooks.progress ? setInterval(() => this.hooks.progress!(this.totalOps, this.violationCount), 100) : null;
    try {
      await Promise.all(ports.map((port, i) => this.client(i, port)));
    } finally {
      if (timer) clearInterval(timer);
    }
    for (const slot of this.slots) await this.quietCheck(ports[0]!, slot, -1);
    const durationMs = performance.now() - started;
    for (const port of ports) await port.close();
    await this.target.freeDomain();
    const after = await this.target.stats();
    // Freeing the domain returns every page: its root (all it held before the run) and all since.
    if (after.tablePages !== before.tablePages - 1) {
      this.violation(-1, -1, null, `table pages leaked: ${after.tablePages} in use after the domain was freed, ${before.tablePages - 1} expected`);
    }
    this.hooks.progress?.(this.totalOps, this.violationCount);
    const byOp: Partial<Record<OpName, OpStats>> = {};
    for (const name of OP_NAMES) {
      const e = this.histograms.get(name);
      if (!e) continue;
      byOp[name] = { count: e.count, errors: e.errors, p50: e.h.percentile(50) / 1000, p99: e.h.percentile(99) / 1000, max: e.h.max / 1000 };
    }
    return {
      config: c,
      target: this.target.description,
      ops: this.totalOps,
      violations: this.violationCount,
      details: this.violations,
      durationMs,
      byOp,
      checks: this.checks,
      faults: this.faults,
      trace: this.trace,
      ...(this.hooks.replay ? { mismatches: this.mismatches, compared: this.compared } : {}),
    };
  }

  private violation(client: number, index: number, op: StressOp | null, message: string): void {
    this.violationCount++;
    if (this.violations.length < MAX_DETAILS) this.violations.push({ client, index, op, message });
  }

  /** One client's loop. It stops at its own first violation: its model no longer describes the engine. */
  private async client(i: number, port: ClientPort): Promise<void> {
    const c = this.config;
    const model = new ModelDomain({ pgsizeBitmap: 0x40201000, ias: 48, oas: 48, stage2: false });
    const stale: ModelLeaf[] = [];
    const replay = this.hooks.replay?.[i];
    const workload = new Workload({ ...c, client: i }, model, stale);
    const share = c.ops === null ? Infinity : Math.floor(c.ops / c.clients) + (i < c.ops % c.clients ? 1 : 0);
    const limit = replay ? replay.ops.length : share;
    const client = { i, port, model, stale, poisoned: false };
    for (let n = 0; n < limit && !client.poisoned && performance.now() < this.deadline; n++) {
      const op = replay ? replay.ops[n]! : workload.next();
      const answer = await this.execute(client, n, op);
      this.trace?.[i]!.ops.push(op);
      this.trace?.[i]!.answers.push(answer);
      if (replay && determined(op, c)) {
        this.compared++;
        if (!sameAnswer(answer, replay.answers[n]!)) this.mismatches++;
      }
      this.totalOps++;
      // Let the others, the pool's messages and the progress timer run (in-process calls are
      // mostly synchronous and would otherwise hold the event loop).
      if (n % 4 === 3) await new Promise((resolve) => setImmediate(resolve));
    }
    if (!client.poisoned) await this.audit(client, -1);
  }

  /** Issues op, times it, checks its answer, and keeps the model and the slots up to date. */
  private async execute(client: ClientState, index: number, op: StressOp): Promise<Answer> {
    const k = 'iova' in op ? slotOf(op.iova, this.config.slots) : -1;
    if (k >= 0) return this.sharedCall(client, index, op, this.slots[k]!);
    if (op.op === 'drop') {
      // A request in flight when the connection goes: its answer is lost, the daemon must cope.
      const pending = client.port.iovaToPhys(privateWindow(client.i).base).catch(() => null);
      const answer = await this.issue(client.port, client.i, op);
      await pending;
      this.faults.drops++;
      if (!answer.ok) this.fail(client, index, op, `reconnecting failed: ${answer.code}`);
      return answer;
    }
    return this.privateCall(client, index, op);
  }

  private async timed(op: StressOp, call: () => Promise<number | null | void>): Promise<Answer> {
    const t0 = performance.now();
    let answer: Answer;
    try {
      const v = await call();
      answer = { ok: true, value: v ?? null };
    } catch (e) {
      answer = toAnswer(e);
    }
    const ns = Math.max(1, Math.round((performance.now() - t0) * 1e6));
    let e = this.histograms.get(op.op);
    if (!e) this.histograms.set(op.op, (e = { h: createHistogram(), count: 0, errors: 0 }));
    e.h.record(ns);
    e.count++;
    if (!answer.ok) e.errors++;
    return answer;
  }

  private issue(port: ClientPort, device: number, op: StressOp): Promise<Answer> {
    switch (op.op) {
      case 'map':
        return this.timed(op, () => port.map(op.iova, op.paddr, op.size, op.prot));
      case 'unmap':
        if (op.kill) this.planFault(op.kill);
        return this.timed(op, () => port.unmap(op.iova, op.size));
      case 'map_sg': {
        const table = sgTable(op.sg);
        if (op.kill) this.planFault(op.kill);
        return this.timed(op, () => port.mapSg(op.iova, table, op.prot, op.defer));
      }
      case 'unmap_sg': {
        const table = sgTable(op.sg);
        if (op.kill) this.planFault(op.kill);
        return this.timed(op, () => port.unmapSg(op.iova, table, op.defer));
      }
      case 'iotlb_sync':
        return this.timed(op, () => port.iotlbSync());
      case 'iova_to_phys':
        return this.timed(op, () => port.iovaToPhys(op.iova));
      case 'translate':
        return this.timed(op, () => port.translate(device, op.iova, op.access));
      case 'drop':
        return this.timed(op, () => port.reconnect());
    }
  }

  private planFault(plan: NonNullable<Extract<StressOp, { kill?: unknown }>['kill']>): void {
    if (this.target.inProcess && this.target.injectWorkerFault(plan)) this.faults.workerFaultsPlanned++;
  }

  /** A map that the pool ran may fail EIO, rolled back, when worker faults are being injected. */
  private workerFaultAllowed(op: StressOp): boolean {
    return this.config.workerFaults && isParallel(op) && (op.op === 'map_sg' || op.op === 'map');
  }

  private fail(client: ClientState, index: number, op: StressOp | null, message: string): void {
    this.violation(client.i, index, op, message);
    client.poisoned = true;
  }

  // --- private windows: exact ------------------------------------------------------------------

  private async privateCall(client: ClientState, index: number, op: StressOp): Promise<Answer> {
    const { model, port } = client;
    if (op.op === 'translate') return this.privateTranslate(client, index, op);
    const removed: ModelLeaf[] = [];
    const want = expect(model, op, removed);
    const got = await this.issue(port, client.i, op);
    if (op.op === 'iova_to_phys') this.checks.privateReads++;
    if (!sameAnswer(got, want)) {
      const undoable = !got.ok && got.code === 'EIO' && this.workerFaultAllowed(op);
      if (undoable && want.ok && (op.op === 'map' || op.op === 'map_sg')) {
        // A worker died in the call: it failed whole, so the model goes back to before it.
        this.faults.eio++;
        model.unmap(op.iova, op.op === 'map' ? op.size : want.value!);
      } else if (undoable) {
        this.faults.eio++;
      } else {
        this.fail(client, index, op, `answered ${show(got)}, the model says ${show(want)}`);
        return got;
      }
    }
    if (op.op === 'unmap_sg' && op.defer) client.stale.push(...removed);
    if (op.op === 'iotlb_sync') client.stale.length = 0;
    // Read back what a mutating call touched: a failed one must have left nothing behind.
    if (op.op === 'map' || op.op === 'map_sg' || op.op === 'unmap' || op.op === 'unmap_sg') await this.probe(client, index, op, !got.ok);
    return got;
  }

  /** Reads a few addresses of op's range and compares them with the model. */
  private async probe(client: ClientState, index: number, op: Extract<StressOp, { iova: number }>, failed: boolean): Promise<void> {
    const span = op.op === 'map' || op.op === 'unmap' ? op.size : 'sg' in op ? sgSpan(op.sg) : PAGE;
    const start = Math.floor(op.iova / PAGE) * PAGE;
    const points = [start, start + Math.max(0, Math.floor((span - 1) / PAGE)) * PAGE];
    if (failed) for (let j = 1; j < 4; j++) points.push(start + Math.floor((span / PAGE) * (j / 4)) * PAGE);
    await this.compareReads(client, index, op, points, failed ? 'after the failed call' : 'after the call');
  }

  private async compareReads(client: ClientState, index: number, op: StressOp | null, points: number[], when: string): Promise<void> {
    const answers = await Promise.all(points.map((a) => client.port.iovaToPhys(a).then((v) => v, (e: unknown) => toAnswer(e))));
    for (let j = 0; j < points.length; j++) {
      this.checks.privateReads++;
      const a = points[j]!;
      const got = answers[j];
      const want = client.model.iovaToPhys(a);
      if (got !== want) {
        this.fail(client, index, op, `iova_to_phys(${hex(a)}) ${when} is ${typeof got === 'object' && got !== null ? show(got) : hexOrNull(got)}, the model says ${hexOrNull(want)}`);
        return;
      }
    }
  }

  /** The model's translation, or one of a leaf whose invalidation was deferred and not synced. */
  private async privateTranslate(client: ClientState, index: number, op: Extract<StressOp, { op: 'translate' }>): Promise<Answer> {
    const got = await this.issue(client.port, client.i, op);
    const now = client.model.translate(op.iova, op.access);
    const allowed = [now];
    for (const l of client.stale) {
      if (op.iova < l.iova || op.iova >= l.iova + l.size) continue;
      const granted = client.model.grantedProt(l.prot);
      allowed.push((granted & (op.access === 'write' ? 2 : 1)) === 0 ? { fault: 'permission' } : { phys: l.paddr + (op.iova - l.iova) });
    }
    const gotKey = got.ok ? `phys ${hex(got.value!)}` : got.code === 'EFAULT' ? `fault ${got.reason}` : `error ${got.code}`;
    const keys = allowed.map((x) => ('phys' in x ? `phys ${hex(x.phys)}` : `fault ${x.fault}`));
    if (!keys.includes(gotKey)) {
      this.fail(client, index, op, `translate(${hex(op.iova)}, ${op.access}) gave ${gotKey}, allowed: ${keys.join(' or ')}`);
    } else if (gotKey !== keys[0]) {
      this.faults.staleTranslations++;
    }
    return got;
  }

  /** The last check of a client: the first and last leaf of every mapping, and random holes. */
  private async audit(client: ClientState, index: number): Promise<void> {
    this.checks.audits++;
    const points: number[] = [];
    const steps = client.model.steps;
    const every = Math.max(1, Math.floor(steps.length / 256));
    for (let s = 0; s < steps.length; s += every) {
      const st = steps[s]!;
      points.push(st.iova, st.iova + (st.count - 1) * st.pgsize + st.pgsize - PAGE);
    }
    const w = privateWindow(client.i);
    for (let j = 0; j < 64; j++) points.push(w.base + Math.floor(this.checkRandom() * (64 * 2 ** 20 / PAGE)) * PAGE);
    await this.compareReads(client, index, null, points, 'at the end');
  }

  // --- shared slots -----------------------------------------------------------------------------

  private async sharedCall(client: ClientState, index: number, op: StressOp, slot: Slot): Promise<Answer> {
    if (op.op === 'iova_to_phys' || op.op === 'translate') {
      const issuedAt = ++this.clock;
      const got = await this.issue(client.port, client.i, op);
      this.checkSlotRead(client, index, op, slot, issuedAt, got);
      return got;
    }
    while (slot.check) await slot.check;
    slot.inflight++;
    let got: Answer;
    try {
      const serial = op.op === 'map' || op.op === 'map_sg' ? serialOf(op) : -1;
      const record: SlotOp | null = serial >= 0 ? { serial, layout: op.op === 'map_sg' && op.sg.kind === 'swap' ? 'swap' : 'contig', failedAt: Infinity } : null;
      if (record) this.sharedOps.set(serial % SIGNATURES, record);
      got = await this.issue(client.port, client.i, op);
      this.clock++;
      if (record) {
        if (got.ok) slot.maps.push(serial);
        else if (got.code === 'EEXIST' || (got.code === 'EIO' && this.workerFaultAllowed(op))) record.failedAt = this.clock;
        else {
          record.failedAt = this.clock;
          this.fail(client, index, op, `a whole-slot map of slot ${slot.index} failed ${show(got)} (only EEXIST is possible)`);
        }
      } else if (got.ok) {
        if (got.value === slot.size) slot.unmaps++;
        else if (got.value !== 0) this.fail(client, index, op, `an unmap of slot ${slot.index} removed ${hex(got.value!)} of its ${hex(slot.size)} bytes: a partial mapping`);
      } else {
        this.fail(client, index, op, `an unmap of slot ${slot.index} failed ${show(got)}`);
      }
    } finally {
      slot.inflight--;
    }
    if (slot.inflight === 0) await this.quietCheck(client.port, slot, client.i);
    return got;
  }

  /** An address read from a shared slot must be where one map of it put that page. */
  private checkSlotRead(client: ClientState, index: number, op: StressOp, slot: Slot, issuedAt: number, got: Answer): void {
    this.checks.slotReads++;
    const iova = (op as { iova: number }).iova;
    if (!got.ok) {
      if (got.code === 'EFAULT' && got.reason === 'translation') return;
      this.fail(client, index, op, `a read of slot ${slot.index} at ${hex(iova)} gave ${show(got)}`);
      return;
    }
    if (got.value === null) return;
    const problem = this.explain(slot, iova, got.value);
    if (problem) this.fail(client, index, op, problem);
    else {
      const rec = this.decode(got.value)!;
      if (rec.failedAt < issuedAt) this.fail(client, index, op, `${hex(iova)} still maps to map #${rec.serial} of slot ${slot.index}, which had failed before the read began`);
    }
  }

  private decode(phys: number): SlotOp | null {
    if (phys < SIGNATURE_BASE) return null;
    return this.sharedOps.get(Math.floor((phys - SIGNATURE_BASE) / SIGNATURE_STRIDE) % SIGNATURES) ?? null;
  }

  /** Why phys cannot be what slot holds at iova, or null if it can. */
  private explain(slot: Slot, iova: number, phys: number): string | null {
    const rec = this.decode(phys);
    if (!rec) return `${hex(iova)} in slot ${slot.index} maps to ${hex(phys)}, which no map of a shared slot wrote`;
    const base = signature(rec.serial);
    const page = Math.floor((iova - slot.iova) / PAGE);
    const want = base + (rec.layout === 'swap' ? page ^ 1 : page) * PAGE + (iova % PAGE);
    if (phys !== want) return `${hex(iova)} in slot ${slot.index} maps to ${hex(phys)}; map #${rec.serial} put ${hex(want)} there: a torn or misplaced mapping`;
    return null;
  }

  /**
   * At a quiet moment (no call in flight on the slot) its pages must all be unmapped or all be one
   * map's, and that state must follow from the calls since the last quiet moment in some order: maps
   * and whole unmaps alternate, so their counts decide whether it ends empty, and who may own it.
   */
  private async quietCheck(port: ClientPort, slot: Slot, clientIndex: number): Promise<void> {
    let release!: () => void;
    slot.check = new Promise((resolve) => (release = resolve));
    try {
      this.checks.slotChecks++;
      const pages = slot.size / PAGE;
      const sample = pages <= 32 ? Array.from({ length: pages }, (_, p) => p) : [0, pages - 1, ...Array.from({ length: 30 }, () => Math.floor(this.checkRandom() * pages))];
      const reads = await Promise.all(sample.map((p) => port.iovaToPhys(slot.iova + p * PAGE).catch(() => -1)));
      this.checks.slotReads += reads.length;
      const where = `slot ${slot.index} when quiet`;
      let owner: number | null | undefined;
      for (let j = 0; j < sample.length; j++) {
        const iova = slot.iova + sample[j]! * PAGE;
        const phys = reads[j]!;
        let who: number | null;
        if (phys === null) who = null;
        else {
          const problem = phys === -1 ? `iova_to_phys(${hex(iova)}) failed` : this.explain(slot, iova, phys);
          if (problem) return this.violation(clientIndex, -1, null, `${where}: ${problem}`);
          who = this.decode(phys)!.serial;
        }
        if (owner !== undefined && who !== owner) {
          return this.violation(clientIndex, -1, null, `${where}: page ${sample[0]} is ${describeOwner(owner)} but page ${sample[j]} is ${describeOwner(who)}: a mixed or partial mapping`);
        }
        owner = who;
      }
      const observed = owner ?? -1;
      const m = slot.maps.length;
      const u = slot.unmaps;
      let possible: boolean;
      if (slot.owner === -1) possible = (m === u && observed === -1) || (m === u + 1 && slot.maps.includes(observed));
      else possible = (u === m + 1 && observed === -1) || (u === m && (m === 0 ? observed === slot.owner : slot.maps.includes(observed)));
      if (!possible) {
        this.violation(clientIndex, -1, null, `${where}: it is ${describeOwner(observed === -1 ? null : observed)}, but from ${describeOwner(slot.owner === -1 ? null : slot.owner)} ${m} map(s) [${slot.maps.join(', ')}] and ${u} whole unmap(s) succeeded: no order of those calls ends so`);
      }
      slot.owner = observed;
      slot.maps = [];
      slot.unmaps = 0;
    } finally {
      slot.check = null;
      release();
    }
  }
}

interface ClientState {
  i: number;
  port: ClientPort;
  model: ModelDomain;
  stale: ModelLeaf[];
  poisoned: boolean;
}

/** The serial a shared map's signature encodes. */
function serialOf(op: Extract<StressOp, { op: 'map' | 'map_sg' }>): number {
  const phys = op.op === 'map' ? op.paddr : op.sg.kind === 'list' ? op.sg.pairs[0]! : op.sg.phys;
  return Math.round((phys - SIGNATURE_BASE) / SIGNATURE_STRIDE);
}

function describeOwner(serial: number | null): string {
  return serial === null ? 'empty' : `map #${serial}'s`;
}

/** What the model says op returns, applying it to the model. */
function expect(model: ModelDomain, op: StressOp, removed: ModelLeaf[]): Answer {
  switch (op.op) {
    case 'map':
      return fromModel(model.map(op.iova, op.paddr, op.size, op.prot));
    case 'unmap':
      return fromModel(model.unmap(op.iova, op.size, removed));
    case 'map_sg':
      return fromModel(model.mapSg(op.iova, sgPieces(op.sg), op.prot));
    case 'unmap_sg':
      return fromModel(model.unmapSg(op.iova, sgPieces(op.sg), removed));
    case 'iova_to_phys':
      return { ok: true, value: model.iovaToPhys(op.iova) };
    case 'iotlb_sync':
    case 'drop':
    case 'translate':
      return { ok: true, value: null };
  }
}

function fromModel(o: { ok: true; value: number | null } | { ok: false; code: string }): Answer {
  return o.ok ? { ok: true, value: o.value } : { ok: false, code: o.code };
}

/**
 * Is op's answer the same on every run? Not in shared slots, nor for drops. Not for translates while
 * invalidations are deferred (a stale entry may or may not be cached). With worker faults, only the
 * dense area's: a fault planned by one call is taken by whichever big call runs next, so which big
 * call fails EIO, and all that follows from it in the big and block areas, depends on timing.
 */
function determined(op: StressOp, c: StressConfig): boolean {
  if (op.op === 'drop' || (op.op === 'translate' && c.defer)) return false;
  if (!('iova' in op)) return true;
  if (slotOf(op.iova, c.slots) >= 0) return false;
  return !c.workerFaults || (op.iova - PRIVATE_BASE) % PRIVATE_SPAN < DENSE_SPAN;
}

export function sameAnswer(a: Answer, b: Answer): boolean {
  if (a.ok !== b.ok) return false;
  if (a.ok && b.ok) return a.value === b.value;
  const x = a as { code: string; reason?: string };
  const y = b as { code: string; reason?: string };
  return x.code === y.code && x.reason === y.reason;
}

function toAnswer(e: unknown): Answer {
  if (e instanceof FaultError) return { ok: false, code: 'EFAULT', reason: e.fault.reason };
  if (isIommuError(e)) return { ok: false, code: e.code };
  return { ok: false, code: `CRASH ${e instanceof Error ? e.message : String(e)}` };
}

function show(a: Answer): string {
  if (a.ok) return a.value === null ? 'ok' : `ok ${hex(a.value)}`;
  return a.reason ? `${a.code} (${a.reason})` : a.code;
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

function hexOrNull(n: number | null | undefined): string {
  return n === null || n === undefined ? 'null' : hex(n);
}
