/**
 * One error class for everything iommud reports. `code` is the Linux errno name, as the kernel's IOMMU
 * API would return it (`-EINVAL`, `-EEXIST`, ...), so that a caller can branch on it and a wire client
 * sees the same word.
 *
 * ERRNO is the catalogue: every code iommud can raise, with when it happens. docs/errors.md lists the
 * same codes and a test keeps the two in step.
 */
export const ERRNO = {
  EINVAL: 'An argument is missing, of the wrong type, misaligned, or has a value the operation refuses.',
  ERANGE: 'An address or size is outside what the domain or the engine can represent (ias/oas, 2^53).',
  EEXIST: 'Part of the range to map is already mapped.',
  ENOMEM: 'Page-table memory is exhausted (tableMemoryBytes, or a tenant quota).',
  ENOENT: 'The domain (or device) named does not exist, or has been freed.',
  EFAULT: 'A device DMA could not be translated; the error carries a structured fault.',
  ENODEV: 'The Iommu has been closed, or a worker needed for the call is gone.',
  EBUSY: 'The object is in use by a call still in flight.',
  EPERM: 'The caller may not do this (wrong tenant token).',
  EIO: 'A worker thread failed while running part of a call; the call was rolled back.',
  ENOSYS: 'The operation does not exist (wire protocol).',
  EPROTO: 'A wire frame is not a MessagePack map.',
  EMSGSIZE: 'A wire frame is larger than the server accepts.',
  EDQUOT: 'A per-tenant limit on the number of objects has been reached.',
} as const;

export type Errno = keyof typeof ERRNO;

export class IommuError extends Error {
  override name = 'IommuError';
  readonly code: Errno;

  constructor(code: Errno, message: string) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

export function isIommuError(e: unknown, code?: Errno): e is IommuError {
  return e instanceof IommuError && (code === undefined || e.code === code);
}
