"""Azure Storage clients (queues and tables), built once per process, and idempotent provisioning.

Works against Azurite (`UseDevelopmentStorage=true` or a full connection string) and against a real
account with a managed identity (`AzureWebJobsStorage__accountName`, azure-identity credential).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.request import getproxies

import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient
from azure.data.tables._policies import TablesRetryPolicy
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared import telemetry
from shared.messages import AnyMessage, to_json
from shared.store.errors import EnqueueError
from shared.store.group_commit import GroupCommit
from shared.store.tables import TABLES

SYNC_QUEUE = "sync-requests"
POISON_SUFFIX = "-poison"

# Azurite ships older API versions than the SDK sends; pinning a version both Azurite 3.35 and
# Azure accept avoids depending on Azurite's `--skipApiVersionCheck`
# (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
QUEUE_API_VERSION = "2025-11-05"

# Messages are sent this many at a time: a queue accepts one message per request, and one at a time
# a 1,000-entry BC notification took 7.8 s to answer (BC waits 10 s). Bounded so a burst cannot open
# unbounded connections.
ENQUEUE_CONCURRENCY = 10
# Connections kept per host by each storage client. The host runs 24 messages at once, and a batch
# sends transactions in parallel besides: with requests' default of 10, connections beyond it were
# opened for one request and thrown away under load ("Connection pool is full" in the log).
POOL_SIZE = 32
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def io_pool() -> ThreadPoolExecutor:
    """The process's bounded pool for parallel storage requests (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(ENQUEUE_CONCURRENCY, thread_name_prefix="storage-io")
        return _pool


class ResendAfterDisconnect(TablesRetryPolicy):
    """The Tables SDK's retry policy, also resending POST/PATCH/MERGE whose connection failed.

    The SDK resends only idempotent methods after a connection error, so a create, a merge or a
    transaction on a kept-alive connection the server closed at that moment fails outright (seen on
    Azurite, whose keep-alive is 5 s). Every write this service makes is either idempotent (upserts)
    or conditional (create, If-Match), and the stores recognise their own landed write when a resent
    conditional one conflicts (`stored_if_same`), so resending is safe here. Responses with a
    status are retried exactly as the SDK does.
    """

    def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
        if response is None:
            return True
        return bool(super()._is_method_retryable(settings, request, response))


def resend_after_disconnect(service: TableServiceClient) -> TableServiceClient:
    # The client builds its retry policy itself and offers no option for the method list; table
    # clients made by `get_table_client` take the service's policy list, so swapping it there covers
    # them all. tests/integration/test_storage_resend.py fails if an SDK update moves this.
    policies: list[Any] = service._policies
    for i, policy in enumerate(policies):
        if isinstance(policy, TablesRetryPolicy):
            policies[i] = ResendAfterDisconnect()
    return service


def stored_if_same(table: TableClient, entity: dict[str, Any]) -> dict[str, Any] | None:
    """The stored entity's metadata if the row holds `entity`'s properties, else None.

    A conditional write that conflicts after a resend may have met its own first attempt, which
    landed although its response was lost; that is success, not a concurrent writer. The `Updated`
    stamp is left out of the comparison because a fallback (a transaction retried row by row)
    stamps again; a row with the same content is the state the caller meant to write, whoever
    wrote it, and the caller continues from its stored ETag.
    """
    try:
        stored = table.get_entity(entity["PartitionKey"], entity["RowKey"])
    except ResourceNotFoundError:
        return None
    if all(stored.get(k) == v for k, v in entity.items() if k != "Updated"):
        return dict(stored.metadata)
    return None


