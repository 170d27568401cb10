/**
 * The command line's values: sizes, counts, HOST:PORT, tenant tokens. Pure functions that throw
 * UsageError with a message a user can act on; main.ts turns that into exit code 2.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

export class UsageError extends Error {
  override name = 'UsageError';
}

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 2 ** 10, kb: 2 ** 10, kib: 2 ** 10,
  m: 2 ** 20, mb: 2 ** 20, mib: 2 ** 20,
  g: 2 ** 30, gb: 2 ** 30, gib: 2 ** 30,
};

/** A byte count: `16777216`, `0x1000000`, `16M`, `16MiB`, `1G` (K/M/G are powers of 1024). */
export function parseBytes(option: string, text: string): number {
  const m = /^\s*(0x[0-9a-f]+|\d+)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new UsageError(`${option} takes a size in bytes such as 16777216, 16M or 1GiB, not '${text}'`);
  }
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n)) throw new UsageError(`${option} ${text} is too large`);
  return n;
}

/** A whole number within [min, max]. */
export function parseCount(option: string, text: string, min: number, max: number): number {
  if (!/^\s*\d+\s*$/.test(text)) throw new UsageError(`${option} takes a whole number, not '${text}'`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${option} must be from ${min} to ${max}, not ${n}`);
  return n;
}

export interface HostPort {
  host: string;
  port: number;
}

/** `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (loopback). Port 0 picks a free one. */
export function parseHostPort(option: string, text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(text.trim());
  if (!m) throw new UsageError(`${option} takes HOST:PORT (e.g. 127.0.0.1:7420 or [::1]:7420), not '${text}'`);
  const host = m[1] ?? (m[2] === '' ? '127.0.0.1' : m[2]!);
  const port = Number(m[3]);
  if (port > 65535) throw new UsageError(`${option}: port ${port} is above 65535`);
  return { host, port };
}

/** A listener's HOST:PORT: a loopback address, unless the user insists (`any`, given by `anyOption`). */
export function parseListenAddress(option: string, text: string, anyOption: string, any: boolean): HostPort {
  const address = parseHostPort(option, text);
  if (!any && !isLoopback(address.host)) {
    throw new UsageError(`${option} ${address.host} is not a loopback address; add ${anyOption} to listen there anyway`);
  }
  return address;
}

/** Whether `host` can only be reached from this machine: 127.0.0.0/8, ::1 or localhost. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || host === '0:0:0:0:0:0:0:1' || /^::ffff:127\./i.test(host);
  return false;
}

/** `NAME:TOKEN` (the token may itself contain colons). */
export function parseTenantToken(option: string, text: string): [string, string] {
  const i = text.indexOf(':');
  if (i <= 0 || i === text.length - 1) throw new UsageError(`${option} takes NAME:TOKEN, not '${text}'`);
  const name = text.slice(0, i);
  if (name.length > 128) throw new UsageError(`${option}: tenant names are at most 128 characters`);
  return [name, text.slice(i + 1)];
}

/** A file of NAME:TOKEN lines; blank lines and lines starting with # are skipped. */
export function readTenantFile(option: string, path: string): [string, string][] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`${option}: cannot read ${path}: ${(e as Error).message}`);
  }
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => parseTenantToken(`${option} ${path}`, l));
}
