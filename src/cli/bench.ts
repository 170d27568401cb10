/**
 * `iommud bench`: runs the benchmark suites of src/bench, prints a table per suite, and optionally
 * the JSON of the whole run (--json), its change against an older run (--compare) and a chart of
 * its scaling and batching results (--plot). Everything a bad command line can get wrong is checked
 * before anything runs: a usage error costs no benchmark time.
 */
import { accessSync, constants, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { compare, printComparison, readResult } from '../bench/compare.js';
import { gc, type RunOptions, type Suite } from '../bench/harness.js';
import { plotSvg, plottable, PLOTTED_SUITES } from '../bench/plot.js';
import { stderrProgress } from '../bench/progress.js';
import { measurementList, runSuites, SUITES } from '../bench/run.js';
import { parseCount, UsageError } from './options.js';

export const BENCH_HELP = `Usage: iommud bench [SUITE...] [options]

Runs benchmark suites (default: all, in this order) and prints a table for each; progress goes to
stderr. The numbers are medians of repetitions run round-robin; see docs/performance.md.
Suites:
${SUITES.map((s) => `  ${s.name.padEnd(10)} ${s.description}`).join('\n')}

Options:
  --json            end stdout with one JSON object holding every measurement (one line)
  --compare FILE    print each measurement's change against FILE, an earlier run's --json output
  --plot FILE.svg   draw the parallel scaling and the invalidation batching results as an SVG chart
                    (needs the parallel or the iotlb suite in the run)
  --connect SOCKET  run the daemon suite against the daemon listening at SOCKET (a Unix socket)
                    instead of starting one; only the daemon suite runs (its CPU use is not measured)
  --quick           a run of seconds: 1 repetition, no warm-up, smaller sizes where a suite has them
                    (those cases get their own ids); for smoke tests, not for numbers
  --reps N          recorded repetitions per case (default 7; 1 with --quick)
  --warmup N        discarded warm-up repetitions per case (default 2; 0 with --quick)
  --filter TEXT     run only cases whose "group/case" contains TEXT (repeatable)
  --list            list the suites and exit
  -h, --help        this text
`;

const OPTIONS = {
  json: { type: 'boolean' },
  compare: { type: 'string' },
  plot: { type: 'string' },
  quick: { type: 'boolean' },
  connect: { type: 'string' },
  reps: { type: 'string' },
  warmup: { type: 'string' },
  filter: { type: 'string', multiple: true },
  list: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export async function bench(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError(`bench: ${(e as Error).message} (see iommud bench --help)`);
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    process.stdout.write(BENCH_HELP);
    return 0;
  }
  if (v.list) {
    for (const s of SUITES) process.stdout.write(`${s.name}\t${s.description}\n`);
    return 0;
  }
  const suites: Suite[] = [];
  for (const name of positionals) {
    const s = SUITES.find((x) => x.name === name);
    if (!s) throw new UsageError(`bench: unknown suite '${name}' (known: ${SUITES.map((x) => x.name).join(', ')})`);
    if (!suites.includes(s)) suites.push(s);
  }
  if (v.connect !== undefined) {
    if (v.connect === '') throw new UsageError('bench: --connect needs the daemon\'s socket path');
    if (suites.some((s) => s.name !== 'daemon')) throw new UsageError('bench: --connect runs the daemon suite only; the other suites measure this process\'s engine');
    if (suites.length === 0) suites.push(SUITES.find((s) => s.name === 'daemon')!);
  }
  if (suites.length === 0) suites.push(...SUITES);
  const quick = v.quick ?? false;
  const reps = v.reps === undefined ? (quick ? 1 : 7) : parseCount('--reps', v.reps, 1, 10_000);
  const warmup = v.warmup === undefined ? (quick ? 0 : 2) : parseCount('--warmup', v.warmup, 0, 10_000);
  let old = null;
  if (v.compare !== undefined) {
    try {
      old = readResult(v.compare);
    } catch (e) {
      throw new UsageError(`bench: --compare: ${(e as Error).message}`);
    }
  }
  if (v.plot !== undefined) {
    if (!suites.some((s) => (PLOTTED_SUITES as readonly string[]).includes(s.name))) {
      throw new UsageError(`bench: --plot draws results of the ${PLOTTED_SUITES.join(' and ')} suites; the run has neither`);
    }
    if (!statSync(dirname(v.plot), { throwIfNoEntry: false })?.isDirectory()) {
      throw new UsageError(`bench: --plot ${v.plot}: no directory ${dirname(v.plot)} to write it in`);
    }
    try {
      accessSync(dirname(v.plot), constants.W_OK);
    } catch {
      throw new UsageError(`bench: --plot ${v.plot}: ${dirname(v.plot)} is not writable`);
    }
  }

  if (!gc) process.stderr.write('bench: warning: no gc() available; GC may land inside timed regions\n');
  const options: RunOptions = {
    reps,
    warmup,
    filters: v.filter ?? [],
    quick,
    connect: v.connect ?? null,
    progress: stderrProgress(),
    log: (line) => process.stderr.write(line + '\n'),
  };
  const write = (text: string): void => void process.stdout.write(text);
  const result = await runSuites(suites, options, write);
  const measurements = measurementList(result);
  let comparison = null;
  if (old && v.compare !== undefined) {
    comparison = compare(old, v.compare, measurements);
    printComparison(write, comparison);
  }
  let plotMissing = false;
  if (v.plot !== undefined) {
    if (plottable(measurements)) {
      const m = result.machine;
      const title = `iommud bench ${m.date.slice(0, 10)}${m.git ? ` (${m.git.commit})` : ''}, ${m.nproc} CPUs, node ${m.node}`;
      writeFileSync(v.plot, await plotSvg(measurements, title));
      write(`chart written to ${v.plot}\n`);
    } else {
      process.stderr.write(`bench: --plot: the filters left nothing to draw; ${v.plot} not written\n`);
      plotMissing = true;
    }
  }
  if (v.json) write(JSON.stringify(comparison ? { ...result, comparison } : result) + '\n');
  return plotMissing ? 1 : 0;
}
