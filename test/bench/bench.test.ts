/**
 * `iommud bench` as a user runs it: `node dist/src/cli/main.js bench ...` in a child process, on
 * --quick sizes. Checks what the tool promises — the tables, the --json shape, exact invalidation
 * counts, the daemon suite against a real daemon, --compare against an older file, the --plot SVG,
 * and exit code 2 on bad usage — never how fast anything is.
 */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DOMParser } from '@xmldom/xmldom';
import { runCli, startDaemon, tempDir } from '../server/daemon.js';

interface JsonMeasurement {
  suite: string;
  group: string;
  name: string;
  unit: string;
  kind: string;
  median: number;
  min: number;
  max: number;
  samples: number[];
  opsPerSample: number;
  target?: { min?: number; max?: number; source: string };
  pass?: boolean;
}

interface JsonRun {
  bench: string;
  machine: Record<string, unknown> & { nproc: number; node: string; otherLoad: Record<string, unknown> };
  options: { suites: string[]; reps: number; warmup: number; filters: string[]; quick: boolean };
  measurements: Record<string, JsonMeasurement>;
  comparison?: { file: string; changes: { id: string; old: number; new: number; change: number; verdict: string }[]; onlyOld: string[]; onlyNew: string[] };
}

const KINDS = ['time', 'memory', 'ratio', 'paired', 'derived', 'count'];

async function bench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; json: JsonRun | null }> {
  const r = await runCli(['bench', ...args]);
  const last = r.stdout.trimEnd().split('\n').pop() ?? '';
  return { ...r, json: last.startsWith('{') ? (JSON.parse(last) as JsonRun) : null };
}

/** One quick iotlb run, shared: its JSON is the "old" run of the --compare test. */
const iotlbRun = bench(['iotlb', '--quick', '--json']);

function checkShape(t: import('ava').ExecutionContext, run: JsonRun, suites: string[]): void {
  t.is(run.bench, 'iommud');
  t.deepEqual(run.options.suites, suites);
  t.true(run.options.quick);
  t.is(run.options.reps, 1);
  t.is(typeof run.machine.nproc, 'number');
  t.is(run.machine.node, process.version);
  t.truthy(run.machine.otherLoad);
  for (const [id, m] of Object.entries(run.measurements)) {
    t.is(id, `${m.suite}.${m.name}`);
    t.true(suites.includes(m.suite), id);
    t.true(KINDS.includes(m.kind), `${id}: kind ${m.kind}`);
    t.true(typeof m.unit === 'string' && m.unit !== '' && typeof m.group === 'string', id);
    t.true(m.samples.length > 0 && m.samples.every(Number.isFinite), id);
    t.true(m.min <= m.median && m.median <= m.max, id);
    t.true(Number.isFinite(m.opsPerSample), id);
  }
}

test('bench iotlb --quick --json: a table, then one JSON object with one entry per measurement', async (t) => {
  const r = await iotlbRun;
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^== iotlb: /m);
  t.regex(r.stdout, /^ {2}translate, IOTLB hit \(1Ki pages\) +[\d,.]+ /m);
  t.truthy(r.json);
  const run = r.json!;
  checkShape(t, run, ['iotlb']);
  const m = run.measurements;
  for (const id of ['translate, IOTLB hit (1Ki pages)', 'translate, IOTLB miss, walk-cache hit (8Ki pages in 16 leaf tables)', 'translate, IOTLB miss, full walk (8Ki pages, a leaf table each)']) {
    t.is(m[`iotlb.${id}`]?.kind, 'time', id);
    t.is(m[`iotlb.${id}`]?.unit, 'ns/translate');
  }
  const rate = m['iotlb.translate, IOTLB hit: millions per second']!;
  t.is(rate.target?.min, 10);
  t.is(rate.pass, rate.median >= 10);
  t.is(rate.median, 1000 / m['iotlb.translate, IOTLB hit (1Ki pages)']!.median);
  // The counts are the engine's contract: one batch per map_sg and per unmap_sg, one per map()/unmap() call.
  for (const n of [16, 256]) {
    t.is(m[`iotlb.batching ${n} x 4K, map_sg + one batch: syncs per round`]?.median, 2);
    t.is(m[`iotlb.batching ${n} x 4K, per-segment map/unmap: syncs per round`]?.median, 2 * n);
    t.is(m[`iotlb.batching ${n} x 4K, per-segment map/unmap: syncs per round`]?.kind, 'count');
    const modelled = m[`iotlb.batching ${n} x 4K, per-segment map/unmap: modelled invalidation time per round`]!;
    const commands = m[`iotlb.batching ${n} x 4K, per-segment map/unmap: invalidation commands per round`]!;
    t.is(modelled.median, (2 * n * 1000 + commands.median * 100) / 1000);
    t.is(m[`iotlb.${n} segments: syncs, per-segment / batched`]?.median, n);
  }
});

