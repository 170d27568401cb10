/**
 * iommud benchmarks: `npm run bench [-- SUITE... [--json] [--reps N] [--warmup N] [--filter TEXT]]`.
 *
 * Human-readable tables go to stdout and progress to stderr; with --json the last line on stdout is
 * one JSON object: { bench, machine, options, measurements: { <id>: {...}, ... } }, one entry per
 * measurement. See docs/performance.md for what is measured and the results on the reference machine.
 *
 * To add a suite: write scripts/bench/<name>.ts exporting a `Suite` (see scripts/bench/harness.ts and
 * scripts/bench/core.ts) and add it to SUITES below; it is then selectable by name.
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { coreSuite } from './bench/core.js';
import { BenchContext, fmt, gc, targetText, type Measurement, type RunOptions, type Suite } from './bench/harness.js';
import { cpuSnapshot, machineInfo, otherLoad, type MachineInfo } from './bench/machine.js';
import { parallelSuite } from './bench/parallel.js';

/** Every suite, in the order a full run executes them. */
const SUITES: readonly Suite[] = [coreSuite, parallelSuite];

const USAGE = `usage: node dist/scripts/bench.js [SUITE...] [options]
       npm run bench -- [SUITE...] [options]

Runs the named suites (default: all). Suites:
${SUITES.map((s) => `  ${s.name.padEnd(10)} ${s.description}`).join('\n')}

Options:
  --json           end stdout with one JSON object holding every measurement
  --reps N         recorded repetitions per case (default 7)
  --warmup N       discarded warm-up repetitions per case (default 2)
  --filter TEXT    run only cases whose "group/case" contains TEXT (repeatable)
  --list           list the suites and exit
  -h, --help       this help
`;

interface Cli {
  suites: Suite[];
  json: boolean;
  reps: number;
  warmup: number;
  filters: string[];
}

