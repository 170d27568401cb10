/**
 * The daemon as a process: the command line, the socket file, TCP, and a graceful stop that answers
 * every request already received.
 */
import test from 'ava';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { IommudClient } from '../../src/client/index.js';
import { runCli, startDaemon, tempDir, tempSocketPath } from './daemon.js';
import { RawConn } from './wire.js';

const MiB = 2 ** 20;

test('iommud --help and serve --help describe every command and option', async (t) => {
  const main = await runCli(['--help']);
  t.is(main.code, 0);
  for (const word of ['serve', 'protocol', '--help', '--version']) t.true(main.stdout.includes(word), word);
  const serve = await runCli(['serve', '--help']);
  t.is(serve.code, 0);
  const options = [
    '--socket', '--no-socket', '--tcp', '--tcp-any', '--workers', '--table-memory', '--max-frame', '--max-inflight',
    '--max-domains', '--max-devices', '--max-table-memory', '--tenant', '--tenant-file', '--shutdown-timeout', '--metrics', '--metrics-any', '--log-level', '--help',
  ];
  for (const o of options) t.regex(serve.stdout, new RegExp(`^\\s+(-h, )?${o}\\b`, 'm'), o);
  // The help lists exactly the options the parser accepts.
  const src = readFileSync(new URL('../../../src/cli/main.ts', import.meta.url), 'utf8');
  const block = src.slice(src.indexOf('const SERVE_OPTIONS'), src.indexOf('} satisfies'));
  const declared = [...block.matchAll(/^\s+'?([a-z-]+)'?: \{ type/gm)].map((m) => `--${m[1]}`).sort();
  t.deepEqual(declared, [...options].sort());
  t.is((await runCli(['help', 'serve'])).stdout, serve.stdout);
  const proto = await runCli(['protocol', '--help']);
  t.is(proto.code, 0);
  t.true(proto.stdout.includes('--update'));
  t.regex((await runCli(['--version'])).stdout, /^\d+\.\d+\.\d+\n$/);
});

test('bad usage: a clear message and exit code 2', async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /a command is needed/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['serve', '--bogus'], /Unknown option '--bogus'/],
    [['serve', '--workers', 'many'], /--workers takes a whole number/],
    [['serve', '--workers', '1000'], /--workers must be from 0 to 256/],
    [['serve', '--table-memory', '12 parsecs'], /--table-memory takes a size/],
    [['serve', '--table-memory', '1K'], /--table-memory must be from 128K to 4G/],
    [['serve', '--max-frame', '10'], /--max-frame must be from 64/],
    [['serve', '--max-table-memory', 'lots'], /--max-table-memory takes a size/],
    [['serve', '--max-table-memory', '1K'], /--max-table-memory must be from 4K to 4G/],
    [['serve', '--tcp', 'localhost'], /--tcp takes HOST:PORT/],
    [['serve', '--tcp', '8.8.8.8:7420'], /not a loopback address; add --tcp-any/],
    [['serve', '--tcp', '0.0.0.0:7420'], /not a loopback address/],
    [['serve', '--tcp', '127.0.0.1:70000'], /above 65535/],
    [['serve', '--tcp-any'], /only meaningful with --tcp/],
    [['serve', '--metrics', '10.0.0.1:9464'], /--metrics 10.0.0.1 is not a loopback address; add --metrics-any/],
    [['serve', '--metrics', 'nine'], /--metrics takes HOST:PORT/],
    [['serve', '--metrics-any'], /only meaningful with --metrics/],
    [['serve', '--no-socket'], /--no-socket needs --tcp/],
    [['serve', '--tenant', 'nocolon'], /--tenant takes NAME:TOKEN/],
    [['serve', '--tenant-file', '/nonexistent/file'], /cannot read/],
    [['serve', '--log-level', 'loud'], /--log-level must be one of/],
    [['serve', 'extra'], /Unexpected argument 'extra'|positional/i],
  ];
  await Promise.all(cases.map(async ([args, message]) => {
    const r = await runCli(args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
    t.regex(r.stderr, /^iommud: /);
    t.is(r.stdout, '', 'nothing on stdout');
  }));
});

