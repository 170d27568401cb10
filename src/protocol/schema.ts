/**
 * The wire protocol's ops, declared once. Each op names its arguments — wire name, type, required or
 * optional, meaning — its result (how the engine's answer becomes the snake_case result map, and how
 * the docs write it) and the errors it can answer. Request validation, the server's dispatch table
 * (typed by this), the client's types, docs/protocol.md and the tests all read this table.
 */
import type { Errno } from '../errors/errors.js';
import { IommuError } from '../errors/errors.js';
import { SgTable } from '../core/sg.js';
import { describe } from '../util/args.js';

export const PROTOCOL_VERSION = 1;

/** 2^53: an integer argument at or above it is ERANGE (a JavaScript number cannot hold it exactly). */
const SAFE_LIMIT = 2 ** 53;

// --- argument types --------------------------------------------------------------------------

export type ArgKind = 'uint' | 'string' | 'bool' | 'sg' | 'enum';

export interface ArgType<T> {
  readonly kind: ArgKind;
  /** How the docs write the type. */
  readonly wire: string;
  /** The checked value, or IommuError EINVAL (missing, mistyped) / ERANGE (too large). */
  parse(name: string, value: unknown): T;
}

/**
 * An unsigned integer of any MessagePack width. msgpackr hands over a number when it is safe and a
 * bigint when it is not, so a bigint here is always out of range. `max`, below 2^53, bounds ids.
 */
export function uintType(max?: number): ArgType<number> {
  return {
    kind: 'uint',
    wire: max === undefined ? 'uint' : `uint ≤ ${max === 0xffffffff ? '2^32-1' : max}`,
    parse: (name, v) => {
      if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < SAFE_LIMIT && (max === undefined || v <= max)) return v;
      return uintSlow(name, v, max);
    },
  };
}

function uintSlow(name: string, v: unknown, max: number | undefined): never {
  if (typeof v === 'bigint') {
    if (v < 0n) throw new IommuError('EINVAL', `${name} must not be negative, got ${v}`);
    throw new IommuError('ERANGE', `${name} must be below 2^53, got ${v}`);
  }
  if (typeof v !== 'number' || Number.isNaN(v)) throw new IommuError('EINVAL', `${name} must be an unsigned integer, got ${describe(v)}`);
  if (v < 0) throw new IommuError('EINVAL', `${name} must not be negative, got ${v}`);
  if (v >= SAFE_LIMIT) throw new IommuError('ERANGE', `${name} must be below 2^53, got ${v}`);
  if (!Number.isInteger(v)) throw new IommuError('EINVAL', `${name} must be an integer, got ${v}`);
  throw new IommuError('EINVAL', `${name} must be at most ${max}, got ${v}`);
}

export function stringType(maxLength: number, minLength = 0): ArgType<string> {
  return {
    kind: 'string',
    wire: 'string',
    parse: (name, v) => {
      if (typeof v !== 'string') throw new IommuError('EINVAL', `${name} must be a string, got ${describe(v)}`);
      if (v.length > maxLength) throw new IommuError('EINVAL', `${name} must be at most ${maxLength} characters`);
      if (v.length < minLength) throw new IommuError('EINVAL', `${name} must be at least ${minLength} character${minLength === 1 ? '' : 's'}`);
      return v;
    },
  };
}

export function boolType(): ArgType<boolean> {
  return {
    kind: 'bool',
    wire: 'bool',
    parse: (name, v) => {
      if (typeof v !== 'boolean') throw new IommuError('EINVAL', `${name} must be a boolean, got ${describe(v)}`);
      return v;
    },
  };
}

export function enumType<const V extends string>(values: readonly V[]): ArgType<V> {
  return {
    kind: 'enum',
    wire: values.map((v) => `"${v}"`).join(' or '),
    parse: (name, v) => {
      if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
        throw new IommuError('EINVAL', `${name} must be one of ${values.join(', ')}, got ${describe(v)}`);
      }
      return v as V;
    },
  };
}

/**
 * A scatter-gather list: an array of [phys, length] pairs, read straight into an SgTable (shared
 * memory, so the engine's workers read it without another copy).
 */