function parseCli(argv: string[]): Cli | null {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: 'boolean', default: false },
      reps: { type: 'string', default: '7' },
      warmup: { type: 'string', default: '2' },
      filter: { type: 'string', multiple: true, default: [] },
      list: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return null;
  }
  if (values.list) {
    for (const s of SUITES) process.stdout.write(`${s.name}\t${s.description}\n`);
    return null;
  }
  const int = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${v}`);
    return n;
  };
  const suites: Suite[] = [];
  for (const name of positionals) {
    const s = SUITES.find((x) => x.name === name);
    if (!s) throw new UsageError(`unknown suite '${name}' (known: ${SUITES.map((x) => x.name).join(', ')})`);
    if (!suites.includes(s)) suites.push(s);
  }
  return {
    suites: suites.length > 0 ? suites : [...SUITES],
    json: values.json,
    reps: int('reps', values.reps, 1),
    warmup: int('warmup', values.warmup, 0),
    filters: values.filter,
  };
}

class UsageError extends Error {}

function printMachine(m: MachineInfo): void {
  process.stdout.write(
    `iommud bench — ${m.cpuModel}, nproc ${m.nproc}, node ${m.node} (V8 ${m.v8}), ${m.platform}, ` +
      `${m.memoryGiB} GiB, load average ${m.loadavg1} at start` +
      (m.git ? `, code ${m.git.commit}${m.git.changedFiles ? ` + ${m.git.changedFiles} changed files in src/, workers/` : ''}` : '') +
      '\n',
  );
}

function printSuite(suite: Suite, ms: Measurement[]): void {
  const rows = ms.map((m) => [
    m.name,
    fmt(m.median),
    m.kind === 'memory' ? '' : fmt(m.min),
    m.kind === 'memory' ? '' : fmt(m.max),
    m.unit,
    m.kind === 'memory' || m.kind === 'ratio' ? '' : String(m.samples.length),
    m.target ? targetText(m.target) : '',
    m.pass === undefined ? '' : m.pass ? 'PASS' : 'FAIL',
  ]);
  const head = ['measurement', 'median', 'min', 'max', 'unit', 'n', 'target', ''];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 || i === 4 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  process.stdout.write(`\n== ${suite.name}: ${suite.description}\n`);
  let group = '';
  process.stdout.write(`  ${line(head)}\n`);
  ms.forEach((m, i) => {
    if (m.group !== group) {
      group = m.group;
      const busy = m.othersCores !== undefined && m.othersCores >= 0.1 ? `  (other processes used ${m.othersCores} cores meanwhile)` : '';
      process.stdout.write(`  -- ${group}${busy}\n`);
    }
    process.stdout.write(`  ${line(rows[i]!)}\n`);
  });
  const notes = ms.filter((m) => m.kind === 'memory' && m.note);
  if (notes.length > 0) {
    process.stdout.write('  notes:\n');
    const printed = new Set<string>();
    for (const m of notes) {
      const shared = notes.filter((o) => o.note === m.note).length > 1;
      if (printed.has(m.note!)) continue;
      printed.add(m.note!);
      process.stdout.write(`    ${shared ? `${m.group} (all)` : m.name}: ${m.note}\n`);
    }
  }
}

/** Other processes' CPU use during a suite: on 2 cores, anything above ~0.1 core shows in the numbers. */
function printLoad(name: string, l: ReturnType<typeof otherLoad>): void {
  if (l.othersCores === null) return;
  process.stdout.write(`  (while ${name} ran, other processes used ${l.othersCores} cores on average; hypervisor steal ${l.stealCores} cores)\n`);
}

async function main(): Promise<number> {
  let cli: Cli | null;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`bench: ${(e as Error).message}\n\n${USAGE}`);
      return 2;
    }
    throw e;
  }
  if (!cli) return 0;
  if (!gc) process.stderr.write('bench: warning: no gc() available; GC may land inside timed regions\n');
  const machine = machineInfo();
  printMachine(machine);
  const options: RunOptions = {
    reps: cli.reps,
    warmup: cli.warmup,
    filters: cli.filters,
    log: (l) => process.stderr.write(l + '\n'),
  };
  const all: Measurement[] = [];
  const started = Date.now();
  const load: Record<string, ReturnType<typeof otherLoad>> = {};
  const cpu0 = cpuSnapshot();
  for (const suite of cli.suites) {
    options.log(`suite ${suite.name} (${cli.warmup} warm-up + ${cli.reps} reps per case)`);
    const ctx = new BenchContext(suite.name, options);
    const before = cpuSnapshot();
    await suite.run(ctx);
    load[suite.name] = otherLoad(before, cpuSnapshot());
    printSuite(suite, ctx.measurements);
    printLoad(suite.name, load[suite.name]!);
    all.push(...ctx.measurements);
  }
  load['all'] = otherLoad(cpu0, cpuSnapshot());
  const failed = all.filter((m) => m.pass === false).map((m) => m.id);
  const loadEnd = Math.round(loadavg()[0]! * 100) / 100;
  const shown = failed.slice(0, 8).join('; ') + (failed.length > 8 ? `; ... ${failed.length - 8} more` : '');
  process.stdout.write(
    `\n${all.length} measurements in ${((Date.now() - started) / 1000).toFixed(1)} s; load average ${machine.loadavg1} at start, ${loadEnd} at end; ` +
      `targets: ${all.filter((m) => m.pass === true).length} pass, ${failed.length} fail${failed.length ? ` (${shown})` : ''}\n`,
  );
  if (cli.json) {
    const measurements: Record<string, Omit<Measurement, 'id'>> = {};
    for (const { id, ...rest } of all) measurements[id] = rest;
    const out = {
      bench: 'iommud',
      machine: { ...machine, loadavg1End: loadEnd, otherLoad: load },
      options: { suites: cli.suites.map((s) => s.name), reps: cli.reps, warmup: cli.warmup, filters: cli.filters },
      measurements,
    };
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);
