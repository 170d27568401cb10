/**
 * Prometheus metrics of the daemon (`iommud serve --metrics HOST:PORT`), with prom-client: the
 * engine's stats() as counters and gauges, read once per scrape; per-op request counts by outcome and
 * a latency histogram, observed as each request is answered; Node's process metrics. Its own registry
 * (not prom-client's global one); the daemon serves it on a listener of its own (server.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { IommuStats } from '../core/iommu.js';

/** What a scrape reads from the daemon. */
export interface MetricsSnapshot {
  stats: IommuStats;
  connections: number;
  namedTenants: number;
}

type Read = (s: MetricsSnapshot) => number;

/** Monotonic counts of the engine, and what they are. */
const COUNTERS: [name: string, help: string, read: Read][] = [
  ['iommud_iotlb_invalidations_total', 'IOTLB invalidation commands issued, inside batches.', (s) => s.stats.iotlb.invalidations],
  ['iommud_iotlb_syncs_total', 'Completed IOTLB invalidation batches.', (s) => s.stats.iotlb.syncs],
  ['iommud_iotlb_hits_total', 'Device translations answered by the IOTLB.', (s) => s.stats.iotlb.hits],
  ['iommud_iotlb_misses_total', 'Device translations that walked the tables.', (s) => s.stats.iotlb.misses],
  ['iommud_iotlb_walk_hits_total', 'Table walks that started from the walk cache.', (s) => s.stats.iotlb.walkHits],
  ['iommud_iotlb_evictions_total', 'IOTLB leaf entries evicted to make room.', (s) => s.stats.iotlb.evictions],
  ['iommud_iotlb_walk_evictions_total', 'Walk-cache entries evicted to make room.', (s) => s.stats.iotlb.walkEvictions],
  ['iommud_iotlb_range_invalidations_total', 'IOTLB invalidation commands of a leaf range.', (s) => s.stats.iotlb.commands.range],
  ['iommud_iotlb_walk_invalidations_total', 'IOTLB invalidation commands of walk caches, in batches that free tables.', (s) => s.stats.iotlb.commands.walk],
  ['iommud_iotlb_domain_invalidations_total', 'IOTLB invalidation commands of one whole domain.', (s) => s.stats.iotlb.commands.domain],
  ['iommud_iotlb_global_invalidations_total', 'IOTLB invalidation commands of everything cached.', (s) => s.stats.iotlb.commands.global],
  ['iommud_iotlb_modelled_seconds_total', 'Modelled cost of the invalidations issued (the cost model), in seconds.', (s) => s.stats.iotlb.modelledNs / 1e9],
];

/** Levels that go up and down. */
const GAUGES: [name: string, help: string, read: Read][] = [
  ['iommud_iotlb_entries', 'Leaf entries in the IOTLB.', (s) => s.stats.iotlb.entries],
  ['iommud_table_pages', 'Page-table pages in use.', (s) => s.stats.tables.pages],
  ['iommud_table_bytes', 'Page-table memory in use, in bytes.', (s) => s.stats.tables.bytes],
  ['iommud_domains', 'Domains allocated.', (s) => s.stats.domains],
  ['iommud_devices', 'Devices attached.', (s) => s.stats.devices],
  ['iommud_connections', 'Client connections open.', (s) => s.connections],
  ['iommud_named_tenants', 'Named tenants known (they live until the daemon stops).', (s) => s.namedTenants],
];

const FAULT_REASONS = ['translation', 'permission', 'address-size', 'no-domain'] as const;

/** From 10 µs (a one-page map) to 10 s (a huge map_sg waiting behind others). */
const LATENCY_BUCKETS = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'op' | 'code'>;
  private readonly latency: Histogram<'op'>;
  /** Taken once per scrape, so that every metric of one scrape comes from the same stats(). */
  private snapshot: MetricsSnapshot | null = null;
  private rendering: Promise<string> | null = null;

  constructor(private readonly source: () => MetricsSnapshot) {
    const registers = [this.registry];
    const current = (): MetricsSnapshot => (this.snapshot ??= this.source());
    for (const [name, help, read] of COUNTERS) {
      new Counter({
        name, help, registers,
        collect() {
          // prom-client counters only go up by inc(): the engine's count is re-stated each scrape.
          this.reset();
          this.inc(read(current()));
        },
      });
    }
    for (const [name, help, read] of GAUGES) {
      new Gauge({ name, help, registers, collect() {
        this.set(read(current()));
      } });
    }
    new Counter({
      name: 'iommud_faults_total', help: 'Device faults, by reason.', labelNames: ['reason'] as const, registers,
      collect() {
        this.reset();
        for (const reason of FAULT_REASONS) this.inc({ reason }, current().stats.faults[reason]);
      },
    });
    this.requests = new Counter({
      name: 'iommud_requests_total',
      help: 'Requests answered, by op and outcome (code: "ok" or the errno; op "invalid": a request that could not be parsed).',
      labelNames: ['op', 'code'] as const,
      registers,
    });
    this.latency = new Histogram({
      name: 'iommud_request_duration_seconds',
      help: 'Time from reading a request to answering it (waiting behind earlier calls included), by op.',
      labelNames: ['op'] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /** One request answered: its op ("invalid" if it could not be parsed), "ok" or its errno, its latency. */
  observe(op: string, code: string, seconds: number): void {
    this.requests.inc({ op, code });
    this.latency.observe({ op }, seconds);
  }

  /** The metrics in Prometheus' text format. Scrapes at the same time share one rendering. */
  render(): Promise<string> {
    this.rendering ??= this.registry.metrics().finally(() => {
      this.rendering = null;
      this.snapshot = null;
    });
    return this.rendering;
  }

  /** The HTTP endpoint: GET (or HEAD) /metrics, and nothing else. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    if (req.url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only /metrics is served here\n');
    } else if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end();
    } else {
      this.render().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`),
      );
    }
  };
}
