#!/usr/bin/env node
/**
 * The iommud command: `iommud serve` runs the daemon; `iommud protocol` prints the wire protocol's op
 * reference; `bench`, `stress` and `replay` are the measuring and testing tools. Usage errors print
 * a message and exit with code 2; runtime failures exit with 1.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { pino, type Level } from 'pino';
import { extractOpReference, renderOpReference, spliceOpReference } from '../protocol/docs.js';
import { DEFAULT_MAX_FRAME, MAX_MAX_FRAME } from '../protocol/frame.js';
import { DEFAULT_LIMITS, DEFAULT_MAX_INFLIGHT, IommudServer } from '../server/server.js';
import { defaultSocketPath, SocketPathError } from '../server/socket-path.js';
import { parseBytes, parseCount, parseListenAddress, parseTenantToken, readTenantFile, UsageError } from './options.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const MAIN_HELP = `iommud ${VERSION} — a software IOMMU engine and its daemon

Usage:
  iommud serve [options]        run the daemon (see iommud serve --help)
  iommud protocol [options]     print the wire protocol's op reference (see iommud protocol --help)
  iommud bench [SUITE...]       run benchmarks and compare or plot them (see iommud bench --help)
  iommud stress [options]       run concurrent clients against a checked model (see iommud stress --help)
  iommud replay FILE            run a trace recorded by iommud stress --record again
  iommud --help                 this text
  iommud --version              the version

Clients speak the wire protocol (docs/protocol.md) over the daemon's Unix socket, by default
$XDG_RUNTIME_DIR/iommud.sock, else <tmpdir>/iommud-<uid>.sock.
`;

const SERVE_HELP = `Usage: iommud serve [options]

Runs the daemon. Once it accepts connections it prints one line to stdout:
  iommud listening on <PATH or HOST:PORT>       (both, joined by " and ", with --socket and --tcp)
Logs are structured JSON lines (pino) on stderr. SIGINT/SIGTERM: stop accepting, answer every
request already received, exit 0 (a second signal exits at once with 1).

Listening:
  --socket PATH            Unix socket to listen on (created with mode 0600; a stale socket file
                           left by a dead daemon is removed). Default: $XDG_RUNTIME_DIR/iommud.sock,
                           else <tmpdir>/iommud-<uid>.sock. Currently: ${defaultSocketPath()}
  --no-socket              no Unix socket (only with --tcp)
  --tcp HOST:PORT          also listen on TCP (off by default), e.g. 127.0.0.1:7420 or [::1]:0
                           (port 0 picks a free port; the listening line shows it)
  --tcp-any                allow a --tcp HOST that is not a loopback address. TCP has no
                           authentication beyond tenant tokens: use with care.

Engine:
  --workers N              worker threads for large map/unmap/map_sg/unmap_sg calls; 0 = none
                           (default: the number of CPUs)
  --table-memory BYTES     ceiling of page-table memory, e.g. 256M or 1GiB (default 1GiB; 128K–4G)

Protocol and limits:
  --max-frame BYTES        largest request frame accepted (default ${DEFAULT_MAX_FRAME} = 16MiB); a larger
                           one is answered EMSGSIZE and the connection is closed
  --max-inflight N         requests one connection may have in flight before the daemon stops
                           reading from it until some are answered (default ${DEFAULT_MAX_INFLIGHT})
  --max-domains N          domains one tenant may hold at once; more is EDQUOT (default ${DEFAULT_LIMITS.maxDomains})
  --max-devices N          devices one tenant may have attached at once; more is EDQUOT
                           (default ${DEFAULT_LIMITS.maxDevices})
  --max-table-memory BYTES page-table memory one tenant's domains may hold at once, e.g. 64M
                           (4K–4G; default: no quota, only --table-memory). A domain_alloc or map
                           that would need more is ENOMEM for that tenant alone, rolled back.
  --tenant NAME:TOKEN      tenant NAME must say hello with this token (repeatable); a wrong or
                           missing token is EPERM. Tenants not named here need no token.
  --tenant-file PATH       NAME:TOKEN lines, as --tenant (keeps tokens out of the process list)
  --shutdown-timeout MS    on SIGINT/SIGTERM, how long to wait for clients to take their answers
                           before cutting them (default 10000)

Observability:
  --metrics HOST:PORT      serve Prometheus metrics at http://HOST:PORT/metrics (off by default):
                           the engine's stats, requests by op and outcome, request latency, and
                           Node's process metrics. Once serving, prints a second line to stdout:
                             iommud metrics on http://HOST:PORT/metrics
  --metrics-any            allow a --metrics HOST that is not a loopback address

Other:
  --log-level LEVEL        fatal, error, warn, info (default), debug, trace or silent
  -h, --help               this text
`;

const PROTOCOL_HELP = `Usage: iommud protocol [options]

Prints the wire protocol's op reference (Markdown), generated from the schema in
src/protocol/schema.ts: every op with its arguments, result and errors.

  --update FILE     rewrite the reference between the markers in FILE (docs/protocol.md)
  --check FILE      exit 1 if FILE's reference differs from the schema's
  -h, --help        this text
`;

const SERVE_OPTIONS = {
  socket: { type: 'string' },
  'no-socket': { type: 'boolean' },
  tcp: { type: 'string' },
  'tcp-any': { type: 'boolean' },
  workers: { type: 'string' },
  'table-memory': { type: 'string' },
  'max-frame': { type: 'string' },
  'max-inflight': { type: 'string' },
  'max-domains': { type: 'string' },
  'max-devices': { type: 'string' },
  'max-table-memory': { type: 'string' },
  tenant: { type: 'string', multiple: true },
  'tenant-file': { type: 'string', multiple: true },
  'shutdown-timeout': { type: 'string' },
  metrics: { type: 'string' },
  'metrics-any': { type: 'boolean' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} satisfies ParseArgsConfig['options'];

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function parse<O extends NonNullable<ParseArgsConfig['options']>>(command: string, args: string[], options: O) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message}`);
  }
}

async function serve(args: string[]): Promise<number> {
  const { values: v } = parse('iommud serve', args, SERVE_OPTIONS);
  if (v.help) {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  if (v['no-socket'] && v.socket !== undefined) throw new UsageError('--socket and --no-socket contradict each other');
  if (v['no-socket'] && v.tcp === undefined) throw new UsageError('--no-socket needs --tcp: the daemon must listen somewhere');
  if (v['tcp-any'] && v.tcp === undefined) throw new UsageError('--tcp-any is only meaningful with --tcp');
  const socketPath = v['no-socket'] ? null : (v.socket ?? defaultSocketPath());
  if (socketPath === '') throw new UsageError('--socket needs a path');
  const tcp = v.tcp === undefined ? null : parseListenAddress('--tcp', v.tcp, '--tcp-any', v['tcp-any'] ?? false);
  if (v['metrics-any'] && v.metrics === undefined) throw new UsageError('--metrics-any is only meaningful with --metrics');
  const metrics = v.metrics === undefined ? null : parseListenAddress('--metrics', v.metrics, '--metrics-any', v['metrics-any'] ?? false);
  const workers = v.workers === undefined ? undefined : parseCount('--workers', v.workers, 0, 256);
  const tableMemoryBytes = v['table-memory'] === undefined ? undefined : parseBytes('--table-memory', v['table-memory']);
  if (tableMemoryBytes !== undefined && (tableMemoryBytes < 128 * 1024 || tableMemoryBytes > 2 ** 32)) {
    throw new UsageError('--table-memory must be from 128K to 4G');
  }
  const maxFrame = v['max-frame'] === undefined ? DEFAULT_MAX_FRAME : parseBytes('--max-frame', v['max-frame']);
  if (maxFrame < 64 || maxFrame > MAX_MAX_FRAME) throw new UsageError(`--max-frame must be from 64 bytes to ${MAX_MAX_FRAME}`);
  const maxInflight = v['max-inflight'] === undefined ? DEFAULT_MAX_INFLIGHT : parseCount('--max-inflight', v['max-inflight'], 1, 2 ** 20);
  const maxDomains = v['max-domains'] === undefined ? DEFAULT_LIMITS.maxDomains : parseCount('--max-domains', v['max-domains'], 0, 2 ** 31);
  const maxDevices = v['max-devices'] === undefined ? DEFAULT_LIMITS.maxDevices : parseCount('--max-devices', v['max-devices'], 0, 2 ** 31);
  const maxTableBytes = v['max-table-memory'] === undefined ? DEFAULT_LIMITS.maxTableBytes : parseBytes('--max-table-memory', v['max-table-memory']);
  if (maxTableBytes !== null && (maxTableBytes < 4096 || maxTableBytes > 2 ** 32)) throw new UsageError('--max-table-memory must be from 4K to 4G');
  const shutdownMs = v['shutdown-timeout'] === undefined ? 10_000 : parseCount('--shutdown-timeout', v['shutdown-timeout'], 0, 2 ** 31);
  const level = v['log-level'] ?? 'info';
  if (!LEVELS.includes(level)) throw new UsageError(`--log-level must be one of ${LEVELS.join(', ')}, not '${level}'`);
  const tenantTokens = new Map<string, string>();
  for (const t of v.tenant ?? []) tenantTokens.set(...parseTenantToken('--tenant', t));
  for (const f of v['tenant-file'] ?? []) for (const [name, token] of readTenantFile('--tenant-file', f)) tenantTokens.set(name, token);

  const log = pino({ name: 'iommud', level: level as Level }, pino.destination({ dest: 2, sync: true }));
  // A bug must leave a structured record, not only a stack on stderr.
  const die = (err: unknown): void => {
    log.fatal({ err }, 'uncaught error');
    process.exit(1);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
  let server: IommudServer;
  try {
    server = await IommudServer.start({
      socketPath,
      tcp,
      ...(workers !== undefined ? { workers } : {}),
      ...(tableMemoryBytes !== undefined ? { tableMemoryBytes } : {}),
      maxFrame,
      maxInflight,
      limits: { maxDomains, maxDevices, maxTableBytes },
      tenantTokens,
      serverName: `iommud/${VERSION}`,
      metrics,
      log,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = e instanceof SocketPathError ? err.message : `${err.code ?? err.name}: ${err.message}`;
    log.fatal({ err }, 'could not start');
    process.stderr.write(`iommud: cannot start: ${why}\n`);
    return 1;
  }
  // Handlers first: a supervisor may signal the moment it reads the listening line.
  const stopped = new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (++signals > 1) {
        log.warn({ signal }, 'second signal: exiting now');
        resolve(1);
        return;
      }
      log.info({ signal }, 'stopping');
      server.shutdown(shutdownMs).then(
        () => {
          log.info('stopped');
          resolve(0);
        },
        (err: unknown) => {
          log.error({ err }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  log.info({ addresses: server.addresses, workers: workers ?? 'default', maxFrame }, 'listening');
  process.stdout.write(`iommud listening on ${server.addresses.join(' and ')}\n`);
  if (server.metricsAddress) process.stdout.write(`iommud metrics on http://${server.metricsAddress}/metrics\n`);
  return stopped;
}

function protocol(args: string[]): number {
  const { values: v } = parse('iommud protocol', args, {
    update: { type: 'string' },
    check: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (v.help) {
    process.stdout.write(PROTOCOL_HELP);
    return 0;
  }
  const reference = renderOpReference();
  if (v.update !== undefined) {
    writeFileSync(v.update, spliceOpReference(readFileSync(v.update, 'utf8'), reference));
    return 0;
  }
  if (v.check !== undefined) {
    const same = extractOpReference(readFileSync(v.check, 'utf8')) === reference;
    if (!same) process.stderr.write(`${v.check}: the op reference differs from the schema; run iommud protocol --update ${v.check}\n`);
    return same ? 0 : 1;
  }
  process.stdout.write(reference + '\n');
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'protocol':
      return protocol(rest);
    case 'bench': // loaded on demand: the daemon needs none of the benchmarks
      return (await import('./bench.js')).bench(rest);
    case 'stress':
      return (await import('./stress.js')).stress(rest);
    case 'replay':
      return (await import('./stress.js')).replay(rest);
    case 'help':
    case '--help':
    case '-h':
      if (rest[0] === 'serve') process.stdout.write(SERVE_HELP);
      else if (rest[0] === 'protocol') process.stdout.write(PROTOCOL_HELP);
      else if (rest[0] === 'stress' || rest[0] === 'replay') process.stdout.write((await import('./stress.js'))[rest[0] === 'stress' ? 'STRESS_HELP' : 'REPLAY_HELP']);
      else process.stdout.write(MAIN_HELP);
      return 0;
    case '--version':
    case '-V':
      process.stdout.write(`${VERSION}\n`);
      return 0;
    case undefined:
      throw new UsageError('a command is needed');
    default:
      throw new UsageError(`unknown command '${command}'`);
  }
}

/**
 * Exits once stdout and stderr have written everything: writes to a pipe are asynchronous, and
 * process.exit() would cut a long --json line (at 64 KiB) short.
 */
function exitFlushed(code: number): void {
  let pending = 2;
  const done = (): void => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

main(process.argv.slice(2)).then(exitFlushed, (e: unknown) => {
  if (e instanceof UsageError) {
    process.stderr.write(`iommud: ${e.message}\nTry 'iommud --help' or 'iommud serve --help'.\n`);
    exitFlushed(2);
    return;
  }
  process.stderr.write(`iommud: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  exitFlushed(1);
});
