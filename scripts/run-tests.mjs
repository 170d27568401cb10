#!/usr/bin/env node
// Runs the ava suite and ends with the plain summary line CI reads: "N passed, N failed, N skipped".
// ava's own reporter has no such line, so ava runs with --tap and this script counts its results,
// echoing every line so nothing of ava's output is lost. The exit code is ava's.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const avaBin = fileURLToPath(new URL('../node_modules/ava/entrypoints/cli.mjs', import.meta.url));
const child = spawn(process.execPath, [avaBin, '--tap', ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'inherit'] });

const counts = { pass: 0, fail: 0, skip: 0, todo: 0 };
const lines = createInterface({ input: child.stdout });
lines.on('line', (line) => {
  process.stdout.write(line + '\n');
  const m = /^# (pass|fail|skip|todo) (\d+)$/.exec(line);
  if (m) counts[m[1]] = Number(m[2]);
});

child.on('close', (code, signal) => {
  const failed = counts.fail + (code !== 0 && counts.fail === 0 ? 1 : 0);
  const skipped = counts.skip + counts.todo;
  process.stdout.write(`${counts.pass} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  process.exit(code ?? (signal ? 1 : 0));
});
