"""Assisted set-up (`bcsync setup`): check, register, provision, couple salespeople, report.

1. The mapping file loads (line-numbered problems otherwise).
2. Storage: the queues and tables exist (created when missing).
3. Both connections work *as the integration user*, with a message that says precisely what is wrong:
   unreachable URL, bad credentials, a disabled user, a missing security role / permission on a mapped
   table, an unknown BC company.
4. With an administrator credential (used for this step only), what the service needs is installed and
   registered: the Sales-side Dataverse solution (imported when missing or older, `shared.sales.solution`),
   the integration user's two security roles, the Dataverse webhook endpoint and its steps, the BC
   subscriptions (`shared.feeds.registration`, which is idempotent). Without one, the report says what is
   missing. Users who lack the Integration User or Product Availability User role are listed.
3b. Companies (`shared.ops.companies`): the home company is pinned; with several companies each has
   its Dataverse company row; a company new since the last set-up gets its initial sync queued, a
   removed one is stopped and the report says what stays behind.
5. Person ownership: BC salespeople are coupled to Dataverse users by e-mail; the ones that cannot be
   coupled are listed with the reason (records they own fail to sync until they are).

Running it again changes nothing and says so. The report lists what exists, what was created or
updated, and what an administrator still has to do.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError

from shared.connectors.credentials import AuthorityUnreachable, SignInError
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import ApiError, AuthenticationError, NotFoundError, TransientError
from shared.connectors.retry import RetryPolicy
from shared.feeds.registration import (
    ENDPOINT_NAME,
    RegistrationReport,
    bc_subscription_targets,
    ensure_bc_subscriptions,
    ensure_dataverse_webhooks,
)
from shared.mapping.loader import MappingFileError, load_mapping_set
from shared.mapping.option_values import casts_needed, option_problems, option_values
from shared.mapping.queries import select_fields
from shared.mapping.schema import EntityMapping, MappingSet
from shared.mapping.values import PRICE_LIST_ENTITY_SET
from shared.odata import eq
from shared.ops.companies import bring_in_companies
from shared.runtime import Runtime, bc_client, dataverse_client
from shared.sales import solution
from shared.settings import Settings
from shared.store.tables import TABLES
from shared.sync import bulk
from shared.sync.reconcile import Candidate

log = logging.getLogger(__name__)

# Connection checks fail fast: one attempt, a short timeout, no retries of an unreachable host.
CHECK_TIMEOUT_SECONDS = 10.0
# Dataverse answers a missing privilege with this code (-2147220960) and "Principal user (Id=…,
# type=8) is missing prv… privilege" (learn.microsoft.com troubleshoot/power-platform/dataverse/
# user-permissions/client-errors; BC docs "troubleshoot synchronization errors").
MISSING_PRIVILEGE_CODE = "0x80040220"
DISABLED_USER_CODE = "0x80040225"
# The solution import is an asynchronous job: poll its asyncoperation (statecode 3 = Completed,
# statuscode 30 = Succeeded) every few seconds; a large import can take many minutes.
SOLUTION_POLL_SECONDS = 2.0
SOLUTION_IMPORT_TIMEOUT_SECONDS = 1800.0
ASYNC_COMPLETED = 3
ASYNC_SUCCEEDED = 30


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class SalespersonCoupling:
    code: str
    email: str
    status: str  # coupled (now), already_coupled, not_coupled
    user_id: str | None = None
    reason: str = ""


@dataclass
class SetupReport:
    checks: list[Check] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    salespeople: list[SalespersonCoupling] = field(default_factory=list)
    # Sales security role -> the licensed, enabled users who do not hold it.
    roles: dict[str, list[str]] = field(default_factory=dict)
    todo: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.failed

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


@dataclass
class AdminCredentials:
    """An administrator's credential for each system, used only to register webhooks/subscriptions."""

    dataverse: TokenCredential | None = None
    bc: TokenCredential | None = None


def run_setup(
    rt: Runtime,
    admin: AdminCredentials | None = None,
    *,
    couple_salespeople: bool = True,
    on_step: Callable[[str], None] = lambda step: None,
) -> SetupReport:
    report = SetupReport()
    on_step("mapping file")
    mappings = _check_mappings(rt.settings, report)
    if mappings is None:
        return _finish(rt.settings, report)
    on_step("storage")
    _provision_storage(rt, report)
    on_step("Dataverse connection")
    dv_ok = _check_dataverse(rt, mappings, report)
    if dv_ok:
        on_step("Dataverse solution")
        dv_ok = _ensure_solution(rt, admin or AdminCredentials(), report)
    if dv_ok:
        on_step("Dataverse table metadata")
        _check_change_tracking(rt, mappings, admin or AdminCredentials(), report)
        _check_option_values(rt, mappings, report)
    if dv_ok and mappings.settings.price_list is not None:
        on_step("price list")  # after the solution step: the integration user's role may create it
        _price_list(rt, mappings, report)
    on_step("Business Central connection")
    bc_ok = _check_bc(rt, mappings, report)
    if bc_ok:
        on_step("companies")
        _companies(rt, mappings, report, dv_ok=dv_ok)
    on_step("registration")
    _register(rt, mappings, admin or AdminCredentials(), report, dv_ok=dv_ok, bc_ok=bc_ok)
    if couple_salespeople and dv_ok and bc_ok:
        on_step("salespeople")
        for company in rt.companies:  # salespeople are per company
            _couple_salespeople(rt.for_company(company), mappings, report)
    return _finish(rt.settings, report)


