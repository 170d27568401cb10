/**
 * A Node client for the daemon: the Domain API of the library, over a socket. Every call sends one
 * request frame at once and returns a promise matched to its response by id, so calls pipeline:
 * issue many without awaiting and they are in flight together (calls on one domain take effect in the
 * order they were made). Errors reject with IommuError carrying the daemon's errno code; a translate
 * fault rejects with FaultError, whose `fault` holds the reason, device, iova and access.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { FaultError, type Access, type FaultReason } from '../core/devices.js';
import type { DomainOptions, LookupResult } from '../core/domain.js';
import type { SgEntry, SgTable } from '../core/sg.js';
import { IommuError, type Errno } from '../errors/errors.js';
import { FrameReader, frameBytes, MAX_MAX_FRAME } from '../protocol/frame.js';
import { decodeValue, encodeValue, toWireIntegers, wireInt } from '../protocol/msgpack.js';
import type { ArgsOf, OpName, ResultOf, WireStats } from '../protocol/schema.js';

/** An sg list as the client takes it: the library's forms, or [phys, length] pairs. */
export type ClientSgList = ReadonlyArray<SgEntry> | SgTable | ReadonlyArray<readonly [number, number]>;

/** The arguments of an op as sent: sg lists as [phys, length] pairs. */
export type WireArgs<O extends OpName> = {
  [K in keyof ArgsOf<O>]: ArgsOf<O>[K] extends SgTable | undefined ? ReadonlyArray<readonly [number | bigint, number | bigint]> : ArgsOf<O>[K];
};

export interface ConnectOptions {
  /** Join this tenant (hello with tenant): share its domains with its other connections. */
  tenant?: string;
  /** The tenant's token, where the daemon has one for it. */
  token?: string;
  /** Give up connecting after this many ms (default 10000). */
  timeoutMs?: number;
}

export interface HelloInfo {
  version: number;
  server: string;
  maxFrame: number;
  tenant: string | null;
}

export interface ClientStats {
  iotlb: { invalidations: number; syncs: number; hits: number; misses: number; [more: string]: unknown };
  tables: { pages: number; bytes: number };
  domains: number;
  devices: number;
  tenant: { domains: number; devices: number; tablePages: number; tableBytes: number; maxTableBytes: number | null };
  /** Every field of the wire result, snake_case, as the daemon sent it. */
  raw: WireStats;
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

type WireResponse =
  | { id: number; ok: true; result: unknown }
  | { id: number | null; ok: false; error: { code: string; message: string; reason?: string; device?: number; iova?: number; access?: string } };

export class IommudClient {
  private readonly pending = new Map<number, Pending>();
  private idleWaiters: (() => void)[] = [];
  private nextId = 1;
  private readonly reader: FrameReader;
  private closedError: IommuError | null = null;
  private maxFrame = Infinity;
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };
  private readonly closed: Promise<void>;
  /** What the daemon said to hello. */
  info!: HelloInfo;