@dataclass
class Storage:
    """The storage handles the service uses. One per process (see `get_storage`)."""

    queues: QueueServiceClient
    tables: TableServiceClient
    sync_queue_name: str = SYNC_QUEUE
    # Set on a company's view of storage (`Runtime.for_company`): messages it sends without a
    # company are that company's.
    company: str | None = None
    # Webhook calls' messages sent together (`enqueue_together`); shared by the company views.
    group: GroupCommit = field(default_factory=GroupCommit, repr=False, compare=False)

    def queue(self, name: str | None = None) -> QueueClient:
        """A queue client that base64-encodes on send and decodes on receive, like the host."""
        return self.queues.get_queue_client(
            name or self.sync_queue_name,
            message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=TextBase64DecodePolicy(),
        )

    def raw_queue(self, name: str | None = None) -> QueueClient:
        """A queue client that hands message content over as stored, without decoding.

        For reading queues that may hold anything (the poison queue): the SDK's base64 decode
        policy raises on the first body that is not base64 and fails the whole peek or receive, so
        one bad message would hide all the others. Callers decode each body themselves.
        """
        return self.queues.get_queue_client(name or self.sync_queue_name)

    @property
    def poison_queue_name(self) -> str:
        return self.sync_queue_name + POISON_SUFFIX

    def table(self, name: str) -> TableClient:
        return self.tables.get_table_client(name)

    def ensure(self) -> list[str]:
        """Create the queues and tables that do not exist yet; return what was created."""
        created: list[str] = []
        for name in (self.sync_queue_name, self.poison_queue_name):
            try:
                self.queues.create_queue(name)
                created.append(f"queue {name}")
            except ResourceExistsError:
                pass
        existing = {t.name for t in self.tables.list_tables()}
        for name in TABLES:
            if name not in existing:
                try:
                    self.tables.create_table(name)
                    created.append(f"table {name}")
                except ResourceExistsError:
                    pass
        return created

    def enqueue(
        self,
        messages: Sequence[AnyMessage],
        *,
        delay_seconds: int = 0,
        queue: str | None = None,
        within: float | None = None,
    ) -> int:
        """Send every message (several at a time); raise `EnqueueError` naming what was sent if any
        send failed, after trying them all. With `within` (seconds), give up waiting then: sends not
        started are cancelled, those under way are handed over in `EnqueueError.late`."""
        client = self.queue(queue)
        if self.company is not None:
            messages = [m if m.company else m.model_copy(update={"company": self.company}) for m in messages]
        # The queue message in the change's trace: a producer span whose W3C context each message
        # carries, so its processing (`process message`) is this span's child (shared/telemetry.py).
        attributes = _sending(client, messages, delay_seconds)
        with telemetry.span(f"send {client.queue_name}", attributes, kind="producer"):
            return self._send(client, messages, delay_seconds, within)

    def enqueue_together(self, messages: Sequence[AnyMessage], *, within: float) -> int:
        """`enqueue` on the sync queue for a webhook call, together with other calls' messages that
        wait meanwhile (`shared.store.group_commit`); how many calls shared the send. Raises
        `EnqueueError` with positions in `messages`, as `enqueue` does."""
        client = self.queue()
        with telemetry.span(
            f"send {client.queue_name}", _sending(client, messages, 0), kind="producer"
        ) as span:
            # Each change keeps its own call's trace, whichever call's thread sends the group.
            trace = telemetry.traceparent()
            if trace is not None:
                messages = [m.model_copy(update={"trace": trace}) for m in messages]
            calls = self.group.submit(
                messages, within, lambda group, left: self._send(client, group, 0, left, stamp=False)
            )
            span.set("bcsync.calls_sent_together", calls)
            return len(messages)

    def _send(
        self,
        client: QueueClient,
        messages: Sequence[AnyMessage],
        delay_seconds: int,
        within: float | None,
        stamp: bool = True,
    ) -> int:
        """`stamp`: the messages join the current span's trace (else each keeps the trace it carries)."""
        trace = telemetry.traceparent() if stamp else None
        if trace is not None:
            messages = [m.model_copy(update={"trace": trace}) for m in messages]
        bodies = [to_json(m) for m in messages]  # a message too large fails before anything is sent

        def send(body: str) -> None:
            client.send_message(body, visibility_timeout=delay_seconds or None)

        futures = [io_pool().submit(send, body) for body in bodies]
        finished, _ = wait(futures, timeout=within)
        sent: list[int] = []
        late: dict[int, Future[None]] = {}
        errors: list[BaseException] = []
        for index, future in enumerate(futures):
            if future in finished:
                error = future.exception()
                if error is None:
                    sent.append(index)
                else:
                    errors.append(error)
            elif not future.cancel():
                late[index] = future  # under way: it may still land
        if len(sent) < len(bodies):
            first = errors[0] if errors else TimeoutError(f"storage did not answer within {within} s")
            raise EnqueueError(sent, len(bodies), first, late) from first
        return len(bodies)


def _sending(client: QueueClient, messages: Sequence[AnyMessage], delay_seconds: int) -> dict[str, Any]:
    """The attributes of a producer span."""
    return {
        "messaging.system": "azure_storage_queue",
        "messaging.destination.name": client.queue_name,
        "messaging.batch.message_count": len(messages),
        "bcsync.delay_seconds": delay_seconds,
    }


def transport_options() -> dict[str, Any]:
    """Options for a storage client: proxies read from the environment once, here, not per request.

    The SDK's default transport (requests, `trust_env`) scans `os.environ` for proxy settings and
    looks for a `.netrc` file on every request: measured in a burst of 1,000 Sales accounts, that
    was about 15% of the service process's CPU (28,000 scans of the environment). `HTTP_PROXY` and
    `HTTPS_PROXY` still apply, through the SDK's proxy policy; `NO_PROXY` no longer exempts the
    storage account (the service talks to this one host, so set no proxy to reach it directly).

    The session is the transport's own as it would build it (no environment, no urllib3 retries:
    the SDK's retry policy retries), with a pool of `POOL_SIZE` connections per host."""
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(
        pool_maxsize=POOL_SIZE, max_retries=Retry(total=False, redirect=False, raise_on_status=False)
    )
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return {
        "transport": RequestsTransport(session=session, use_env_settings=False),
        "proxies": getproxies() or None,
    }


def storage_from_connection_string(connection_string: str, sync_queue: str = SYNC_QUEUE) -> Storage:
    return Storage(
        queues=QueueServiceClient.from_connection_string(
            connection_string, api_version=QUEUE_API_VERSION, **transport_options()
        ),
        tables=resend_after_disconnect(
            TableServiceClient.from_connection_string(connection_string, **transport_options())
        ),
        sync_queue_name=sync_queue,
    )


def storage_from_account(account_name: str, sync_queue: str = SYNC_QUEUE) -> Storage:
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    return Storage(
        queues=QueueServiceClient(
            f"https://{account_name}.queue.core.windows.net", credential=credential, **transport_options()
        ),
        tables=resend_after_disconnect(
            TableServiceClient(
                f"https://{account_name}.table.core.windows.net", credential=credential, **transport_options()
            )
        ),
        sync_queue_name=sync_queue,
    )


@functools.cache
def get_storage() -> Storage:
    """The process-wide storage handles, from settings."""
    from shared.settings import get_settings

    settings = get_settings()
    if settings.storage_connection_string:
        return storage_from_connection_string(settings.storage_connection_string, settings.sync_queue)
    assert settings.storage_account_name  # guaranteed by settings validation
    return storage_from_account(settings.storage_account_name, settings.sync_queue)
