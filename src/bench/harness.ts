/**
 * A small benchmark harness for iommud's benchmarks (`iommud bench`, src/cli/bench.ts).
 *
 * Why not tinybench/mitata: the cases here are whole operations of milliseconds (a map_sg of a million
 * pages) or loops of many tiny calls timed as one sample, so a per-call harness adds nothing; what
 * matters is warm-up, repetitions, the median and the minimum, and — on a shared, noisy 2-core
 * machine — running the cases that are compared with each other round-robin within one process, so
 * that a burst of noise hits all of them rather than one.
 *
 * Model: a suite runs groups. A group has steps; one repetition runs every step once (the order is
 * rotated each repetition). A step times any number of regions with `t.time(key, ops, fn)`, each
 * recorded as ns per op for that repetition. The first `warmup` repetitions are discarded.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { cpuSnapshot, otherLoad } from './machine.js';
import type { Progress } from './progress.js';

/** A forced full GC, or null if the runtime refused to expose it. Used only outside timed regions. */
export const gc: (() => void) | null = (() => {
  try {
    setFlagsFromString('--expose-gc');
    const fn: unknown = runInNewContext('gc');
    return typeof fn === 'function' ? (fn as () => void) : null;
  } catch {
    return null;
  }
})();

export interface Target {
  /** The measured median must be at most this (same unit as the measurement)... */
  max?: number;
  /** ...and/or at least this (a speed-up, a bandwidth). */
  min?: number;
  /** Where the target comes from, e.g. "issue: <= 5 ns per page mapped". */
  source: string;
}

/** Does a median meet a target? */
export function meets(value: number, t: Target): boolean {
  return (t.max === undefined || value <= t.max) && (t.min === undefined || value >= t.min);
}

/** A target as the tables print it: "<= 5", ">= 1.8", or both. */
export function targetText(t: Target): string {
  return [t.min === undefined ? '' : `>= ${t.min}`, t.max === undefined ? '' : `<= ${t.max}`].filter(Boolean).join(', ');
}

export interface Measurement {
  /** Unique key: `${suite}.${name}` with spaces, e.g. "core.map_sg contiguous 1Mi x 4K, SgTable". */
  id: string;
  suite: string;
  group: string;
  name: string;
  /** What a sample is measured in: "ns/page", "ns/op", "B/page", "x" (a ratio), ... */
  unit: string;
  /**
   * 'time': repeated timings; 'memory': a deterministic single reading; 'ratio': medians divided;
   * 'paired': per-repetition ratios of two series timed in the same repetitions (samples = the ratios);
   * 'derived': a time series converted sample by sample (e.g. ns per MiB -> GB/s);
   * 'count': a deterministic single reading of a counter, or of a model computed from counters.
   */
  kind: 'time' | 'memory' | 'ratio' | 'paired' | 'derived' | 'count';
  median: number;
  min: number;
  max: number;
  /** Every recorded sample (warm-up excluded), in the unit. */
  samples: number[];
  /** Operations (pages, calls) per sample. */
  opsPerSample: number;
  target?: Target;
  pass?: boolean;
  note?: string;
  /**
   * CPU time other processes used while this measurement's group ran, in cores on average (time
   * series only; Linux). On this 2-core machine anything above ~0.1 shows in the numbers.
   */
  othersCores?: number;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 === 1 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

interface Series {
  unit: string;
  ops: number;
  samples: number[];
}

/** Handed to a step: times regions of it. */
export class Timer {
  /** Series by key, in first-seen order. */
  readonly series = new Map<string, Series>();
  recording = false;

