/**
 * Starts the daemon as a user does — `node dist/src/cli/main.js serve --socket <path>` in a child
 * process — and waits for its `iommud listening on ...` line. startProcess does the same for any
 * program that prints a ready line (the example HTTP server).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const MAIN_JS = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface RunningDaemon extends RunningProcess {
  /** What follows "iommud listening on ". */
  address: string;
  /** The Unix socket path, when it listens on one. */
  socket: string;
}

const tempDirs: string[] = [];
process.once('exit', () => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory for the test's sockets, removed when the test process exits. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'iommud-test-'));
  tempDirs.push(dir);
  return dir;
}

export function tempSocketPath(name = 'd.sock'): string {
  return join(tempDir(), name);
}

export interface StartOptions {
  /** Pass no --socket of our own (the args or the environment decide). */
  noSocketArg?: boolean;
  socket?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

export function runCli(args: string[], env?: NodeJS.ProcessEnv): Promise<Exit & { stdout: string; stderr: string }> {
  return runNode([MAIN_JS, ...args], env);
}

/** Runs `node ...argv` to its end: exit code or signal, stdout, stderr. */
export function runNode(argv: string[], env?: NodeJS.ProcessEnv): Promise<Exit & { stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, argv, { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    proc.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

export interface RunningProcess {
  proc: ChildProcess;
  /** The ready line's match. */
  ready: RegExpExecArray;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<Exit>;
  /** Sends the signal (default SIGTERM) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<Exit>;
}

/** Starts `node ...argv` and resolves once its stdout matches `ready` (the process's "listening" line). */
export function startProcess(argv: string[], ready: RegExp, options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunningProcess> {
  const proc = spawn(process.execPath, argv, { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<Exit>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${argv[0]} did not print its ready line in time; stderr:\n${stderr}`));
    }, options.timeoutMs ?? 20_000);
    proc.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      const m = ready.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve({
          proc,
          ready: m,
          stdout: () => stdout,
          stderr: () => stderr,
          exited,
          stop: (signal: NodeJS.Signals = 'SIGTERM') => {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
            return exited;
          },
        });
      }
    });
    void exited.then((e) => {
      clearTimeout(timer);
      reject(new Error(`${argv[0]} exited (${e.code ?? e.signal}) before it was ready; stderr:\n${stderr}`));
    });
  });
}

export async function startDaemon(args: string[] = [], options: StartOptions = {}): Promise<RunningDaemon> {
  const socket = options.noSocketArg ? '' : (options.socket ?? tempSocketPath());
  const argv = [MAIN_JS, 'serve', ...(options.noSocketArg ? [] : ['--socket', socket]), '--log-level', 'warn', ...args];
  const running = await startProcess(argv, /^iommud listening on (.+)$/m, options);
  const address = running.ready[1]!;
  return { ...running, address, socket: socket || (address.startsWith('/') ? address.split(' and ')[0]! : '') };
}
