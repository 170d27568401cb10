/**
 * The engine thread of iommud/embed: an IommuHost exposed with comlink on the port the main thread
 * handed over. The thread lives until the main thread closes or terminates it.
 */
import { workerData, type MessagePort } from 'node:worker_threads';
import * as Comlink from 'comlink';
import { guarded, IommuHost } from '../src/embed/host.js';

const { port, events } = workerData as { port: MessagePort; events: MessagePort };
// Node's MessagePort is an EventTarget with postMessage: what comlink's Endpoint needs.
Comlink.expose(guarded(new IommuHost(events)), port as unknown as Comlink.Endpoint);