  private constructor(private readonly socket: Socket) {
    this.reader = new FrameReader(MAX_MAX_FRAME, {
      frame: (body) => this.onFrame(body),
      oversize: (length) => this.fail(new IommuError('EPROTO', `the daemon sent a frame of ${length} bytes`)),
    });
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.reader.push(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => this.fail(new IommuError('ENODEV', `connection to iommud failed: ${err.code ?? err.message}`)));
    this.closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.fail(new IommuError('ENODEV', 'the connection to iommud is closed'));
        resolve();
      });
    });
  }

  /** Connects to a Unix socket path or a TCP {host, port}, and says hello. */
  static async connect(target: string | { host: string; port: number }, options: ConnectOptions = {}): Promise<IommudClient> {
    const socket = typeof target === 'string' ? netConnect(target) : netConnect(target.port, target.host);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new IommuError('ENODEV', `connecting to iommud timed out`));
      }, options.timeoutMs ?? 10_000);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve();
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new IommuError('ENODEV', `cannot connect to iommud at ${describeTarget(target)}: ${err.code ?? err.message}`));
      });
    });
    const client = new IommudClient(socket);
    try {
      await client.hello(options);
    } catch (e) {
      client.destroy();
      throw e;
    }
    return client;
  }

  /** Requests sent and not yet answered. */
  get inflight(): number {
    return this.pending.size;
  }

  /** Sends one request; resolves to its result, or rejects with the daemon's error. */
  request<O extends OpName>(op: O, args: WireArgs<O>): Promise<ResultOf<O>> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const message: Record<string, unknown> = { id, op };
    // msgpackr would write undefined as an extension type: an absent argument is not sent at all.
    for (const [k, v] of Object.entries(args)) if (v !== undefined) message[k] = v;
    const body = encodeValue(toWireIntegers(message));
    if (body.length > this.maxFrame) {
      return Promise.reject(new IommuError('EMSGSIZE', `request of ${body.length} bytes exceeds the daemon's maximum frame of ${this.maxFrame}`));
    }
    return new Promise<ResultOf<O>>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      // Calls made in one turn of the event loop leave in one write.
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(this.uncork);
      }
      this.socket.write(frameBytes(body));
    });
  }

  /** hello: the protocol version and, with `tenant`, joins that tenant. connect() already said it once. */
  async hello(options: { tenant?: string; token?: string } = {}): Promise<HelloInfo> {
    const args: WireArgs<'hello'> = { version: 1 };
    if (options.tenant !== undefined) args.tenant = options.tenant;
    if (options.token !== undefined) args.token = options.token;
    const r = await this.request('hello', args);
    this.maxFrame = r.max_frame;
    this.info = { version: r.version, server: r.server, maxFrame: r.max_frame, tenant: r.tenant };
    return this.info;
  }

  async allocDomain(options: DomainOptions = {}): Promise<RemoteDomain> {
    const args: WireArgs<'domain_alloc'> = {};
    if (options.format !== undefined) args.format = options.format;
    if (options.granule !== undefined) args.granule = options.granule;
    if (options.ias !== undefined) args.ias = options.ias;
    if (options.oas !== undefined) args.oas = options.oas;
    if (options.pgsizeBitmap !== undefined) args.pgsize_bitmap = options.pgsizeBitmap;
    if (options.invalidateOnMap !== undefined) args.invalidate_on_map = options.invalidateOnMap;
    const r = await this.request('domain_alloc', args);
    return new RemoteDomain(this, r.domain, r.pgsize_bitmap);
  }

  /** A handle on a domain this connection's tenant already has (another connection allocated it). */
  domain(id: number, pgsizeBitmap = 0): RemoteDomain {
    return new RemoteDomain(this, id, pgsizeBitmap);
  }

  async attachDevice(deviceId: number, domain: RemoteDomain | number): Promise<void> {
    await this.request('attach', { device: deviceId, domain: typeof domain === 'number' ? domain : domain.id });
  }

  async detachDevice(deviceId: number): Promise<void> {
    await this.request('detach', { device: deviceId });
  }

  /** A device's DMA: the physical address, or a FaultError (code EFAULT) saying why not. */
  async translate(deviceId: number, iova: number, access: Access): Promise<number> {
    return (await this.request('translate', { device: deviceId, iova, access })).phys;
  }

  async stats(): Promise<ClientStats> {
    const raw = await this.request('stats', {});
    const t = raw.tenant;
    return {
      iotlb: raw.iotlb,
      tables: raw.tables,
      domains: raw.domains,
      devices: raw.devices,
      tenant: { domains: t.domains, devices: t.devices, tablePages: t.table_pages, tableBytes: t.table_bytes, maxTableBytes: t.max_table_bytes },
      raw,
    };
  }

  /** Waits for every answer, then closes the connection (an anonymous tenant's objects are freed). */
  async close(): Promise<void> {
    if (this.pending.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    if (!this.socket.destroyed) this.socket.end();
    await this.closed;
  }

  /** Closes at once; calls in flight reject with ENODEV. */
  destroy(): void {
    this.socket.destroy();
  }

  private onFrame(body: Buffer): void {
    let response: WireResponse;
    try {
      response = decodeValue(body) as WireResponse;
    } catch (e) {
      this.fail(e as IommuError);
      return;
    }
    if (response.id === null) {
      // EPROTO or EMSGSIZE about a frame that had no usable id: it cannot be matched to a call.
      if (!response.ok) this.fail(toError(response.error));
      return;
    }
    const p = this.pending.get(Number(response.id));
    if (p === undefined) return;
    this.pending.delete(Number(response.id));
    if (response.ok) p.resolve(response.result);
    else p.reject(toError(response.error));
    if (this.pending.size === 0) this.notifyIdle();
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Rejects every call in flight (and every later one) with `error`, and drops the connection. */
  private fail(error: IommuError): void {
    if (this.closedError === null) this.closedError = error;
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const p of calls) p.reject(error);
    this.notifyIdle();
    if (!this.socket.destroyed) this.socket.destroy();
  }
}