export function sgType(): ArgType<SgTable> {
  const addr = uintType();
  return {
    kind: 'sg',
    wire: '[[phys, length], ...]',
    parse: (name, v) => {
      if (!Array.isArray(v)) throw new IommuError('EINVAL', `${name} must be an array of [phys, length] pairs, got ${describe(v)}`);
      const table = new SgTable(Math.max(1, v.length));
      for (let i = 0; i < v.length; i++) {
        const e: unknown = v[i];
        if (!Array.isArray(e) || e.length !== 2) {
          throw new IommuError('EINVAL', `${name}[${i}] must be a [phys, length] pair, got ${describe(e)}`);
        }
        const phys = addr.parse(`${name}[${i}].phys`, e[0]);
        const length = addr.parse(`${name}[${i}].length`, e[1]);
        table.push(phys, length); // EINVAL for a zero length
      }
      return table;
    },
  };
}

export interface ArgSpec<T = unknown, R extends boolean = boolean> {
  readonly type: ArgType<T>;
  readonly required: R;
  readonly doc: string;
}

export function required<T>(type: ArgType<T>, doc: string): ArgSpec<T, true> {
  return { type, required: true, doc };
}

export function optional<T>(type: ArgType<T>, doc: string): ArgSpec<T, false> {
  return { type, required: false, doc };
}

// --- ops ---------------------------------------------------------------------------------------

export interface ResultSpec<In, Out> {
  /** How the docs write the result. */
  readonly doc: string;
  /** The wire result (snake_case keys) from what the engine answered. */
  readonly build: (answer: In) => Out;
}

export interface OpSpec<A extends Record<string, ArgSpec> = Record<string, ArgSpec>, In = never, Out = unknown> {
  readonly summary: string;
  readonly args: A;
  readonly result: ResultSpec<In, Out>;
  /** The codes this op can answer besides EINVAL/ERANGE for its arguments (which every op can). */
  readonly errors: readonly Errno[];
}

function op<A extends Record<string, ArgSpec>, In, Out>(spec: OpSpec<A, In, Out>): OpSpec<A, In, Out> {
  return spec;
}

const u = uintType();
const id32 = uintType(0xffffffff);
const sg = sgType();

const domainArg = required(id32, 'A domain of the caller\'s tenant, as `domain_alloc` answered.');
const deviceArg = required(id32, 'A device (stream id) in the caller\'s tenant\'s own numbering.');
const deferArg = optional(boolType(), 'Leave this call\'s invalidation for a later `iotlb_sync` (the seed\'s TLB_NO_INV). Default false.');

export interface HelloAnswer {
  server: string;
  maxFrame: number;
  tenant: string | null;
}

export interface LookupAnswer {
  phys: number;
  pageSize: number;
  prot: number;
}

export interface StatsAnswer {
  /** The engine's `Iommu.stats()`: at least iotlb, tables, domains, devices (more fields go out too). */
  iotlb: { invalidations: number; syncs: number; hits: number; misses: number };
  tables: { pages: number; bytes: number };
  domains: number;
  devices: number;
  tenant: { domains: number; devices: number; tablePages: number; tableBytes: number; maxTableBytes: number | null };
}

/** camelCase (and kebab-case) keys as the wire's snake_case, all the way down. */
export function snakeCaseKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(snakeCaseKeys);
  if (typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase()).replace(/-/g, '_')] = snakeCaseKeys(v);
  }
  return out;
}

/** The stats result as it goes on the wire (the fields the contract names; the engine may add more). */
export interface WireStats {
  iotlb: { invalidations: number; syncs: number; hits: number; misses: number; [more: string]: unknown };
  tables: { pages: number; bytes: number };
  domains: number;
  devices: number;
  tenant: { domains: number; devices: number; table_pages: number; table_bytes: number; max_table_bytes: number | null };
  [more: string]: unknown;
}

const empty = { doc: '{}', build: (): Record<string, never> => ({}) };

