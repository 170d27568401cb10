/**
 * A table budget: a ceiling on the page-table memory of a group of domains (a daemon tenant's quota).
 * Domains allocated with `tableBudget` draw their table pages from it; a map that would need more
 * fails ENOMEM and rolls back, exactly as when table memory runs out, and other domains never notice.
 */
import { IommuError } from '../errors/errors.js';
import type { TableAccounts } from '../pgtable/account.js';

export class TableBudget {
  /** @internal the budget's number in the Iommu's table accounts. */
  readonly id: number;
  /** @internal live domains drawing on it. */
  domains = 0;
  private closed = false;

  /** @internal Use Iommu.createTableBudget(). */
  constructor(
    private readonly accounts: TableAccounts,
    limitBytes: number,
  ) {
    this.id = accounts.openBudget(limitBytes);
  }

  /** The ceiling, in bytes (a multiple of 4 KiB). */
  get limitBytes(): number {
    return this.accounts.budgetLimitBytes(this.id);
  }

  /** Table memory its domains hold now, in bytes (including pages waiting for an invalidation). */
  get usedBytes(): number {
    return this.accounts.budgetUsedBytes(this.id);
  }

  /** @internal */
  belongsTo(accounts: TableAccounts): boolean {
    return this.accounts === accounts;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Gives the budget back; EBUSY while a live domain still draws on it. */
  close(): void {
    if (this.closed) return;
    if (this.domains > 0) throw new IommuError('EBUSY', `the table budget still has ${this.domains} domain(s)`);
    this.closed = true;
    this.accounts.closeBudget(this.id);
  }
}