test('bench daemon --quick --json: the real daemon over its socket, every case with rates and latencies', async (t) => {
  const r = await bench(['daemon', '--quick', '--json']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /starting iommud serve/);
  const run = r.json!;
  checkShape(t, run, ['daemon']);
  for (const label of ['1 connection, no pipelining', '16 connections, no pipelining', '1 connection, pipelining 16 deep', '16 connections, pipelining 16 deep']) {
    const m = (what: string) => run.measurements[`daemon.${label}: ${what}`];
    t.is(m('time per request')?.unit, 'ns/request', label);
    t.is(m('requests per second')?.median, 1e9 / m('time per request')!.median, label);
    t.true(m('p50 latency')!.median > 0 && m('p50 latency')!.median <= m('p99 latency')!.median, label);
    // From /proc/<daemon pid>/stat in 10 ms ticks: a quick case may take less than one.
    t.true(m('daemon CPU per request')!.median >= 0 && m('daemon CPU')!.median >= 0, label);
    t.regex(r.stdout, new RegExp(`^ {2}${label}: requests per second +[\\d,]+ `, 'm'));
  }
});

test('bench --connect SOCKET: the daemon suite against a running daemon, which keeps running', async (t) => {
  const daemon = await startDaemon();
  t.teardown(() => daemon.stop());
  const r = await bench(['--connect', daemon.socket, '--quick', '--json']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`against the daemon at ${daemon.socket}`));
  const run = r.json!;
  checkShape(t, run, ['daemon']);
  t.is((run.options as { connect?: string }).connect, daemon.socket);
  t.true(run.measurements['daemon.16 connections, pipelining 16 deep: requests per second']!.median > 0);
  t.false('daemon.1 connection, no pipelining: daemon CPU per request' in run.measurements, 'no pid, so no CPU reading');
  t.is(daemon.proc.exitCode, null, 'the daemon is still serving');
  const usage = await runCli(['bench', 'core', '--connect', daemon.socket]);
  t.is(usage.code, 2);
  t.regex(usage.stderr, /--connect runs the daemon suite only/);
  t.is((await daemon.stop()).code, 0);
});

test('bench parallel --quick --json through a pipe: a JSON line of over 64 KiB arrives whole (stdout is flushed before exit)', async (t) => {
  t.timeout(120_000);
  const r = await bench(['parallel', '--quick', '--json']);
  t.is(r.code, 0, r.stderr);
  const line = r.stdout.trimEnd().split('\n').pop()!;
  t.true(line.length > 65_536, `${line.length} bytes`);
  const run = r.json!;
  checkShape(t, run, ['parallel']);
  t.truthy(run.measurements['parallel.speed-up contiguous 1Mi x 4K, map, new tables, workers 2 vs 0'], 'the speed-ups are there');
  // The latency limit: a skew of the two threads' times (>= 1), and the ceiling it implies (1-2).
  const skew = run.measurements['parallel.dependent loads, 2 threads: slower half / faster half (time)'];
  const ceiling = run.measurements['parallel.dependent loads: best 2-thread speed-up over 1 thread on the faster vCPU (1 + faster / slower)'];
  t.true(skew !== undefined && skew.median >= 1, 'the latency skew is measured');
  t.true(ceiling !== undefined && ceiling.median > 1 && ceiling.median <= 2, `ceiling ${ceiling?.median}`);
  t.is(ceiling!.median, 1 + 1 / skew!.median);
  t.true(run.measurements['parallel.dependent loads over a random 32 MiB cycle, 1 thread']!.median > 0);
});

test('bench --compare: every measurement against the older file, with its change and verdict', async (t) => {
  const first = await iotlbRun;
  t.is(first.code, 0, first.stderr);
  const old = structuredClone(first.json!);
  // An older run that needed twice the syncs: the new run must show -50.0% and "better".
  const syncs = 'iotlb.batching 16 x 4K, per-segment map/unmap: syncs per round';
  old.measurements[syncs] = { ...old.measurements[syncs]!, median: 64, min: 64, max: 64, samples: [64] };
  old.measurements['iotlb.gone since'] = { ...old.measurements[syncs]!, name: 'gone since' };
  const file = join(tempDir(), 'old.json');
  writeFileSync(file, `some table text\n${JSON.stringify(old)}\n`);
  const r = await bench(['iotlb', '--quick', '--filter', 'batching 16 x', '--json', '--compare', file]);
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.includes(`== compared with ${file}`));
  const line = r.stdout.split('\n').find((l) => l.trimStart().startsWith(syncs));
  t.regex(line ?? '', /\s64\.0\s+32\.0\s+syncs\s+-50\.0%\s+better$/);
  t.regex(r.stdout, / 0 only in this run, \d+ only in /);
  const c = r.json!.comparison!;
  t.is(c.file, file);
  t.true(c.onlyOld.includes('iotlb.gone since'));
  const change = c.changes.find((x) => x.id === syncs)!;
  t.is(change.change, -0.5);
  t.is(change.verdict, 'better');
  // Every measurement of the run was compared (all are in the old file) ...
  t.deepEqual(c.changes.map((x) => x.id).sort(), Object.keys(r.json!.measurements).sort());
  t.deepEqual(c.onlyNew, []);
  // ... and each change is of the medians.
  for (const x of c.changes) {
    t.is(x.old, old.measurements[x.id]!.median, x.id);
    t.is(x.change, r.json!.measurements[x.id]!.median / x.old - 1, x.id);
  }
});