def _companies(rt: Runtime, mappings: MappingSet, report: SetupReport, *, dv_ok: bool) -> None:
    """`shared.ops.companies`: pin the home company, Dataverse company rows, companies added/removed."""
    try:
        names = {str(c.get("id", "")).lower(): str(c.get("name") or "") for c in rt.bc.companies()}
        outcome = bring_in_companies(rt, mappings, dv_ok=dv_ok, bc_names=names)
    except (ApiError, AzureError) as exc:
        report.failed.append(f"companies: {_first_line(exc)}")
        return
    report.existing.extend(outcome.existing)
    report.created.extend(outcome.created + outcome.added)
    report.updated.extend(outcome.removed)
    report.checks.extend(Check(name, False, detail, fix) for name, detail, fix in outcome.failed)


# ------------------------------------------------------------------------------------- mappings
def _check_mappings(settings: Settings, report: SetupReport) -> MappingSet | None:
    try:
        mappings = load_mapping_set(settings.mappings_file)
    except (MappingFileError, OSError) as exc:
        report.checks.append(
            Check("mapping file", False, str(exc), f"fix {settings.mappings_file} (see docs/mappings.md)")
        )
        return None
    names = ", ".join(m.name for m in mappings.entities())
    report.checks.append(Check("mapping file", True, f"{settings.mappings_file}: {names}"))
    return mappings


# -------------------------------------------------------------------------------------- storage
def _provision_storage(rt: Runtime, report: SetupReport) -> None:
    storage = rt.storage
    wanted = [f"queue {storage.sync_queue_name}", f"queue {storage.poison_queue_name}"]
    wanted += [f"table {t}" for t in TABLES]
    try:
        created = storage.ensure()
    except AzureError as exc:
        report.checks.append(
            Check(
                "storage",
                False,
                _first_line(exc),
                "check AzureWebJobsStorage (or the managed identity's access)",
            )
        )
        return
    report.created.extend(created)
    report.existing.extend(w for w in wanted if w not in created)
    report.checks.append(Check("storage", True, f"{len(wanted)} queues and tables in place"))


# ---------------------------------------------------------------------------------- connections
def _check_client_policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=1, max_total_seconds=CHECK_TIMEOUT_SECONDS)


