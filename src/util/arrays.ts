/**
 * Appends every element of `from` to `to`. Not `to.push(...from)`: a spread passes each element as
 * an argument, and from about 100Ki of them V8 throws RangeError (the main thread's stack is smaller
 * than a worker's) — a failed map that had installed 32Ki tables hit it in its rollback.
 */
export function appendAll<T>(to: T[], from: readonly T[]): void {
  for (let i = 0; i < from.length; i++) to.push(from[i]!);
}
