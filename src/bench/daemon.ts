/**
 * The `daemon` suite (issue 5): requests per second and latency of the real daemon over its Unix
 * socket. It starts `node dist/src/cli/main.js serve --socket <tmp>` as a child process, as a user
 * would, and drives it with 1-page map and unmap requests (alternating, each on the connection's own
 * domain) from 1 and 16 connections, each with one request in flight (no pipelining) or 16 (a
 * sliding window: a new request leaves as soon as an answer arrives).
 *
 * The load comes from raw sockets, not from src/client: every request frame is encoded once, before
 * timing, and answers are cut by the protocol's FrameReader and decoded by its decoder, so this
 * process does far less per request than the daemon does (decode, check, sequence, map, encode) and
 * the numbers are the daemon's. Both processes' CPU use is reported per case, to show which side was
 * the limit, and the daemon's CPU time per request, which a busy machine disturbs far less than
 * requests per second. Every answer is checked (ok, its id in flight, unmap's byte count), and at the end the
 * daemon's own stats must count exactly one invalidation batch per unmap sent.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { decodeValue, encodeFrame, FrameReader, MAX_MAX_FRAME } from '../protocol/index.js';
import type { BenchContext, Suite, Timer } from './harness.js';
import { procCpu, trackChild, untrackChild } from './machine.js';
import { PAGE } from './sglists.js';

const MAIN_JS = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const PROT = 3;
const IOVA_BASE = 2 ** 32;
const PHYS_BASE = 2 ** 36;
/** How long the load waits for any answer before it gives up on the daemon. */
const STALL_MS = 10_000;
/** Pages each connection cycles through; map and unmap of page k use ids 2k+1 and 2k+2. */
const PAGES = 64;

/** The cases: connections x requests in flight per connection. */
export const DAEMON_CASES = [
  { conns: 1, depth: 1 },
  { conns: 16, depth: 1 },
  { conns: 1, depth: 16 },
  { conns: 16, depth: 16 },
] as const;

export function daemonCaseLabel(conns: number, depth: number): string {
  return `${conns} connection${conns > 1 ? 's' : ''}, ${depth > 1 ? `pipelining ${depth} deep` : 'no pipelining'}`;
}

export function daemonNames(conns: number, depth: number) {
  const l = daemonCaseLabel(conns, depth);
  return {
    time: `${l}: time per request`,
    rate: `${l}: requests per second`,
    p50: `${l}: p50 latency`,
    p99: `${l}: p99 latency`,
    daemonCpu: `${l}: daemon CPU`,
    daemonCpuPerRequest: `${l}: daemon CPU per request`,
    clientCpu: `${l}: bench client CPU`,
  };
}

function fail(msg: string): never {
  throw new Error(`bench: wrong result: ${msg}`);
}

interface Daemon {
  proc: ChildProcess;
  socket: string;
  dir: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Starts `iommud serve` on a fresh socket and waits for its listening line. */
function startDaemon(): Promise<Daemon> {
  const dir = mkdtempSync(join(tmpdir(), 'iommud-bench-'));
  const socket = join(dir, 'iommud.sock');
  const proc = spawn(process.execPath, [MAIN_JS, 'serve', '--socket', socket, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`bench: the daemon did not start listening within 20 s; stderr:\n${stderr}`));
    }, 20_000);
    proc.stdout!.on('data', (c: Buffer) => {
      stdout += c.toString();
      if (/^iommud listening on /m.test(stdout)) {
        clearTimeout(timer);
        resolve({ proc, socket, dir, stderr: () => stderr, exited });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`bench: the daemon exited (${code}) before listening; stderr:\n${stderr}`));
    });
  });
}

interface Answer {
  id: number | null;
  ok: boolean;
  result?: { domain?: number; unmapped?: number; iotlb?: { syncs: number } };
  error?: { code: string; message: string };
}

/**
 * One connection of the load: its domain, its request frames (encoded once), and a sliding window of
 * requests in flight.
 */
class LoadConn {
  private readonly reader: FrameReader;
  private frames: Buffer[] = [];
  private readonly sentAt = new Float64Array(2 * PAGES + 1);
  private next = 0;
  private sent = 0;
  private answered = 0;
  private target = 0;
  private hist: RecordableHistogram | null = null;
  private done: (() => void) | null = null;
  private failed: ((e: Error) => void) | null = null;
  private oneAnswer: ((a: Answer) => void) | null = null;
  /** Unmap requests sent over the connection's life. */
  unmaps = 0;