def _check_dataverse(rt: Runtime, mappings: MappingSet, report: SetupReport) -> bool:
    s = rt.settings
    dv = dataverse_client(
        s,
        rt.integration_credential("dataverse"),
        policy=_check_client_policy(),
        timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        try:
            who = dv.whoami()
        except (ApiError, AzureError) as exc:
            detail, fix = explain_failure(
                exc, "Dataverse", s.dataverse_url, "DATAVERSE_URL", mode=s.dataverse_auth_mode
            )
            report.checks.append(Check("Dataverse connection", False, detail, fix))
            return False
        report.checks.append(
            Check("Dataverse connection", True, f"{s.dataverse_url} as systemuser {who.user_id}")
        )
        configured = (s.dataverse_integration_user_id or "").lower()
        if configured and configured != who.user_id.lower():
            report.checks.append(
                Check(
                    "Dataverse integration user",
                    False,
                    f"DATAVERSE_INTEGRATION_USER_ID is {configured}, but the credentials sign in as "
                    f"{who.user_id}; echoes of our own writes would not be recognized",
                    f"set DATAVERSE_INTEGRATION_USER_ID={who.user_id} (or leave it empty)",
                )
            )
        ok = True
        for entity_set, label in _dataverse_tables(mappings):
            ok &= _probe(
                report, f"Dataverse read {label}",
                functools.partial(_first_page, dv.query_pages(entity_set, page_size=1)),
                "Dataverse", s.dataverse_url, "DATAVERSE_URL", what=f"read {label}",
            )  # fmt: skip
        if ok:
            _check_bulk_messages(dv, mappings, report)
            _check_local_currency(dv, mappings, s, report)
        return ok
    finally:
        dv.close()


def _check_bulk_messages(dv: DataverseClient, mappings: MappingSet, report: SetupReport) -> None:
    """Which path bulk writes take: Dataverse's bulk messages, or (Dynamics 365 Sales on-premises
    9.1 has none) `$batch` of single writes. Either works; the report says which, for the operator."""
    tables = _dataverse_tables(mappings)
    if not tables:
        return
    entity_set, label = tables[0]
    try:
        available = dv.probe_bulk_messages(entity_set)
    except ApiError as exc:  # e.g. no privilege on the table: the first bulk write finds out instead
        report.checks.append(
            Check("Dataverse bulk writes", True, f"not known yet: asking with {label} was refused ({exc})")
        )
        return
    if available:
        detail = "CreateMultiple / UpsertMultiple / UpdateMultiple, 1 request per 1,000 records"
    else:
        detail = (
            "this server has no CreateMultiple / UpsertMultiple / UpdateMultiple (as Dynamics 365 Sales "
            "on-premises 9.1): bulk writes go as $batch of single writes, also 1 request per 1,000 "
            "records (each record is its own operation on the server, so a full resync takes longer)"
        )
    report.checks.append(Check("Dataverse bulk writes", True, detail))


def _check_local_currency(
    dv: DataverseClient, mappings: MappingSet, s: Settings, report: SetupReport
) -> None:
    """BC's local currency is the blank currency code (General Ledger Setup's LCY Code); BC's own
    connector makes it correspond to the Dataverse currency with the LCY code's ISO code, adding that
    currency to Dataverse when the organization's base currency differs. Show the correspondence, or
    say exactly what to change when it cannot be made."""
    currency = next((m for m in mappings.entities() if m.bc_blank_means_local_currency), None)
    if currency is None:
        return
    name, code = "local currency", mappings.settings.bc_local_currency_code
    if not code:
        report.checks.append(
            Check(
                name,
                False,
                f"BC shows its local currency as a blank currency code, and {currency.name} maps blank "
                "codes to it, but the mapping file does not say which currency that is",
                f"set settings.bc_local_currency_code in {s.mappings_file} to the LCY Code of BC's "
                "General Ledger Setup (e.g. USD)",
            )
        )
        return
    iso = next((f.dv for f in currency.fields if f.bc == currency.bc.key and f.dv), "isocurrencycode")
    pk = currency.dataverse.primary_key
    try:
        found = list(
            dv.query(currency.dataverse.entity_set, select=[pk, iso, "currencyname"], filter=eq(iso, code))
        )
        organization = list(dv.query("organizations", select=["_basecurrencyid_value"]))
        base_id = str((organization[0] if organization else {}).get("_basecurrencyid_value") or "").lower()
        base = (
            list(dv.query(currency.dataverse.entity_set, select=[pk, iso], filter=eq(pk, uuid.UUID(base_id))))
            if base_id
            else []
        )
    except (ApiError, AzureError) as exc:
        detail, fix = explain_failure(
            exc, "Dataverse", s.dataverse_url, "DATAVERSE_URL", what="read currencies"
        )
        report.checks.append(Check(name, False, detail, fix))
        return
    base_code = str(base[0].get(iso)) if base else "?"
    if not found:
        report.checks.append(
            Check(
                name,
                False,
                f"BC's blank currency code is its local currency {code}, but Dataverse has no currency "
                f"with ISO code {code}: customers, vendors and documents in the local currency (and "
                f"Sales records in it) cannot sync",
                f"add the currency {code} in Dataverse (Settings > Business Management > Currencies) with "
                f"its exchange rate to the base currency {base_code}, as BC's connector does when a "
                f"company's local currency differs from the base currency; or, if BC's LCY Code "
                f"(General Ledger Setup) is not {code}, set settings.bc_local_currency_code to it in "
                f"{s.mappings_file}",
            )
        )
        return
    row = found[0]
    is_base = str(row[pk]).lower() == base_id
    where = (
        "the organization's base currency"
        if is_base
        else f"not the base currency {base_code}: Sales records in {base_code} need a BC currency "
        f"{base_code} coupled to it"
    )
    report.checks.append(
        Check(
            name,
            True,
            f"BC blank currency code (local currency {code}) <-> Dataverse currency {row.get(iso)} "
            f"{row.get('currencyname') or ''} ({row[pk]}), {where}",
        )
    )


def _price_list(rt: Runtime, mappings: MappingSet, report: SetupReport) -> None:
    """Create the price list of BC's item prices as the integration user, in the Dataverse currency
    of BC's local currency (the local currency check says what to do when there is none)."""
    s = rt.settings
    currency = next((m for m in mappings.entities() if m.bc_blank_means_local_currency), None)
    code = mappings.settings.bc_local_currency_code
    dv = dataverse_client(s, rt.integration_credential("dataverse"), policy=_check_client_policy())
    try:
        currency_id: str | None = None
        if currency is not None and code:
            iso = next((f.dv for f in currency.fields if f.bc == currency.bc.key and f.dv), "isocurrencycode")
            pk = currency.dataverse.primary_key
            rows = list(dv.query(currency.dataverse.entity_set, select=[pk], filter=eq(iso, code)))
            currency_id = str(rows[0][pk]).lower() if rows else None
        ensure_price_list(dv, mappings, s, currency_id, report)
    except (ApiError, AzureError) as exc:
        detail, fix = explain_failure(
            exc, "Dataverse", s.dataverse_url, "DATAVERSE_URL", what="read currencies"
        )
        report.checks.append(Check("price list", False, detail, fix))
    finally:
        dv.close()


def ensure_price_list(
    dv: DataverseClient, mappings: MappingSet, s: Settings, currency_id: str | None, report: SetupReport
) -> bool:
    """The Sales price list BC's item prices go to (settings.price_list): created once, in the local
    currency, with the id every sync binds to (derived from its name), as BC's connector creates its
    default price list when it first needs it."""
    price_list = mappings.settings.price_list
    assert price_list is not None
    name = f"price list {price_list.name!r}"
    try:
        found = dv.get(PRICE_LIST_ENTITY_SET, price_list.id, select=["pricelevelid", "name"])
        if found is not None:
            report.existing.append(f"{name} ({price_list.id})")
            return True
        if currency_id is None:
            report.checks.append(
                Check(
                    name,
                    False,
                    "the price list of BC's item prices is created in BC's local currency, which Dataverse "
                    "does not have yet (see the local currency check)",
                    "fix the local currency, then run set-up again",
                )
            )
            return False
        dv.create(
            PRICE_LIST_ENTITY_SET,
            {
                "name": price_list.name,
                "description": "Item unit prices from Business Central (kept by bc-dataverse-sync).",
                "transactioncurrencyid@odata.bind": f"/transactioncurrencies({currency_id})",
            },
            record_id=price_list.id,
            select=["pricelevelid"],
        )
    except (ApiError, AzureError) as exc:
        detail, fix = explain_failure(
            exc, "Dataverse", s.dataverse_url, "DATAVERSE_URL", what=f"create the {name}"
        )
        report.checks.append(Check(name, False, detail, fix))
        return False
    report.created.append(f"{name} ({price_list.id})")
    return True


def _dataverse_tables(mappings: MappingSet) -> list[tuple[str, str]]:
    # The solution's own table (customer statistics) is checked after the solution step.
    tables = {m.dataverse.entity_set: m.dataverse.table for m in mappings.entities()}
    return sorted(tables.items())


def _check_bc(rt: Runtime, mappings: MappingSet, report: SetupReport) -> bool:
    s = rt.settings
    bc = bc_client(
        s, rt.integration_credential("bc"), policy=_check_client_policy(), timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        try:
            companies = bc.companies()
        except (ApiError, AzureError) as exc:
            detail, fix = explain_failure(
                exc, "Business Central", s.bc_api_url, "BC_API_URL", mode=s.bc_auth_mode
            )
            report.checks.append(Check("Business Central connection", False, detail, fix))
            return False
        known = {
            str(c.get("id", "")).lower(): str(c.get("name") or c.get("displayName") or "") for c in companies
        }
        report.checks.append(
            Check("Business Central connection", True, f"{s.bc_api_url}: {len(known)} companies")
        )
        ok = True
        for company_id in s.bc_company_ids:
            if company_id.lower() not in known:
                listing = ", ".join(f"{name} ({cid})" for cid, name in known.items()) or "none"
                report.checks.append(
                    Check(
                        f"BC company {company_id}",
                        False,
                        f"company {company_id} was not found in this environment; it has: {listing}",
                        "set BC_COMPANY_IDS to one of these ids (or check BC_API_URL's environment)",
                    )
                )
                ok = False
                continue
            report.checks.append(Check(f"BC company {company_id}", True, known[company_id.lower()]))
            for entity_set in sorted({m.bc.entity_set for m in mappings.entities()}):
                ok &= _probe(
                    report, f"BC read {entity_set}",
                    functools.partial(_first_page, bc.query_pages(company_id, entity_set, page_size=1)),
                    "Business Central", s.bc_api_url, "BC_API_URL", what=f"read {entity_set}",
                )  # fmt: skip
        return ok
    finally:
        bc.close()


def _first_page(pages: Iterator[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    # Generators are lazy: the request is sent here, inside the probe.
    return next(pages, None)


def _probe(
    report: SetupReport,
    name: str,
    call: Callable[[], Any],
    service: str,
    url: str,
    url_setting: str,
    *,
    what: str,
) -> bool:
    try:
        call()
    except (ApiError, AzureError) as exc:
        detail, fix = explain_failure(exc, service, url, url_setting, what=what)
        report.checks.append(Check(name, False, detail, fix))
        return False
    return True


def explain_failure(
    exc: Exception, service: str, url: str, url_setting: str, *, what: str = "sign in", mode: str = "entra"
) -> tuple[str, str]:
    """(what is wrong, what to do) for a failed call as the integration user."""
    credentials = _credential_settings(service, mode)
    if isinstance(exc, (SignInError, AuthorityUnreachable)):
        # The authority's own refusal, already naming the setting (wrong authority, scope, id, secret).
        return (f"could not sign in to {service}: {exc.detail}", exc.fix)
    if isinstance(exc, ClientAuthenticationError):
        return (
            f"could not get a token for {service}: {_first_line(exc)}",
            f"check {credentials}: a wrong or expired client secret is the usual cause",
        )
    if isinstance(exc, TransientError) and not exc.status:
        return (f"cannot reach {url}: {exc.message}", f"check {url_setting} and that the service is up")
    if isinstance(exc, AuthenticationError) and exc.status == 401:
        who = (
            "an application user for the app registration exists in the environment"
            if service == "Dataverse"
            else "the app is on BC's Microsoft Entra Applications page and granted API.ReadWrite.All"
        )
        if mode == "basic":
            return (
                f"{service} rejected the user name or web service access key (401): {exc.message}",
                f"check {credentials}: the key on the user's card in BC (Web Service Access Key), not "
                "expired, and that the user is enabled",
            )
        if mode == "oauth":
            scope = "BC_SCOPE" if service == "Business Central" else "DATAVERSE_SCOPE"
            return (
                f"{service} rejected the token the authority issued (401): {exc.message}",
                f"check {scope}: the token must be issued for {service}'s own resource (its audience), "
                f"and that {service} trusts that authority and knows the client as a user",
            )
        return (
            f"{service} rejected the integration user's credentials (401): {exc.message}",
            f"check {credentials} (a wrong secret is refused here) and that {who}",
        )
    if isinstance(exc, AuthenticationError) and exc.status == 403:
        if exc.code == DISABLED_USER_CODE or "disabled" in exc.message.lower():
            return (
                f"the integration user is disabled in {service}: {exc.message}",
                "enable the application user",
            )
        if service == "Dataverse":
            kind = (
                "lacks a privilege"
                if exc.code == MISSING_PRIVILEGE_CODE or "privilege" in exc.message.lower()
                else "was refused (403)"
            )
            return (
                f"the integration user {kind} to {what}: {exc.message}",
                "assign the application user a security role that can read and write the mapped tables "
                "(the integration user is lacking a role)",
            )
        return (
            f"the integration user is missing permission to {what} (403): {exc.message}",
            "assign the Entra application a BC permission set covering the mapped tables "
            "(e.g. D365 BUS FULL ACCESS) on the Microsoft Entra Applications page",
        )
    if isinstance(exc, NotFoundError):
        return (
            f"{url} answered 404 to {what}: {exc.message}",
            f"check {url_setting}: it is not the API root",
        )
    return (
        f"{service} failed to {what}: {_first_line(exc)}",
        f"check {url_setting} and the service's health",
    )


# ------------------------------------------------------------------------------- table metadata
def _check_change_tracking(
    rt: Runtime, mappings: MappingSet, admin: AdminCredentials, report: SetupReport
) -> None:
    """The delta poll follows Dataverse changes with delta links, which only tables with change tracking
    ("Track changes") give. With an administrator credential it is turned on (it cannot be turned off
    again); otherwise the report says how, and the poll falls back to reading modified rows."""
    s = rt.settings
    polled: dict[str, list[str]] = {}
    for m in mappings.entities():
        if m.writes_to("bc"):
            polled.setdefault(m.dataverse.table, []).append(m.name)
    for table, names in sorted(polled.items()):
        name = f"Dataverse change tracking {table}"
        try:
            if rt.dataverse.change_tracking_enabled(table, refresh=True):
                report.checks.append(
                    Check(name, True, "Track changes is on: the delta poll uses delta links")
                )
                continue
            if admin.dataverse is not None:
                dv_admin = dataverse_client(s, admin.dataverse)
                try:
                    dv_admin.enable_change_tracking(table)
                finally:
                    dv_admin.close()
                if rt.dataverse.change_tracking_enabled(table, refresh=True):
                    report.updated.append(f"change tracking on Dataverse table {table} (turned on)")
                    report.checks.append(Check(name, True, "Track changes turned on with the administrator"))
                    continue
        except (ApiError, AzureError) as exc:
            detail, fix = explain_failure(
                exc,
                "Dataverse",
                s.dataverse_url,
                "DATAVERSE_URL",
                what=f"read or change table {table}'s definition",
            )
            report.checks.append(Check(name, False, detail, fix))
            continue
        report.checks.append(
            Check(
                name,
                False,
                f"table {table} ({', '.join(names)}) has change tracking off: the delta poll cannot use "
                "delta links and reads the rows modified since its last poll instead, which shows no deleted "
                "rows (a deletion then reaches BC only through the Dataverse webhook)",
                f"turn on Track changes for the table {table} in make.powerapps.com (Tables > {table} > "
                "Properties > Advanced options > Track changes), or run `bcsync setup` with a Dataverse "
                "administrator (`--admin-device-code`), which turns it on",
            )
        )


def _check_option_values(rt: Runtime, mappings: MappingSet, report: SetupReport) -> None:
    """Every choice value the mappings write exists in its column's options (one metadata request per
    table and attribute type: `PicklistAttributeMetadata`, and `State`/`Status` where written)."""
    s = rt.settings
    values = option_values(mappings)
    options: dict[str, dict[str, dict[int, str]]] = {}
    for table, casts in sorted(casts_needed(values).items()):
        try:
            options[table] = rt.dataverse.option_sets(table, casts)
        except (ApiError, AzureError) as exc:
            detail, fix = explain_failure(
                exc, "Dataverse", s.dataverse_url, "DATAVERSE_URL", what=f"read the choice columns of {table}"
            )
            report.checks.append(Check(f"option values of {table}", False, detail, fix))
    problems = option_problems(values, options, mappings_file=str(s.mappings_file))
    for problem in problems:
        v = problem.value
        report.checks.append(
            Check(
                f"option value {v.mapping} {v.field}: {v.table}.{v.column} = {v.value}",
                False,
                problem.detail,
                problem.fix,
            )
        )
    if not problems:
        checked = {(v.table, v.column, v.value) for v in values if v.table in options}
        report.checks.append(
            Check("option values", True, f"{len(checked)} choice values the mappings use exist in Dataverse")
        )


# ------------------------------------------------------------------------------------- solution
def _ensure_solution(rt: Runtime, admin: AdminCredentials, report: SetupReport) -> bool:
    """Import the Sales-side solution when it is missing or older (with the administrator credential),
    then check the security roles. False when the service cannot work yet (the report says why)."""
    s = rt.settings
    info = solution.read_info()
    label = f"Dataverse solution {info.unique_name}"
    try:
        installed = rt.dataverse.installed_solution(info.unique_name)
    except (ApiError, AzureError) as exc:
        detail, fix = explain_failure(
            exc, "Dataverse", s.dataverse_url, "DATAVERSE_URL", what="read solutions"
        )
        report.checks.append(Check(label, False, detail, fix))
        return False
    have = str(installed.get("version")) if installed else None
    if have is not None and solution.version_tuple(have) >= info.version_tuple:
        report.existing.append(f"{label} {have}")
    elif admin.dataverse is None:
        state = f"version {have} is installed, {info.version} is needed" if have else "is not installed"
        report.checks.append(
            Check(
                label,
                False,
                f"{info.unique_name} {state}: the customer statistics, Business Central numbers and links, "
                "coupling status and security roles it adds are missing, so syncing fails",
                "run `bcsync setup` with a Dataverse administrator (`--admin-device-code`), or import "
                f"the {info.zip_name()} that `bcsync pack-solution` writes by hand (docs/sales-solution.md)",
            )
        )
        return False
    else:
        dv_admin = dataverse_client(s, admin.dataverse)
        try:
            problem = _import_solution(dv_admin, info)
        except (ApiError, AzureError) as exc:
            problem = _first_line(exc)
        finally:
            dv_admin.close()
        if problem:
            report.failed.append(f"{label} {info.version} import: {problem}")
            report.checks.append(
                Check(label, False, f"the import failed: {problem}", "fix what it says and run setup again")
            )
            return False
        (report.updated if have else report.created).append(
            f"{label} {info.version} (imported{f' over {have}' if have else ''})"
        )
    return _check_roles(rt, admin, report)


def _import_solution(dv: DataverseClient, info: solution.SolutionInfo) -> str:
    """Import the packed solution and wait for its asynchronous job; '' on success, else why not."""
    job_id = str(uuid.uuid4())
    operation_id = dv.import_solution_async(solution.pack(), job_id)
    deadline = time.monotonic() + SOLUTION_IMPORT_TIMEOUT_SECONDS
    while True:
        operation = dv.async_operation(operation_id)
        if operation.get("statecode") == ASYNC_COMPLETED:
            break
        if time.monotonic() > deadline:
            return (
                f"the import job {operation_id} did not finish within "
                f"{SOLUTION_IMPORT_TIMEOUT_SECONDS:.0f} s; "
                "see Solutions > Solution history in the Power Platform admin center, then run setup again"
            )
        time.sleep(SOLUTION_POLL_SECONDS)
    job = dv.import_job(job_id) or {}
    if operation.get("statuscode") == ASYNC_SUCCEEDED and 'result="failure"' not in str(
        job.get("data") or ""
    ):
        return ""
    return str(operation.get("message") or job.get("data") or "the import job failed")


def _check_roles(rt: Runtime, admin: AdminCredentials, report: SetupReport) -> bool:
    """The integration user holds Integration Administrator and Integration User (assigned with the
    administrator credential when it does not); list the users who lack Integration User or Product
    Availability User."""
    dv = rt.dataverse
    wanted = (solution.ROLE_ADMINISTRATOR, solution.ROLE_USER, solution.ROLE_AVAILABILITY)
    try:
        roles = dv.roles_named(wanted)
        integration_user = (rt.settings.dataverse_integration_user_id or dv.whoami().user_id).lower()
        holders = dv.role_holders(list(roles.values()))
        users = list(
            dv.query(
                "systemusers",
                select=["systemuserid", "fullname", "isdisabled", "islicensed", "isintegrationuser",
                        "applicationid"],
            )
        )  # fmt: skip
    except (ApiError, AzureError) as exc:
        report.failed.append(f"security roles: {_first_line(exc)}")
        return False
    missing_roles = [r for r in wanted if r not in roles]
    if missing_roles:
        report.checks.append(
            Check(
                "security roles",
                False,
                f"the solution's roles {', '.join(missing_roles)} do not exist",
                "import the solution again (run setup with a Dataverse administrator)",
            )
        )
        return False
    lacking = [
        r
        for r in (solution.ROLE_ADMINISTRATOR, solution.ROLE_USER)
        if integration_user not in holders[roles[r]]
    ]
    if lacking and admin.dataverse is not None:
        dv_admin = dataverse_client(rt.settings, admin.dataverse)
        try:
            for role in lacking:
                dv_admin.assign_role(integration_user, roles[role])
                report.created.append(f"security role {role} for the integration user")
            lacking = []
        except (ApiError, AzureError) as exc:
            report.failed.append(f"assigning the integration user's roles: {_first_line(exc)}")
        finally:
            dv_admin.close()
    ok = not lacking
    both = [solution.ROLE_ADMINISTRATOR, solution.ROLE_USER]
    report.checks.append(
        Check(
            "integration user's security roles",
            ok,
            f"{'holds' if ok else 'lacks'} {', '.join(lacking or both)}",
            ""
            if ok
            else "run setup with a Dataverse administrator, or assign the roles to the application user "
            "in the Power Platform admin center (Users > Application users > Manage security roles)",
        )
    )
    people = [u for u in users if _user_problem(u) is None]
    for role in (solution.ROLE_USER, solution.ROLE_AVAILABILITY):
        without = sorted(str(u.get("fullname") or u["systemuserid"]) for u in people
                         if str(u["systemuserid"]).lower() not in holders[roles[role]])  # fmt: skip
        report.roles[role] = without
        if without:
            report.todo.append(
                f"give the Dataverse security role {role} to the users who need it (lacking now: "
                f"{', '.join(without)}); a user without it cannot "
                + ("see customer statistics" if role == solution.ROLE_USER else "see product availability")
            )
    return ok


def _credential_settings(service: str, mode: str) -> str:
    """The settings holding the integration user's credentials for `service`, by sign-in mode."""
    prefix = "BC" if service == "Business Central" else "DATAVERSE"
    if mode == "basic":
        return "BC_USERNAME / BC_WEB_SERVICE_ACCESS_KEY"
    if mode == "oauth":
        return f"{prefix}_AUTHORITY / {prefix}_SCOPE / {prefix}_CLIENT_ID / {prefix}_CLIENT_SECRET"
    return "AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET (or the managed identity)"


# --------------------------------------------------------------------------------- registration
def _register(
    rt: Runtime,
    mappings: MappingSet,
    admin: AdminCredentials,
    report: SetupReport,
    *,
    dv_ok: bool,
    bc_ok: bool,
) -> None:
    s = rt.settings
    if admin.dataverse is not None and dv_ok:
        dv_admin = dataverse_client(s, admin.dataverse)
        try:
            _merge(report, ensure_dataverse_webhooks(dv_admin, s, mappings, rt.subscriptions))
        except (ApiError, AzureError) as exc:
            report.failed.append(f"Dataverse webhook registration: {_first_line(exc)}")
        finally:
            dv_admin.close()
    elif dv_ok:
        _inspect_dataverse(rt, report)
    if admin.bc is not None and bc_ok:
        bc_admin = bc_client(s, admin.bc)
        try:
            _merge(report, ensure_bc_subscriptions(bc_admin, s, mappings, rt.subscriptions))
        except (ApiError, AzureError) as exc:
            report.failed.append(f"BC subscriptions: {_first_line(exc)}")
        finally:
            bc_admin.close()
    elif bc_ok:
        _inspect_bc(rt, mappings, report)


def _merge(report: SetupReport, outcome: RegistrationReport) -> None:
    report.created.extend(outcome.created)
    report.updated.extend(outcome.updated)
    report.existing.extend(outcome.unchanged)
    report.failed.extend(outcome.failed)


def _inspect_dataverse(rt: Runtime, report: SetupReport) -> None:
    """Without an administrator credential: say what is registered, as far as we can see."""
    try:
        endpoints = [e for e in rt.dataverse.list_webhook_endpoints() if e.get("name") == ENDPOINT_NAME]
        steps = rt.dataverse.list_steps(str(endpoints[0]["serviceendpointid"])) if endpoints else []
    except (ApiError, AzureError) as exc:
        report.todo.append(
            "could not inspect the Dataverse webhook registration as the integration user "
            f"({_first_line(exc)}); run `bcsync setup` with an administrator credential to register it"
        )
        return
    if endpoints:
        report.existing.append(f"Dataverse webhook endpoint {ENDPOINT_NAME} with {len(steps)} steps")
    else:
        report.todo.append(
            "register the Dataverse webhook endpoint and its steps: run `bcsync setup "
            "--admin-dataverse-token ...` (sandbox) or `--admin-device-code` with a Dataverse administrator"
        )


def _inspect_bc(rt: Runtime, mappings: MappingSet, report: SetupReport) -> None:
    try:
        subscriptions = rt.bc.list_subscriptions()
    except (ApiError, AzureError) as exc:
        report.todo.append(f"could not list BC subscriptions ({_first_line(exc)})")
        return
    have = {str(sub.get("resource", "")).lstrip("/").lower() for sub in subscriptions}
    missing = [
        f"{entity_set} ({company})"
        for company, entity_set in bc_subscription_targets(rt.settings, mappings, rt.bc)
        if f"api/v2.0/companies({company})/{entity_set}".lower() not in have
    ]
    if missing:
        report.todo.append(
            f"create the BC webhook subscriptions for {', '.join(missing)}: run `bcsync setup "
            "--admin-bc-token ...` (sandbox) or `--admin-device-code` with a BC administrator"
        )
    else:
        report.existing.append(f"BC subscriptions ({len(subscriptions)})")


# ---------------------------------------------------------------------------------- salespeople
def _couple_salespeople(rt: Runtime, mappings: MappingSet, report: SetupReport) -> None:
    ownership = mappings.settings.ownership
    if ownership.model != "person":
        report.existing.append("team ownership: salespeople need no coupling")
        return
    m = mappings.entity(ownership.salespeople_mapping)
    try:
        salespeople = list(
            rt.bc.query(rt.company_id, m.bc.entity_set, select=select_fields(mappings, m, "bc"))
        )
        user_fields = [
            *select_fields(mappings, m, "dv"),
            "isdisabled",
            "islicensed",
            "isintegrationuser",
            "applicationid",
        ]
        users = list(rt.dataverse.query(m.dataverse.entity_set, select=list(dict.fromkeys(user_fields))))
    except (ApiError, AzureError) as exc:
        report.failed.append(f"salespeople coupling: {_first_line(exc)}")
        return
    coupled_users = {dv for _, dv in rt.couplings.all_ids(m.name, "bc") if dv}
    by_email: dict[str, list[dict[str, Any]]] = {}
    for user in users:
        email = str(user.get("internalemailaddress") or "").strip().casefold()
        if email:
            by_email.setdefault(email, []).append(user)
    to_couple: list[tuple[SalespersonCoupling, bulk.Pair]] = []
    for sp in salespeople:
        result = _decide_salesperson(rt, m, sp, by_email, coupled_users)
        if result.status == "coupled" and result.user_id:
            user = next(u for u in users if str(u["systemuserid"]).lower() == result.user_id)
            coupled_users.add(result.user_id)
            to_couple.append((result, bulk.Pair(None, dict(sp), None, candidates=[Candidate(dict(user))])))
        report.salespeople.append(result)
    if to_couple:
        # The bulk path's coupling of a matched pair (reconcile aligns the values, "sync after coupling").
        bulk.process_pairs(rt.engine, m, [pair for _, pair in to_couple], dry_run=False)
        for result, pair in to_couple:
            assert pair.bc is not None
            if rt.couplings.get(m.name, "bc", str(pair.bc["id"])) is None:
                result.status, result.reason = (
                    "not_coupled",
                    "coupling failed; see `bcsync errors SALESPEOPLE`",
                )
            else:
                report.created.append(f"coupling salesperson {result.code} -> {result.email}")


def _decide_salesperson(
    rt: Runtime,
    m: EntityMapping,
    sp: dict[str, Any],
    by_email: dict[str, list[dict[str, Any]]],
    coupled_users: set[str],
) -> SalespersonCoupling:
    code, email = str(sp.get("code") or ""), str(sp.get("email") or "").strip()
    existing = rt.couplings.get(m.name, "bc", str(sp["id"]))
    if existing is not None:
        return SalespersonCoupling(code, email, "already_coupled", existing.dv_id)
    if not email:
        return SalespersonCoupling(code, email, "not_coupled", reason="has no e-mail in BC")
    candidates = by_email.get(email.casefold(), [])
    if not candidates:
        return SalespersonCoupling(
            code, email, "not_coupled", reason=f"no Dataverse user has the e-mail {email}"
        )
    eligible = [u for u in candidates if _user_problem(u) is None]
    if not eligible:
        return SalespersonCoupling(
            code, email, "not_coupled", reason=f"the Dataverse user {_user_problem(candidates[0])}"
        )
    if len(eligible) > 1:
        ids = ", ".join(str(u["systemuserid"]) for u in eligible)
        return SalespersonCoupling(
            code, email, "not_coupled", reason=f"{len(eligible)} Dataverse users have this e-mail: {ids}"
        )
    user_id = str(eligible[0]["systemuserid"]).lower()
    if user_id in coupled_users:
        return SalespersonCoupling(
            code,
            email,
            "not_coupled",
            user_id,
            "that Dataverse user is already coupled to another salesperson",
        )
    return SalespersonCoupling(code, email, "coupled", user_id)


def _user_problem(user: dict[str, Any]) -> str | None:
    name = user.get("fullname") or user.get("systemuserid")
    if user.get("isdisabled"):
        return f"{name} is disabled"
    if user.get("applicationid") or user.get("isintegrationuser"):
        return f"{name} is an application or integration user"
    if not user.get("islicensed"):
        return f"{name} is not licensed"
    return None


# -------------------------------------------------------------------------------------- report
def _finish(settings: Settings, report: SetupReport) -> SetupReport:
    for check in report.checks:
        if not check.ok and check.fix:
            report.todo.append(f"{check.name}: {check.fix}")
    uncoupled = [sp for sp in report.salespeople if sp.status == "not_coupled"]
    if uncoupled:
        codes = ", ".join(sp.code for sp in uncoupled)
        report.todo.append(
            f"couple salespeople {codes}: records they own fail to sync until they are. Give each a "
            "licensed, enabled Dataverse user with the same e-mail and run setup again, or couple by hand "
            "with "
            "`bcsync couple SALESPEOPLE --bc <code> --dv <systemuserid or e-mail>`"
        )
    missing_auth = settings.missing_auth_settings()
    if missing_auth:
        report.todo.append(
            f"set {', '.join(missing_auth)} to open the admin and product availability API "
            "(it answers 503 until then)"
        )
    else:
        report.todo.append(
            f"assign the app roles {settings.role_administrator}, {settings.role_user} and "
            f"{settings.role_availability} to operators and salespeople in Entra ID"
        )
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
