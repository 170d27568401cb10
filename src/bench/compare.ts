/**
 * `iommud bench --compare OLD.json`: each measurement of this run against the same id in an older
 * run's --json output. The change is of medians; a verdict is given only where the unit says which
 * way is better, and "~" where the two runs' [min, max] ranges overlap (the difference is within
 * what the repetitions already spread over, so not a change anyone should trust).
 */
import { readFileSync } from 'node:fs';
import { fmt, type Measurement } from './harness.js';
import type { BenchResult } from './run.js';
import { tableLines } from './run.js';

export interface Change {
  id: string;
  unit: string;
  old: number;
  new: number;
  /** new / old - 1 (e.g. -0.25: 25% lower). */
  change: number;
  verdict: 'better' | 'worse' | '~' | 'same' | '';
}

export interface Comparison {
  file: string;
  changes: Change[];
  /** Ids only in the old run, and only in this one. */
  onlyOld: string[];
  onlyNew: string[];
}

/** Reads and checks an older run's --json output; throws an Error saying what is wrong with it. */
export function readResult(path: string): BenchResult {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  // The file may be the whole stdout of a --json run: its last line is the object.
  const last = text.trimEnd().split('\n').pop() ?? '';
  let value: unknown;
  try {
    value = JSON.parse(last);
  } catch {
    throw new Error(`${path} does not end with a JSON object (the output of iommud bench --json)`);
  }
  const r = value as Partial<BenchResult> | null;
  if (typeof r !== 'object' || r === null || r.bench !== 'iommud' || typeof r.measurements !== 'object' || r.measurements === null) {
    throw new Error(`${path} is not the output of iommud bench --json (no "bench": "iommud" with "measurements")`);
  }
  for (const [id, m] of Object.entries(r.measurements)) {
    if (typeof m?.median !== 'number' || typeof m.unit !== 'string') throw new Error(`${path}: measurement '${id}' has no numeric median and unit`);
  }
  return r as BenchResult;
}

/** Which way is better for a unit: times, bytes and counts down; rates up; ratios unknown. */
function better(unit: string): 'lower' | 'higher' | null {
  if (unit.endsWith('/s')) return 'higher';
  if (/^(ns|µs|ms|s)\b|^B\/|^(syncs|commands)$/.test(unit)) return 'lower';
  return null;
}

function verdict(o: Omit<Measurement, 'id'>, n: Measurement): Change['verdict'] {
  if (n.median === o.median) return 'same';
  const oMin = typeof o.min === 'number' ? o.min : o.median;
  const oMax = typeof o.max === 'number' ? o.max : o.median;
  if (n.min <= oMax && oMin <= n.max) return '~';
  const way = better(n.unit);
  if (way === null) return '';
  return (n.median < o.median) === (way === 'lower') ? 'better' : 'worse';
}

export function compare(old: BenchResult, file: string, current: readonly Measurement[]): Comparison {
  const changes: Change[] = [];
  for (const m of current) {
    const o = old.measurements[m.id];
    if (!o) continue;
    changes.push({ id: m.id, unit: m.unit, old: o.median, new: m.median, change: m.median / o.median - 1, verdict: verdict(o, m) });
  }
  const ids = new Set(current.map((m) => m.id));
  return {
    file,
    changes,
    onlyOld: Object.keys(old.measurements).filter((id) => !ids.has(id)),
    onlyNew: current.filter((m) => old.measurements[m.id] === undefined).map((m) => m.id),
  };
}

/** A change as printed: "+12.3%", "-4.0%", "0.0%". */
export function percent(change: number): string {
  if (!Number.isFinite(change)) return String(change);
  const p = (change * 100).toFixed(1);
  return change > 0 ? `+${p}%` : `${p}%`;
}

export function printComparison(write: (text: string) => void, c: Comparison): void {
  write(`\n== compared with ${c.file} (change of medians; ~ = the two runs' min..max ranges overlap)\n`);
  if (c.changes.length === 0) {
    write('  no measurement in common\n');
  } else {
    const rows = c.changes.map((x) => [x.id, fmt(x.old), fmt(x.new), x.unit, percent(x.change), x.verdict]);
    for (const l of tableLines([['measurement', 'old', 'new', 'unit', 'change', ''], ...rows], [0, 3, 5])) write(`  ${l}\n`);
  }
  const tally = (v: Change['verdict']) => c.changes.filter((x) => x.verdict === v).length;
  write(
    `  ${c.changes.length} compared: ${tally('better')} better, ${tally('worse')} worse, ${tally('~')} within the spread; ` +
      `${c.onlyNew.length} only in this run, ${c.onlyOld.length} only in ${c.file}\n`,
  );
}