export const OPS = {
  hello: op({
    summary: 'Checks the protocol version and, with `tenant`, makes this connection one of that tenant\'s. ' +
      'Optional: a connection that never says hello is its own anonymous tenant.',
    args: {
      version: optional(u, 'The protocol version the client speaks. Only 1 exists; another is EINVAL.'),
      tenant: optional(stringType(128, 1), 'Join this tenant (1–128 characters): share its domains and devices with its other connections.'),
      token: optional(stringType(1024), 'The tenant\'s token, where the daemon was configured with one (`--tenant NAME:TOKEN`).'),
    },
    result: {
      doc: '{ version: 1, server: string, max_frame: int, tenant: string or nil }',
      build: (a: HelloAnswer) => ({ version: PROTOCOL_VERSION, server: a.server, max_frame: a.maxFrame, tenant: a.tenant }),
    },
    errors: ['EPERM', 'EBUSY'],
  }),
  domain_alloc: op({
    summary: 'Allocates an empty domain (iommu_domain_alloc) owned by the caller\'s tenant.',
    args: {
      format: optional(enumType(['arm-lpae-s1', 'arm-lpae-s2']), 'Page-table format. Default "arm-lpae-s1".'),
      granule: optional(u, 'Translation granule: 4096 (default), 16384 or 65536.'),
      ias: optional(u, 'Input (IOVA) address bits, 32–48. Default 48.'),
      oas: optional(u, 'Output (physical) address bits, 32–48. Default 48.'),
      pgsize_bitmap: optional(u, 'Leaf sizes to use: a non-empty subset of the granule\'s. Default: all of them.'),
      invalidate_on_map: optional(boolType(), 'Issue an IOTLB invalidation after every map (hardware that caches misses). Default false.'),
    },
    result: {
      doc: '{ domain: int, pgsize_bitmap: int }',
      build: (a: { domain: number; pgsizeBitmap: number }) => ({ domain: a.domain, pgsize_bitmap: a.pgsizeBitmap }),
    },
    errors: ['EDQUOT', 'ENOMEM'],
  }),
  domain_free: op({
    summary: 'Frees a domain: detaches its devices and returns its table pages. Waits for this connection\'s earlier calls on it.',
    args: { domain: domainArg },
    result: empty,
    errors: ['ENOENT', 'EBUSY'],
  }),
  map: op({
    summary: 'iommu_map: maps [iova, iova + size) to paddr with prot.',
    args: {
      domain: domainArg,
      iova: required(u, 'First IOVA; aligned to the smallest page size.'),
      paddr: required(u, 'First physical address; aligned likewise.'),
      size: required(u, 'Bytes, above 0; aligned likewise.'),
      prot: required(u, 'Prot flags: READ 1, WRITE 2, CACHE 4, NOEXEC 8, MMIO 16, PRIV 32; READ or WRITE required.'),
    },
    result: empty,
    errors: ['ENOENT', 'EEXIST', 'ENOMEM', 'EIO'],
  }),
  unmap: op({
    summary: 'iommu_unmap: unmaps from iova until size bytes are unmapped or a hole is reached; one invalidation batch.',
    args: {
      domain: domainArg,
      iova: required(u, 'First IOVA; aligned to the smallest page size.'),
      size: required(u, 'Bytes; aligned likewise.'),
    },
    result: { doc: '{ unmapped: int }', build: (n: number) => ({ unmapped: n }) },
    errors: ['ENOENT', 'EIO'],
  }),
  map_sg: op({
    summary: 'iommu_map_sg: maps the list\'s physically contiguous runs back to back from iova; all or nothing.',
    args: {
      domain: domainArg,
      iova: required(u, 'First IOVA.'),
      sg: required(sg, 'Segments as [phys, length] pairs; lengths above 0.'),
      prot: required(u, 'Prot flags, as for `map`.'),
      defer_invalidate: deferArg,
    },
    result: { doc: '{ mapped: int }', build: (n: number) => ({ mapped: n }) },
    errors: ['ENOENT', 'EEXIST', 'ENOMEM', 'EIO'],
  }),
  unmap_sg: op({
    summary: 'unmap_sg: unmaps [iova, iova + sum of lengths) as `unmap` does; one invalidation batch.',
    args: {
      domain: domainArg,
      iova: required(u, 'First IOVA; aligned to the smallest page size.'),
      sg: required(sg, 'The segments that were mapped, as [phys, length] pairs.'),
      defer_invalidate: deferArg,
    },
    result: { doc: '{ unmapped: int }', build: (n: number) => ({ unmapped: n }) },
    errors: ['ENOENT', 'EIO'],
  }),
  iotlb_sync: op({
    summary: 'Issues, as one batch, the invalidations deferred so far on the domain.',
    args: { domain: domainArg },
    result: empty,
    errors: ['ENOENT'],
  }),
  flush_iotlb_all: op({
    summary: 'Invalidates everything the IOTLB caches for the domain.',
    args: { domain: domainArg },
    result: empty,
    errors: ['ENOENT'],
  }),
  iova_to_phys: op({
    summary: 'The physical address an IOVA translates to, or nil where nothing is mapped.',
    args: { domain: domainArg, iova: required(u, 'The IOVA.') },
    result: { doc: '{ phys: int or nil }', build: (phys: number | null) => ({ phys }) },
    errors: ['ENOENT'],
  }),
  lookup: op({
    summary: 'The leaf that maps an IOVA: physical address, leaf size and the prot its descriptor grants; nil where nothing is mapped.',
    args: { domain: domainArg, iova: required(u, 'The IOVA.') },
    result: {
      doc: '{ phys: int, page_size: int, prot: int } or nil',
      build: (a: LookupAnswer | null) => (a === null ? null : { phys: a.phys, page_size: a.pageSize, prot: a.prot }),
    },
    errors: ['ENOENT'],
  }),
  attach: op({
    summary: 'Attaches a device to a domain; a device attached elsewhere moves.',
    args: { device: deviceArg, domain: domainArg },
    result: empty,
    errors: ['ENOENT', 'EDQUOT'],
  }),
  detach: op({
    summary: 'Detaches a device from its domain.',
    args: { device: deviceArg },
    result: empty,
    errors: ['ENOENT'],
  }),
  translate: op({
    summary: 'A device\'s DMA to an IOVA: the physical address, or EFAULT whose error map adds `reason` ' +
      '("translation", "permission", "address-size" or "no-domain"), `device`, `iova` and `access`.',
    args: {
      device: deviceArg,
      iova: required(u, 'The IOVA the device accesses.'),
      access: required(enumType(['read', 'write']), 'The kind of access.'),
    },
    result: { doc: '{ phys: int }', build: (phys: number) => ({ phys }) },
    errors: ['EFAULT'],
  }),
  stats: op({
    summary: 'The daemon-wide counters of `Iommu.stats()`, and the caller\'s tenant\'s usage.',
    args: {},
    result: {
      doc: '{ iotlb: { invalidations, syncs, hits, misses, ... }, tables: { pages, bytes }, domains, devices, ... , ' +
        'tenant: { domains, devices, table_pages, table_bytes, max_table_bytes } } (ints, max_table_bytes nil without a quota; every field of Iommu.stats(), snake_case)',
      build: (a: StatsAnswer) => snakeCaseKeys(a) as WireStats,
    },
    errors: [],
  }),
} as const;

