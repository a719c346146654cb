"""What the service registers in the two systems so that they notify it, kept up to date.

- Dataverse: one webhook service endpoint (our `/api/webhooks/dataverse` with the configured
  secret) and asynchronous post-operation Create/Update/Delete steps for every mapped table that
  flows towards BC, filtered on the columns the mappings read.
- BC: one subscription per configured company and mapped entity set that BC sends webhooks for
  (contacts and salespeople have none: the delta poll covers them), renewed before it expires
  (3 days) and re-created when BC deleted it: by the upkeep timer, and within one delta poll
  interval by the poll (`missing_bc_subscriptions`, see shared/feeds/poll.py). State is mirrored
  in the `Subscriptions` table (`shared.store.subscriptions`).

Every function is idempotent: running it twice changes nothing the second time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from shared.connectors.business_central import BusinessCentralClient
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import ApiError
from shared.mapping.schema import EntityMapping, MappingSet
from shared.settings import Settings
from shared.store.subscriptions import BcSubscription, SubscriptionStore
from shared.timestamps import parse_iso

log = logging.getLogger(__name__)

ENDPOINT_NAME = "bc-dataverse-sync"
RENEW_WITHIN = dt.timedelta(hours=36)
AUTH_TYPE_CODES = {"webhook_key": 4, "http_header": 5, "http_query_string": 6}
DATAVERSE_MESSAGES = ("Create", "Update", "Delete")
# Document lines notify their changes and removals; not their creation: a document created with 50
# lines would notify 50 times, and a new line with a price changes its document's totals, which notify.
LINE_MESSAGES = ("Update", "Delete")


@dataclass
class RegistrationReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def merge(self, other: RegistrationReport) -> RegistrationReport:
        for name in ("created", "updated", "unchanged", "failed"):
            getattr(self, name).extend(getattr(other, name))
        return self


def dataverse_webhook_url(settings: Settings) -> str:
    return f"{settings.public_url}/api/webhooks/dataverse"


def bc_webhook_url(settings: Settings) -> str:
    return f"{settings.public_url}/api/webhooks/bc"


def filtering_attributes(mapping: EntityMapping) -> list[str]:
    """Columns whose change must notify us: every mapped column (what flows to BC, and what flows
    only from BC, so that a person's edit of it, e.g. an owner changed by hand in Sales, is put
    back at once rather than at the next delta poll), plus what decides scope. Our own writes
    notify too and are dropped at the webhook by their initiating user, at no API cost."""
    columns = {f.dv for f in mapping.fields if f.dv and not f.has_constant}
    columns |= {c.field.removeprefix("_").removesuffix("_value") for c in mapping.dataverse.filter}
    if mapping.lines is not None:
        # A detail added, changed or removed in Sales changes its document's totals, which Dataverse
        # recalculates with an Update of the document: that Update is the document's notification.
        columns |= {"totalamount", "totallineitemamount"}
    return sorted(columns)


def ensure_dataverse_webhooks(
    dv: DataverseClient,
    settings: Settings,
    mappings: MappingSet,
    subscriptions: SubscriptionStore | None = None,
) -> RegistrationReport:
    """The service endpoint and its steps; what is already in place is left alone.

    The endpoint's secret cannot be read back, so whether the endpoint still has our URL, auth type
    and secret is known from a fingerprint kept in `subscriptions`; without a change the
    endpoint is not written again (the upkeep timer runs this every 12 hours)."""
    report = RegistrationReport()
    auth_type = AUTH_TYPE_CODES[settings.dataverse_webhook_auth_type]
    secret: str | dict[str, str] = settings.dataverse_webhook_secret
    if settings.dataverse_webhook_auth_type != "webhook_key":
        secret = {settings.dataverse_webhook_secret_name: settings.dataverse_webhook_secret}
    label = f"Dataverse webhook endpoint {ENDPOINT_NAME}"
    existing = next((e for e in dv.list_webhook_endpoints() if e.get("name") == ENDPOINT_NAME), None)
    wanted = _endpoint_fingerprint(settings)
    if existing is not None and subscriptions is not None and subscriptions.endpoint_fingerprint() == wanted:
        endpoint_id = str(existing["serviceendpointid"])
        report.unchanged.append(label)
    else:
        endpoint_id = dv.ensure_webhook_endpoint(
            ENDPOINT_NAME, dataverse_webhook_url(settings), auth_type, secret
        )
        (report.updated if existing is not None else report.created).append(label)
        if subscriptions is not None:
            subscriptions.set_endpoint_fingerprint(wanted)
    # Steps already in place (enabled, same filtering attributes) are not touched: each check
    # through `ensure_step` would cost several requests on every upkeep run.
    steps = dv.list_steps(endpoint_id)
    in_place = {
        (step.get("name") or "", step.get("filteringattributes") or "")
        for step in steps
        if step.get("statecode", 0) == 0
    }
    known_names = {step.get("name") or "" for step in steps}
    tables: dict[str, set[str]] = {}
    for mapping in mappings.entities():
        if mapping.writes_to("bc"):
            tables.setdefault(mapping.dataverse.table, set()).update(filtering_attributes(mapping))
    lines = line_tables(mappings)
    for table, (columns, _parent) in lines.items():
        tables.setdefault(table, set()).update(columns)
    for logical_name, attributes in sorted(tables.items()):
        # A line's notification names its document through an image of the line's lookup to it.
        image = [lines[logical_name][1]] if logical_name in lines else None
        for message in LINE_MESSAGES if logical_name in lines else DATAVERSE_MESSAGES:
            filtering = sorted(attributes) if message == "Update" else None
            label = f"Dataverse step {message} of {logical_name}"
            name = f"bc-dataverse-sync: {message} of {logical_name}"
            if (name, ",".join(filtering or [])) in in_place:
                report.unchanged.append(label)
                continue
            dv.ensure_step(endpoint_id, message, logical_name, filtering, image)
            (report.updated if name in known_names else report.created).append(label)
    return report


def line_tables(mappings: MappingSet) -> dict[str, tuple[set[str], str]]:
    """Document line tables whose changes in Sales must reach the service: line table -> (its mapped
    columns, its lookup to the document). A line change that leaves the document's totals alone (a
    product swapped at the same price, a unit, the quantity of a line without a price) updates no
    document, so the lines notify on their own."""
    found: dict[str, tuple[set[str], str]] = {}
    for mapping in mappings.entities():
        lines = mapping.lines
        if lines is None or not mapping.line_mapping().writes_to("bc"):
            continue
        columns = {f.dv for f in lines.fields if f.dv and not f.has_constant}
        found.setdefault(lines.dataverse.table, (set(), lines.dataverse.parent))[0].update(columns)
    return found


def _endpoint_fingerprint(settings: Settings) -> str:
    text = "|".join((dataverse_webhook_url(settings), settings.dataverse_webhook_auth_type,
                     settings.dataverse_webhook_secret_name, settings.dataverse_webhook_secret))  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def bc_subscription_targets(
    settings: Settings, mappings: MappingSet, bc: BusinessCentralClient
) -> list[tuple[str, str]]:
    """(company id, entity set) pairs that should have a BC subscription: the mapped sets BC lists as
    webhook-supported in that company (`webhookSupportedResources`, cached by the client; the
    documented list where BC has no such page). The others are fed by the delta poll only."""
    mapped = {m.bc.entity_set for m in mappings.entities() if m.writes_to("dv")}
    return [
        (company, entity_set)
        for company in settings.bc_company_ids
        for entity_set in sorted(mapped & bc.webhook_supported_entity_sets(company))
    ]


def resource_path(company_id: str, entity_set: str) -> str:
    return f"/api/v2.0/companies({company_id})/{entity_set}"


def ensure_bc_subscriptions(
    bc: BusinessCentralClient,
    settings: Settings,
    mappings: MappingSet,
    subscriptions: SubscriptionStore | None = None,
    *,
    now: dt.datetime | None = None,
) -> RegistrationReport:
    """Create missing subscriptions, renew those expiring within 36 hours, record them all."""
    report = RegistrationReport()
    now = now or dt.datetime.now(dt.UTC)
    url = bc_webhook_url(settings)
    existing: dict[str, dict[str, Any]] = {}
    for sub in bc.list_subscriptions():
        if sub.get("notificationUrl") == url:
            existing[_normal_resource(str(sub.get("resource", "")))] = sub
    live: set[str] = set()
    for company, entity_set in bc_subscription_targets(settings, mappings, bc):
        resource = resource_path(company, entity_set)
        label = f"BC subscription {entity_set} ({company})"
        found = existing.get(_normal_resource(resource))
        try:
            if found is None:
                sub = bc.create_subscription(url, resource, settings.bc_webhook_client_state)
                report.created.append(label)
            elif _expires(found) - now < RENEW_WITHIN:
                sub = bc.renew_subscription(
                    found["subscriptionId"],
                    found.get("@odata.etag", "*"),
                    client_state=settings.bc_webhook_client_state,
                )
                report.updated.append(label + " renewed")
            else:
                sub = found
                report.unchanged.append(label)
        except ApiError as exc:
            report.failed.append(f"{label}: {exc}")
            log.warning("%s failed: %s", label, exc)
            continue
        live.add(str(sub["subscriptionId"]))
        if subscriptions is not None:
            subscriptions.record_bc(
                BcSubscription(
                    subscription_id=str(sub["subscriptionId"]),
                    company=company,
                    entity_set=entity_set,
                    resource=resource,
                    expires=str(sub.get("expirationDateTime", "")),
                    checked_at=now.isoformat(),
                )
            )
    configured = {c.lower() for c in settings.bc_company_ids}
    for resource, sub in existing.items():
        owner = _company_of(resource)
        if owner is None or owner in configured:
            continue
        # A company removed from BC_COMPANY_IDS: its notifications would only be rejected until the
        # subscription expired (3 days), so stop them now.
        label = f"BC subscription {resource.rsplit('/', 1)[-1]} ({owner})"
        try:
            bc.delete_subscription(str(sub["subscriptionId"]), str(sub.get("@odata.etag", "*")))
            report.updated.append(f"{label} deleted: company no longer in BC_COMPANY_IDS")
        except ApiError as exc:
            report.failed.append(f"{label}: could not delete it ({exc}); it expires by itself")
    if subscriptions is not None:
        # Subscriptions BC deleted (refused deliveries) or let expire are gone: forget them, so
        # status never shows the expiry of a subscription that does not exist.
        subscriptions.forget_bc_except(live)
    return report


def _company_of(resource: str) -> str | None:
    """The company id of a normalised `api/v2.0/companies(<id>)/<set>` resource."""
    start = resource.find("companies(")
    end = resource.find(")", start)
    return resource[start + len("companies(") : end].lower() if start >= 0 and end > start else None


def missing_bc_subscriptions(
    bc: BusinessCentralClient, settings: Settings, mappings: MappingSet
) -> list[tuple[str, str]]:
    """(company, entity set) targets BC has no subscription for on our URL: deleted by BC after
    failed deliveries or a refusing answer, expired, or deleted by anyone. One request."""
    url = bc_webhook_url(settings)
    live = {
        _normal_resource(str(s.get("resource", "")))
        for s in bc.list_subscriptions()
        if s.get("notificationUrl") == url
    }
    return [
        (company, entity_set)
        for company, entity_set in bc_subscription_targets(settings, mappings, bc)
        if _normal_resource(resource_path(company, entity_set)) not in live
    ]


def _normal_resource(resource: str) -> str:
    # BC is inconsistent about the leading slash (see `parse_resource`); compare without it.
    return resource.lstrip("/").lower()


def _expires(sub: dict[str, Any]) -> dt.datetime:
    text = str(sub.get("expirationDateTime") or "1970-01-01T00:00:00Z")
    return parse_iso(text)
