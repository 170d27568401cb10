/**
 * Progress of a benchmark run, on stderr: a bar per group (cli-progress) when stderr is a terminal,
 * else one line per repetition, so that logs and CI output stay readable.
 */
import cliProgress from 'cli-progress';

export interface GroupProgress {
  /** One repetition of the group finished; `label` says which ("rep 3/7"). */
  tick(label: string): void;
  done(): void;
}

export interface Progress {
  group(name: string, total: number): GroupProgress;
}

export function stderrProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!stream.isTTY) {
    return {
      group: (name) => ({
        tick: (label) => stream.write(`  ${name}: ${label}\n`),
        done: () => undefined,
      }),
    };
  }
  return {
    group(name, total) {
      const bar = new cliProgress.SingleBar(
        {
          stream,
          format: `  ${name.length > 48 ? name.slice(0, 47) + '…' : name} [{bar}] {value}/{total} {label} | {duration}s, ETA {eta}s`,
          clearOnComplete: true,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total, 0, { label: '' });
      return {
        tick: (label) => bar.increment(1, { label }),
        done: () => bar.stop(),
      };
    },
  };
}