  /**
   * Times `fn` (awaited) once and records (elapsed ns) / ops under `key` when recording.
   *
   * Deliberately no forced GC before the region: on Node 20 a forced `gc()` (unlike the collections
   * V8 schedules itself) discards the type feedback and optimized code of the engine's hot loops,
   * and the next big call runs 2-7x slower while it is re-optimized (measured: map_sg contiguous
   * 6.5 -> 12-45 ns/page). A benchmark must not measure its own harness; the repetitions and the
   * median absorb the occasional natural GC instead.
   */
  async time<T>(key: string, ops: number, fn: () => T | Promise<T>, unit = 'ns/op'): Promise<T> {
    const t0 = process.hrtime.bigint();
    const result = await fn();
    const elapsed = Number(process.hrtime.bigint() - t0);
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { unit, ops, samples: [] }));
    if (s.ops !== ops || s.unit !== unit) throw new Error(`bench: series '${key}' timed with different ops or unit`);
    if (this.recording) s.samples.push(elapsed / ops);
    return result;
  }

  /**
   * Records a value the step measured itself (e.g. the median of many latencies it timed) under
   * `key`, when recording: for what one elapsed time per region cannot express.
   */
  record(key: string, ops: number, value: number, unit: string): void {
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { unit, ops, samples: [] }));
    if (s.ops !== ops || s.unit !== unit) throw new Error(`bench: series '${key}' recorded with different ops or unit`);
    if (this.recording) s.samples.push(value);
  }
}

export interface Step {
  /** Shown in progress output and matched by --filter (together with the group's name). */
  name: string;
  run(t: Timer): Promise<void>;
}

export interface GroupSpec {
  name: string;
  steps: Step[];
  /** Overrides of the run's defaults, for groups whose steps are long. */
  reps?: number;
  warmup?: number;
}

export interface RunOptions {
  reps: number;
  warmup: number;
  /** Case-insensitive substrings; a step runs if "group/step" contains any of them (all if empty). */
  filters: string[];
  /** Smaller sizes where a suite has them (its own case ids), for a run of seconds; not comparable. */
  quick: boolean;
  /** The daemon suite runs against the daemon at this socket instead of starting one. */
  connect?: string | null;
  /** Progress lines and bars (stderr). */
  progress: Progress;
  log: (line: string) => void;
}

/** What a suite sees: groups to run, and where to record what it measured. */
export class BenchContext {
  readonly measurements: Measurement[] = [];
  private readonly byName = new Map<string, Measurement>();

  constructor(
    readonly suite: string,
    readonly options: RunOptions,
  ) {}

  /** Does a step (or a memory reading) with this "group/name" pass the --filter options? */
  selected(group: string, name: string): boolean {
    const f = this.options.filters;
    if (f.length === 0) return true;
    const full = `${group}/${name}`.toLowerCase();
    return f.some((s) => full.includes(s.toLowerCase()));
  }

  /** Runs a group's selected steps round-robin for warmup + reps repetitions and records every series. */
  async group(spec: GroupSpec): Promise<void> {
    const steps = spec.steps.filter((s) => this.selected(spec.name, s.name));
    if (steps.length === 0) return;
    const reps = spec.reps ?? this.options.reps;
    const warmup = spec.warmup ?? this.options.warmup;
    const timer = new Timer();
    const started = Date.now();
    const cpu0 = cpuSnapshot();
    // Collect the garbage of whatever ran before, once, before the warm-up (which re-optimizes).
    gc?.();
    const bar = this.options.progress.group(spec.name, warmup + reps);
    for (let r = 0; r < warmup + reps; r++) {
      timer.recording = r >= warmup;
      for (let k = 0; k < steps.length; k++) {
        const step = steps[(k + r) % steps.length]!;
        await step.run(timer);
      }
      bar.tick(`${r < warmup ? 'warm-up' : 'rep'} ${r < warmup ? r + 1 : r - warmup + 1}/${r < warmup ? warmup : reps}`);
    }
    const others = otherLoad(cpu0, cpuSnapshot()).othersCores;
    bar.done();
    for (const [key, s] of timer.series) {
      this.add({
        group: spec.name,
        name: key,
        unit: s.unit,
        kind: 'time',
        samples: s.samples,
        opsPerSample: s.ops,
        ...(others === null ? {} : { othersCores: others }),
      });
    }
    this.options.log(`  ${spec.name}: done in ${((Date.now() - started) / 1000).toFixed(1)} s; other processes used ${others ?? '?'} cores meanwhile`);
  }

