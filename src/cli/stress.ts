/**
 * `iommud stress` and `iommud replay`: the concurrency tester (src/stress) on the command line, with a
 * progress bar on stderr, a report on stdout, and --json for machines. Exit codes: 0 no violation,
 * 1 a violation (or a replay whose answers differ), 2 a bad command line.
 */
import { randomInt } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { defaultSocketPath } from '../server/socket-path.js';
import { runStress, type StressConfig, type StressResult } from '../stress/run.js';
import { CALLER_RUNS, DaemonTarget, InProcessTarget, PLANTED_BUGS, type PlantedBug, type StressTarget } from '../stress/target.js';
import { readTrace, TRACE_FORMAT, writeTrace } from '../stress/trace.js';
import { MAX_CLIENTS, OP_NAMES } from '../stress/workload.js';
import { parseBytes, parseCount, UsageError } from './options.js';

const FAULTS = ['worker-kill', 'drop', 'defer'] as const;
type FaultName = (typeof FAULTS)[number];

export const STRESS_HELP = `Usage: iommud stress [options]

Runs N clients at once against one domain, each issuing a seeded random mix of map, unmap, map_sg,
unmap_sg, iova_to_phys, translate and iotlb_sync, and checks every answer:
  - in its private window each client's answers must be exactly a reference model's (results, byte
    counts, error codes), and a failed call must leave nothing behind;
  - in shared slots, which all clients map and unmap at once, no read may see a mixed, torn or
    partial mapping, nor one of a call that failed, and every quiet slot must be in a state that
    some order of the successful calls leaves.
Ends with a report (op counts, latency percentiles, faults, checks, violations). Exit code 1 if
anything was violated; the report says how to reproduce it.

Options:
  --duration SECONDS   how long to run (default 10)
  --ops N              stop after N operations in all instead (the same N, seed and clients give
                       each client the same operations)
  --clients N          concurrent clients, 1–${MAX_CLIENTS} (default 4)
  --workers N          worker threads of the in-process engine (default: the number of CPUs)
  --seed N             seed of the random operations (default: a random one, printed)
  --connect SOCKET     run against the daemon at SOCKET (a Unix socket path) instead of in-process;
                       every client is a connection, all in one tenant
  --faults LIST        inject faults, comma-separated (or "all"):
                         worker-kill  kill or break pool workers mid-call (in-process only);
                                      such a map must fail EIO, rolled back whole
                         drop         drop the connection with a request in flight, reconnect
                                      (with --connect only)
                         defer        defer some invalidations, and check that translations are
                                      stale only until the client's iotlb_sync
  --slots N            shared slots (default 6; 0 = private windows only)
  --no-big             no 64Ki-entry calls (those go to the worker pool)
  --caller-runs        in-process: run the engine as the library does by default (callerRuns): the
                       calling thread maps a share of each big map and waits for the helpers'
                       chunks in shared memory; unmaps run inline (default: the daemon's setting,
                       where the pool alone runs every big call)
  --table-memory BYTES page-table memory of the in-process engine, 256M–4G (default 1GiB)
  --record FILE        write the operation trace (MessagePack) for iommud replay
  --json               end stdout with one JSON object: { ops, violations, seed, ... }
  --plant-bug NAME     test the tester: plant a bug in the in-process engine
                       (${PLANTED_BUGS.join(', ')})
  -h, --help           this text
`;

export const REPLAY_HELP = `Usage: iommud replay FILE [options]

Runs the operations recorded by iommud stress --record FILE again, client by client and at once as
before, with the same checks, and compares every answer whose value does not depend on timing
(private windows) with the recorded one. Exit code 1 on a violation or a differing answer.

Options:
  --workers N          worker threads of the in-process engine (default: as recorded, else CPUs)
  --connect SOCKET     replay against the daemon at SOCKET
  --table-memory BYTES page-table memory of the in-process engine (default 1GiB)
  --json               end stdout with one JSON object
  -h, --help           this text
`;