  private constructor(private readonly socket: Socket) {
    this.reader = new FrameReader(MAX_MAX_FRAME, {
      frame: (body) => this.onAnswer(decodeValue(body) as Answer),
      oversize: () => socket.destroy(new Error('oversize answer')),
    });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      const before = this.answered;
      try {
        this.reader.push(chunk);
      } catch (e) {
        this.abort(e as Error);
        return;
      }
      // The window slides: one new request per answer in this chunk, all in one write.
      this.flush(this.answered - before);
    });
    socket.on('error', (e) => this.abort(e));
    socket.on('close', () => this.abort(new Error('the daemon closed the connection')));
  }

  static async open(path: string): Promise<LoadConn> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new LoadConn(socket);
    const domain = (await c.call({ op: 'domain_alloc', pgsize_bitmap: 0x1000 })).domain!;
    c.frames = [];
    for (let k = 0; k < PAGES; k++) {
      const iova = IOVA_BASE + k * PAGE;
      c.frames.push(encodeFrame({ id: 2 * k + 1, op: 'map', domain, iova, paddr: PHYS_BASE + k * PAGE, size: PAGE, prot: PROT }));
      c.frames.push(encodeFrame({ id: 2 * k + 2, op: 'unmap', domain, iova, size: PAGE }));
    }
    return c;
  }

  /** One request outside the load (setup, stats), answered before anything else is sent. */
  async call(request: Record<string, unknown>): Promise<NonNullable<Answer['result']>> {
    const a = await this.settle<Answer>((resolve) => {
      this.oneAnswer = resolve;
      this.socket.write(encodeFrame({ id: 0, ...request }));
    });
    if (!a.ok) fail(`${String(request.op)}: ${a.error?.code} ${a.error?.message}`);
    return a.result!;
  }

  /** Sends `requests` requests keeping `depth` in flight; every latency goes to `hist`. */
  run(requests: number, depth: number, hist: RecordableHistogram): Promise<void> {
    this.sent = 0;
    this.answered = 0;
    this.target = requests;
    this.hist = hist;
    return this.settle<void>((resolve) => {
      this.done = resolve;
      this.flush(Math.min(depth, requests));
    });
  }

  /**
   * Resolves as `start` arranges; rejects if the connection fails, or if no answer at all arrives
   * within one to two STALL_MS (a daemon that stopped answering must not hang the benchmark).
   */
  private settle<T>(start: (resolve: (value: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let seen = -1;
      const watchdog = setInterval(() => {
        if (this.answered === seen) this.abort(new Error(`bench: the daemon answered nothing for ${STALL_MS / 1000} s`));
        seen = this.answered;
      }, STALL_MS);
      this.failed = (e) => {
        clearInterval(watchdog);
        reject(e);
      };
      start((value) => {
        clearInterval(watchdog);
        this.failed = null;
        resolve(value);
      });
    });
  }

  /** Sends up to `count` more requests (never beyond the target), in one write. */
  private flush(count: number): void {
    const n = Math.min(count, this.target - this.sent);
    if (n <= 0) return;
    const out: Buffer[] = [];
    const now = Number(process.hrtime.bigint());
    for (let i = 0; i < n; i++) {
      const j = this.next;
      this.next = (j + 1) % this.frames.length;
      this.sentAt[j + 1] = now;
      if (j % 2 === 1) this.unmaps++;
      out.push(this.frames[j]!);
    }
    this.sent += n;
    this.socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
  }

  private onAnswer(a: Answer): void {
    if (this.oneAnswer) {
      const f = this.oneAnswer;
      this.oneAnswer = null;
      f(a);
      return;
    }
    const id = typeof a.id === 'number' ? a.id : -1;
    if (!a.ok || id < 1 || id > 2 * PAGES) return this.abort(new Error(`bench: wrong result: answer ${JSON.stringify(a)}`));
    if (id % 2 === 0 && a.result?.unmapped !== PAGE) return this.abort(new Error(`bench: wrong result: unmap answered ${JSON.stringify(a.result)}`));
    this.hist!.record(Math.max(1, Number(process.hrtime.bigint()) - this.sentAt[id]!));
    this.answered++;
    if (this.answered === this.target) this.done?.();
  }

  private abort(e: Error): void {
    const f = this.failed;
    this.failed = null;
    this.done = null;
    this.oneAnswer = null;
    f?.(e);
  }

  close(): void {
    this.socket.removeAllListeners('close');
    this.socket.end();
  }
}

/** Requests per timed sample, per case (a multiple of 16, split evenly over the connections). */
const REQUESTS = { full: { single: 10_000, many: 40_000 }, quick: { single: 1_024, many: 2_048 } };

