"""Set-up's company step: which BC companies this deployment synchronizes, and what changed since the
last set-up (`shared.companies` has the model).

- The home company is pinned (Watermarks `companies`/`home`) the first time, so that reordering or
  removing companies in `BC_COMPANY_IDS` never hands its stored rows or untagged Dataverse rows to
  another company.
- With several companies, each gets its `bcbi_company` row in Dataverse (found by `bcbi_externalid`,
  created when missing, as BC's connector does when a company is enabled), and every mapped table the
  service tags must have the `bcbi_companyid` column (the Business Central integration solution).
- A company new to the registry is brought in: its initial sync (a full resync of every mapping,
  run by the processor) is queued. Its BC subscriptions are registered by the registration step.
- A company in the registry but no longer configured is stopped: its messages are dropped, its BC
  subscriptions deleted by the registration step; the report says what stays behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.companies import (
    COMPANY_ENTITY_SET,
    COMPANY_EXTERNAL_ID,
    COMPANY_NAME,
    COMPANY_PRIMARY_KEY,
    COMPANY_TABLES,
    COMPANY_VALUE,
    key_prefix,
    same_company,
)
from shared.connectors.errors import ApiError
from shared.mapping.schema import MappingSet
from shared.runtime import Runtime
from shared.store import tables
from shared.store.company_registry import CompanyRegistry
from shared.store.couplings import CouplingStore
from shared.sync import bulk

# `bcbi_name` is Text[30] in BCApps' `CDS Company` table.
COMPANY_NAME_LENGTH = 30


@dataclass
class CompanyReport:
    home: str = ""
    existing: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (check, detail, fix)
    added: list[str] = field(default_factory=list)  # companies whose initial sync was queued
    removed: list[str] = field(default_factory=list)  # what a removed company left behind


def bring_in_companies(
    rt: Runtime, mappings: MappingSet, *, dv_ok: bool, bc_names: dict[str, str]
) -> CompanyReport:
    """`bc_names`: BC company id (lower case) -> name, as set-up's BC check listed them."""
    report = CompanyReport()
    store = rt.company_registry
    registry = store.companies()
    home = _pin_home(rt, store, report)
    if rt.multi_company:
        if not dv_ok:
            return report  # the Dataverse check said why
        if not _dataverse_rows(rt, mappings, bc_names, report):
            return report
    first_time = not registry
    for company in rt.companies:
        if company.lower() in registry:
            continue
        runs: list[str] = []
        # The home company of a deployment set up before is synced already (and a fresh one starts
        # with `bcsync resync` as before); any other company new here needs its initial sync.
        if not (first_time and same_company(company, home)):
            view = rt.for_company(company)
            runs = [bulk.request_full_resync(view.storage, name) for name in mappings.sync_order()]
            report.added.append(
                f"company {_label(company, bc_names)}: initial sync queued ({len(runs)} mappings; "
                f"follow it with `bcsync status`)"
            )
        store.add(company, bc_names.get(company.lower(), ""), runs)
    for key, registered in registry.items():
        if any(same_company(key, c) for c in rt.companies):
            continue
        report.removed.append(_left_behind(rt, mappings, key, registered.name, home))
        store.remove(registered)
    return report


def _pin_home(rt: Runtime, store: CompanyRegistry, report: CompanyReport) -> str:
    pinned = rt.pinned_home_company()
    if pinned is None:
        pinned = rt.companies[0]
        store.pin_home(pinned)
        report.created.append(f"home company {pinned} pinned (its stored rows keep the single-company keys)")
    else:
        report.existing.append(f"home company {pinned}")
    report.home = pinned
    rt.root.__dict__.pop("home_company", None)  # read again, now pinned
    return pinned


def _dataverse_rows(
    rt: Runtime, mappings: MappingSet, bc_names: dict[str, str], report: CompanyReport
) -> bool:
    try:
        have = rt.dataverse_companies(refresh=True)
    except ApiError as exc:
        report.failed.append((
            "Dataverse companies",
            f"cannot read {COMPANY_ENTITY_SET} ({exc})",
            "several BC companies need the Business Central integration solution's company table "
            f"({COMPANY_ENTITY_SET}, installed with BC's Dataverse connection) and read/write on it for "
            "the integration user; install it or keep one company in BC_COMPANY_IDS",
        ))  # fmt: skip
        return False
    ok = True
    for m in mappings.entities():
        if m.dataverse.table not in COMPANY_TABLES:
            continue
        try:
            next(
                iter(rt.dataverse.query_pages(m.dataverse.entity_set, select=[COMPANY_VALUE], page_size=1)),
                None,
            )
        except ApiError as exc:
            ok = False
            report.failed.append((
                f"Dataverse {m.dataverse.table} company column",
                f"{m.dataverse.table} has no readable bcbi_companyid column ({exc})",
                "install the Business Central integration solution (it adds bcbi_companyid to accounts, "
                "contacts, products and sales documents) so that each row says its BC company",
            ))  # fmt: skip
    for company in rt.companies:
        name = _label(company, bc_names)
        if company.lower() in have:
            report.existing.append(f"Dataverse company row of {name}")
            continue
        body = {
            COMPANY_EXTERNAL_ID: company.lower(),
            COMPANY_NAME: (bc_names.get(company.lower()) or company)[:COMPANY_NAME_LENGTH],
        }
        try:
            created = rt.dataverse.create(COMPANY_ENTITY_SET, body, select=[COMPANY_PRIMARY_KEY])
        except ApiError as exc:
            ok = False
            report.failed.append((
                f"Dataverse company row of {name}", f"could not create it ({exc})",
                f"give the integration user create on {COMPANY_ENTITY_SET}, or create the row "
                f"({COMPANY_EXTERNAL_ID} = {company.lower()}) by hand",
            ))  # fmt: skip
            continue
        report.created.append(f"Dataverse company row of {name} ({created.get(COMPANY_PRIMARY_KEY, '')})")
    rt.dataverse_companies(refresh=True)
    return ok


def _left_behind(rt: Runtime, mappings: MappingSet, company: str, name: str, home: str) -> str:
    scope = key_prefix(company, home)
    store = CouplingStore(rt.storage.table(tables.COUPLINGS), scope)
    couplings = sum(sum(1 for _ in store.all_ids(m.name, "bc")) for m in mappings.entities())
    keys = "the single-company keys" if not scope else f"keys starting {scope!r}"
    return (
        f"company {name or company} ({company}) is no longer in BC_COMPANY_IDS: stopped (its queued messages "
        f"are dropped, its BC subscriptions deleted by registration). Left behind: {couplings} couplings, "
        f"its journal and watermarks ({keys}), and its Dataverse rows, tagged with its company (never "
        f"deleted: delete or re-tag them in Dataverse if they should go). Add it again to resume from there"
    )


def _label(company: str, bc_names: dict[str, str]) -> str:
    name = bc_names.get(company.lower())
    return f"{name} ({company})" if name else company
