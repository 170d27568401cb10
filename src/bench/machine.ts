/** What the benchmark ran on, recorded with every run (the numbers mean nothing without it). */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, platform, release, totalmem } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface MachineInfo {
  cpuModel: string;
  /** os.availableParallelism(): what nproc reports. */
  nproc: number;
  node: string;
  v8: string;
  platform: string;
  memoryGiB: number;
  /** 1-minute load average when the run started: > 0.5 on 2 cores means someone else was busy. */
  loadavg1: number;
  date: string;
  /** The code measured: HEAD, and how many files under src/ and workers/ differ from it (0 = clean). */
  git: { commit: string; changedFiles: number } | null;
}

function lscpuModel(): string | null {
  try {
    const out = execFileSync('lscpu', { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 2000 });
    const m = /^Model name:\s*(.+)$/m.exec(out);
    return m ? m[1]!.trim() : null;
  } catch {
    return null;
  }
}

/** The package's root: dist/src/bench/ is three levels below it. */
const PACKAGE_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The git state of iommud's own checkout, whatever the current directory (null if not one). */
function gitState(): MachineInfo['git'] {
  try {
    const run = (args: string[]) => execFileSync('git', args, { cwd: PACKAGE_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
    // An installed iommud inside someone else's repository is not a checkout of iommud.
    if (resolve(run(['rev-parse', '--show-toplevel']).trim()) !== resolve(PACKAGE_ROOT)) return null;
    const commit = run(['rev-parse', '--short', 'HEAD']).trim();
    const changed = run(['status', '--porcelain', '--', 'src', 'workers']).split('\n').filter((l) => l.trim() !== '').length;
    return { commit, changedFiles: changed };
  } catch {
    return null;
  }
}

export function machineInfo(): MachineInfo {
  return {
    cpuModel: lscpuModel() ?? cpus()[0]?.model ?? 'unknown',
    nproc: availableParallelism(),
    node: process.version,
    v8: process.versions.v8,
    platform: `${platform()} ${release()}`,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    loadavg1: Math.round(loadavg()[0]! * 100) / 100,
    date: new Date().toISOString(),
    git: gitState(),
  };
}

/** A reading of the machine's CPU time (all processes) and of this process's (all its threads). */
export interface CpuSnapshot {
  /** Busy time of every CPU, from /proc/stat, in seconds (null where /proc/stat is unreadable). */
  busy: number | null;
  /** Time the hypervisor ran something else on our vCPUs ("steal"), in seconds. */
  steal: number | null;
  /** user + system time of this process (all threads, children it waited for, tracked children), in seconds. */
  own: number;
  wall: number;
}

/** USER_HZ: the unit of /proc/stat on Linux. */
const CLOCK_TICKS = 100;

/** Child processes whose CPU time counts as this run's own (the daemon suite's iommud serve). */
const trackedChildren = new Set<number>();

/** Counts a child process's CPU time as ours in cpuSnapshot (until untracked), not as other load. */
export function trackChild(pid: number): void {
  trackedChildren.add(pid);
}

export function untrackChild(pid: number): void {
  trackedChildren.delete(pid);
}

/**
 * CPU seconds of a process from /proc/<pid>/stat: its own user + system time, and that of its
 * children it waited for. Null where unreadable (not Linux, or the process is gone).
 */
export function procCpu(pid: number | 'self'): { own: number; children: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after "(comm) ": state is [0], utime [11], stime [12], cutime [13], cstime [14].
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { own: (Number(f[11]) + Number(f[12])) / CLOCK_TICKS, children: (Number(f[13]) + Number(f[14])) / CLOCK_TICKS };
  } catch {
    return null;
  }
}

export function cpuSnapshot(): CpuSnapshot {
  const u = process.cpuUsage();
  // Plus the children we waited for (the core suite's alloc-probe), and those we track; on a system
  // without /proc they are counted as other processes.
  let own = (u.user + u.system) / 1e6 + (procCpu('self')?.children ?? 0);
  for (const pid of trackedChildren) own += procCpu(pid)?.own ?? 0;
  const wall = Number(process.hrtime.bigint()) / 1e9;
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const busy = (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) / CLOCK_TICKS;
    return { busy, steal: (f[7] ?? 0) / CLOCK_TICKS, own, wall };
  } catch {
    return { busy: null, steal: null, own, wall };
  }
}

/**
 * How busy the machine was between two snapshots besides this process, in cores on average
 * (0 = nobody else; 1 = one whole core taken), and the hypervisor's steal in cores.
 */
export function otherLoad(a: CpuSnapshot, b: CpuSnapshot): { othersCores: number | null; stealCores: number | null } {
  const wall = b.wall - a.wall;
  if (a.busy === null || b.busy === null || wall <= 0) return { othersCores: null, stealCores: null };
  const round = (x: number) => Math.round(x * 100) / 100;
  return {
    othersCores: round(Math.max(0, b.busy - a.busy - (b.own - a.own)) / wall),
    stealCores: round((b.steal! - a.steal!) / wall),
  };
}
