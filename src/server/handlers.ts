/**
 * What each op does, keyed by the schema's op names (the type makes a missing or misspelt handler a
 * compile error). A handler says how its call is ordered with the connection's other calls (see
 * sequencer.ts) and runs it against the connection's tenant; it answers what the op's result builder
 * takes, and the connection turns that into the wire result.
 */
import type { DomainOptions } from '../core/domain.js';
import { IommuError } from '../errors/errors.js';
import { PROTOCOL_VERSION, type AnswerOf, type ArgsOf, type OpName } from '../protocol/schema.js';
import type { Order } from './sequencer.js';
import type { Session } from './session.js';

export interface Handler<O extends OpName> {
  /** How the call is ordered; computed when the request arrives. */
  order(session: Session, args: ArgsOf<O>): Order;
  run(session: Session, args: ArgsOf<O>): AnswerOf<O> | Promise<AnswerOf<O>>;
}

export type Handlers = { readonly [O in OpName]: Handler<O> };

const NOW: Order = { kind: 'now' };
const ALL: Order = { kind: 'all' };
const domainKey = (id: number): string => `d${id}`;
const deviceKey = (id: number): string => `v${id}`;
const range = (domain: number): Order => ({ kind: 'range', keys: [domainKey(domain)] });
const barrier = (domain: number): Order => ({ kind: 'barrier', keys: [domainKey(domain)] });

/**
 * A device call waits for the connection's calls on the device and on the domain it will be attached
 * to when it runs (where it is now, or where an earlier request of the connection moves it), and for
 * `also` (attach: the domain it moves to).
 */
function deviceBarrier(session: Session, device: number, also?: number): Order {
  // Behind a hello that may change the tenant, which domains are meant cannot be known yet.
  if (session.pendingHellos > 0) return ALL;
  const domains = session.deviceDomains(device);
  if (also !== undefined && !domains.includes(also)) domains.push(also);
  return { kind: 'barrier', keys: [deviceKey(device), ...domains.map(domainKey)] };
}

export const HANDLERS: Handlers = {
  hello: {
    order: (s) => {
      s.pendingHellos++;
      return ALL;
    },
    run: (session, a) => {
      session.pendingHellos--;
      if (a.version !== undefined && a.version !== PROTOCOL_VERSION) {
        throw new IommuError('EINVAL', `protocol version ${a.version} is not supported (this server speaks ${PROTOCOL_VERSION})`);
      }
      if (a.tenant === undefined) {
        if (a.token !== undefined) throw new IommuError('EINVAL', 'a token needs a tenant');
      } else {
        session.joinTenant(a.tenant, a.token);
      }
      return { server: session.daemon.serverName, maxFrame: session.daemon.maxFrame, tenant: session.tenant.name };
    },
  },
  domain_alloc: {
    order: () => NOW,
    run: (session, a) => {
      const options: DomainOptions = {};
      if (a.format !== undefined) options.format = a.format;
      if (a.granule !== undefined) options.granule = a.granule as DomainOptions['granule'];
      if (a.ias !== undefined) options.ias = a.ias;
      if (a.oas !== undefined) options.oas = a.oas;
      if (a.pgsize_bitmap !== undefined) options.pgsizeBitmap = a.pgsize_bitmap;
      if (a.invalidate_on_map !== undefined) options.invalidateOnMap = a.invalidate_on_map;
      return session.tenant.allocDomain(options);
    },
  },
  domain_free: {
    order: (s, a) => {
      s.projectDomainFree(a.domain);
      return barrier(a.domain);
    },
    run: (session, a) => session.tenant.freeDomain(a.domain),
  },
  map: {
    order: (_s, a) => range(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).map(a.iova, a.paddr, a.size, a.prot),
  },
  unmap: {
    order: (_s, a) => range(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).unmap(a.iova, a.size),
  },
  map_sg: {
    order: (_s, a) => range(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).mapSg(a.iova, a.sg, a.prot, { deferInvalidate: a.defer_invalidate ?? false }),
  },
  unmap_sg: {
    order: (_s, a) => range(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).unmapSg(a.iova, a.sg, { deferInvalidate: a.defer_invalidate ?? false }),
  },
  iotlb_sync: {
    order: (_s, a) => barrier(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).iotlbSync(),
  },
  flush_iotlb_all: {
    order: (_s, a) => barrier(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).flushIotlbAll(),
  },
  iova_to_phys: {
    order: (_s, a) => barrier(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).iovaToPhys(a.iova),
  },
  lookup: {
    order: (_s, a) => barrier(a.domain),
    run: (session, a) => session.tenant.domain(a.domain).lookup(a.iova),
  },
  attach: {
    order: (s, a) => {
      const order = deviceBarrier(s, a.device, a.domain);
      s.projectDevice(a.device, a.domain);
      return order;
    },
    run: (session, a) => session.tenant.attach(a.device, a.domain),
  },
  detach: {
    order: (s, a) => {
      const order = deviceBarrier(s, a.device);
      s.projectDevice(a.device, null);
      return order;
    },
    run: (session, a) => session.tenant.detach(a.device),
  },
  translate: {
    order: (s, a) => deviceBarrier(s, a.device),
    run: (session, a) => session.tenant.translate(a.device, a.iova, a.access),
  },
  stats: {
    order: () => NOW,
    run: (session) => ({ ...session.daemon.iommu.stats(), tenant: session.tenant.usage() }),
  },
};
