/**
 * A piscina task that does nothing: the parallel suite times its round trip (dispatch, wake-up,
 * structured clone of the task and the result) on a pool configured as iommud's ChunkPool.
 *   null          -> 0
 *   'stamp'       -> when the task started (process.hrtime.bigint() as a number: one clock for all threads)
 *   any object    -> an object shaped like a map chunk's result (MapResult)
 */
export default function noop(task: unknown): unknown {
  if (task === null) return 0;
  if (task === 'stamp') return Number(process.hrtime.bigint());
  return { ok: true, error: 0, errorIova: 0, errorPaddr: 0, errorSize: 0, base: 2 ** 32, written: 2 ** 30, installed: [], replaced: [], replacedPages: [] };
}
