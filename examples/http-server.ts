/**
 * An HTTP front end for iommud, in plain node:http: JSON bodies in, JSON out, errno codes as HTTP
 * statuses. The engine runs in its own thread (iommud/embed), so this event loop only parses requests
 * and writes answers; a big map_sg in the engine never delays another client's request here.
 *
 *   npm run build && node dist/examples/http-server.js [--host 127.0.0.1] [--port 8080] [--workers N]
 *
 * See examples/README.md for the routes and a session with curl.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { EmbeddedIommu, IommuError, SgTable, type EmbeddedDomain, type EmbeddedDomainOptions, type Errno } from 'iommud/embed';

/** The HTTP status each errno answers with. */
const STATUS: Record<Errno, number> = {
  EINVAL: 400, ERANGE: 400, EPROTO: 400,
  EPERM: 403,
  ENOENT: 404, ENOSYS: 404,
  EEXIST: 409, EBUSY: 409,
  EMSGSIZE: 413,
  EFAULT: 422,
  EIO: 500,
  ENODEV: 503,
  ENOMEM: 507, EDQUOT: 507,
};

/** A bad command line or engine option: say so, exit 2. */
function usage(message: string): never {
  console.error(`http-server: ${message}\nusage: node dist/examples/http-server.js [--host H] [--port P] [--workers N] [--max-body BYTES]`);
  process.exit(2);
}

function whole(name: string, text: string, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > max) usage(`--${name} takes a whole number up to ${max}, not '${text}'`);
  return n;
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8080' },
      workers: { type: 'string' },
      'max-body': { type: 'string', default: String(16 * 2 ** 20) },
    },
  }).values;
} catch (e) {
  usage((e as Error).message);
}
const args = parsed;
const port = whole('port', args.port, 65535);
const maxBody = whole('max-body', args['max-body'], 2 ** 30);

const iommu = await EmbeddedIommu.create(args.workers === undefined ? {} : { workers: whole('workers', args.workers, 256) }).catch(
  (e: IommuError) => usage(e.message),
);
const domains = new Map<number, EmbeddedDomain>();

type Body = Record<string, unknown>;
type Route = (params: string[], body: Body) => Promise<[status: number, result: unknown]>;

/** Addresses may be JSON numbers or hex strings ("0x40000000"); the engine checks everything else. */
function num(value: unknown): unknown {
  return typeof value === 'string' && /^0x[0-9a-f]+$/i.test(value) ? Number(value) : value;
}

function domain(id: string): EmbeddedDomain {
  const dom = domains.get(Number(id));
  if (!dom) throw new IommuError('ENOENT', `no domain ${id}`);
  return dom;
}

/** [[phys, length], ...] as an SgTable: it reaches the engine thread without being copied. */
function sgTable(sg: unknown): SgTable {
  if (!Array.isArray(sg)) throw new IommuError('EINVAL', 'sg must be an array of [phys, length] pairs');
  const table = new SgTable(Math.max(1, sg.length));
  for (const pair of sg) {
    if (!Array.isArray(pair) || pair.length !== 2) throw new IommuError('EINVAL', 'sg must be an array of [phys, length] pairs');
    table.push(num(pair[0]) as number, num(pair[1]) as number);
  }
  return table;
}

function sgOptions(body: Body): { deferInvalidate?: boolean } {
  return body.deferInvalidate === undefined ? {} : { deferInvalidate: body.deferInvalidate as boolean };
}

const ROUTES: [method: string, path: RegExp, route: Route][] = [
  ['POST', /^\/domains$/, async (_p, body) => {
    const dom = await iommu.allocDomain(body as EmbeddedDomainOptions);
    domains.set(dom.id, dom);
    return [201, { id: dom.id, pgsizeBitmap: dom.pgsizeBitmap }];
  }],
  ['DELETE', /^\/domains\/(\d+)$/, async ([id]) => {
    await domain(id!).free();
    domains.delete(Number(id));
    return [204, null];
  }],
  ['POST', /^\/domains\/(\d+)\/map$/, async ([id], b) => {
    await domain(id!).map(num(b.iova) as number, num(b.paddr) as number, num(b.size) as number, b.prot as number);
    return [200, {}];
  }],
  ['POST', /^\/domains\/(\d+)\/unmap$/, async ([id], b) => [200, { unmapped: await domain(id!).unmap(num(b.iova) as number, num(b.size) as number) }]],
  ['POST', /^\/domains\/(\d+)\/map_sg$/, async ([id], b) => [200, { mapped: await domain(id!).mapSg(num(b.iova) as number, sgTable(b.sg), b.prot as number, sgOptions(b)) }]],
  ['POST', /^\/domains\/(\d+)\/unmap_sg$/, async ([id], b) => [200, { unmapped: await domain(id!).unmapSg(num(b.iova) as number, sgTable(b.sg), sgOptions(b)) }]],
  ['POST', /^\/domains\/(\d+)\/iotlb_sync$/, async ([id]) => {
    await domain(id!).iotlbSync();
    return [200, {}];
  }],
  ['GET', /^\/domains\/(\d+)\/iova\/(0x[0-9a-f]+|\d+)$/i, async ([id, iova]) => {
    const leaf = await domain(id!).lookup(Number(iova));
    if (!leaf) throw new IommuError('ENOENT', `nothing is mapped at iova ${iova}`);
    return [200, leaf];
  }],
  ['GET', /^\/stats$/, async () => [200, await iommu.stats()]],
];

function send(res: ServerResponse, status: number, result: unknown): void {
  const text = status === 204 ? '' : JSON.stringify(result);
  res.writeHead(status, status === 204 ? {} : { 'content-type': 'application/json' }).end(text);
}

function sendError(res: ServerResponse, e: unknown): void {
  const err = e instanceof IommuError ? e : new IommuError('EIO', String(e));
  if (!(e instanceof IommuError)) console.error(e);
  send(res, STATUS[err.code], { error: { code: err.code, message: err.message } });
}

/** The request's JSON object body ({} when empty); EMSGSIZE beyond --max-body. */
async function readBody(req: IncomingMessage): Promise<Body> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > maxBody) throw new IommuError('EMSGSIZE', `the body exceeds ${maxBody} bytes`);
    chunks.push(chunk);
  }
  if (length === 0) return {};
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new IommuError('EINVAL', 'the body is not JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new IommuError('EINVAL', 'the body must be a JSON object');
  return body as Body;
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  const matches = ROUTES.filter(([, re]) => re.test(path));
  const match = matches.find(([method]) => method === req.method);
  if (!match) {
    if (matches.length > 0) send(res, 405, { error: { code: 'EINVAL', message: `${req.method} is not allowed on ${path}` } });
    else send(res, 404, { error: { code: 'ENOSYS', message: `no route ${path}` } });
    req.resume();
    return;
  }
  try {
    const [status, result] = await match[2](match[1].exec(path)!.slice(1), await readBody(req));
    send(res, status, result);
  } catch (e) {
    sendError(res, e);
    // An oversized body is not read to its end: close rather than keep the connection.
    if (e instanceof IommuError && e.code === 'EMSGSIZE') res.once('finish', () => req.destroy());
  }
}

const server = createServer((req, res) => void handle(req, res));
server.on('error', (e) => usage(`cannot listen on ${args.host}:${port}: ${e.message}`));
server.listen(port, args.host, () => {
  const a = server.address() as AddressInfo;
  console.log(`iommud example listening on http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
});

// Stop accepting, let requests in progress finish, then close the engine.
const stop = (): void => {
  server.close(() => void iommu.close().then(() => process.exit(0)));
  server.closeIdleConnections();
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