  /** Records a deterministic reading (memory, or a count with kind 'count'), one sample. */
  reading(
    group: string,
    name: string,
    unit: string,
    value: number,
    opsPerSample: number,
    extra?: { target?: Target; note?: string; kind?: 'memory' | 'count' },
  ): Measurement {
    return this.add({ group, name, unit, kind: 'memory', samples: [value], opsPerSample, ...extra });
  }

  /**
   * Records numerator / denominator of two measurements of this run: the ratio of medians (and, as
   * min/max, the ratios of the minima and of the maxima). Skipped if either is missing (filtered).
   */
  ratio(group: string, name: string, numerator: string, denominator: string, note?: string): Measurement | null {
    const a = this.byName.get(numerator);
    const b = this.byName.get(denominator);
    if (!a || !b) return null;
    const m: Measurement = {
      id: `${this.suite}.${name}`,
      suite: this.suite,
      group,
      name,
      unit: 'x',
      kind: 'ratio',
      median: a.median / b.median,
      min: a.min / b.min,
      max: a.max / b.max,
      samples: [a.median / b.median],
      opsPerSample: 1,
      note: note ?? `median(${numerator}) / median(${denominator}); min = ratio of minima, max = ratio of maxima`,
    };
    this.push(m);
    return m;
  }

  /**
   * Per-repetition ratios numerator[i] / denominator[i] of two time series recorded in the same
   * repetitions of one group (sample i of each comes from repetition i, run round-robin), so that
   * noise that hits one repetition hits both sides. median/min/max are of those ratios. Skipped if
   * either is missing (filtered).
   */
  pairedRatio(group: string, name: string, numerator: string, denominator: string, note?: string): Measurement | null {
    const a = this.byName.get(numerator);
    const b = this.byName.get(denominator);
    if (!a || !b) return null;
    if (a.samples.length !== b.samples.length) throw new Error(`bench: paired ratio '${name}' of series with different sample counts`);
    return this.add({
      group,
      name,
      unit: 'x',
      kind: 'paired',
      samples: a.samples.map((v, i) => v / b.samples[i]!),
      opsPerSample: 1,
      note: note ?? `per repetition: (${numerator}) / (${denominator}); median, min and max of those ratios`,
    });
  }

  /** A recorded time series converted sample by sample, e.g. ns/MiB -> GB/s. */
  derived(group: string, name: string, unit: string, source: string, f: (sample: number) => number, note?: string): Measurement | null {
    const a = this.byName.get(source);
    if (!a) return null;
    return this.add({ group, name, unit, kind: 'derived', samples: a.samples.map(f), opsPerSample: a.opsPerSample, note: note ?? `from (${source})` });
  }

  /** Attaches a target to a recorded measurement; pass = its median meets the target. */
  target(name: string, target: Target): void {
    const m = this.byName.get(name);
    if (!m) return;
    m.target = target;
    m.pass = meets(m.median, target);
  }

  get(name: string): Measurement | undefined {
    return this.byName.get(name);
  }

  private add(p: Omit<Measurement, 'id' | 'suite' | 'median' | 'min' | 'max'>): Measurement {
    const samples = p.samples;
    const m: Measurement = {
      id: `${this.suite}.${p.name}`,
      suite: this.suite,
      ...p,
      median: median(samples),
      min: Math.min(...samples),
      max: Math.max(...samples),
    };
    if (m.target) m.pass = meets(m.median, m.target);
    this.push(m);
    return m;
  }

  private push(m: Measurement): void {
    if (this.byName.has(m.name)) throw new Error(`bench: measurement '${m.name}' recorded twice in suite ${this.suite}`);
    this.byName.set(m.name, m);
    this.measurements.push(m);
  }
}

/** A suite: one named family of measurements, selectable on the command line. */
export interface Suite {
  name: string;
  description: string;
  run(ctx: BenchContext): Promise<void>;
}

/** A number for a table: 3 significant digits, no exponent for the ranges we print. */
export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString('en-US');
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  if (a === 0) return '0';
  return v.toPrecision(3);
}
