"""Messages across a rolling deployment: two versions of the service share one queue (a slot swap,
scale-out while instances update). An older version ignores the fields it does not know; a format
it cannot read (a higher `version`) waits for a newer instance, then goes to the poison queue with a
reason that says what to do. A newer version reads what older ones queued."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from shared import messages
from shared.messages import (
    MESSAGE_VERSION,
    BatchMessage,
    NewerMessageError,
    ScanMessage,
    SyncMessage,
    decode_message,
    parse_json,
    to_json,
)
from shared.sync import processor
from tests.support.processor_runtime import processor_runtime

GUID = "6d81597f-0f9f-e711-8122-000d3aa2331c"


# --- old reads new ------------------------------------------------------------------------------------


def test_fields_of_a_newer_version_are_ignored_and_logged_once_by_name_without_values(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages, "_unknown_logged", set())
    newer = {
        "kind": "record", "version": MESSAGE_VERSION, "mapping": "CUSTOMER", "side": "bc", "id": GUID,
        "change": "updated", "observed": "2026-05-01T10:00:00Z", "correlation_id": "c1",
        "priority": "secret-value-1", "origin": {"nested": "secret-value-2"},
    }  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="shared.messages"):
        first = parse_json(json.dumps(newer))
        again = decode_message(base64.b64encode(json.dumps(newer).encode()).decode())
    assert first == again == SyncMessage(
        mapping="CUSTOMER", side="bc", id=GUID, change="updated",
        observed=first.observed, correlation_id=first.correlation_id,
    )  # fmt: skip
    assert "priority" not in to_json(first)  # re-queued by this version: in its own format
    logged = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(logged) == 1, logged  # once per process, not per message
    assert "origin" in logged[0] and "priority" in logged[0]
    assert "secret-value" not in caplog.text
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "does not know" in r.getMessage())


def test_unknown_fields_inside_a_batch_are_ignored_too() -> None:
    batch = {
        "kind": "batch", "mapping": "CUSTOMER", "side": "bc", "wave": 3,
        "changes": [{"id": GUID, "change": "updated", "weight": 1}],
    }  # fmt: skip
    parsed = parse_json(json.dumps(batch))
    assert isinstance(parsed, BatchMessage)
    assert [(r.id, r.change) for r in parsed.records()] == [(GUID, "updated")]


def test_a_message_of_a_newer_format_is_refused_before_its_fields_are_judged() -> None:
    # Version 2 may have renamed or retyped anything: nothing of it is guessed at.
    newer = {"kind": "record", "version": MESSAGE_VERSION + 1, "mapping": "CUSTOMER", "target": {"x": 1}}
    with pytest.raises(NewerMessageError) as caught:
        parse_json(json.dumps(newer))
    assert caught.value.version == MESSAGE_VERSION + 1
    text = str(caught.value)
    assert "newer version" in text and "finish the deployment" in text and "bcsync poison --replay" in text


# --- new reads old ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "queued",
    [
        # As queued before companies and traces existed (no `company`, `trace`, `attempt`).
        {"kind": "record", "version": 1, "mapping": "CUSTOMER", "side": "dv", "id": GUID,
         "change": "updated", "reason": "dataverse webhook", "observed": "2026-05-01T10:00:00Z",
         "correlation_id": "c1"},
        # Before `sweep` and `dry_run`.
        {"kind": "scan", "version": 1, "mapping": "CUSTOMER", "side": "bc", "since": None, "run_id": "r1"},
        # Before `version` itself was written by every producer.
        {"kind": "record", "mapping": "CUSTOMER", "side": "bc", "id": GUID},
    ],
)  # fmt: skip
def test_messages_queued_by_older_versions_are_read_with_the_defaults_of_what_they_lack(
    queued: dict[str, Any],
) -> None:
    parsed = parse_json(json.dumps(queued))
    assert parsed.version == 1 and parsed.company is None and parsed.trace is None and parsed.attempt == 0
    if isinstance(parsed, ScanMessage):
        assert parsed.sweep is None and parsed.dry_run is False and parsed.since is None
    else:
        assert isinstance(parsed, SyncMessage) and parsed.id == GUID


# --- the processor during a rolling deployment ---------------------------------------------------------


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Any:
    return processor_runtime(monkeypatch)


def test_a_newer_format_waits_for_a_newer_instance_then_goes_to_poison_with_the_reason(
    rt: Any, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"kind": "record", "version": MESSAGE_VERSION + 1, "mapping": "CUSTOMER"}).encode()
    for delivery in range(1, processor.NEWER_MESSAGE_DELIVERIES):
        # Raising makes the host put it back (visible again after visibilityTimeout) for anyone.
        with pytest.raises(processor.NewerVersionPendingError, match="finish the deployment"):
            processor.process_message(body, message_id="m1", dequeue_count=delivery)
        assert rt.sent == []
    with caplog.at_level(logging.ERROR, logger="shared.sync.processor"):
        processor.process_message(body, message_id="m1", dequeue_count=processor.NEWER_MESSAGE_DELIVERIES)
    assert rt.sent == [("sync-requests-poison", body.decode())]  # byte for byte, for the replay
    assert "finish the deployment" in caplog.text and "bcsync poison --replay" in caplog.text
    assert rt.synced == []


def test_the_wait_ends_before_the_host_would_poison_the_message_without_a_reason() -> None:
    host = json.loads((Path(__file__).parents[2] / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] >= processor.NEWER_MESSAGE_DELIVERIES


def test_a_message_with_fields_of_a_newer_version_is_synced(rt: Any) -> None:
    body = to_json(SyncMessage(mapping="CUSTOMER", side="bc", id=GUID))
    newer = json.dumps({**json.loads(body), "priority": 1}).encode()
    processor.process_message(newer, message_id="m2")
    assert [m.id for m in rt.synced] == [GUID] and rt.sent == []
