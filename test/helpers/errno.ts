/**
 * Assertions on IommuError codes: every error iommud reports is an IommuError whose `code` is the
 * Linux errno name, so a test names the code it expects and nothing else.
 */
import type { ExecutionContext } from 'ava';
import { IommuError, type Errno } from '../../src/index.js';

/** The call (async) rejects with an IommuError of `code`. */
export async function rejectsWith(
  t: ExecutionContext,
  call: () => Promise<unknown>,
  code: Errno,
  message?: string,
): Promise<void> {
  const err = await t.throwsAsync(call, { instanceOf: IommuError }, message);
  t.is(err?.code, code, message);
}

/** The call (synchronous) throws an IommuError of `code`. */
export function throwsWith(t: ExecutionContext, call: () => unknown, code: Errno, message?: string): void {
  const err = t.throws(call, { instanceOf: IommuError }, message);
  t.is(err?.code, code, message);
}
