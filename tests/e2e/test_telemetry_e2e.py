"""OpenTelemetry end to end (issue 19, point 1): the local stack exports to a file (`TELEMETRY_FILE`);
one BC change by a person makes one trace from the BC webhook to the Dataverse write, its metrics
and logs carry what an operator needs, and nothing exported holds a token, a secret or a record's
values."""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.traces import render
from shared import telemetry
from shared.ops import operations as ops
from tests.e2e.harness import E2EStack, wait_for

pytestmark = pytest.mark.e2e

SANDBOX_TOKENS = ("integration-user", "sales-user", "admin-user")


@pytest.fixture(scope="module")
def telemetry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("telemetry") / "telemetry.jsonl"


@pytest.fixture(scope="module")
def e2e_environment(telemetry_file: Path) -> Iterator[dict[str, str]]:
    yield {"TELEMETRY_FILE": str(telemetry_file)}


def _exported(path: Path) -> list[dict[str, Any]]:
    telemetry.flush()
    return telemetry.load_lines(str(path))


def _spans(lines: list[dict[str, Any]], trace_id: str | None = None) -> list[dict[str, Any]]:
    spans = [line for line in lines if line["signal"] == "span"]
    return [s for s in spans if trace_id is None or s["context"]["trace_id"] == trace_id]


