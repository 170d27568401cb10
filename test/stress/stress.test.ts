/**
 * `iommud stress` and `iommud replay` as a user runs them: real processes, in-process engines with
 * real worker threads, and a real daemon over its socket. They must pass a healthy engine, find the
 * bugs planted through the test-only hook (and say how to reproduce them), and replay a recorded
 * trace to the same answers — or report where a trace's answers differ.
 */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeValue, encodeValue, toWireIntegers } from '../../src/protocol/msgpack.js';
import { runCli, startDaemon, tempDir } from '../server/daemon.js';

interface StressJson {
  stress: string;
  ops: number;
  violations: number;
  seed: number;
  config: { clients: number; ops: number | null };
  byOp: Record<string, { count: number; errors: number; p50: number; p99: number; max: number }>;
  checks: { privateReads: number; slotReads: number; slotChecks: number; audits: number };
  faults: { workerFaultsPlanned: number; eio: number; drops: number; staleTranslations: number };
  details: { client: number; index: number; message: string }[];
  compared?: number;
  mismatches?: number;
}

async function stress(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; json: StressJson }> {
  const r = await runCli([...args, '--json']);
  const last = r.stdout.trimEnd().split('\n').pop() ?? '';
  let json: StressJson;
  try {
    json = JSON.parse(last) as StressJson;
  } catch {
    throw new Error(`no JSON line; exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
  return { ...r, json };
}

test('a healthy engine passes: every op kind runs and is checked, and the JSON report has its documented shape', async (t) => {
  const r = await stress(['stress', '--ops', '1500', '--seed', '7', '--workers', '2', '--clients', '3']);
  t.is(r.code, 0, r.stdout);
  t.is(r.json.stress, 'iommud');
  t.is(r.json.ops, 1500);
  t.is(r.json.violations, 0, JSON.stringify(r.json.details));
  t.is(r.json.seed, 7);
  for (const op of ['map', 'unmap', 'map_sg', 'unmap_sg', 'iova_to_phys', 'translate']) {
    const s = r.json.byOp[op];
    t.truthy(s && s.count > 0, `${op} ran`);
    t.true(s!.p50 > 0 && s!.p50 <= s!.p99 && s!.p99 <= s!.max, `${op} latency percentiles in order`);
  }
  t.true(r.json.byOp.map!.errors > 0, 'maps that collide (EEXIST) are part of the mix');
  t.true(r.json.checks.privateReads > 0 && r.json.checks.slotReads > 0 && r.json.checks.slotChecks > 0);
  t.is(r.json.checks.audits, 3, 'every client is audited at the end');
  t.regex(r.stdout, /^PASS: no violations$/m);
});

test('a planted lost rollback is found, reported with a command that reproduces it, and found again by it', async (t) => {
  const args = ['stress', '--ops', '1200', '--seed', '11', '--workers', '2', '--plant-bug', 'lost-rollback'];
  const first = await stress(args);
  t.is(first.code, 1, 'a violation exits 1');
  t.true(first.json.violations > 0);
  t.regex(first.json.details[0]!.message, /after the failed call/);
  const repro = /^reproduce: iommud (stress .*)$/m.exec(first.stdout);
  t.truthy(repro, first.stdout);
  t.true(repro![1]!.includes('--seed 11') && repro![1]!.includes('--plant-bug lost-rollback'));
  const again = await stress(repro![1]!.split(' '));
  t.is(again.code, 1);
  const key = (j: StressJson) => j.details.map((d) => `${d.client}:${d.index}:${d.message}`).sort();
  t.deepEqual(key(again.json), key(first.json), 'the same seed finds the same violations');
});

test('a planted lost invalidation is found: a device translates through a leaf that was unmapped', async (t) => {
  const r = await stress(['stress', '--ops', '3000', '--seed', '2', '--workers', '0', '--plant-bug', 'lost-invalidation']);
  t.is(r.code, 1, r.stdout);
  t.true(r.json.details.some((d) => /^translate\(.*allowed: fault translation/.test(d.message)), JSON.stringify(r.json.details));
});

test('worker kills and deferred invalidations: killed maps fail EIO rolled back, stale translations only until the sync; the trace replays', async (t) => {
  const trace = join(tempDir(), 'kills.trace');
  const r = await stress(['stress', '--ops', '3000', '--seed', '3', '--workers', '2', '--faults', 'worker-kill,defer', '--record', trace]);
  t.is(r.code, 0, r.stdout);
  t.is(r.json.violations, 0);
  t.true(r.json.faults.workerFaultsPlanned > 0);
  t.true(r.json.faults.eio > 0, 'some killed calls were maps, failed whole');
  t.true(r.json.faults.staleTranslations > 0, 'the deferred-invalidation window was seen');
  t.true(r.json.byOp.iotlb_sync!.count > 0);
  // Which big call a planned fault hits depends on timing: the replay compares the rest.
  const replay = await stress(['replay', trace]);
  t.is(replay.code, 0, replay.stdout);
  t.is(replay.json.violations, 0);
  t.is(replay.json.mismatches, 0);
  t.true(replay.json.compared! > 1000, `${replay.json.compared} compared`);
});

test('--caller-runs (the library\'s default engine setting) with worker kills: helpers killed while the caller maps fail their maps EIO, rolled back; the trace replays in that mode', async (t) => {
  const trace = join(tempDir(), 'caller.trace');
  const r = await stress(['stress', '--ops', '3000', '--seed', '13', '--workers', '2', '--caller-runs', '--faults', 'worker-kill,defer', '--record', trace]);
  t.is(r.code, 0, r.stdout);
  t.is(r.json.violations, 0, JSON.stringify(r.json.details));
  t.regex(r.stdout, /2 workers, the caller maps a share/);
  t.true(r.json.faults.eio > 0, 'some maps lost a helper mid-chunk and failed whole');
  const replay = await stress(['replay', trace]);
  t.is(replay.code, 0, replay.stdout);
  t.regex(replay.stdout, /the caller maps a share/, 'the replay runs the engine the same way');
  t.is(replay.json.violations, 0);
  t.is(replay.json.mismatches, 0);
});

test('against a daemon over its socket, dropping connections: passes; a recorded trace replays to the same answers', async (t) => {
  const daemon = await startDaemon(['--workers', '2']);
  t.teardown(() => daemon.stop());
  const trace = join(tempDir(), 'run.trace');
  const r = await stress(['stress', '--connect', daemon.socket, '--ops', '1500', '--seed', '5', '--faults', 'drop,defer', '--record', trace]);
  t.is(r.code, 0, r.stdout);
  t.is(r.json.violations, 0);
  t.true(r.json.faults.drops > 0);
  const replay = await stress(['replay', trace, '--connect', daemon.socket]);
  t.is(replay.code, 0, replay.stdout);
  t.is(replay.json.ops, 1500);
  t.true(replay.json.compared! > 600, `${replay.json.compared} answers compared (shared-slot answers depend on timing)`);
  t.is(replay.json.mismatches, 0);
});

test('replay reports answers that differ from the recording, and a file that is not a trace is a usage error', async (t) => {
  const dir = tempDir();
  const trace = join(dir, 'a.trace');
  const r = await stress(['stress', '--ops', '400', '--seed', '9', '--workers', '0', '--slots', '0', '--record', trace]);
  t.is(r.code, 0, r.stdout);
  const same = await stress(['replay', trace]);
  t.is(same.code, 0, same.stdout);
  t.is(same.json.mismatches, 0);
  t.true(same.json.compared! >= 390, 'with no shared slots almost every answer is determined');
  // Change one recorded iova_to_phys answer: the replay must notice.
  const decoded = decodeValue(readFileSync(trace)) as { clients: { ops: { op: string }[]; answers: { ok: boolean; value: number | null }[] }[] };
  const c = decoded.clients[0]!;
  const i = c.ops.findIndex((op) => op.op === 'iova_to_phys');
  t.true(i >= 0);
  c.answers[i] = { ok: true, value: 0x1234000 };
  const tampered = join(dir, 'b.trace');
  writeFileSync(tampered, encodeValue(toWireIntegers(decoded)));
  const diff = await stress(['replay', tampered]);
  t.is(diff.code, 1);
  t.is(diff.json.mismatches, 1);
  writeFileSync(join(dir, 'c.trace'), 'not msgpack at all');
  const bad = await runCli(['replay', join(dir, 'c.trace')]);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /not a MessagePack file|not an iommud stress trace/);
});

test('bad command lines exit 2 with a message, before anything runs', async (t) => {
  for (const [args, message] of [
    [['stress', '--faults', 'drop'], /needs --connect/],
    [['stress', '--faults', 'bogus'], /unknown fault 'bogus'/],
    [['stress', '--connect', '/nonexistent.sock', '--plant-bug', 'lost-rollback'], /in-process engine/],
    [['stress', '--connect', '/nonexistent.sock', '--faults', 'worker-kill'], /in-process engine/],
    [['stress', '--connect', '/nonexistent.sock', '--caller-runs'], /in-process engine/],
    [['stress', '--clients', '0'], /--clients must be from 1/],
    [['stress', '--duration', 'soon'], /--duration takes seconds/],
    [['stress', '--plant-bug', 'typo'], /unknown bug 'typo'/],
    [['replay'], /exactly one trace FILE/],
  ] as const) {
    const r = await runCli([...args]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message, args.join(' '));
  }
});
