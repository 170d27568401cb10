/**
 * Who holds how much table memory. Every table page is charged to the domain whose tables it is part
 * of, from the moment it is allocated until it is freed (a page a map unlinked stays charged until
 * its walk invalidation has been issued and it is really free). A domain may also draw on a budget
 * shared with other domains — a daemon tenant's quota — and then a page that would take the budget
 * past its limit is not allocated: the map fails ENOMEM and rolls back, as when memory runs out.
 *
 * Workers allocate tables too, so the counters live in one SharedArrayBuffer per Iommu, handed to
 * each worker once, and are updated with Atomics. Counts are in 4 KiB units (table pages are 4K, 16K
 * or 64K).
 *
 *   Int32 slot  0 .. MAX_DOMAIN_TAGS-1                         units held by the domain with that tag
 *   Int32 slot  MAX_DOMAIN_TAGS + 2b, MAX_DOMAIN_TAGS + 2b + 1  budget b: units used, limit in units
 */
import { IommuError } from '../errors/errors.js';
import { UNIT } from './memory.js';

/** Domain tags are below this (the IOTLB's tag space). */
export const MAX_DOMAIN_TAGS = 2 ** 15;
/** Budgets that can exist at once. */
export const MAX_BUDGETS = 2 ** 15;
/** A domain that draws on no budget. */
export const NO_BUDGET = -1;

export class TableAccounts {
  readonly sab: SharedArrayBuffer;
  private readonly i32: Int32Array;
  /** Budget numbers released for reuse, and the next never used (main thread only). */
  private readonly freeBudgets: number[] = [];
  private nextBudget = 0;

  static create(): TableAccounts {
    return new TableAccounts(new SharedArrayBuffer((MAX_DOMAIN_TAGS + 2 * MAX_BUDGETS) * 4));
  }

  /** Attaches to accounts created elsewhere (a worker receives the buffer). */
  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.i32 = new Int32Array(sab);
  }

  /**
   * Charges `bytes` of new table memory to domain `tag` and its budget. False, charging nothing, if
   * that would take the budget past its limit.
   */
  charge(tag: number, budget: number, bytes: number): boolean {
    const units = bytes / UNIT;
    if (budget !== NO_BUDGET) {
      const used = MAX_DOMAIN_TAGS + 2 * budget;
      // Add first, then check: concurrent chargers each see the total including themselves.
      if (Atomics.add(this.i32, used, units) + units > Atomics.load(this.i32, used + 1)) {
        Atomics.sub(this.i32, used, units);
        return false;
      }
    }
    Atomics.add(this.i32, tag, units);
    return true;
  }

  /** Gives back what charge() took for `bytes`. */
  credit(tag: number, budget: number, bytes: number): void {
    const units = bytes / UNIT;
    if (budget !== NO_BUDGET) Atomics.sub(this.i32, MAX_DOMAIN_TAGS + 2 * budget, units);
    Atomics.sub(this.i32, tag, units);
  }

  /** Table memory held by the domain with tag `tag`, in bytes. */
  domainBytes(tag: number): number {
    return Atomics.load(this.i32, tag) * UNIT;
  }

  /** A new budget of `limitBytes` (rounded down to whole units), nothing used. */
  openBudget(limitBytes: number): number {
    const b = this.freeBudgets.pop() ?? (this.nextBudget < MAX_BUDGETS ? this.nextBudget++ : NO_BUDGET);
    if (b === NO_BUDGET) throw new IommuError('ENOMEM', `at most ${MAX_BUDGETS} table budgets can exist at once`);
    const used = MAX_DOMAIN_TAGS + 2 * b;
    Atomics.store(this.i32, used, 0);
    Atomics.store(this.i32, used + 1, Math.min(Math.floor(limitBytes / UNIT), 2 ** 31 - 1));
    return b;
  }

  closeBudget(budget: number): void {
    this.freeBudgets.push(budget);
  }

  budgetUsedBytes(budget: number): number {
    return Atomics.load(this.i32, MAX_DOMAIN_TAGS + 2 * budget) * UNIT;
  }

  budgetLimitBytes(budget: number): number {
    return Atomics.load(this.i32, MAX_DOMAIN_TAGS + 2 * budget + 1) * UNIT;
  }
}

/** One domain's side of the accounts: what its table walker charges and credits. */
export class TableOwner {
  constructor(
    readonly accounts: TableAccounts,
    readonly tag: number,
    readonly budget: number,
  ) {}

  charge(bytes: number): boolean {
    return this.accounts.charge(this.tag, this.budget, bytes);
  }

  credit(bytes: number): void {
    this.accounts.credit(this.tag, this.budget, bytes);
  }

  /** Allocates a zeroed table page charged to this owner: its offset, or -1 (budget or memory exhausted). */
  allocPage(mem: { alloc(bytes: number): number }, bytes: number): number {
    if (!this.charge(bytes)) return -1;
    const page = mem.alloc(bytes);
    if (page < 0) this.credit(bytes);
    return page;
  }

  /** What ran out when allocPage() failed for `bytes`: for an ENOMEM message. */
  exhausted(mem: { limitBytes: number }, bytes: number): string {
    const a = this.accounts;
    if (this.budget !== NO_BUDGET && a.budgetUsedBytes(this.budget) + bytes > a.budgetLimitBytes(this.budget)) {
      return `the table budget (limit ${a.budgetLimitBytes(this.budget)} bytes)`;
    }
    return `page-table memory (limit ${mem.limitBytes} bytes)`;
  }

  /** Frees pages given as (offset, bytes) pairs and credits them. */
  freePages(mem: { free(offset: number, bytes: number): void }, pages: readonly number[]): void {
    for (let i = 0; i < pages.length; i += 2) {
      mem.free(pages[i]!, pages[i + 1]!);
      this.credit(pages[i + 1]!);
    }
  }
}