def test_one_bc_change_is_one_trace_from_the_webhook_to_the_dataverse_write(
    e2e: E2EStack, telemetry_file: Path, request: pytest.FixtureRequest
) -> None:
    assert telemetry.enabled()
    # `python -m devstack`'s main, run in-process by another test of this worker, quiets the intake's
    # INFO lines on the console (`shared.feeds` at WARNING); the service's own level is what counts here.
    feeds = logging.getLogger("shared.feeds")
    request.addfinalizer(functools.partial(feeds.setLevel, feeds.level))
    feeds.setLevel(logging.NOTSET)
    tag = uuid.uuid4().hex[:8]
    customer, coupling = e2e.coupled_bc_customer({"displayName": f"Traced {tag}", "phoneNumber": "555-0100"})

    phone = f"+1 555 {uuid.uuid4().int % 10_000:04d} {tag[:3]}"
    e2e.bc_update("customers", customer["id"], {"phoneNumber": phone})
    wait_for(lambda: e2e.dv.get("accounts", coupling.dv_id)["telephone1"] == phone, "the change in Dataverse")
    e2e.settle()
    # A validation handshake as BC sends one when it creates a subscription (those of set-up may
    # precede this module's exporter when the stack is shared): its log line must not carry the token.
    handshake = httpx.post(
        f"{e2e.stack.host_server.url}/api/webhooks/bc", params={"validationToken": f"token-{tag}"}, timeout=10
    )
    assert handshake.status_code == 200 and handshake.text == f"token-{tag}", handshake.text
    lines = _exported(telemetry_file)
    assert f"token-{tag}" not in json.dumps(lines)

    # The processing of this change: the last `process message` of the customer that wrote.
    processed = [
        s for s in _spans(lines)
        if s["name"] == "process message" and s["attributes"].get("bcsync.record_id") == customer["id"]
        and s["attributes"].get("bcsync.outcome") == "modified"
    ]  # fmt: skip
    assert processed, "no `process message` span for the change"
    trace_id = processed[-1]["context"]["trace_id"]
    trace = _spans(lines, trace_id)
    by_id = {s["context"]["span_id"]: s for s in trace}
    roots = [s for s in trace if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["bc webhook"], [r["name"] for r in roots]
    assert roots[0]["kind"] == "SpanKind.SERVER"
    assert roots[0]["attributes"]["http.response.status_code"] in (200, 202)
    for span in trace:  # one tree: every parent is in the trace
        assert span["parent_id"] is None or span["parent_id"] in by_id, span["name"]

    names = [s["name"] for s in trace]
    assert "process message" in names
    # The queue message: the processing is the child of the send that queued it, the webhook's child
    # (or, had the change been requeued, the child of the earlier processing's send).
    queue = e2e.stack.env.get("SYNC_QUEUE_NAME", "sync-requests")
    send = by_id[processed[-1]["parent_id"]]
    assert send["name"] == f"send {queue}" and send["kind"] == "SpanKind.PRODUCER", send["name"]
    assert send["attributes"]["messaging.destination.name"] == queue
    assert by_id[send["parent_id"]]["name"] in ("bc webhook", "process message")
    first_send = next(s for s in trace if s["name"] == f"send {queue}")
    assert by_id[first_send["parent_id"]]["name"] == "bc webhook"
    read = next(s for s in trace if s["name"] == "BC GET customers")
    assert read["attributes"] == {
        "http.request.method": "GET", "bcsync.entity_set": "customers", "bcsync.side": "bc",
        "http.response.status_code": 200, "bcsync.retry_count": 0,
    }  # fmt: skip
    write = next(s for s in trace if s["name"] == "Dataverse PATCH accounts")
    assert write["attributes"]["http.response.status_code"] in (200, 204)
    assert write["attributes"]["bcsync.retry_count"] == 0
    assert write["attributes"]["bcsync.side"] == "dv"
    coupling_write = next(s for s in trace if s["name"] == "coupling write")
    assert coupling_write["attributes"] == {"bcsync.mapping": "CUSTOMER", "bcsync.operation": "update"}
    # The API request and the coupling write are children of the processing span.
    assert by_id[write["parent_id"]]["name"] == "process message"
    assert by_id[coupling_write["parent_id"]]["name"] == "process message"

    # `python -m devstack traces` (what `make run` points to) shows it as a tree, webhook first.
    tree = render([line for line in lines if line["signal"] != "span" or line in trace], last=1)
    assert tree[1].strip().startswith("bc webhook")
    assert tree[2].strip().startswith(f"send {queue}") and tree[3].strip().startswith("process message")
    assert any(row.strip().startswith("Dataverse PATCH accounts") for row in tree), tree

    # Logs carry the trace id: the processor's line about this change is in this trace.
    logs = [line for line in lines if line["signal"] == "log" and line.get("trace_id") == trace_id]
    assert any("-> modified" in str(line["body"]) for line in logs), logs

    # Metrics: changes by mapping and outcome, API requests by side, the latency histogram.
    metrics = _metric_points(lines)
    assert metrics["bcsync.changes"].get(("CUSTOMER", "modified"), 0) >= 1
    assert metrics["bcsync.api.requests"].get(("bc",), 0) >= 1
    assert metrics["bcsync.api.requests"].get(("dv",), 0) >= 1
    assert metrics["bcsync.sync.latency"].get(("CUSTOMER",), 0) >= 1  # observations counted
    assert metrics["bcsync.api.budget_left"][("bc",)] < 5_800

    # BC's validation handshakes (one per subscription) are logged without BC's validationToken.
    said = [str(line["body"]) for line in lines if str(line.get("body", "")).startswith("bc webhook: 200")]
    assert said and all(body == "bc webhook: 200 (validation handshake)" for body in said), said

    # Nothing exported holds a token, a webhook secret or the record's values.
    text = telemetry_file.read_text()
    secrets = [*SANDBOX_TOKENS, *_secret_settings(e2e.stack.env)]
    for name in ("DATAVERSE_WEBHOOK_SECRET", "BC_WEBHOOK_CLIENT_STATE", "BC_STATIC_TOKEN"):
        assert e2e.stack.env[name] in secrets, name
    values = [phone, f"Traced {tag}", "555-0100"]
    for secret in secrets + values:
        assert secret not in text, f"{secret!r} is in the exported telemetry"


def test_a_change_in_sales_is_one_trace_from_the_dataverse_webhook_to_the_bc_write(
    e2e: E2EStack, telemetry_file: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    customer, coupling = e2e.coupled_bc_customer({"displayName": f"From Sales {tag}"})
    phone = f"555-{uuid.uuid4().int % 10_000:04d}"
    e2e.dv_update("accounts", str(coupling.dv_id), {"telephone1": phone})
    wait_for(lambda: (e2e.bc_get("customers", customer["id"]) or {}).get("phoneNumber") == phone, "BC")
    e2e.settle()

    lines = _exported(telemetry_file)
    processed = [
        s for s in _spans(lines)
        if s["name"] == "process message" and s["attributes"].get("bcsync.record_id") == coupling.dv_id
        and s["attributes"].get("bcsync.outcome") == "modified"
    ]  # fmt: skip
    assert processed, "no `process message` span for the Sales change"
    trace = _spans(lines, processed[-1]["context"]["trace_id"])
    by_id = {s["context"]["span_id"]: s for s in trace}
    roots = [s for s in trace if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["dataverse webhook"], [r["name"] for r in roots]
    send = by_id[processed[-1]["parent_id"]]
    assert send["name"].startswith("send ") and by_id[send["parent_id"]]["name"] == "dataverse webhook"
    write = next(s for s in trace if s["name"] == "BC PATCH customers")
    assert write["parent_id"] == processed[-1]["context"]["span_id"]
    assert write["attributes"]["bcsync.side"] == "bc"
    assert write["attributes"]["http.response.status_code"] == 200
    assert any(s["name"] == "coupling write" for s in trace)
    assert phone not in telemetry_file.read_text()


def test_a_throttled_read_is_retried_in_its_span_and_the_timers_record_queue_and_coupling_metrics(
    e2e: E2EStack, telemetry_file: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    customer, coupling = e2e.coupled_bc_customer({"displayName": f"Throttled {tag}"})
    # BC answers the processor's read of this customer 429 once, as BC does above its rate limits.
    e2e.bc.faults.add(
        {
            "action": "status",
            "status": 429,
            "retry_after": 1,
            "method": "GET",
            "path_contains": customer["id"],
        }
    )
    e2e.bc_update("customers", customer["id"], {"displayName": f"Throttled {tag} 2"})
    wait_for(lambda: e2e.dv.get("accounts", coupling.dv_id)["name"] == f"Throttled {tag} 2", "the change")
    e2e.settle()
    assert not e2e.bc.faults.rules(), "the 429 was never answered: the test proves nothing"

    # The delta poll's timer records the queues and, once per interval, the coupled records.
    from shared.ops import jobs

    jobs.run_delta_poll()
    lines = _exported(telemetry_file)
    reads = [
        s for s in _spans(lines)
        if s["name"] == "BC GET customers" and s["attributes"].get("bcsync.retry_count", 0) >= 1
    ]  # fmt: skip
    assert reads, "no BC read with its retry counted"
    assert reads[-1]["attributes"]["http.response.status_code"] == 200
    assert reads[-1]["attributes"]["bcsync.retry_count"] == 1
    metrics = _metric_points(lines)
    assert metrics["bcsync.api.throttled"].get(("bc",), 0) >= 1
    assert ("dv",) not in metrics["bcsync.api.throttled"]
    coupled = {m.name: ops.coupled_count(e2e.rt, m.name) for m in e2e.rt.mappings.entities()}
    assert coupled["CUSTOMER"] >= 1
    assert {k[0]: v for k, v in metrics["bcsync.couplings"].items()} == coupled
    # The poll's deletion sweeps queue work of their own, so the depth is whatever it was then; its
    # exact values are tests/integration/test_telemetry_queue.py's. Here: the timer records them.
    assert metrics["bcsync.queue.depth"][()] >= 0
    assert 0 <= metrics["bcsync.queue.oldest_age"][()] < 60
    poison = e2e.rt.storage.queue(e2e.rt.storage.poison_queue_name).get_queue_properties()
    assert metrics["bcsync.poison.count"][()] == poison.approximate_message_count


def _secret_settings(env: dict[str, str]) -> list[str]:
    """Every secret the stack's app settings hold: tokens, webhook secrets, client secrets, keys, and the
    account key inside the storage connection string."""
    found = [
        value for name, value in env.items()
        if value and re.search(r"TOKEN|SECRET|CLIENT_STATE|PASSWORD|ACCESS_KEY", name)
    ]  # fmt: skip
    found += re.findall(r"AccountKey=([^;]+)", env.get("AzureWebJobsStorage", ""))
    return found


def _metric_points(lines: list[dict[str, Any]]) -> dict[str, dict[tuple[str, ...], float]]:
    """The last exported value of each metric, by its attribute values (histograms: their count)."""
    points: dict[str, dict[tuple[str, ...], float]] = {}
    for line in lines:
        if line["signal"] != "metrics":
            continue
        for resource in line["resource_metrics"]:
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    for point in metric["data"]["data_points"]:
                        key = tuple(str(v) for _, v in sorted(point["attributes"].items()))
                        value = point.get("value", point.get("count"))
                        points.setdefault(metric["name"], {})[key] = value
    return points
