/**
 * Where the daemon's Unix socket lives and how it is prepared: the default path, a stale socket file
 * left by a daemon that died (removed), a live one (refused: another daemon is serving there).
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** `$XDG_RUNTIME_DIR/iommud.sock`, else `<os.tmpdir()>/iommud-<uid>.sock`. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime !== undefined && runtime !== '') return join(runtime, 'iommud.sock');
  const uid = typeof process.getuid === 'function' ? process.getuid() : 'user';
  return join(tmpdir(), `iommud-${uid}.sock`);
}

export class SocketPathError extends Error {
  override name = 'SocketPathError';
}

/**
 * Makes `path` free for listen(): nothing there, or a socket no one answers on (removed). A live
 * socket or a file of another kind is an error: the daemon never deletes what is not its own.
 */
export async function clearStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!isSocket) throw new SocketPathError(`${path} exists and is not a socket; not removing it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new SocketPathError(`another daemon is listening on ${path}`);
  unlinkSync(path);
}
