/**
 * The op reference of docs/protocol.md, rendered from the schema. The document keeps it between two
 * marker lines; a test checks that what is there is exactly what this renders, and
 * `iommud protocol --update docs/protocol.md` rewrites it.
 */
import { OPS, OP_NAMES, type ArgSpec } from './schema.js';

export const BEGIN_MARKER = '<!-- op-reference:begin (generated from src/protocol/schema.ts) -->';
export const END_MARKER = '<!-- op-reference:end -->';

function cell(text: string): string {
  return text.replace(/\|/g, '\\|');
}

export function renderOpReference(): string {
  const out: string[] = [];
  out.push('| op | arguments | result |', '|---|---|---|');
  for (const name of OP_NAMES) {
    const spec = OPS[name];
    const args = Object.entries(spec.args as Record<string, ArgSpec>)
      .map(([arg, a]) => `\`${arg}${a.required ? '' : '?'}\``)
      .join(', ');
    out.push(`| [\`${name}\`](#${name}) | ${args || '—'} | \`${cell(spec.result.doc)}\` |`);
  }
  for (const name of OP_NAMES) {
    const spec = OPS[name];
    out.push('', `### \`${name}\``, '', spec.summary, '');
    const args = Object.entries(spec.args as Record<string, ArgSpec>);
    if (args.length === 0) {
      out.push('Arguments: none.');
    } else {
      out.push('| argument | type | | meaning |', '|---|---|---|---|');
      for (const [arg, a] of args) {
        out.push(`| \`${arg}\` | ${cell(a.type.wire)} | ${a.required ? 'required' : 'optional'} | ${cell(a.doc)} |`);
      }
    }
    out.push('', `Result: \`${spec.result.doc}\``, '');
    const errors = spec.errors.map((c) => `\`${c}\``);
    out.push(`Errors: ${errors.length ? errors.join(', ') + ', and ' : ''}\`EINVAL\`/\`ERANGE\` for its arguments.`);
  }
  return out.join('\n');
}

/** `doc` with the text between the markers replaced by `reference`. */
export function spliceOpReference(doc: string, reference: string): string {
  const begin = doc.indexOf(BEGIN_MARKER);
  const end = doc.indexOf(END_MARKER);
  if (begin < 0 || end < begin) throw new Error('the document has no op-reference markers');
  return doc.slice(0, begin + BEGIN_MARKER.length) + '\n' + reference + '\n' + doc.slice(end);
}

/** The text between the markers, or null. */
export function extractOpReference(doc: string): string | null {
  const begin = doc.indexOf(BEGIN_MARKER);
  const end = doc.indexOf(END_MARKER);
  if (begin < 0 || end < begin) return null;
  return doc.slice(begin + BEGIN_MARKER.length, end).replace(/^\n/, '').replace(/\n$/, '');
}
