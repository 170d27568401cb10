import test from 'ava';
import { readFileSync } from 'node:fs';
import { ERRNO, IommuError, isIommuError } from '../../src/index.js';

test('IommuError carries its errno code and is an Error', (t) => {
  const e = new IommuError('EEXIST', 'iova 0x1000 is already mapped');
  t.true(e instanceof Error);
  t.is(e.code, 'EEXIST');
  t.is(e.name, 'IommuError');
  t.regex(e.message, /^EEXIST: /);
  t.true(isIommuError(e, 'EEXIST'));
  t.false(isIommuError(e, 'EINVAL'));
  t.false(isIommuError(new Error('x')));
});

test('docs/errors.md lists exactly the codes of the ERRNO catalogue', (t) => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');
  const documented = [...doc.matchAll(/^\| `(E[A-Z]+)` \|/gm)].map((m) => m[1]).sort();
  t.deepEqual(documented, Object.keys(ERRNO).sort());
});
