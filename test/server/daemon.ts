/**
 * Starts the daemon as a user does — `node dist/src/cli/main.js serve --socket <path>` in a child
 * process — and waits for its `iommud listening on ...` line.
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

export interface RunningDaemon {
  proc: ChildProcess;
  /** What follows "iommud listening on ". */
  address: string;
  /** The Unix socket path, when it listens on one. */
  socket: string;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<Exit>;
  /** Sends the signal (default SIGTERM) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<Exit>;
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
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [MAIN_JS, ...args], { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    proc.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

export function startDaemon(args: string[] = [], options: StartOptions = {}): Promise<RunningDaemon> {
  const socket = options.noSocketArg ? '' : (options.socket ?? tempSocketPath());
  const argv = [MAIN_JS, 'serve', ...(options.noSocketArg ? [] : ['--socket', socket]), '--log-level', 'warn', ...args];
  const proc = spawn(process.execPath, argv, { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<Exit>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`the daemon did not print its listening line in time; stderr:\n${stderr}`));
    }, options.timeoutMs ?? 20_000);
    proc.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      const m = /^iommud listening on (.+)$/m.exec(stdout);
      if (m) {
        clearTimeout(timer);
        const address = m[1]!;
        resolve({
          proc,
          address,
          socket: socket || (address.startsWith('/') ? address.split(' and ')[0]! : ''),
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
      reject(new Error(`the daemon exited (${e.code ?? e.signal}) before listening; stderr:\n${stderr}`));
    });
  });
}
