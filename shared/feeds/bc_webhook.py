"""Parse a Business Central webhook notification POST into the changes it reports.

One POST can carry entries for several subscriptions (BC's webhooks page,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions).
Each entry is only a pointer: `resource` is parsed into (company, entity set, id or filter) by the BC
connector's `parse_resource` and checked against configuration; the service never fetches the URL it
was sent (docs/architecture.md#the-flow).

Answering matters here: BC deletes the subscription on any failure status other than 408/429/5xx
(same page). So a bad *entry* is rejected on its own and the rest of the batch is still accepted; only a body
that is not a notification at all is a `WebhookPayloadError` (400), and any entry with the wrong
`clientState` fails the whole call as unauthenticated (401): nothing in it can be trusted.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from shared.auth import WebhookAuthError, check_client_state
from shared.connectors.business_central import parse_resource
from shared.errors import ServiceError
from shared.feeds.dataverse_webhook import WebhookPayloadError, load_json_body

ChangeType = Literal["created", "updated", "deleted", "collection"]
CHANGE_TYPES: frozenset[str] = frozenset({"created", "updated", "deleted", "collection"})


@dataclass(frozen=True)
class BcNotification:
    subscription_id: str
    change_type: ChangeType
    company_id: str
    entity_set: str
    record_id: str | None  # None for `collection`
    # For a `collection`: the OData `$filter` rebuilt from the notification (never passed through)
    # and the instant it filters from. None otherwise, and for a bare `collection` (one with a
    # delete among its changes), which says only that the set changed.
    collection_filter: str | None
    collection_modified_after: datetime | None
    last_modified: datetime  # aware, UTC


@dataclass(frozen=True)
class RejectedEntry:
    index: int  # position in the body's `value` list
    reason: str


@dataclass
class BcNotificationBatch:
    accepted: list[BcNotification] = field(default_factory=list)
    rejected: list[RejectedEntry] = field(default_factory=list)


class _EntryRejected(ServiceError):
    pass


def parse_bc_notifications(
    body: bytes,
    *,
    client_state: str,
    company_ids: Collection[str],
    entity_sets: Collection[str],
) -> BcNotificationBatch:
    """Split a notification body into accepted notifications and rejected entries.

    Raises `WebhookPayloadError` when the body is not `{"value": [...]}` and `WebhookAuthError` when
    any entry lacks the expected `clientState`.
    """
    document = load_json_body(body)
    entries = document.get("value") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise WebhookPayloadError("the body must be a JSON object with a `value` list of notifications")
    # Authenticate every entry before looking at any of them.
    for index, entry in enumerate(entries):
        got = entry.get("clientState") if isinstance(entry, dict) else None
        if not check_client_state(client_state, got if isinstance(got, str) else None):
            raise WebhookAuthError(f"notification {index} does not carry this service's clientState")

    batch = BcNotificationBatch()
    for index, entry in enumerate(entries):
        try:
            batch.accepted.append(_notification(entry, company_ids=company_ids, entity_sets=entity_sets))
        except _EntryRejected as exc:
            batch.rejected.append(RejectedEntry(index, str(exc)))
    return batch


def _notification(
    entry: dict[str, Any], *, company_ids: Collection[str], entity_sets: Collection[str]
) -> BcNotification:
    subscription_id = entry.get("subscriptionId")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise _EntryRejected("`subscriptionId` must be a non-empty string")
    change_type = entry.get("changeType")
    if not isinstance(change_type, str) or change_type not in CHANGE_TYPES:
        raise _EntryRejected(f"`changeType` must be one of {sorted(CHANGE_TYPES)}, got {change_type!r:.60}")
    resource = entry.get("resource")
    if not isinstance(resource, str):
        raise _EntryRejected("`resource` must be a string")
    try:
        ref = parse_resource(resource, company_ids=company_ids, entity_sets=entity_sets)
    except ValueError as exc:  # `ResourceRejected`, or a malformed GUID/date inside the resource
        raise _EntryRejected(f"`resource` rejected: {exc}") from None
    if change_type == "collection":
        if ref.record_id is not None:
            raise _EntryRejected("a `collection` notification must point at a collection, not a record")
    elif ref.record_id is None or ref.filter is not None:
        raise _EntryRejected(f"a `{change_type}` notification must point at one record")
    return BcNotification(
        subscription_id=subscription_id,
        change_type=cast(ChangeType, change_type),
        company_id=ref.company_id,
        entity_set=ref.entity_set,
        record_id=ref.record_id,
        collection_filter=ref.filter if change_type == "collection" else None,
        collection_modified_after=ref.modified_after if change_type == "collection" else None,
        last_modified=_last_modified(entry.get("lastModifiedDateTime")),
    )


def _last_modified(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _EntryRejected("`lastModifiedDateTime` must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _EntryRejected(f"`lastModifiedDateTime` {value!r:.60} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise _EntryRejected(f"`lastModifiedDateTime` {value!r:.60} has no time zone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _EntryRejected(f"`lastModifiedDateTime` {value!r:.60} is out of range") from None
