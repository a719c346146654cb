"""BC webhooks: subscriptions with the validation handshake, and notifications as BC's own code
sends them (`APIWebhookNotificationMgt.Codeunit.al` registers them, `APIWebhookNotificationSend.Codeunit.al`
aggregates and sends them, in microsoft/BCApps `src/Layers/W1/BaseApp/System/API/Webhooks`; the
documented behaviour is at
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions).

- Create and renew call `notificationUrl?validationToken=…` (POST, empty body); only a 200 whose
  body is the token, within the handshake timeout (5 s), creates or renews the subscription.
- Each insert, modify and delete registers a notification stamped with `CurrentDateTime()` taken in
  `OnDatabaseModify`, before the platform sets the record's `SystemModifiedAt`: the stamp is a
  little earlier than the record's `lastModifiedDateTime`, never equal to it.
- Notifications are collected per notification URL; the first one starts the window (30 s). When
  it closes they are aggregated per subscription, in stamp order: a null update (an update whose
  record was not modified since 2 s before the stamp) is dropped; an update merges into the
  previous entry of the same record only when that entry is an update; every other change is an
  entry of its own (created + updated are two entries, updated + deleted are two). More than
  `collection_threshold` entries for one subscription become one `collection` entry whose resource
  filters on `lastModifiedDateTime gt <first stamp - 50 ms>`, or is the bare collection URL when
  any notification of the window is a delete.
- A 2xx answer is success; 408, 429, 5xx, a timeout or a refused connection are retried after
  BC's `GetDelayTimeForAttempt` (1, 1, 10, 100, 1000 minutes); when the 6th attempt fails too the
  subscriptions of that POST are deleted. Any other answer deletes them at once.
- Subscriptions expire `subscription_lifetime_seconds` (3 days) after creation or renewal, on the
  sandbox clock; expired ones are removed and get nothing.

The sandbox only calls loopback hosts: it must never become a way to reach other machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from devstack.bc.clock import SandboxClock, iso_ms, iso_seconds
from devstack.bc.config import BcSandboxConfig
from devstack.bc.entities import COMPUTED_SETS, ENTITY_SETS
from devstack.bc.errors import BcError, bad_request, entity_changed, missing_if_match
from devstack.bc.store import BcStore, Change, make_etag
from devstack.sandbox_common.counters import RequestCounters

RESOURCE_RE = re.compile(r"^/?api/v2\.0/companies\(([^()/]+)\)/([A-Za-z]+)$")
MAX_CLIENT_STATE = 2048


@dataclass
class Subscription:
    subscription_id: str
    notification_url: str
    resource: str
    company_id: str
    entity_set: str
    client_state: str
    user_id: str
    expiration: dt.datetime
    created_at: str
    modified_at: str
    version: int = 1

    @property
    def etag(self) -> str:
        return make_etag(self.subscription_id, self.version)

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.etag": self.etag,
            "subscriptionId": self.subscription_id,
            "notificationUrl": self.notification_url,
            "resource": self.resource,
            "timestamp": self.version,
            "userId": self.user_id,
            "lastModifiedDateTime": self.modified_at,
            "clientState": self.client_state,
            "expirationDateTime": iso_seconds(self.expiration),
            "systemCreatedAt": self.created_at,
            "systemCreatedBy": self.user_id,
            "systemModifiedAt": self.modified_at,
            "systemModifiedBy": self.user_id,
        }


@dataclass
class _Noted:
    """One registered notification (a row of BC's "API Webhook Notification" table)."""

    record_id: str
    change_type: str
    stamp_ms: int


@dataclass
class _Entry:
    """One aggregated entry (a row of "API Webhook Notification Aggr")."""

    record_id: str
    change_type: str
    stamp_ms: int


@dataclass
class _UrlBatch:
    """Notifications waiting for one notification URL, per subscription, in the order registered."""

    url: str
    due: float  # time.monotonic() when the coalescing window closes
    noted: dict[str, list[_Noted]] = field(default_factory=dict)


class WebhookHub:
    def __init__(
        self, store: BcStore, clock: SandboxClock, config: BcSandboxConfig, counters: RequestCounters
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.counters = counters
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[dict[str, Any]] = []
        self._batches: dict[str, _UrlBatch] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._http: httpx.AsyncClient | None = None
        store.listeners.append(self.on_change)

    # --- subscriptions ----------------------------------------------------------------------------

    async def create(self, body: Any, user_id: str) -> Subscription:
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.")
        url = self._checked_url(body.get("notificationUrl"))
        resource = body.get("resource")
        company_id, entity_set = self._checked_resource(resource)
        client_state = self._checked_client_state(body.get("clientState", ""))
        self._purge_expired()
        if len(self.subscriptions) >= self.config.max_subscriptions:
            raise bad_request(
                f"The environment already has {self.config.max_subscriptions} webhook subscriptions, the "
                "maximum. Delete subscriptions you no longer need.",
                "Application_DialogException",
            )
        await self._handshake(url)
        now = iso_ms(self.clock.now_ms())
        subscription = Subscription(
            subscription_id=uuid.uuid4().hex,
            notification_url=url,
            resource=str(resource),
            company_id=company_id,
            entity_set=entity_set,
            client_state=client_state,
            user_id=user_id,
            expiration=self._new_expiration(),
            created_at=now,
            modified_at=now,
        )
        with self._lock:
            self.subscriptions[subscription.subscription_id] = subscription
        return subscription

    async def renew(self, subscription_id: str, body: Any, if_match: str | None) -> Subscription:
        current = self.get(subscription_id)
        if not if_match:
            raise missing_if_match()
        if if_match.strip() != "*" and if_match.strip() != current.etag:
            raise entity_changed()
        body = body if isinstance(body, Mapping) else {}
        if "resource" in body and body["resource"] != current.resource:
            raise bad_request("The resource of a subscription cannot be changed; create a new subscription.")
        url = self._checked_url(body.get("notificationUrl", current.notification_url))
        client_state = self._checked_client_state(body.get("clientState", current.client_state))
        await self._handshake(url)
        with self._lock:
            current.notification_url, current.client_state = url, client_state
            current.expiration = self._new_expiration()
            current.modified_at = iso_ms(self.clock.now_ms())
            current.version += 1
        return current

    def delete(self, subscription_id: str, if_match: str | None) -> None:
        current = self.get(subscription_id)
        if not if_match:
            raise missing_if_match()
        if if_match.strip() != "*" and if_match.strip() != current.etag:
            raise entity_changed()
        with self._lock:
            self.subscriptions.pop(current.subscription_id, None)

    def get(self, subscription_id: str) -> Subscription:
        self._purge_expired()
        found = self.subscriptions.get(subscription_id.strip("'"))
        if found is None:
            raise BcError(
                404,
                "BadRequest_NotFound",
                f"The subscription '{subscription_id}' does not exist (or expired).",
            )
        return found

    def all(self) -> list[Subscription]:
        self._purge_expired()
        with self._lock:
            return list(self.subscriptions.values())

    def _new_expiration(self) -> dt.datetime:
        return self.clock.now() + dt.timedelta(seconds=self.config.subscription_lifetime_seconds)

    def _purge_expired(self) -> None:
        now = self.clock.now()
        with self._lock:
            for key in [k for k, s in self.subscriptions.items() if s.expiration <= now]:
                del self.subscriptions[key]

    def _checked_url(self, url: Any) -> str:
        if not isinstance(url, str) or not url:
            raise bad_request("'notificationUrl' is required: the URL that receives the notifications.")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request(f"'notificationUrl' must be an absolute http(s) URL, got '{url}'.")
        if parts.hostname.lower() not in self.config.allowed_webhook_hosts:
            raise bad_request(
                f"The sandbox only sends webhooks to loopback addresses "
                f"({', '.join(sorted(self.config.allowed_webhook_hosts))}); '{parts.hostname}' is not one."
            )
        return url

    def _checked_resource(self, resource: Any) -> tuple[str, str]:
        match = RESOURCE_RE.match(resource) if isinstance(resource, str) else None
        if match is None:
            raise bad_request(
                "'resource' must look like '/api/v2.0/companies(<company id>)/<entity set>', "
                f"got {resource!r}."
            )
        company = self.store.company(match.group(1))
        entity_set = match.group(2)
        if entity_set not in ENTITY_SETS and entity_set not in COMPUTED_SETS:
            raise BcError(
                404, "BadRequest_ResourceNotFound", f"Resource not found for the segment '{entity_set}'."
            )
        if entity_set in COMPUTED_SETS or not ENTITY_SETS[entity_set].webhook_supported:
            raise bad_request(
                f"The entity set '{entity_set}' does not support webhook subscriptions; poll it with a "
                "lastModifiedDateTime filter instead.",
                "BadRequest_ResourceNotSupported",  # (unverified)
            )
        return company.id, entity_set

    @staticmethod
    def _checked_client_state(value: Any) -> str:
        if not isinstance(value, str) or len(value) > MAX_CLIENT_STATE:
            raise bad_request(f"'clientState' must be a string of at most {MAX_CLIENT_STATE} characters.")
        return value

    async def _handshake(self, url: str) -> None:
        token = uuid.uuid4().hex
        parts = urlsplit(url)
        query = urlencode([*parse_qsl(parts.query), ("validationToken", token)])
        target = urlunsplit(parts._replace(query=query))
        timeout = self.config.handshake_timeout_seconds
        try:
            response = await asyncio.wait_for(self._client().post(target, content=b""), timeout)
        except TimeoutError:
            self.counters.record_webhook("handshake_timeout")
            raise bad_request(
                f"The notification URL did not answer the validation request within {timeout:g} seconds."
            ) from None
        except httpx.HTTPError as exc:
            self.counters.record_webhook("handshake_unreachable")
            raise bad_request(f"The notification URL could not be reached for validation: {exc!r}.") from None
        if response.status_code != 200 or response.text != token:
            self.counters.record_webhook("handshake_refused")
            raise bad_request(
                f"The notification URL answered the validation request with {response.status_code} and "
                "did not echo the validationToken; the subscription was not created."
            )
        self.counters.record_webhook("handshake_ok")

    # --- collecting changes -----------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        """Store listener: register the change for every live subscription on its entity set."""
        now = self.clock.now()
        wake = False
        # CurrentDateTime() in OnDatabaseModify, before the platform stamps the record.
        stamp = change.last_modified_ms - self.config.notification_lead_ms
        with self._lock:
            for sub in self.subscriptions.values():
                if sub.company_id != change.company_id or sub.entity_set != change.entity_set:
                    continue
                if sub.expiration <= now:
                    continue
                batch = self._batches.get(sub.notification_url)
                if batch is None:
                    due = time.monotonic() + self.config.coalesce_seconds
                    batch = self._batches[sub.notification_url] = _UrlBatch(sub.notification_url, due)
                    wake = True
                noted = _Noted(change.record_id, change.change_type, stamp)
                batch.noted.setdefault(sub.subscription_id, []).append(noted)
        if wake and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _take(self, force: bool) -> list[_UrlBatch]:
        now = time.monotonic()
        with self._lock:
            due = [b for b in self._batches.values() if force or b.due <= now]
            for batch in due:
                del self._batches[batch.url]
        return due

    def _is_null_update(self, sub: Subscription, noted: _Noted) -> bool:
        """BC's IsNullUpdate: the record's SystemModifiedAt is not after the stamp (minus 2 s)."""
        if noted.change_type != "updated":
            return False
        try:
            record = self.store.get(sub.company_id, sub.entity_set, noted.record_id)
        except BcError:
            return False  # deleted meanwhile
        return int(record["_ms"]) <= noted.stamp_ms - self.config.null_update_threshold_ms

    def _aggregate(self, sub: Subscription, noted: list[_Noted]) -> list[_Entry]:
        entries: list[_Entry] = []
        last_of: dict[str, _Entry] = {}
        for note in sorted(noted, key=lambda n: n.stamp_ms):
            if self._is_null_update(sub, note):
                continue
            previous = last_of.get(note.record_id)
            if note.change_type == "updated" and previous is not None and previous.change_type == "updated":
                previous.stamp_ms = note.stamp_ms  # only an update merges, and only into an update
                continue
            entry = last_of[note.record_id] = _Entry(note.record_id, note.change_type, note.stamp_ms)
            entries.append(entry)
        return entries

    def _payload(self, batch: _UrlBatch) -> tuple[list[dict[str, Any]], list[str]]:
        entries: list[dict[str, Any]] = []
        now = self.clock.now()
        for sub_id, noted in batch.noted.items():
            sub = self.subscriptions.get(sub_id)
            if sub is None or sub.expiration <= now:
                continue
            common = {
                "subscriptionId": sub.subscription_id,
                "clientState": sub.client_state,
                "expirationDateTime": iso_seconds(sub.expiration),
            }
            aggregated = self._aggregate(sub, noted)
            if len(aggregated) > self.config.collection_threshold:
                resource = f"/api/v2.0/companies({sub.company_id})/{sub.entity_set}"
                if not any(n.change_type == "deleted" for n in noted):
                    # The first stamp minus 50 ms ("SQL rounds differently than AL"). With a delete
                    # among them BC clears the first time and sends the bare collection.
                    since = iso_ms(min(e.stamp_ms for e in aggregated) - 50)
                    resource += f"?$filter=lastModifiedDateTime%20gt%20{since}"
                entries.append(
                    {
                        **common,
                        "resource": resource,
                        "changeType": "collection",
                        "lastModifiedDateTime": iso_ms(max(e.stamp_ms for e in aggregated)),
                    }
                )
                continue
            base = f"api/v2.0/companies({sub.company_id})/{sub.entity_set}"
            for entry in aggregated:
                entries.append(
                    {
                        **common,
                        # No leading slash, as in the documented sample's record entries.
                        "resource": f"{base}({entry.record_id})",
                        "changeType": entry.change_type,
                        "lastModifiedDateTime": iso_ms(entry.stamp_ms),
                    }
                )
        return entries, list(batch.noted)

    # --- delivery ---------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        # One client for all calls (creating one per call costs ~20 ms of TLS setup); bound to the
        # server's loop, where every caller runs.
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    async def run(self) -> None:
        """The dispatcher: sends each URL's batch when its coalescing window closes."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            with self._lock:
                due_times = [b.due for b in self._batches.values()]
            timeout = max(0.0, min(due_times) - time.monotonic()) if due_times else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            for batch in self._take(force=False):
                self._spawn(batch)

    def _spawn(self, batch: _UrlBatch) -> None:
        entries, sub_ids = self._payload(batch)
        if not entries:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(batch.url, entries, sub_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, entries: list[dict[str, Any]], sub_ids: list[str]) -> None:
        body = {"value": entries}
        delays = list(self.config.retry_delays_seconds)
        attempt = 0
        while True:
            attempt += 1
            status, error = 0, ""
            try:
                response = await self._client().post(
                    url, json=body, timeout=self.config.delivery_timeout_seconds
                )
                status = response.status_code
            except httpx.HTTPError as exc:
                error = repr(exc)
            retriable = status == 0 or status in (408, 429) or status >= 500
            outcome = "delivered" if 200 <= status < 300 else "retry" if retriable else "refused"
            if outcome == "retry" and attempt > len(delays):
                outcome = "gave_up"  # DeleteSubscriptionsWithTooManyFailures
            self._log(url, body, attempt, status, error, outcome)
            if outcome == "retry":
                await asyncio.sleep(delays[attempt - 1])
                continue
            if outcome in ("refused", "gave_up"):
                with self._lock:
                    for sub_id in sub_ids:
                        self.subscriptions.pop(sub_id, None)
                self.counters.record_webhook("subscription_deleted")
            return

    def _log(
        self, url: str, body: dict[str, Any], attempt: int, status: int, error: str, outcome: str
    ) -> None:
        self.counters.record_webhook(outcome)
        with self._lock:
            self.deliveries.append(
                {
                    "url": url,
                    "attempt": attempt,
                    "status": status,
                    "error": error,
                    "outcome": outcome,
                    "at": iso_ms(self.clock.now_ms()),
                    "body": body,
                }
            )

    async def flush(self) -> int:
        """Send everything pending now (ignoring the window) and wait for all deliveries, retries
        included. Returns the number of delivery attempts logged meanwhile."""
        before = len(self.deliveries)
        for batch in self._take(force=True):
            self._spawn(batch)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        return len(self.deliveries) - before

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (respecting the window) until nothing is pending or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._batches) or bool(self._tasks)
            if not busy:
                return True
            await asyncio.sleep(0.01)
        return False

    def flush_threadsafe(self, timeout: float = 30.0) -> int:
        """`flush()` from another thread (a test), on the server's loop."""
        if self._loop is None:
            raise RuntimeError("the sandbox is not running (no event loop): start it with serve_in_thread")
        return asyncio.run_coroutine_threadsafe(self.flush(), self._loop).result(timeout)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def reset(self) -> None:
        with self._lock:
            self.subscriptions.clear()
            self._batches.clear()
            self.deliveries.clear()
