"""The queue message in a change's trace (issue 19, point 1), through Azurite: sending is a producer span,
child of the webhook's or poll's span, and each message sent carries that span's W3C context, so the
processor's `process message` span is its child in the same trace."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shared import telemetry
from shared.messages import SyncMessage, parse_json
from shared.ops.jobs import record_queue_metrics
from shared.store.storage import Storage
from tests.unit import test_telemetry

pytestmark = pytest.mark.integration

file_telemetry = test_telemetry.file_telemetry  # the same telemetry-to-a-file fixture


def _spans(path: Path) -> dict[str, dict[str, Any]]:
    telemetry.flush()
    return {s["name"]: s for s in telemetry.load_lines(str(path)) if s["signal"] == "span"}


def test_sending_is_a_span_of_the_trace_whose_context_every_message_carries(
    storage: Storage, file_telemetry: Path
) -> None:
    storage.ensure()
    with telemetry.span("bc webhook", kind="server"):
        storage.enqueue([SyncMessage(mapping="CUSTOMER", side="bc", id=str(n)) for n in range(2)])
    received = [parse_json(m.content) for m in storage.queue().receive_messages(max_messages=2)]
    assert len(received) == 2
    for message in received:
        with telemetry.span("process message", parent=message.trace, kind="consumer"):
            pass

    spans = _spans(file_telemetry)
    webhook, send = spans["bc webhook"], spans[f"send {storage.sync_queue_name}"]
    assert send["kind"] == "SpanKind.PRODUCER"
    assert send["parent_id"] == webhook["context"]["span_id"]
    assert send["attributes"] == {
        "messaging.system": "azure_storage_queue",
        "messaging.destination.name": storage.sync_queue_name,
        "messaging.batch.message_count": 2,
        "bcsync.delay_seconds": 0,
    }
    trace, span_id = send["context"]["trace_id"][2:], send["context"]["span_id"][2:]
    assert {(m.trace or "")[:-3] for m in received} == {f"00-{trace}-{span_id}"}
    process = [s for s in telemetry.load_lines(str(file_telemetry)) if s.get("name") == "process message"]
    assert len(process) == 2 and all(p["parent_id"] == send["context"]["span_id"] for p in process)


def test_a_send_that_fails_is_a_failed_span_naming_the_error_type(
    storage: Storage, file_telemetry: Path
) -> None:
    # No `ensure()`: the queue does not exist, so storage answers 404 to every send.
    with pytest.raises(Exception) as raised:
        storage.enqueue([SyncMessage(mapping="CUSTOMER", side="bc", id="1")])
    send = _spans(file_telemetry)[f"send {storage.sync_queue_name}"]
    assert send["status"]["status_code"] == "ERROR"
    assert send["attributes"]["error.type"] == type(raised.value).__name__


def _metrics(path: Path) -> dict[str, list[dict[str, Any]]]:
    telemetry.flush()
    return {
        metric["name"]: metric["data"]["data_points"]
        for line in telemetry.load_lines(str(path)) if line["signal"] == "metrics"
        for resource in line["resource_metrics"] for scope in resource["scope_metrics"]
        for metric in scope["metrics"]
    }  # fmt: skip


def test_the_queue_metrics_say_its_depth_the_age_of_its_oldest_message_and_the_poison_count(
    storage: Storage, file_telemetry: Path
) -> None:
    storage.ensure()
    storage.enqueue([SyncMessage(mapping="CUSTOMER", side="bc", id=str(n)) for n in range(3)])
    storage.enqueue([SyncMessage(mapping="CUSTOMER", side="bc", id="p")], queue=storage.poison_queue_name)
    time.sleep(1.5)
    record_queue_metrics(SimpleNamespace(storage=storage))  # type: ignore[arg-type]  # it reads only .storage
    metrics = _metrics(file_telemetry)
    assert metrics["bcsync.queue.depth"][0]["value"] == 3
    assert metrics["bcsync.poison.count"][0]["value"] == 1
    assert 1.0 <= metrics["bcsync.queue.oldest_age"][0]["value"] < 60
