"""The imperative shell around the intake handlers: configuration, deduplication, and enqueueing
within a bounded time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future

from shared import telemetry
from shared.feeds.dedup import RecentKeys
from shared.feeds.intake import (
    BcIntakeConfig,
    DataverseIntakeConfig,
    Echo,
    WebhookAnswer,
    handle_bc_webhook,
    handle_dataverse_webhook,
    organization_host,
)
from shared.messages import SyncMessage
from shared.runtime import Runtime, get_runtime
from shared.settings import SettingsError
from shared.store.errors import EnqueueError
from shared.sync.echoes import ECHOES

log = logging.getLogger(__name__)

# BC gives up on an answer after 10 s and Dataverse after 60 s, then retry: a webhook answers well
# within that whatever storage does, so a stall is a clean 503 and a retry, not a timeout.
ANSWER_WITHIN = 5.0
UNAVAILABLE = WebhookAnswer.json(
    503, {"error": "temporarily unavailable; the sender should retry"}, retry_after=10
)
# Notifications queued lately, by key, so a redelivered call is not queued again (shared/feeds/dedup.py).
RECENT = RecentKeys()


def receive_dataverse_webhook(
    headers: Mapping[str, str], query: Mapping[str, str], body: bytes
) -> WebhookAnswer:
    """The root span of the trace of each change it queues (shared/telemetry.py)."""
    _configured()
    with telemetry.span("dataverse webhook", kind="server") as span:
        answer = _receive_dataverse_webhook(headers, query, body)
        span.set("http.response.status_code", answer.status)
        span.set("bcsync.messages", len(answer.messages))
        return answer


def receive_bc_webhook(query: Mapping[str, str], body: bytes) -> WebhookAnswer:
    """The root span of the trace of each change it queues (shared/telemetry.py)."""
    _configured()
    with telemetry.span("bc webhook", kind="server") as span:
        answer = _receive_bc_webhook(query, body)
        span.set("http.response.status_code", answer.status)
        span.set("bcsync.messages", len(answer.messages))
        return answer


def _configured() -> None:
    # Telemetry starts with the runtime; a runtime that cannot be built is answered inside (503).
    try:
        get_runtime()
    except Exception:
        return


def _receive_dataverse_webhook(
    headers: Mapping[str, str], query: Mapping[str, str], body: bytes
) -> WebhookAnswer:
    try:
        rt = get_runtime()
        config = DataverseIntakeConfig(
            auth_type=rt.settings.dataverse_webhook_auth_type,
            secret=rt.settings.dataverse_webhook_secret,
            secret_name=rt.settings.dataverse_webhook_secret_name,
            integration_user_id=rt.known_integration_user_id(),
            organization_host=organization_host(str(rt.settings.dataverse_url)),
        )
        answer = handle_dataverse_webhook(
            headers, query, body, config=config, mappings=rt.mappings, seen=RECENT.contains
        )
        _enqueue(answer)
    except SettingsError:
        log.exception("configuration is invalid; refusing webhooks until it is fixed")
        return UNAVAILABLE
    except Exception:
        log.exception("dataverse webhook could not be accepted")
        return UNAVAILABLE
    log.info("dataverse webhook: %s %s", answer.status, answer.body[:200])
    return answer


def _receive_bc_webhook(query: Mapping[str, str], body: bytes) -> WebhookAnswer:
    try:
        rt = get_runtime()
        config = BcIntakeConfig(rt.settings.bc_webhook_client_state, rt.settings.bc_company_ids)
        answer = handle_bc_webhook(
            query, body, config=config, mappings=rt.mappings, seen=RECENT.contains, echo=_echo_of(rt)
        )
        _enqueue(answer)
    except Exception:
        # Never a 4xx for our own trouble: BC would delete the subscription. 503 makes it retry.
        log.exception("bc webhook could not be accepted")
        return UNAVAILABLE
    # A handshake's answer is BC's validationToken: not for the log.
    said = answer.body[:200] if answer.content_type == "application/json" else "(validation handshake)"
    log.info("bc webhook: %s %s", answer.status, said)
    return answer


def _echo_of(rt: Runtime) -> Echo:
    """Whether a BC notification reports a write whose coupling this process stored (the company's
    view: its couplings are kept under its scope)."""

    def echo(message: SyncMessage) -> bool:
        view = rt.for_company(message.company) if message.company else rt
        return ECHOES.echo(view.scope, message)

    return echo


def _enqueue(answer: WebhookAnswer) -> None:
    """Queue the answer's messages within `ANSWER_WITHIN` seconds, together with those of webhook
    calls arriving meanwhile (`Storage.enqueue_together`), or raise, so the caller answers 503 and
    the sender retries. What was stored, in time or later, is remembered, so the retry queues only
    the rest."""
    if not answer.messages:
        return
    try:
        get_runtime().storage.enqueue_together(answer.messages, within=ANSWER_WITHIN)
    except EnqueueError as exc:
        _remember(answer, exc.sent)
        for index, future in exc.late.items():
            future.add_done_callback(_remember_when_stored(answer, [index]))
        raise
    _remember(answer, range(len(answer.messages)))


def _remember(answer: WebhookAnswer, positions: Iterable[int]) -> None:
    RECENT.add_all(key for i in positions for key in answer.keys[i])


def _remember_when_stored(answer: WebhookAnswer, positions: list[int]) -> Callable[[Future[None]], None]:
    def done(send: Future[None]) -> None:
        if not send.cancelled() and send.exception() is None:
            _remember(answer, positions)

    return done