/** The library's Domain API over the wire; every call returns a promise. */
export class RemoteDomain {
  constructor(
    private readonly client: IommudClient,
    readonly id: number,
    readonly pgsizeBitmap: number,
  ) {}

  async map(iova: number, paddr: number, size: number, prot: number): Promise<void> {
    await this.client.request('map', { domain: this.id, iova, paddr, size, prot });
  }

  async unmap(iova: number, size: number): Promise<number> {
    return (await this.client.request('unmap', { domain: this.id, iova, size })).unmapped;
  }

  async mapSg(iova: number, sg: ClientSgList, prot: number, opts: { deferInvalidate?: boolean } = {}): Promise<number> {
    const args: WireArgs<'map_sg'> = { domain: this.id, iova, sg: sgPairs(sg), prot };
    if (opts.deferInvalidate !== undefined) args.defer_invalidate = opts.deferInvalidate;
    return (await this.client.request('map_sg', args)).mapped;
  }

  async unmapSg(iova: number, sg: ClientSgList, opts: { deferInvalidate?: boolean } = {}): Promise<number> {
    const args: WireArgs<'unmap_sg'> = { domain: this.id, iova, sg: sgPairs(sg) };
    if (opts.deferInvalidate !== undefined) args.defer_invalidate = opts.deferInvalidate;
    return (await this.client.request('unmap_sg', args)).unmapped;
  }

  async iotlbSync(): Promise<void> {
    await this.client.request('iotlb_sync', { domain: this.id });
  }

  async flushIotlbAll(): Promise<void> {
    await this.client.request('flush_iotlb_all', { domain: this.id });
  }

  async iovaToPhys(iova: number): Promise<number | null> {
    return (await this.client.request('iova_to_phys', { domain: this.id, iova })).phys;
  }

  async lookup(iova: number): Promise<LookupResult | null> {
    const r = await this.client.request('lookup', { domain: this.id, iova });
    return r === null ? null : { phys: r.phys, pageSize: r.page_size, prot: r.prot };
  }

  async free(): Promise<void> {
    await this.client.request('domain_free', { domain: this.id });
  }
}

function sgPairs(sg: ClientSgList): [number | bigint, number | bigint][] {
  const out: [number | bigint, number | bigint][] = [];
  for (const e of sg as Iterable<SgEntry | readonly [number, number]>) {
    if (Array.isArray(e)) out.push([wireInt(e[0] as number), wireInt(e[1] as number)]);
    else out.push([wireInt((e as SgEntry).phys), wireInt((e as SgEntry).length)]);
  }
  return out;
}

function toError(e: { code: string; message: string; reason?: string; device?: number; iova?: number; access?: string }): IommuError {
  if (e.code === 'EFAULT' && e.reason !== undefined) {
    return new FaultError({
      reason: e.reason as FaultReason,
      deviceId: Number(e.device),
      iova: Number(e.iova),
      access: e.access as Access,
    });
  }
  const err = new IommuError(e.code as Errno, e.message);
  return err;
}

function describeTarget(target: string | { host: string; port: number }): string {
  return typeof target === 'string' ? target : `${target.host}:${target.port}`;
}
