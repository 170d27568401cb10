/** The wire protocol: schema (ops and their arguments), frames, MessagePack, requests and responses. */
export * from './schema.js';
export * from './frame.js';
export * from './messages.js';
export { checkStandardValue, decodeValue, encodeValue, toWireIntegers, wireInt, MAX_DEPTH } from './msgpack.js';
