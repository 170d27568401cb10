import test from 'ava';
import { Sequencer, type Order } from '../../src/server/sequencer.js';

/** A task whose completion the test controls; records when it started and finished. */
function harness() {
  const seq = new Sequencer();
  const log: string[] = [];
  const finishers = new Map<string, () => void>();
  const submit = (name: string, order: Order, async = true): void => {
    seq.submit({
      order,
      run: () => {
        log.push(`start ${name}`);
        if (!async) return name;
        return new Promise<string>((resolve) => finishers.set(name, () => resolve(name)));
      },
      done: (ok) => log.push(`done ${name}${ok ? '' : ' (error)'}`),
    });
  };
  const finish = async (name: string): Promise<void> => {
    finishers.get(name)!();
    await new Promise((r) => setImmediate(r));
  };
  return { seq, log, submit, finish };
}

const range = (...keys: string[]): Order => ({ kind: 'range', keys });
const barrier = (...keys: string[]): Order => ({ kind: 'barrier', keys });

test('range calls on one key are all issued at once, in order', (t) => {
  const h = harness();
  h.submit('a', range('d1'));
  h.submit('b', range('d1'));
  h.submit('c', range('d2'));
  t.deepEqual(h.log, ['start a', 'start b', 'start c']);
  t.is(h.seq.outstanding, 3);
});

test('a barrier waits for earlier calls on its key, and later calls on the key wait for it', async (t) => {
  const h = harness();
  h.submit('map', range('d1'));
  h.submit('sync', barrier('d1'), false);
  h.submit('map2', range('d1'));
  h.submit('other', range('d2'));
  t.deepEqual(h.log, ['start map', 'start other']);
  await h.finish('map');
  t.deepEqual(h.log, ['start map', 'start other', 'done map', 'start sync', 'done sync', 'start map2']);
});

test('a call with no shared key overtakes a waiting barrier; one with a shared key does not', async (t) => {
  const h = harness();
  h.submit('map', range('d1'));
  h.submit('translate', barrier('v1', 'd1'), false);
  h.submit('translate-other', barrier('v2', 'd2'), false);
  h.submit('attach', barrier('v1', 'd2'), false);
  t.deepEqual(h.log, ['start map', 'start translate-other', 'done translate-other']);
  await h.finish('map');
  t.deepEqual(h.log.slice(3), ['done map', 'start translate', 'done translate', 'start attach', 'done attach']);
});

test("'all' waits for everything earlier and holds back everything later", async (t) => {
  const h = harness();
  h.submit('map', range('d1'));
  h.submit('hello', { kind: 'all' }, false);
  h.submit('alloc', { kind: 'now' }, false);
  h.submit('map2', range('d9'));
  t.deepEqual(h.log, ['start map']);
  await h.finish('map');
  t.deepEqual(h.log, ['start map', 'done map', 'start hello', 'done hello', 'start alloc', 'done alloc', 'start map2']);
});

test('a synchronous throw is an error outcome; whenIdle resolves when all is done', async (t) => {
  const h = harness();
  h.seq.submit({ order: range('d1'), run: () => { throw new Error('x'); }, done: (ok) => h.log.push(`done ${ok}`) });
  t.deepEqual(h.log, ['done false']);
  h.submit('a', range('d1'));
  let idle = false;
  void h.seq.whenIdle().then(() => (idle = true));
  await new Promise((r) => setImmediate(r));
  t.false(idle);
  await h.finish('a');
  t.true(idle);
  t.is(h.seq.outstanding, 0);
});
