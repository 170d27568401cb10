/**
 * Summarises a V8 CPU profile (`node --cpu-prof`) by function: self time and inclusive ("total") time,
 * as a share of the samples. Used to find where a benchmark's time goes:
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/prof --cpu-prof-interval 100 dist/src/cli/main.js bench core --filter 'scattered, SgTable'
 *   node dist/scripts/bench/profile-summary.js /tmp/prof/*.cpuprofile [--top 25] [--match src/]
 *
 * --match keeps only functions whose url contains the text (others still count in the total).
 * --lines NAME also prints the self samples of function NAME by line of its compiled .js file.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
  /** Self samples by source line (1-based, of the compiled .js file). */
  positionTicks?: { line: number; ticks: number }[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function key(cf: CallFrame): string {
  const file = cf.url.replace(/^file:\/\/.*?\/dist\//, '').replace(/^file:\/\//, '');
  return `${cf.functionName || '(anonymous)'} ${file ? `${file}:${cf.lineNumber + 1}` : ''}`.trim();
}

function summarise(path: string, top: number, match: string | undefined, lines: string | undefined): void {
  const p = JSON.parse(readFileSync(path, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const urlOf = new Map<string, string>();
  let all = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    all += dt;
    let id: number | undefined = p.samples[i]!;
    const leaf = byId.get(id)!;
    const k = key(leaf.callFrame);
    self.set(k, (self.get(k) ?? 0) + dt);
    urlOf.set(k, leaf.callFrame.url);
    const seen = new Set<string>();
    while (id !== undefined) {
      const n = byId.get(id)!;
      const kk = key(n.callFrame);
      urlOf.set(kk, n.callFrame.url);
      if (!seen.has(kk)) {
        seen.add(kk);
        total.set(kk, (total.get(kk) ?? 0) + dt);
      }
      id = parent.get(id);
    }
  }
  const pct = (v: number) => ((100 * v) / all).toFixed(1).padStart(5) + '%';
  const keep = (k: string) => !match || (urlOf.get(k) ?? '').includes(match);
  process.stdout.write(`${path}: ${(all / 1000).toFixed(0)} ms sampled\n  self    total   function\n`);
  const rows = [...self.entries()].filter(([k]) => keep(k)).sort((a, b) => b[1] - a[1]).slice(0, top);
  for (const [k, v] of rows) process.stdout.write(`  ${pct(v)}  ${pct(total.get(k) ?? 0)}  ${k}\n`);
  process.stdout.write('  by total (inclusive):\n');
  const rowsT = [...total.entries()].filter(([k]) => keep(k)).sort((a, b) => b[1] - a[1]).slice(0, top);
  for (const [k, v] of rowsT) process.stdout.write(`  ${pct(self.get(k) ?? 0)}  ${pct(v)}  ${k}\n`);
  if (lines) {
    const ticks = new Map<string, number>();
    let sum = 0;
    for (const n of p.nodes) {
      if (n.callFrame.functionName !== lines) continue;
      for (const t of n.positionTicks ?? []) {
        const at = `${n.callFrame.url.replace(/^.*\/dist\//, '')}:${t.line}`;
        ticks.set(at, (ticks.get(at) ?? 0) + t.ticks);
        sum += t.ticks;
      }
    }
    process.stdout.write(`  self samples of ${lines} by line (${sum} samples):\n`);
    for (const [at, t] of [...ticks.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      process.stdout.write(`  ${((100 * t) / Math.max(sum, 1)).toFixed(1).padStart(5)}%  ${at}\n`);
    }
  }
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '25' }, match: { type: 'string' }, lines: { type: 'string' } },
});
for (const f of positionals) summarise(f, Number(values.top), values.match, values.lines);