/** The SVG's text (titles, legends, axes) and the aria-labels of its marks. */
function readSvg(t: import('ava').ExecutionContext, path: string): { root: string; texts: string[]; labels: string[] } {
  const errors: string[] = [];
  const doc = new DOMParser({ onError: (level, msg) => void (level !== 'warning' && errors.push(msg)) }).parseFromString(readFileSync(path, 'utf8'), 'image/svg+xml');
  t.deepEqual(errors, []);
  const texts = Array.from(doc.getElementsByTagName('text')).map((e) => e.textContent ?? '');
  const labels: string[] = [];
  const all = doc.getElementsByTagName('*');
  for (let i = 0; i < all.length; i++) {
    const l = all[i]!.getAttribute('aria-label');
    if (l) labels.push(l);
  }
  return { root: doc.documentElement!.tagName, texts, labels };
}

test('bench --plot: an SVG chart whose legends and marks name the scaling and batching series', async (t) => {
  const file = join(tempDir(), 'chart.svg');
  const r = await bench(['parallel', 'iotlb', '--quick', '--filter', 'scattered 64Ki', '--filter', 'batching', '--plot', file]);
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.includes(`chart written to ${file}`));
  const svg = readSvg(t, file);
  t.is(svg.root, 'svg');
  for (const title of ['Parallel scaling: speed-up over inline (median of per-repetition ratios)', 'map, new tables', 'map, tables present', 'unmap', 'syncs per round']) {
    t.true(svg.texts.includes(title), title);
  }
  // One legend entry and marks for every series.
  for (const [field, series] of [['list', 'scattered 64Ki x 4K'], ['strategy', 'map_sg + one batch'], ['strategy', 'per-segment map/unmap']] as const) {
    t.true(svg.texts.includes(series), series);
    t.true(svg.labels.some((l) => l.includes(`${field}: ${series}`)), series);
  }
  // A point at workers 0, 1 and 2 for each of the three operations of the one list.
  for (const w of [0, 1, 2]) {
    t.true(svg.labels.filter((l) => l.startsWith(`workers: ${w}; speed-up (×): `) && l.endsWith('list: scattered 64Ki x 4K')).length >= 3, `workers ${w}`);
  }
});

test('bench: bad usage is a message and exit code 2, before anything runs', async (t) => {
  const dir = tempDir();
  const notBench = join(dir, 'other.json');
  writeFileSync(notBench, '{"hello": 1}\n');
  const cases: [string[], RegExp][] = [
    [['nosuch'], /unknown suite 'nosuch' \(known: core, parallel, iotlb, daemon\)/],
    [['iotlb', '--reps', '0'], /--reps must be from 1/],
    [['iotlb', '--warmup', 'x'], /--warmup takes a whole number/],
    [['iotlb', '--bogus'], /Unknown option '--bogus'/],
    [['core', '--plot', join(dir, 'c.svg')], /--plot draws results of the parallel and iotlb suites/],
    [['iotlb', '--plot', join(dir, 'no', 'such', 'c.svg')], /no directory/],
    [['iotlb', '--compare', join(dir, 'missing.json')], /--compare: cannot read .*ENOENT/],
    [['iotlb', '--compare', notBench], /is not the output of iommud bench --json/],
  ];
  await Promise.all(
    cases.map(async ([args, message]) => {
      const r = await bench(args);
      t.is(r.code, 2, args.join(' '));
      t.regex(r.stderr, message, args.join(' '));
      t.notRegex(r.stdout, /^== /m, args.join(' '));
    }),
  );
});

test('bench --help and --list name every suite; iommud --help names bench', async (t) => {
  const [help, list, main] = await Promise.all([bench(['--help']), bench(['--list']), runCli(['--help'])]);
  t.is(help.code, 0);
  t.regex(help.stdout, /^Usage: iommud bench \[SUITE\.\.\.\] \[options\]/);
  for (const o of ['--json', '--compare FILE', '--plot FILE.svg', '--quick']) t.true(help.stdout.includes(o), o);
  t.deepEqual(list.stdout.trim().split('\n').map((l) => l.split('\t')[0]), ['core', 'parallel', 'iotlb', 'daemon']);
  t.regex(main.stdout, /iommud bench \[SUITE\.\.\.\]/);
});
