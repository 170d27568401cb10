/**
 * `iommud serve --metrics`: a real daemon, a real HTTP GET of /metrics in Prometheus' text format.
 */
import test from 'ava';
import { Prot } from '../../src/index.js';
import { startProcess, MAIN_JS, tempSocketPath, type RunningProcess } from './daemon.js';
import { RawConn } from './wire.js';

let daemon: RunningProcess;
let socket: string;
let url: string;
test.before(async () => {
  socket = tempSocketPath();
  daemon = await startProcess(
    [MAIN_JS, 'serve', '--socket', socket, '--workers', '0', '--log-level', 'warn', '--metrics', '127.0.0.1:0'],
    /^iommud metrics on (\S+)$/m,
  );
  url = daemon.ready[1]!;
});
test.after.always(async () => {
  await daemon?.stop();
});

/** The value of one sample line (`name{labels} value`), or undefined if there is none. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function scrape(): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status}`);
  return res.text();
}

test.serial('the listening line comes first; metrics are served on loopback, /metrics only', async (t) => {
  t.regex(daemon.stdout(), /^iommud listening on \S+\niommud metrics on http:\/\/127\.0\.0\.1:\d+\/metrics\n$/);
  const res = await fetch(url);
  t.is(res.status, 200);
  t.regex(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  t.is((await fetch(url.replace('/metrics', '/other'))).status, 404);
  t.is((await fetch(url, { method: 'POST' })).status, 405);
});

test.serial('requests by op and outcome, their latency, and the engine stats', async (t) => {
  const before = await scrape();
  const c = await RawConn.open(socket);
  const { domain } = await c.ok<{ domain: number }>({ op: 'domain_alloc' });
  await c.ok({ op: 'map', domain, iova: 0x1000, paddr: 0x2000, size: 0x1000, prot: Prot.READ });
  t.is((await c.call({ op: 'map', domain, iova: 0x1000, paddr: 0x2000, size: 0x1000, prot: Prot.READ })).error?.code, 'EEXIST');
  t.is((await c.call({ op: 'frobnicate' })).error?.code, 'ENOSYS');
  await c.ok({ op: 'attach', device: 1, domain });
  t.is((await c.call({ op: 'translate', device: 1, iova: 0x9000, access: 'read' })).error?.reason, 'translation');
  const stats = await c.ok<{ tables: { pages: number; bytes: number }; iotlb: { syncs: number }; domains: number }>({ op: 'stats' });
  const text = await scrape();
  const grew = (series: string): number => (sample(text, series) ?? 0) - (sample(before, series) ?? 0);
  t.is(grew('iommud_requests_total{op="map",code="ok"}'), 1);
  t.is(grew('iommud_requests_total{op="map",code="EEXIST"}'), 1);
  t.is(grew('iommud_requests_total{op="invalid",code="ENOSYS"}'), 1, 'an unknown op is counted, not named');
  t.is(grew('iommud_requests_total{op="translate",code="EFAULT"}'), 1);
  t.is(grew('iommud_request_duration_seconds_count{op="map"}'), 2);
  t.is(sample(text, 'iommud_request_duration_seconds_bucket{le="+Inf",op="map"}'), sample(text, 'iommud_request_duration_seconds_count{op="map"}'));
  t.true((sample(text, 'iommud_request_duration_seconds_sum{op="map"}') ?? -1) > 0);
  t.is(grew('iommud_faults_total{reason="translation"}'), 1);
  t.is(sample(text, 'iommud_table_pages'), stats.tables.pages);
  t.is(sample(text, 'iommud_table_bytes'), stats.tables.bytes);
  t.is(sample(text, 'iommud_domains'), stats.domains);
  t.is(sample(text, 'iommud_devices'), 1);
  t.is(sample(text, 'iommud_connections'), 1);
  t.is(sample(text, 'iommud_iotlb_syncs_total'), stats.iotlb.syncs);
  t.regex(text, /^# TYPE iommud_iotlb_invalidations_total counter$/m);
  t.regex(text, /^# TYPE iommud_table_pages gauge$/m);
  t.regex(text, /^# TYPE iommud_request_duration_seconds histogram$/m);
  t.regex(text, /^process_cpu_user_seconds_total \d/m, "Node's process metrics too");
  c.destroy();
});

test.serial('SIGTERM still stops the daemon with 0 after scrapes on kept-alive connections', async (t) => {
  await scrape();
  t.deepEqual(await daemon.stop('SIGTERM'), { code: 0, signal: null });
});
