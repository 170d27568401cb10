/**
 * The daemon: one Iommu, the tenants, and listeners — a Unix socket (mode 0600) and, when asked, TCP.
 * `start()` resolves once connections are accepted; `shutdown()` stops accepting, answers every
 * request already read on every connection, closes the engine and removes the socket file.
 */
import { chmodSync, statSync, unlinkSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { Iommu } from '../core/iommu.js';
import { DEFAULT_MAX_FRAME } from '../protocol/frame.js';
import { Connection } from './connection.js';
import { DaemonMetrics } from './metrics.js';
import type { Daemon } from './session.js';
import { clearStaleSocket } from './socket-path.js';
import { Tenants, type TenantLimits } from './tenants.js';

export interface TcpAddress {
  host: string;
  port: number;
}

export interface ServerOptions {
  /** Unix socket path; null for none (then tcp must be set). */
  socketPath: string | null;
  tcp?: TcpAddress | null;
  workers?: number;
  tableMemoryBytes?: number;
  maxFrame?: number;
  maxInflight?: number;
  limits?: Partial<TenantLimits>;
  /** Tenants that must present a token in hello: name → token. */
  tenantTokens?: ReadonlyMap<string, string>;
  serverName?: string;
  /** Serve Prometheus metrics at http://HOST:PORT/metrics. */
  metrics?: TcpAddress | null;
  log: Logger;
}

export const DEFAULT_MAX_INFLIGHT = 1024;
export const DEFAULT_LIMITS: TenantLimits = { maxDomains: 1024, maxDevices: 4096, maxTableBytes: null };

export class IommudServer {
  private readonly connections = new Set<Connection>();
  private readonly listeners: Server[] = [];
  private nextConnection = 1;
  private socketIno: number | null = null;
  private stopping: Promise<void> | null = null;
  /** Where it listens, as printed: socket paths and HOST:PORT. */
  readonly addresses: string[] = [];
  /** Where the metrics are served (HOST:PORT), if they are. */
  metricsAddress: string | null = null;

  private constructor(
    private readonly daemon: Daemon,
    private readonly options: ServerOptions,
  ) {}

  static async start(options: ServerOptions): Promise<IommudServer> {
    const iommu = await Iommu.create({
      // The event loop serves every connection: big calls run on the pool alone.
      callerRuns: false,
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
      ...(options.tableMemoryBytes !== undefined ? { tableMemoryBytes: options.tableMemoryBytes } : {}),
    });
    const limits = { ...DEFAULT_LIMITS, ...options.limits };
    const tenants = new Tenants(iommu, limits, options.tenantTokens ?? new Map());
    let server: IommudServer | null = null;
    const metrics = options.metrics
      ? new DaemonMetrics(() => ({ stats: iommu.stats(), connections: server?.connectionCount ?? 0, namedTenants: tenants.namedCount }))
      : null;
    const daemon: Daemon = {
      iommu,
      tenants,
      serverName: options.serverName ?? 'iommud',
      maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
      maxInflight: options.maxInflight ?? DEFAULT_MAX_INFLIGHT,
      metrics,
      log: options.log,
    };
    server = new IommudServer(daemon, options);
    try {
      if (options.socketPath !== null) await server.listenUnix(options.socketPath);
      if (options.tcp) await server.listenTcp(options.tcp);
      if (metrics && options.metrics) await server.listenMetrics(options.metrics, metrics);
    } catch (e) {
      await server.closeListeners();
      await iommu.close();
      throw e;
    }
    return server;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  private newServer(): Server {
    const server = createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    server.on('error', (err) => this.daemon.log.error({ err }, 'listener error'));
    this.listeners.push(server);
    return server;
  }

  private accept(socket: Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const conn = new Connection(socket, this.daemon, this.nextConnection++);
    this.connections.add(conn);
    this.daemon.log.debug({ conn: conn.id, remote: socket.remoteAddress ?? 'unix' }, 'connection');
    void conn.gone.then(() => this.connections.delete(conn));
  }

  private async listenUnix(path: string): Promise<void> {
    await clearStaleSocket(path);
    const server = this.newServer();
    // The socket file is created by listen(): with this umask it is born 0600, never briefly wider.
    const umask = process.umask(0o177);
    try {
      await listen(server, (cb) => server.listen(path, cb));
    } finally {
      process.umask(umask);
    }
    chmodSync(path, 0o600);
    this.socketIno = statSync(path).ino;
    this.addresses.push(path);
  }

  private async listenTcp(tcp: TcpAddress): Promise<void> {
    const server = this.newServer();
    await listen(server, (cb) => server.listen(tcp.port, tcp.host, cb));
    this.addresses.push(hostPort(server));
  }

  private async listenMetrics(address: TcpAddress, metrics: DaemonMetrics): Promise<void> {
    const http = createHttpServer(metrics.handle);
    http.on('error', (err) => this.daemon.log.error({ err }, 'metrics listener error'));
    this.listeners.push(http);
    await listen(http, (cb) => http.listen(address.port, address.host, cb));
    this.metricsAddress = hostPort(http);
  }

  /**
   * Stops accepting, answers every request already read, then closes the engine. Connections that
   * have not finished after `timeoutMs` (a client that does not read its answers) are cut.
   */
  shutdown(timeoutMs = 10_000): Promise<void> {
    this.stopping ??= this.doShutdown(timeoutMs);
    return this.stopping;
  }

  private async doShutdown(timeoutMs: number): Promise<void> {
    const log = this.daemon.log;
    const closing = this.closeListeners();
    const conns = [...this.connections];
    log.info({ connections: conns.length }, 'shutting down: answering the requests already received');
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), timeoutMs);
    });
    const done = Promise.all(conns.map((c) => c.shutdown())).then(() => false);
    if (await Promise.race([done, timedOut])) {
      log.warn('shutdown timed out; cutting the remaining connections');
      for (const c of this.connections) c.destroy();
      await done;
    }
    clearTimeout(timer);
    await closing;
    this.removeSocketFile();
    await this.daemon.iommu.close();
  }

  private closeListeners(): Promise<void> {
    return Promise.all(
      this.listeners.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))),
    ).then(() => undefined);
  }

  /** Removes the socket file if it is still the one this daemon created. */
  private removeSocketFile(): void {
    const path = this.options.socketPath;
    if (path === null || this.socketIno === null) return;
    try {
      if (statSync(path).ino === this.socketIno) unlinkSync(path);
    } catch {
      // Already gone.
    }
  }
}

/** A TCP listener's address as printed: HOST:PORT, [IPv6]:PORT. */
function hostPort(server: Server): string {
  const a = server.address() as AddressInfo;
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

function listen(server: Server, start: (cb: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    start(() => {
      server.off('error', onError);
      resolve();
    });
  });
}
