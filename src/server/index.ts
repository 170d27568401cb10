/** The daemon: listeners, connections, tenants and the op handlers. */
export { IommudServer, DEFAULT_LIMITS, DEFAULT_MAX_INFLIGHT } from './server.js';
export type { ServerOptions, TcpAddress } from './server.js';
export { defaultSocketPath, clearStaleSocket, SocketPathError } from './socket-path.js';
export type { TenantLimits, TenantUsage } from './tenants.js';