export type Ops = typeof OPS;
export type OpName = keyof Ops;
export const OP_NAMES = Object.keys(OPS) as OpName[];

type ValueOf<S> = S extends ArgSpec<infer T> ? T : never;
type RequiredKeys<A> = { [K in keyof A]: A[K] extends ArgSpec<unknown, true> ? K : never }[keyof A];
type OptionalKeys<A> = Exclude<keyof A, RequiredKeys<A>>;
type Flatten<T> = { [K in keyof T]: T[K] };

/** The checked arguments of an op, as validation hands them to the handler. */
export type ArgsOf<O extends OpName> = Flatten<
  { [K in RequiredKeys<Ops[O]['args']>]: ValueOf<Ops[O]['args'][K]> } &
  { [K in OptionalKeys<Ops[O]['args']>]?: ValueOf<Ops[O]['args'][K]> }
>;
/** What a handler answers: the input of the op's result builder. */
export type AnswerOf<O extends OpName> = Parameters<Ops[O]['result']['build']>[0];
/** The wire result of an op. */
export type ResultOf<O extends OpName> = ReturnType<Ops[O]['result']['build']>;

export function isOpName(name: string): name is OpName {
  return Object.hasOwn(OPS, name);
}

/** Envelope keys every request may carry besides its op's arguments. */
export const ENVELOPE_KEYS = ['id', 'op'] as const;

/**
 * The op's arguments from a decoded request map: every required one present, each of its type, and
 * nothing the op does not know (a misspelt optional argument is an error, not silently ignored).
 */
export function parseArgs<O extends OpName>(opName: O, request: Record<string, unknown>): ArgsOf<O> {
  const specs = OPS[opName].args as Record<string, ArgSpec>;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(request)) {
    if (key === 'id' || key === 'op') continue;
    if (!Object.hasOwn(specs, key)) {
      const known = Object.keys(specs);
      throw new IommuError('EINVAL', `${opName} has no argument '${key}'${known.length ? ` (it takes ${known.join(', ')})` : ' (it takes none)'}`);
    }
  }
  for (const [name, spec] of Object.entries(specs)) {
    const value = request[name];
    if (value === undefined || (value === null && !spec.required)) {
      if (spec.required) throw new IommuError('EINVAL', `${opName} needs the argument '${name}'`);
      continue;
    }
    out[name] = spec.type.parse(name, value);
  }
  return out as ArgsOf<O>;
}
