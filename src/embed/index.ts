/**
 * iommud/embed: the engine in its own worker thread, for Node servers (see docs/api.md, "Embedding").
 * Prot, SgTable and the errors are the library's own, re-exported so one import is enough.
 */
export { EmbeddedIommu, EmbeddedDomain, EmbeddedTableBudget } from './embedded.js';
export type { EmbeddedDomainOptions } from './embedded.js';
export { Prot } from '../core/prot.js';
export { SgTable } from '../core/sg.js';
export { FaultError } from '../core/devices.js';
export { IommuError, isIommuError } from '../errors/errors.js';
export type { IommuOptions, IommuStats } from '../core/iommu.js';
export type { DomainOptions, SgOptions, DirtyOptions, PageTableInfo, LookupResult } from '../core/domain.js';
export type { Access, DeviceFault, FaultListener, FaultReason } from '../core/devices.js';
export type { SgEntry, SgList } from '../core/sg.js';
export type { Errno } from '../errors/errors.js';
