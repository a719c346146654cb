"""The imperative shell around the intake handlers: configuration, echo lookups, enqueueing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shared.feeds.intake import (
    BcIntakeConfig,
    DataverseIntakeConfig,
    WebhookAnswer,
    handle_bc_webhook,
    handle_dataverse_webhook,
)
from shared.runtime import get_runtime
from shared.settings import SettingsError

log = logging.getLogger(__name__)

UNAVAILABLE = WebhookAnswer.json(503, {"error": "temporarily unavailable; the sender should retry"})


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
        )
        answer = handle_dataverse_webhook(headers, query, body, config=config, mappings=rt.mappings)
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

        def last_synced_modified(mapping: str, bc_id: str) -> str | None:
            coupling = rt.couplings.get(mapping, "bc", bc_id)
            return coupling.bc_modified if coupling else None

        answer = handle_bc_webhook(
            query, body, config=config, mappings=rt.mappings, last_synced_modified=last_synced_modified
        )
        _enqueue(answer)
    except Exception:
        # Never a 4xx for our own trouble: BC would delete the subscription. 503 makes it retry.
        log.exception("bc webhook could not be accepted")
        return UNAVAILABLE
    log.info("bc webhook: %s %s", answer.status, answer.body[:200])
    return answer


def _enqueue(answer: WebhookAnswer) -> None:
    if answer.messages:
        get_runtime().storage.enqueue(answer.messages)
