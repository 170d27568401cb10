import { IommuError } from '../errors/errors.js';

/** 2^53: the first integer a JavaScript number cannot hold exactly. Addresses and sizes stay below it. */
export const ADDRESS_LIMIT = 2 ** 53;

/**
 * An address or size: a non-negative integer below 2^53. A missing, non-numeric, negative, fractional
 * or NaN value is EINVAL; one that is too large (including Infinity) is ERANGE.
 */
export function checkAddress(name: string, value: unknown): number {
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new IommuError('EINVAL', `${name} must be a number, got ${describe(value)}`);
  }
  if (value < 0) throw new IommuError('EINVAL', `${name} must not be negative, got ${value}`);
  if (value >= ADDRESS_LIMIT) throw new IommuError('ERANGE', `${name} must be below 2^53, got ${value}`);
  if (!Number.isInteger(value)) throw new IommuError('EINVAL', `${name} must be an integer, got ${value}`);
  return value;
}

/** A small non-negative integer option (counts, ids). */
export function checkCount(name: string, value: unknown, max = 2 ** 31 - 1): number {
  const n = checkAddress(name, value);
  if (n > max) throw new IommuError('ERANGE', `${name} must be at most ${max}, got ${n}`);
  return n;
}

export function checkBoolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new IommuError('EINVAL', `${name} must be a boolean, got ${describe(value)}`);
  return value;
}

/** An options bag: undefined, or a plain object whose keys are all known. Typos are errors, not no-ops. */
export function checkOptions<K extends string>(
  name: string,
  value: unknown,
  known: readonly K[],
): Partial<Record<K, unknown>> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new IommuError('EINVAL', `${name} must be an object, got ${describe(value)}`);
  }
  for (const [key, v] of Object.entries(value)) {
    if (!(known as readonly string[]).includes(key)) {
      throw new IommuError('EINVAL', `${name} has an unknown option '${key}' (known: ${known.join(', ')})`);
    }
    if (v === null) throw new IommuError('EINVAL', `${name}.${key} must not be null (leave it out for the default)`);
  }
  return value as Partial<Record<K, unknown>>;
}

export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'bigint') return `the bigint ${value}n`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value.slice(0, 40))}`;
  if (typeof value === 'number') return String(value);
  return `a value of type ${Array.isArray(value) ? 'array' : typeof value}`;
}

export function hex(n: number): string {
  return '0x' + n.toString(16);
}
