/** What the benchmark ran on, recorded with every run (the numbers mean nothing without it). */
import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus, loadavg, platform, release, totalmem } from 'node:os';

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
  };
}