test('the socket file is mode 0600, the listening line exact, logs are JSON on stderr, and SIGINT stops the daemon with 0', async (t) => {
  const d = await startDaemon(['--workers', '0', '--log-level', 'info']);
  t.is(d.stdout(), `iommud listening on ${d.socket}\n`);
  t.is(statSync(d.socket).mode & 0o777, 0o600);
  t.true(statSync(d.socket).isSocket());
  const exit = await d.stop('SIGINT');
  t.deepEqual(exit, { code: 0, signal: null });
  t.false(existsSync(d.socket), 'the socket file is removed');
  t.is(d.stdout().split('\n').filter(Boolean).length, 1, 'exactly one line on stdout');
  await new Promise((r) => setTimeout(r, 50)); // the last stderr bytes
  const logs = d.stderr().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; msg: string; name: string });
  t.deepEqual(logs.map((l) => l.msg), ['listening', 'stopping', 'shutting down: answering the requests already received', 'stopped']);
  t.true(logs.every((l) => l.name === 'iommud' && typeof l.level === 'number'));
});

test('the default socket is $XDG_RUNTIME_DIR/iommud.sock', async (t) => {
  const runtime = tempDir();
  const d = await startDaemon(['--workers', '0'], { noSocketArg: true, env: { ...process.env, XDG_RUNTIME_DIR: runtime } });
  t.is(d.address, join(runtime, 'iommud.sock'));
  const c = await IommudClient.connect(d.address);
  t.is(c.info.version, 1);
  await c.close();
  t.is((await d.stop()).code, 0);
});

test('a stale socket file is removed; a live one or a non-socket file is refused with exit 1', async (t) => {
  const path = tempSocketPath();
  const first = await startDaemon(['--workers', '0'], { socket: path });
  // A second daemon on a live socket refuses, and the first is unharmed.
  const second = await runCli(['serve', '--socket', path, '--workers', '0', '--log-level', 'silent']);
  t.is(second.code, 1);
  t.regex(second.stderr, /another daemon is listening/);
  const c = await RawConn.open(path);
  t.true((await c.call({ op: 'stats' })).ok);
  c.destroy();
  // Killed hard, it leaves its socket file behind: stale.
  await first.stop('SIGKILL');
  t.true(existsSync(path));
  const third = await startDaemon(['--workers', '0'], { socket: path });
  t.is(third.address, path);
  t.is((await third.stop()).code, 0);
  // Never deletes what is not a socket.
  writeFileSync(path, 'precious');
  const fourth = await runCli(['serve', '--socket', path, '--workers', '0', '--log-level', 'silent']);
  t.is(fourth.code, 1);
  t.regex(fourth.stderr, /exists and is not a socket/);
  t.is(readFileSync(path, 'utf8'), 'precious');
});

test('TCP on loopback: the listening line gives the port, and the protocol works over it', async (t) => {
  const d = await startDaemon(['--no-socket', '--tcp', '127.0.0.1:0', '--workers', '0'], { noSocketArg: true });
  const m = /^127\.0\.0\.1:(\d+)$/.exec(d.address);
  t.truthy(m, d.address);
  const c = await IommudClient.connect({ host: '127.0.0.1', port: Number(m![1]) });
  const dom = await c.allocDomain();
  await dom.map(0x1000, 0x2000, 0x1000, 3);
  t.is(await dom.iovaToPhys(0x1004), 0x2004);
  await c.close();
  t.is((await d.stop()).code, 0);
});

