"""Webhook intake: authenticate, parse, drop redeliveries, and turn each change into a queue message.

Both handlers answer quickly and never call an API: the processor reads the records later. They
return the HTTP answer and the messages to enqueue; the caller enqueues, and answers 503 if that
fails, so nothing accepted is lost.

Status codes are chosen for each sender. Dataverse records any non-2xx as a failed system job and
retries only 502/503/504. BC *deletes the subscription* on any non-success other than
408/429/5xx, so a 4xx goes only to a call that is really not ours (bad clientState, not a
notification); a transient failure on our side is always 503.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.auth import DataverseAuthType, WebhookAuthError, check_dataverse_webhook_auth
from shared.feeds.bc_webhook import BcNotification, parse_bc_notifications
from shared.feeds.dataverse_webhook import WebhookPayloadError, parse_dataverse_webhook
from shared.mapping.queries import clause_holds, scope_clauses
from shared.mapping.schema import EntityMapping, MappingSet
from shared.messages import Change, ScanMessage, SyncMessage
from shared.timestamps import iso_ms

# Dataverse cuts payloads above 256 KB (and says so in a header); anything far larger is not Dataverse.
MAX_DATAVERSE_BODY = 512 * 1024
MAX_BC_BODY = 1024 * 1024
# BC's validationToken is an opaque string; echo only something that looks like one.
_TOKEN = re.compile(r"^[\w\-.~:+/=]{1,1024}$")

QueueItem = SyncMessage | ScanMessage
# Whether a deduplication key was queued recently (see shared/feeds/dedup.py).
Seen = Callable[[str], bool]


def _never_seen(key: str) -> bool:
    return False


# Whether a BC notification is the echo of a write of this process (shared/sync/echoes.py).
Echo = Callable[[SyncMessage], bool]


def _no_echo(message: SyncMessage) -> bool:
    return False


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: str
    content_type: str = "application/json"
    messages: list[QueueItem] = field(default_factory=list)
    # One per message: what identifies the notifications it came from, remembered once the message
    # is stored so that a redelivery is skipped (empty when nothing identifies them: always enqueued).
    keys: list[tuple[str, ...]] = field(default_factory=list)
    # Seconds for the sender to wait before retrying a 503.
    retry_after: int | None = None

    @classmethod
    def json(
        cls,
        status: int,
        payload: Mapping[str, object],
        messages: list[QueueItem] | None = None,
        keys: list[tuple[str, ...]] | None = None,
        retry_after: int | None = None,
    ) -> WebhookAnswer:
        messages = messages or []
        keys = keys if keys is not None else [()] * len(messages)
        assert len(keys) == len(messages), "one tuple of deduplication keys per message"
        return cls(status, json.dumps(payload), "application/json", messages, keys, retry_after)


@dataclass(frozen=True)
class DataverseIntakeConfig:
    auth_type: DataverseAuthType
    secret: str
    secret_name: str
    integration_user_id: str | None
    # Host of DATAVERSE_URL (e.g. contoso.crm.dynamics.com); a call naming another organization is
    # refused. None skips the check (a loopback sandbox URL names no organization).
    organization_host: str | None = None

    def expected(self) -> str | dict[str, str]:
        if self.auth_type == "webhook_key":
            return self.secret
        return {self.secret_name: self.secret}


def handle_dataverse_webhook(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    *,
    config: DataverseIntakeConfig,
    mappings: MappingSet,
    seen: Seen = _never_seen,
) -> WebhookAnswer:
    if len(body) > MAX_DATAVERSE_BODY:
        return WebhookAnswer.json(
            413, {"error": f"body larger than {MAX_DATAVERSE_BODY} bytes is not a Dataverse webhook"}
        )
    try:
        check_dataverse_webhook_auth(config.auth_type, config.expected(), headers, query)
    except WebhookAuthError as exc:
        return WebhookAnswer.json(401, {"error": f"webhook authentication failed: {exc}"})
    try:
        change = parse_dataverse_webhook(body, headers)
    except WebhookPayloadError as exc:
        return WebhookAnswer.json(400, {"error": f"not a RemoteExecutionContext: {exc}"})

    if not _our_organization(change.organization, config.organization_host):
        # The secret is right but the call is about another environment (a copied registration, a
        # sandbox restored from production): its record ids mean nothing here.
        return WebhookAnswer.json(
            401,
            {
                "error": f"the call is from organization {change.organization!r:.80}, but this service "
                f"syncs {config.organization_host}; register the webhook in that environment only"
            },
        )
    if not change.is_data_change:
        return WebhookAnswer.json(202, {"ignored": f"message {change.message} is not synchronized"})
    targets = [
        m.name for m in mappings.entities() if m.dataverse.table == change.entity and m.writes_to("bc")
    ]
    # A document line changed in Sales: its document syncs (header and lines are one unit).
    documents = [
        m for m in mappings.entities()
        if m.lines is not None and m.lines.dataverse.table == change.entity
        and m.line_mapping().writes_to("bc")
    ]  # fmt: skip
    if not targets and not documents:
        return WebhookAnswer.json(
            202, {"ignored": f"table {change.entity} is not mapped towards Business Central"}
        )
    if config.integration_user_id and change.initiating_user_id == config.integration_user_id.lower():
        return WebhookAnswer.json(202, {"ignored": "echo: the change was made by the integration user"})
    outside = [name for name in targets if _created_outside(mappings.entity(name), change.created_values)]
    if outside and len(outside) == len(targets) and not documents:
        return WebhookAnswer.json(
            202, {"ignored": f"the created {change.entity} is outside the scope of {', '.join(outside)}"}
        )
    targets = [name for name in targets if name not in outside]
    record_id = change.record_id
    if documents:
        parent = documents[0].lines.dataverse.parent  # type: ignore[union-attr]
        record_id = change.image_references.get(parent, "")
        if not record_id:
            return WebhookAnswer.json(
                202,
                {"ignored": f"the {change.entity} notification names no {parent}: its step needs an image "
                 f"with {parent} (run `bcsync setup` to register it)"},
            )  # fmt: skip
        targets = [m.name for m in documents]
    kinds: dict[str, Change] = {"Create": "created", "Update": "updated", "Delete": "deleted"}
    kind = kinds[change.message]
    # Dataverse's CorrelationId follows the change through our logs and journal.
    correlation = change.correlation_id or str(uuid.uuid4())
    # A redelivery of the same system job carries the same OperationId; without one, the record and
    # the operation's time stand for it. Nothing that identifies it: never deduplicated.
    created = change.operation_created_on.isoformat() if change.operation_created_on else ""
    stamp = change.operation_id or (f"{created}|{change.correlation_id or ''}" if created else "")
    base = f"dv|{change.message}|{change.entity}|{change.record_id}|{stamp}" if stamp else ""
    messages: list[QueueItem] = []
    keys: list[tuple[str, ...]] = []
    why = f"dataverse webhook ({change.entity} {change.record_id})" if documents else "dataverse webhook"
    for name in targets:
        key = f"{base}|{name}" if base else ""
        if key and seen(key):
            continue
        keys.append((key,) if key else ())
        messages.append(
            SyncMessage(
                mapping=name,
                side="dv",
                id=record_id,
                change="updated" if documents else kind,
                reason=why,
                correlation_id=correlation,
            )
        )
    payload: dict[str, object] = {"accepted": len(messages), "mappings": targets}
    if outside:
        payload["out_of_scope"] = outside
    if len(messages) < len(targets):
        payload["duplicates"] = len(targets) - len(messages)
    return WebhookAnswer.json(202, payload, messages, keys)


def _created_outside(m: EntityMapping, created: Mapping[str, Any]) -> bool:
    """Whether a created row is outside the mapping's Dataverse scope by the values its Create gave
    (a customer account is also announced to VENDOR): nothing to queue. A new row cannot be coupled
    yet, so nothing can need uncoupling. The scope's clauses all hold for a row in it: one given value
    that fails one is enough; a clause on a column not given (or a lookup) is not decided here."""
    return any(c.field in created and not clause_holds(c, created) for c in scope_clauses(m, "dv"))


def organization_host(dataverse_url: str) -> str | None:
    """The organization's host name in DATAVERSE_URL, or None for a loopback or IP address (the
    sandbox), which names no organization to check against."""
    host = (urlsplit(dataverse_url).hostname or "").lower()
    if not host or host == "localhost":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def _our_organization(named: str | None, host: str | None) -> bool:
    """Dataverse sends `x-ms-dynamics-organization` with the host name (the parser prefers it over
    the body's `OrganizationName`); a bare organization name is compared with the host's first label.
    A call that names none is left to the secret."""
    if host is None or not named:
        return True
    return named.strip().lower() in (host, host.split(".", 1)[0])


@dataclass(frozen=True)
class BcIntakeConfig:
    client_state: str
    company_ids: Collection[str]


def handle_bc_webhook(
    query: Mapping[str, str],
    body: bytes,
    *,
    config: BcIntakeConfig,
    mappings: MappingSet,
    seen: Seen = _never_seen,
    echo: Echo = _no_echo,
) -> WebhookAnswer:
    """Entries whose key `seen` knows (or that repeat an earlier entry of the same call) are
    skipped, so a redelivered call queues nothing. Several entries for one record become one
    message in the order of the first; "deleted" wins, since a BC id is never used again.

    A record's message that `echo` knows for the notification of a write of this process (stamped
    before the `lastModifiedDateTime` that write read back, shared/sync/echoes.py) is not queued;
    no storage is read here, so any other echo is recognised by the processor."""
    token = query.get("validationToken")
    if token is not None:
        if not _TOKEN.match(token):
            return WebhookAnswer.json(400, {"error": "validationToken has unexpected characters"})
        return WebhookAnswer(200, token, "text/plain")
    if len(body) > MAX_BC_BODY:
        return WebhookAnswer.json(
            413, {"error": f"body larger than {MAX_BC_BODY} bytes is not a BC notification"}
        )

    by_entity_set: dict[str, list[str]] = {}
    for m in mappings.entities():
        if m.writes_to("dv"):
            by_entity_set.setdefault(m.bc.entity_set, []).append(m.name)
    try:
        batch = parse_bc_notifications(
            body,
            client_state=config.client_state,
            company_ids=config.company_ids,
            entity_sets=list(by_entity_set),
        )
    except WebhookAuthError as exc:
        return WebhookAnswer.json(401, {"error": f"webhook authentication failed: {exc}"})
    except WebhookPayloadError as exc:
        return WebhookAnswer.json(400, {"error": f"not a BC notification: {exc}"})

    messages: list[QueueItem] = []
    keys: list[tuple[str, ...]] = []
    # (company, mapping, record id) -> position of its message, to fold later entries for the record
    # into it (BC copies SystemIds with a company, so an id is only unique within one)
    position: dict[tuple[str, str, str], int] = {}
    # With several companies each message names its own; with one, messages stay as they were.
    several = len(config.company_ids) > 1
    in_this_call: set[str] = set()
    duplicates = merged = 0
    for note in batch.accepted:
        company = note.company_id if several else None
        for name in by_entity_set[note.entity_set]:
            key = _bc_key(note, name)
            if key in in_this_call or seen(key):
                duplicates += 1
                continue
            in_this_call.add(key)
            if note.change_type == "collection":
                since = note.collection_modified_after
                messages.append(
                    ScanMessage(mapping=name, side="bc", since=since, reason="bc collection", company=company)
                    if since is not None
                    # The bare collection: something in the set changed or was deleted.
                    else ScanMessage(
                        mapping=name,
                        side="bc",
                        sweep="all",
                        reason="bc collection with deletes",
                        company=company,
                    )
                )
                keys.append((key,))
                continue
            assert note.record_id is not None
            earlier = position.get((note.company_id, name, note.record_id))
            if earlier is not None:
                merged += 1
                messages[earlier] = _folded(messages[earlier], note)
                keys[earlier] = (*keys[earlier], key)
                continue
            position[(note.company_id, name, note.record_id)] = len(messages)
            messages.append(
                SyncMessage(
                    mapping=name,
                    side="bc",
                    id=note.record_id,
                    change=note.change_type,
                    modified=iso_ms(note.last_modified),
                    reason="bc webhook",
                    company=company,
                )
            )
            keys.append((key,))
    kept = [i for i, m in enumerate(messages) if not (isinstance(m, SyncMessage) and echo(m))]
    echoes = len(messages) - len(kept)
    messages, keys = [messages[i] for i in kept], [keys[i] for i in kept]
    payload: dict[str, object] = {"accepted": len(messages)}
    if echoes:
        payload["echoes"] = echoes
    if duplicates:
        payload["duplicates"] = duplicates
    if merged:
        payload["merged"] = merged
    if batch.rejected:
        # Entries that do not point at a configured company/entity set are answered 2xx on purpose:
        # a 4xx would make BC delete the subscription for the good entries too.
        payload["rejected"] = [{"index": r.index, "reason": r.reason} for r in batch.rejected]
    return WebhookAnswer.json(202, payload, messages, keys)


def _folded(message: QueueItem, note: BcNotification) -> SyncMessage:
    """A record's message with a later entry for the same record folded in."""
    assert isinstance(message, SyncMessage)
    change = "deleted" if "deleted" in (message.change, note.change_type) else message.change
    return message.model_copy(update={"change": change, "modified": iso_ms(note.last_modified)})


def _bc_key(note: BcNotification, mapping: str) -> str:
    """Subscription, resource (as parsed), change type and stamp: equal only for a redelivery."""
    target = note.record_id or note.collection_filter or ""
    return "|".join(
        (
            "bc", note.subscription_id, note.change_type, note.company_id, note.entity_set, target,
            iso_ms(note.last_modified), mapping,
        )
    )  # fmt: skip