function caseStep(conns: readonly LoadConn[], conn: number, depth: number, requests: number, daemonPid: number | null) {
  const names = daemonNames(conn, depth);
  return {
    name: daemonCaseLabel(conn, depth),
    run: async (t: Timer) => {
      const used = conns.slice(0, conn);
      const hist = createHistogram();
      const d0 = daemonPid === null ? null : procCpu(daemonPid);
      const c0 = process.cpuUsage();
      const w0 = process.hrtime.bigint();
      await t.time(names.time, requests, () => Promise.all(used.map((c) => c.run(requests / conn, depth, hist))), 'ns/request');
      const wall = Number(process.hrtime.bigint() - w0) / 1e9;
      const d1 = daemonPid === null ? null : procCpu(daemonPid);
      const c1 = process.cpuUsage(c0);
      if (hist.count !== requests) fail(`${names.time}: ${hist.count} answers timed, expected ${requests}`);
      t.record(names.p50, 1, hist.percentile(50) / 1000, 'µs');
      t.record(names.p99, 1, hist.percentile(99) / 1000, 'µs');
      if (d0 && d1) {
        t.record(names.daemonCpu, 1, (d1.own - d0.own) / wall, 'cores');
        // What a request costs the daemon, whatever share of the CPUs it got from a busy machine.
        t.record(names.daemonCpuPerRequest, 1, ((d1.own - d0.own) * 1e6) / requests, 'µs');
      }
      t.record(names.clientCpu, 1, (c1.user + c1.system) / 1e6 / wall, 'cores');
    },
  };
}

async function stopDaemon(d: Daemon): Promise<number | null> {
  if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGTERM');
  const kill = setTimeout(() => d.proc.kill('SIGKILL'), 15_000);
  const code = await d.exited;
  clearTimeout(kill);
  untrackChild(d.proc.pid!);
  rmSync(d.dir, { recursive: true, force: true });
  return code;
}

export const daemonSuite: Suite = {
  name: 'daemon',
  description: 'the daemon (a child process, or --connect SOCKET): 1-page map/unmap requests/s and p50/p99 over its Unix socket, 1 and 16 connections, pipelined or not',
  async run(ctx: BenchContext): Promise<void> {
    const group = 'requests over the Unix socket';
    const cases = DAEMON_CASES.filter((c) => ctx.selected(group, daemonCaseLabel(c.conns, c.depth)));
    if (cases.length === 0) return;
    const sizes = ctx.options.quick ? REQUESTS.quick : REQUESTS.full;
    // A running daemon (bench --connect), or one of our own, started as users start it.
    const connect = ctx.options.connect;
    ctx.options.log(connect ? `  against the daemon at ${connect}` : '  starting iommud serve ...');
    const daemon = connect ? null : await startDaemon();
    const socket = connect ?? daemon!.socket;
    const pid = daemon ? daemon.proc.pid! : null;
    if (pid !== null) trackChild(pid);
    let code: number | null = 0;
    try {
      const conns = await Promise.all(Array.from({ length: Math.max(...cases.map((c) => c.conns)) }, () => LoadConn.open(socket)));
      const before = await conns[0]!.call({ op: 'stats' });
      await ctx.group({
        name: group,
        steps: cases.map((c) => caseStep(conns, c.conns, c.depth, c.conns * c.depth > 1 ? sizes.many : sizes.single, pid)),
      });
      // Each unmap is one invalidation batch, and nothing else here makes one (others may, on a
      // daemon that serves more than this run).
      const stats = await conns[0]!.call({ op: 'stats' });
      const syncs = (stats.iotlb?.syncs ?? 0) - (before.iotlb?.syncs ?? 0);
      const unmaps = conns.reduce((sum, c) => sum + c.unmaps, 0);
      if (connect ? syncs < unmaps : syncs !== unmaps) fail(`the daemon counted ${syncs} syncs for ${unmaps} unmaps`);
      for (const c of conns) c.close();
    } finally {
      if (daemon) code = await stopDaemon(daemon);
    }
    if (daemon && code !== 0) fail(`the daemon exited with ${code} on SIGTERM; stderr:\n${daemon.stderr()}`);
    for (const c of cases) {
      const n = daemonNames(c.conns, c.depth);
      ctx.derived(group, n.rate, 'requests/s', n.time, (ns) => 1e9 / ns, 'from the time per request: 10^9 / ns');
    }
    const rate = (conns: number, depth: number) => daemonNames(conns, depth).time;
    const ratios = 'ratios of throughput';
    ctx.pairedRatio(ratios, '16 connections / 1 connection, no pipelining', rate(1, 1), rate(16, 1), 'per repetition: time per request at 1 connection / at 16');
    ctx.pairedRatio(ratios, 'pipelining 16 deep / none, 1 connection', rate(1, 1), rate(1, 16), 'per repetition: time per request without pipelining / with');
    ctx.pairedRatio(ratios, '16 connections pipelining 16 deep / 1 connection, no pipelining', rate(1, 1), rate(16, 16));
  },
};