test('with --socket and --tcp both, one listening line names both', async (t) => {
  const path = tempSocketPath();
  const d = await startDaemon(['--tcp', '[::1]:0', '--workers', '0'], { socket: path });
  t.regex(d.address, new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} and \\[::1\\]:\\d+$`));
  t.is((await d.stop()).code, 0);
});

test('SIGTERM: stop accepting, answer every request already received, exit 0', async (t) => {
  const d = await startDaemon(['--workers', '2']);
  const c = await RawConn.open(d.socket);
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  // Calls on one range run one after another: these take a while (256 MiB of 4 KiB pages each).
  const ids: (number | bigint)[] = [];
  for (let i = 0; i < 6; i++) {
    ids.push(c.send({ op: 'map', domain, iova: 0, paddr: i * 256 * MiB, size: 256 * MiB, prot: 3 }));
    ids.push(c.send({ op: 'unmap', domain, iova: 0, size: 256 * MiB }));
  }
  ids.push(c.send({ op: 'stats' }));
  await c.response(ids[0]!, 30_000); // they have all been read by now
  d.proc.kill('SIGTERM');
  for (const id of ids.slice(1)) {
    const r = await c.response(id, 30_000);
    t.true(r.ok, `request ${String(id)}: ${r.error?.code}`);
  }
  await c.closed;
  t.deepEqual(await d.exited, { code: 0, signal: null });
  t.false(existsSync(d.socket));
  t.false(d.stderr().includes('"level":50'), 'no errors logged');
});

test('a client that ends its side still gets every answer', async (t) => {
  const d = await startDaemon(['--workers', '0']);
  const c = await RawConn.open(d.socket);
  const ids = Array.from({ length: 50 }, () => c.send({ op: 'stats' }));
  c.end();
  for (const id of ids) t.true((await c.response(id)).ok);
  await c.closed;
  t.is((await d.stop()).code, 0);
});

test('--max-frame: a smaller limit is announced in hello and enforced', async (t) => {
  const d = await startDaemon(['--max-frame', '4K', '--workers', '0']);
  const c = await IommudClient.connect(d.socket);
  t.is(c.info.maxFrame, 4096);
  const dom = await c.allocDomain();
  const sg = Array.from({ length: 1000 }, (_, i) => [i * 0x2000, 0x1000] as const);
  const err = await t.throwsAsync(dom.mapSg(0, sg, 3));
  t.is((err as { code?: string }).code, 'EMSGSIZE', 'the client refuses before sending');
  t.is(await dom.mapSg(0, sg.slice(0, 100), 3), 100 * 0x1000, 'and the connection is fine');
  // A raw client that sends it anyway is answered EMSGSIZE and disconnected.
  const raw = await RawConn.open(d.socket);
  raw.send({ op: 'map_sg', domain: 1, iova: 0, sg, prot: 3 });
  const r = await raw.next();
  t.is(r.error?.code, 'EMSGSIZE');
  await raw.closed;
  await c.close();
  t.is((await d.stop()).code, 0);
});

test('--max-inflight: a connection over its limit is paused, not dropped, and every request is answered', async (t) => {
  const d = await startDaemon(['--max-inflight', '2', '--workers', '2']);
  const c = await RawConn.open(d.socket);
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc', pgsize_bitmap: 4096 });
  // A slow map, then reads that must wait for it: more than two requests are outstanding at once.
  const ids = [c.send({ op: 'map', domain, iova: 0, paddr: 0, size: 256 * MiB, prot: 3 })];
  for (let i = 0; i < 50; i++) ids.push(c.send({ op: 'iova_to_phys', domain, iova: i * 0x1000 }));
  ids.push(c.send({ op: 'unmap', domain, iova: 0, size: 256 * MiB }));
  const answers = await Promise.all(ids.map((id) => c.response(id, 30_000)));
  t.true(answers.every((r) => r.ok));
  t.deepEqual(answers[50]!.result, { phys: 49 * 0x1000 });
  c.destroy();
  t.is((await d.stop()).code, 0);
});
