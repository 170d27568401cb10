/** `iommud/client`: a typed client for the daemon's wire protocol. */
export { IommudClient, RemoteDomain } from './client.js';
export type { ClientSgList, ClientStats, ConnectOptions, HelloInfo, WireArgs } from './client.js';
export { IommuError, Prot, SgTable } from '../index.js';
export { FaultError } from '../core/devices.js';
export type { Errno } from '../errors/errors.js';