const STRESS_OPTIONS = {
  duration: { type: 'string' },
  ops: { type: 'string' },
  clients: { type: 'string' },
  workers: { type: 'string' },
  seed: { type: 'string' },
  connect: { type: 'string' },
  faults: { type: 'string' },
  slots: { type: 'string' },
  'no-big': { type: 'boolean' },
  'caller-runs': { type: 'boolean' },
  'table-memory': { type: 'string' },
  record: { type: 'string' },
  json: { type: 'boolean' },
  'plant-bug': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const REPLAY_OPTIONS = {
  workers: { type: 'string' },
  connect: { type: 'string' },
  'table-memory': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parse<O extends typeof STRESS_OPTIONS | typeof REPLAY_OPTIONS>(command: string, args: string[], options: O) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message} (see iommud ${command} --help)`);
  }
}

function parseFaults(text: string | undefined): Set<FaultName> {
  if (text === undefined) return new Set();
  if (text === 'all') return new Set(FAULTS);
  const out = new Set<FaultName>();
  for (const f of text.split(',').map((x) => x.trim())) {
    if (!(FAULTS as readonly string[]).includes(f)) throw new UsageError(`stress: --faults: unknown fault '${f}' (known: ${FAULTS.join(', ')}, or all)`);
    out.add(f as FaultName);
  }
  return out;
}

/** The checks do not model table memory running out (ENOMEM), so the engine gets plenty. */
function tableMemory(text: string | undefined): number {
  if (text === undefined) return 2 ** 30;
  const n = parseBytes('--table-memory', text);
  if (n < 2 ** 28 || n > 2 ** 32) throw new UsageError('--table-memory must be from 256M to 4G (the checks do not model running out of table memory)');
  return n;
}

async function openTarget(connect: string | undefined, workers: number, tableMemoryBytes: number, seed: number, callerRuns: boolean): Promise<StressTarget> {
  if (connect === undefined) return InProcessTarget.create(workers, tableMemoryBytes, callerRuns);
  // A tenant of its own, so the run shares nothing with anybody else's objects.
  return DaemonTarget.connect(connect || defaultSocketPath(), `stress-${seed}-${process.pid}-${Date.now()}`);
}

export async function stress(args: string[]): Promise<number> {
  const { values: v, positionals } = parse('stress', args, STRESS_OPTIONS);
  if (v.help) {
    process.stdout.write(STRESS_HELP);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`stress: unexpected argument '${positionals[0]}' (see iommud stress --help)`);
  const faults = parseFaults(v.faults);
  const connect = v.connect;
  if (connect !== undefined && v.workers !== undefined) throw new UsageError('stress: --workers is the in-process engine\'s; the daemon has its own (iommud serve --workers)');
  if (connect !== undefined && faults.has('worker-kill')) throw new UsageError('stress: --faults worker-kill needs the in-process engine (it uses a test-only hook); leave out --connect');
  if (connect === undefined && faults.has('drop')) throw new UsageError('stress: --faults drop needs --connect: an in-process client has no connection to drop');
  const plantBug = v['plant-bug'] ?? null;
  if (plantBug !== null && !(PLANTED_BUGS as readonly string[]).includes(plantBug)) {
    throw new UsageError(`stress: --plant-bug: unknown bug '${plantBug}' (known: ${PLANTED_BUGS.join(', ')})`);
  }
  if (plantBug !== null && connect !== undefined) throw new UsageError('stress: --plant-bug plants into the in-process engine; leave out --connect');
  const callerRuns = v['caller-runs'] === true;
  if (callerRuns && connect !== undefined) throw new UsageError('stress: --caller-runs sets up the in-process engine; the daemon always runs big calls on its pool; leave out --connect');
  const config: StressConfig = {
    seed: v.seed === undefined ? randomInt(2 ** 31) : parseCount('--seed', v.seed, 0, 2 ** 32 - 1),
    clients: v.clients === undefined ? 4 : parseCount('--clients', v.clients, 1, MAX_CLIENTS),
    ops: v.ops === undefined ? null : parseCount('--ops', v.ops, 1, 2 ** 40),
    durationSeconds: v.duration === undefined ? 10 : parseSeconds(v.duration),
    slots: v.slots === undefined ? 6 : parseCount('--slots', v.slots, 0, 64),
    bigSlots: 0,
    big: !v['no-big'],
    defer: faults.has('defer'),
    workerFaults: faults.has('worker-kill'),
    drops: faults.has('drop'),
    plantBug: plantBug as PlantedBug | null,
  };
  // Two of the shared slots hold 64Ki pages, so their calls go to the pool, unless --no-big.
  config.bigSlots = config.big ? Math.min(2, config.slots) : 0;
  const workers = v.workers === undefined ? availableParallelism() : parseCount('--workers', v.workers, 0, 256);
  const tableMemoryBytes = tableMemory(v['table-memory']);

  const target = await openTarget(connect, workers, tableMemoryBytes, config.seed, callerRuns);
  let result: StressResult;
  const bar = progressBar(config);
  try {
    result = await runStress(target, config, { progress: bar.update, record: v.record !== undefined });
  } finally {
    bar.stop();
    await target.close();
  }
  if (v.record !== undefined) writeTrace(v.record, { format: TRACE_FORMAT, version: 1, config, target: result.target, clients: result.trace! });
  printReport(result, { workers: target.workers, connect, record: v.record, callerRuns });
  if (v.json) process.stdout.write(JSON.stringify(jsonOf(result)) + '\n');
  return result.violations > 0 ? 1 : 0;
}

export async function replay(args: string[]): Promise<number> {
  const { values: v, positionals } = parse('replay', args, REPLAY_OPTIONS);
  if (v.help) {
    process.stdout.write(REPLAY_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('replay: give exactly one trace FILE (see iommud replay --help)');
  let trace;
  try {
    trace = readTrace(positionals[0]!);
  } catch (e) {
    throw new UsageError(`replay: ${(e as Error).message}`);
  }
  const config = trace.config;
  if (v.connect !== undefined && (config.workerFaults || config.plantBug)) {
    throw new UsageError('replay: this trace injects worker faults or a planted bug, which only the in-process engine takes; leave out --connect');
  }
  const recordedWorkers = /(\d+) workers?/.exec(trace.target)?.[1];
  const workers = v.workers !== undefined ? parseCount('--workers', v.workers, 0, 256) : recordedWorkers !== undefined ? Number(recordedWorkers) : availableParallelism();
  const target = await openTarget(v.connect, workers, tableMemory(v['table-memory']), config.seed, v.connect === undefined && trace.target.includes(CALLER_RUNS));
  let result: StressResult;
  const total = trace.clients.reduce((n, c) => n + c.ops.length, 0);
  const bar = progressBar({ ...config, ops: total });
  try {
    result = await runStress(target, config, { progress: bar.update, replay: trace.clients });
  } finally {
    bar.stop();
    await target.close();
  }
  printReport(result, { workers: target.workers, connect: v.connect, record: undefined, replayOf: positionals[0] });
  if (v.json) process.stdout.write(JSON.stringify(jsonOf(result)) + '\n');
  return result.violations > 0 || (result.mismatches ?? 0) > 0 ? 1 : 0;
}

function parseSeconds(text: string): number {
  const n = Number(text);
  if (!/^\s*\d+(\.\d+)?\s*$/.test(text) || !(n > 0) || n > 7 * 86400) throw new UsageError(`--duration takes seconds, more than 0, such as 10 or 2.5, not '${text}'`);
  return n;
}

/** A bar on a terminal; elsewhere a line every few seconds, so that logs stay readable. */
function progressBar(config: StressConfig): { update: (ops: number, violations: number) => void; stop: () => void } {
  const stream = process.stderr;
  const byOps = config.ops !== null;
  const total = byOps ? config.ops! : Math.round(config.durationSeconds * 10);
  const started = Date.now();
  if (!stream.isTTY) {
    let last = 0;
    return {
      update: (ops, violations) => {
        if (Date.now() - last < 5000) return;
        last = Date.now();
        stream.write(`  stress: ${((Date.now() - started) / 1000).toFixed(0)} s, ${ops} ops, ${violations} violations\n`);
      },
      stop: () => undefined,
    };
  }
  const bar = new cliProgress.SingleBar(
    { stream, format: '  stress [{bar}] {percentage}% | {ops} ops | {violations} violations | {duration}s', clearOnComplete: true, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { ops: 0, violations: 0 });
  return {
    update: (ops, violations) => bar.update(byOps ? ops : Math.min(total, Math.round((Date.now() - started) / 100)), { ops, violations }),
    stop: () => bar.stop(),
  };
}

function printReport(r: StressResult, how: { workers: number | null; connect: string | undefined; record: string | undefined; replayOf?: string; callerRuns?: boolean }): void {
  const c = r.config;
  const w = (line = ''): void => void process.stdout.write(line + '\n');
  const n = (x: number): string => x.toLocaleString('en-US');
  const faults = [c.workerFaults && 'worker-kill', c.drops && 'drop', c.defer && 'defer'].filter(Boolean).join(',');
  w(`iommud ${how.replayOf ? `replay of ${how.replayOf}` : 'stress'}: ${c.clients} clients, ${r.target}, seed ${c.seed}${faults ? `, faults ${faults}` : ''}${c.plantBug ? `, planted bug ${c.plantBug}` : ''}`);
  w(`  ${n(r.ops)} operations in ${(r.durationMs / 1000).toFixed(1)} s (${n(Math.round(r.ops / (r.durationMs / 1000)))}/s)`);
  w();
  w('  op              count    errors    p50 µs    p99 µs    max µs');
  for (const name of OP_NAMES) {
    const s = r.byOp[name];
    if (!s) continue;
    w(`  ${name.padEnd(12)} ${n(s.count).padStart(8)} ${n(s.errors).padStart(9)} ${s.p50.toFixed(1).padStart(9)} ${s.p99.toFixed(1).padStart(9)} ${s.max.toFixed(1).padStart(9)}`);
  }
  w();
  w(`  checks: ${n(r.checks.privateReads)} private reads, ${n(r.checks.slotReads)} shared-slot reads, ${n(r.checks.slotChecks)} quiet-slot checks, ${n(r.checks.audits)} audits`);
  const f = r.faults;
  w(`  faults: ${n(f.workerFaultsPlanned)} worker faults planned, ${n(f.eio)} calls failed EIO and rolled back, ${n(f.drops)} connections dropped, ${n(f.staleTranslations)} stale translations seen`);
  if (r.compared !== undefined) w(`  replay: ${n(r.compared)} answers compared with the recording, ${n(r.mismatches ?? 0)} differ`);
  if (how.record) w(`  trace written to ${how.record}`);
  w();
  if (r.violations === 0) {
    w(`PASS: no violations`);
    return;
  }
  w(`FAIL: ${n(r.violations)} violation${r.violations === 1 ? '' : 's'}${r.details.length < r.violations ? ` (the first ${r.details.length} shown)` : ''}`);
  for (const v of r.details) {
    const where = v.client < 0 ? 'at the end' : v.index < 0 ? `client ${v.client}` : `client ${v.client}, op ${v.index}`;
    w(`  - ${where}: ${v.message}`);
    if (v.op) w(`      ${JSON.stringify(v.op, (_k, x: unknown) => (typeof x === 'number' && x > 0xffff ? '0x' + x.toString(16) : x))}`);
  }
  if (!how.replayOf) {
    const args = [`--seed ${c.seed}`, `--clients ${c.clients}`, c.ops !== null ? `--ops ${c.ops}` : `--duration ${c.durationSeconds}`];
    if (how.workers !== null) args.push(`--workers ${how.workers}`);
    if (how.connect !== undefined) args.push(`--connect ${how.connect}`);
    if (how.callerRuns) args.push('--caller-runs');
    if (faults) args.push(`--faults ${faults}`);
    if (c.slots !== 6) args.push(`--slots ${c.slots}`);
    if (!c.big) args.push('--no-big');
    if (c.plantBug) args.push(`--plant-bug ${c.plantBug}`);
    // Each client's operations follow from the seed; a timed run stops them wherever time ran out, so
    // only a recorded trace replays exactly the same calls.
    w(`reproduce: iommud stress ${args.join(' ')}${c.ops === null ? '   (or add --record FILE, then iommud replay FILE)' : ''}`);
  }
}

function jsonOf(r: StressResult): object {
  return {
    stress: 'iommud',
    ops: r.ops,
    violations: r.violations,
    seed: r.config.seed,
    config: r.config,
    target: r.target,
    durationMs: Math.round(r.durationMs),
    opsPerSecond: Math.round(r.ops / (r.durationMs / 1000)),
    byOp: r.byOp,
    checks: r.checks,
    faults: r.faults,
    details: r.details,
    ...(r.compared !== undefined ? { compared: r.compared, mismatches: r.mismatches } : {}),
  };
}
