/**
 * Runs benchmark suites and prints their tables: what `iommud bench` does between parsing its
 * arguments and writing --json, --compare and --plot. The result has the documented JSON shape
 * (docs/performance.md): { bench, machine, options, measurements: { <id>: {...}, ... } }.
 *
 * To add a suite: write src/bench/<name>.ts exporting a `Suite` (see harness.ts and core.ts) and add
 * it to SUITES below; it is then selectable by name.
 */
import { loadavg } from 'node:os';
import { coreSuite } from './core.js';
import { daemonSuite } from './daemon.js';
import { BenchContext, fmt, targetText, type Measurement, type RunOptions, type Suite } from './harness.js';
import { iotlbSuite } from './iotlb.js';
import { cpuSnapshot, machineInfo, otherLoad, type MachineInfo } from './machine.js';
import { parallelSuite } from './parallel.js';

/** Every suite, in the order a full run executes them. */
export const SUITES: readonly Suite[] = [coreSuite, parallelSuite, iotlbSuite, daemonSuite];

export type Load = ReturnType<typeof otherLoad>;

/** What one run produced, as --json writes it. */
export interface BenchResult {
  bench: 'iommud';
  machine: MachineInfo & { loadavg1End: number; otherLoad: Record<string, Load> };
  options: { suites: string[]; reps: number; warmup: number; filters: string[]; quick: boolean; connect: string | null };
  measurements: Record<string, Omit<Measurement, 'id'>>;
}

type Write = (text: string) => void;

function printMachine(write: Write, m: MachineInfo): void {
  write(
    `iommud bench — ${m.cpuModel}, nproc ${m.nproc}, node ${m.node} (V8 ${m.v8}), ${m.platform}, ` +
      `${m.memoryGiB} GiB, load average ${m.loadavg1} at start` +
      (m.git ? `, code ${m.git.commit}${m.git.changedFiles ? ` + ${m.git.changedFiles} changed files in src/, workers/` : ''}` : '') +
      '\n',
  );
}

/** Readings have one sample: no min, max or n. */
const single = (m: Measurement): boolean => m.kind === 'memory' || m.kind === 'count';

/** Lines of cells, the first column and `left` columns left-aligned, the others right-aligned. */
export function tableLines(rows: string[][], left: readonly number[] = [0]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (left.includes(i) ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd());
}

function printSuite(write: Write, suite: Suite, ms: Measurement[]): void {
  const rows = ms.map((m) => [
    m.name,
    fmt(m.median),
    single(m) ? '' : fmt(m.min),
    single(m) ? '' : fmt(m.max),
    m.unit,
    single(m) || m.kind === 'ratio' ? '' : String(m.samples.length),
    m.target ? targetText(m.target) : '',
    m.pass === undefined ? '' : m.pass ? 'PASS' : 'FAIL',
  ]);
  const lines = tableLines([['measurement', 'median', 'min', 'max', 'unit', 'n', 'target', ''], ...rows], [0, 4]);
  write(`\n== ${suite.name}: ${suite.description}\n`);
  write(`  ${lines[0]}\n`);
  let group = '';
  ms.forEach((m, i) => {
    if (m.group !== group) {
      group = m.group;
      const busy = m.othersCores !== undefined && m.othersCores >= 0.1 ? `  (other processes used ${m.othersCores} cores meanwhile)` : '';
      write(`  -- ${group}${busy}\n`);
    }
    write(`  ${lines[i + 1]}\n`);
  });
  const notes = ms.filter((m) => single(m) && m.note);
  if (notes.length > 0) {
    write('  notes:\n');
    const printed = new Set<string>();
    for (const m of notes) {
      if (printed.has(m.note!)) continue;
      printed.add(m.note!);
      const sharing = notes.filter((o) => o.note === m.note);
      // A note shared within one group names the group; across groups, what the readings measure.
      const label = sharing.length === 1 ? m.name : sharing.every((o) => o.group === m.group) ? m.group : m.name.slice(m.name.lastIndexOf(': ') + 2);
      write(`    ${label}${sharing.length > 1 ? ' (all)' : ''}: ${m.note}\n`);
    }
  }
}

/** Other processes' CPU use during a suite: on 2 cores, anything above ~0.1 core shows in the numbers. */
function printLoad(write: Write, name: string, l: Load): void {
  if (l.othersCores === null) return;
  write(`  (while ${name} ran, other processes used ${l.othersCores} cores on average; hypervisor steal ${l.stealCores} cores)\n`);
}

/** Runs `suites` in order, printing each one's table to `write` as it ends; returns the whole run. */
export async function runSuites(suites: readonly Suite[], options: RunOptions, write: Write): Promise<BenchResult> {
  const machine = machineInfo();
  printMachine(write, machine);
  const all: Measurement[] = [];
  const started = Date.now();
  const load: Record<string, Load> = {};
  const cpu0 = cpuSnapshot();
  for (const suite of suites) {
    options.log(`suite ${suite.name} (${options.warmup} warm-up + ${options.reps} reps per case${options.quick ? ', quick sizes' : ''})`);
    const ctx = new BenchContext(suite.name, options);
    const before = cpuSnapshot();
    await suite.run(ctx);
    load[suite.name] = otherLoad(before, cpuSnapshot());
    printSuite(write, suite, ctx.measurements);
    printLoad(write, suite.name, load[suite.name]!);
    all.push(...ctx.measurements);
  }
  load['all'] = otherLoad(cpu0, cpuSnapshot());
  const failed = all.filter((m) => m.pass === false).map((m) => m.id);
  const loadEnd = Math.round(loadavg()[0]! * 100) / 100;
  const shown = failed.slice(0, 8).join('; ') + (failed.length > 8 ? `; ... ${failed.length - 8} more` : '');
  write(
    `\n${all.length} measurements in ${((Date.now() - started) / 1000).toFixed(1)} s; load average ${machine.loadavg1} at start, ${loadEnd} at end; ` +
      `targets: ${all.filter((m) => m.pass === true).length} pass, ${failed.length} fail${failed.length ? ` (${shown})` : ''}\n`,
  );
  const measurements: Record<string, Omit<Measurement, 'id'>> = {};
  for (const { id, ...rest } of all) measurements[id] = rest;
  return {
    bench: 'iommud',
    machine: { ...machine, loadavg1End: loadEnd, otherLoad: load },
    options: { suites: suites.map((s) => s.name), reps: options.reps, warmup: options.warmup, filters: options.filters, quick: options.quick, connect: options.connect ?? null },
    measurements,
  };
}

/** The measurements of a result as a list, ids restored. */
export function measurementList(r: BenchResult): Measurement[] {
  return Object.entries(r.measurements).map(([id, m]) => ({ id, ...m }));
}
