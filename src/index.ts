/**
 * iommud: a concurrent IOMMU mapping engine over real ARM LPAE page tables in shared memory.
 * See README.md for a tour and docs/api.md for every call.
 */
export { Iommu } from './core/iommu.js';
export type { IommuOptions, IommuStats } from './core/iommu.js';
export { Domain } from './core/domain.js';
export { TableBudget } from './core/budget.js';
export type { DomainOptions, SgOptions, DirtyOptions, PageTableInfo, LookupResult } from './core/domain.js';
export { FaultError } from './core/devices.js';
export type { Access, DeviceFault, FaultListener, FaultReason } from './core/devices.js';
export { Prot } from './core/prot.js';
export { SgTable } from './core/sg.js';
export type { SgEntry, SgList } from './core/sg.js';
export { IommuError, ERRNO, isIommuError } from './errors/errors.js';
export type { Errno } from './errors/errors.js';
export type { IotlbStats } from './iotlb/iotlb.js';
export type { InvalidationCommand } from './iotlb/gather.js';
export type { FormatName } from './pgtable/format.js';
