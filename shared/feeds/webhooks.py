"""The imperative shell around the intake handlers: configuration, echo lookups, enqueueing."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from shared.feeds.dedup import RecentKeys
from shared.feeds.intake import (
    BcIntakeConfig,
    DataverseIntakeConfig,
    WebhookAnswer,
    handle_bc_webhook,
    handle_dataverse_webhook,
    organization_host,
)
from shared.runtime import get_runtime
from shared.settings import SettingsError
from shared.store.storage import EnqueueError, io_pool

log = logging.getLogger(__name__)

UNAVAILABLE = WebhookAnswer.json(503, {"error": "temporarily unavailable; the sender should retry"})
# Notifications queued lately, by key, so a redelivered call is not queued again (shared/feeds/dedup.py).
RECENT = RecentKeys()


def receive_dataverse_webhook(
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


def receive_bc_webhook(query: Mapping[str, str], body: bytes) -> WebhookAnswer:
    try:
        rt = get_runtime()
        config = BcIntakeConfig(rt.settings.bc_webhook_client_state, rt.settings.bc_company_ids)

        def last_synced_modified(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
            # One or two point reads each: in parallel, or 1,000 entries take seconds to answer.
            def one(pair: tuple[str, str]) -> str | None:
                coupling = rt.couplings.get(pair[0], "bc", pair[1])
                return coupling.bc_modified if coupling else None

            return dict(zip(pairs, io_pool().map(one, pairs), strict=True))

        answer = handle_bc_webhook(
            query,
            body,
            config=config,
            mappings=rt.mappings,
            last_synced_modified=last_synced_modified,
            seen=RECENT.contains,
        )
        _enqueue(answer)
    except Exception:
        # Never a 4xx for our own trouble: BC would delete the subscription. 503 makes it retry.
        log.exception("bc webhook could not be accepted")
        return UNAVAILABLE
    log.info("bc webhook: %s %s", answer.status, answer.body[:200])
    return answer


def _enqueue(answer: WebhookAnswer) -> None:
    if not answer.messages:
        return
    try:
        get_runtime().storage.enqueue(answer.messages)
    except EnqueueError as exc:
        # Remember only what was stored: the sender retries after our 503 and must get the rest in.
        RECENT.add_all(answer.keys[i] for i in exc.sent)
        raise
    RECENT.add_all(answer.keys)
