"""A webhook answers within a bounded time whatever storage does: 503 with Retry-After when its
messages could not be stored in time, so the sender retries and nothing is lost (issue 13, point 4).
Storage here is a port that accepts connections and never answers: a frozen Azurite."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shared import runtime
from shared.feeds import webhooks
from shared.feeds.intake import BcIntakeConfig, handle_bc_webhook
from tests.unit.test_health import connection_string, env, frozen_port  # noqa: F401 (fixtures)

COMPANY = "f64eba74-dacd-4854-a584-1834f68cfc3a"


def _notification(entries: int) -> bytes:
    return json.dumps({"value": [{
        "subscriptionId": "s", "clientState": "c" * 20, "expirationDateTime": "2030-01-01T00:00:00Z",
        "resource": f"/api/v2.0/companies({COMPANY})/customers({uuid.uuid4()})",
        "changeType": "updated", "lastModifiedDateTime": "2026-01-01T10:00:00.123Z",
    } for _ in range(entries)]}).encode()  # fmt: skip


def test_frozen_storage_gets_a_503_with_retry_after_within_the_bound(
    env: pytest.MonkeyPatch,  # noqa: F811
    frozen_port: int,  # noqa: F811
) -> None:
    env.setenv("AzureWebJobsStorage", connection_string(frozen_port))
    env.setattr(webhooks, "ANSWER_WITHIN", 1.0)
    body = _notification(300)
    runtime.reset()
    try:
        started = time.monotonic()
        answer = webhooks.receive_bc_webhook({}, body)
        seconds = time.monotonic() - started
        mappings = runtime.get_runtime().mappings
    finally:
        runtime.reset()
    assert answer.status == 503 and answer.retry_after == 10
    assert seconds < 2.5, f"answered after {seconds:.1f} s"
    # nothing was remembered as queued, so the sender's retry is queued in full
    config = BcIntakeConfig("c" * 20, [COMPANY])
    retry = handle_bc_webhook({}, body, config=config, mappings=mappings, seen=webhooks.RECENT.contains)
    assert json.loads(retry.body) == {"accepted": 300}
