"""shared/telemetry.py: off costs nothing (OpenTelemetry is not even imported), the exporter the
settings choose, trace context carried through a queue message, spans that never hold an exception's
message. The end-to-end trace of a change is tests/e2e/test_telemetry_e2e.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import telemetry
from shared.messages import SyncMessage, parse_json
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "DATAVERSE_URL": "http://127.0.0.1:7081",
    "BC_API_URL": "http://127.0.0.1:7082/v2.0/contoso/production/api/v2.0",
    "BC_COMPANY_IDS": "11111111-2222-3333-4444-555555555555",
    "DATAVERSE_WEBHOOK_SECRET": "a-webhook-secret-0123456789",
    "BC_WEBHOOK_CLIENT_STATE": "a-client-state-0123456789",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def settings(**values: str) -> Settings:
    return Settings.model_validate({**BASE, **values})


@pytest.fixture
def file_telemetry(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "telemetry.jsonl"
    telemetry.configure(settings(TELEMETRY_FILE=str(path)))
    assert telemetry.enabled()
    try:
        yield path
    finally:
        telemetry.shutdown()


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter with the example app settings (every exporter setting empty)."""
    example = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    clean = {k: v for k, v in os.environ.items() if k not in example}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **example, **env}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_the_first_exporter_setting_set_wins_and_none_is_off() -> None:
    assert telemetry.exporter_of(settings()) is None
    assert telemetry.exporter_of(settings(TELEMETRY_FILE="", OTEL_EXPORTER_OTLP_ENDPOINT="")) is None
    assert telemetry.exporter_of(settings(TELEMETRY_FILE="t.jsonl")) == "file"
    assert (
        telemetry.exporter_of(settings(TELEMETRY_FILE="t", OTEL_EXPORTER_OTLP_ENDPOINT="http://c")) == "otlp"
    )
    both = settings(
        APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=x", OTEL_EXPORTER_OTLP_ENDPOINT="h"
    )
    assert telemetry.exporter_of(both) == "azure_monitor"


def test_off_imports_nothing_of_opentelemetry_and_spans_cost_nothing() -> None:
    # The whole app imported and a change's code paths' helpers called, with no exporter set.
    code = """
import sys
import function_app
from shared import telemetry
from shared.runtime import get_runtime
rt = get_runtime()
assert not telemetry.enabled()
with telemetry.span("x", {"a": 1}) as span:
    span.set("b", 2)
    assert telemetry.traceparent() is None
telemetry.count("bcsync.changes", mapping="M", outcome="modified")
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor")))
assert not loaded, loaded
print("ok")
"""
    result = _run(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_message_without_trace_context_is_still_read() -> None:
    old = {
        "version": 1,
        "kind": "record",
        "mapping": "CUSTOMER",
        "side": "bc",
        "id": "1",
        "change": "updated",
    }
    message = parse_json(json.dumps(old))
    assert isinstance(message, SyncMessage) and message.trace is None


def test_the_trace_travels_inside_the_message_and_the_processing_joins_it(file_telemetry: Path) -> None:
    with telemetry.span("bc webhook", kind="server"):
        carried = telemetry.traceparent()
        queued = SyncMessage(mapping="CUSTOMER", side="bc", id="1").model_copy(update={"trace": carried})
    received = parse_json(queued.model_dump_json())
    assert received.trace == carried
    with (
        telemetry.span("process message", parent=received.trace, kind="consumer"),
        telemetry.span("BC GET customers", kind="client"),
    ):
        pass
    telemetry.flush()
    spans = {s["name"]: s for s in telemetry.load_lines(str(file_telemetry)) if s["signal"] == "span"}
    webhook, process, request = spans["bc webhook"], spans["process message"], spans["BC GET customers"]
    assert webhook["context"]["trace_id"] == process["context"]["trace_id"] == request["context"]["trace_id"]
    assert process["parent_id"] == webhook["context"]["span_id"]
    assert request["parent_id"] == process["context"]["span_id"]
    ids = f"00-{webhook['context']['trace_id'][2:]}-{webhook['context']['span_id'][2:]}-"
    assert carried is not None and carried.startswith(ids)


def test_a_failed_span_names_the_error_type_never_its_message(file_telemetry: Path) -> None:
    with pytest.raises(ValueError), telemetry.span("coupling write"):
        raise ValueError("phone '+1 404 555 0111' is not valid")
    telemetry.flush()
    text = file_telemetry.read_text()
    assert "555 0111" not in text
    span = next(s for s in telemetry.load_lines(str(file_telemetry)) if s["signal"] == "span")
    assert span["status"] == {"status_code": "ERROR", "description": "ValueError"}
    assert span["attributes"]["error.type"] == "ValueError"


def test_metrics_are_exported_with_their_attributes(file_telemetry: Path) -> None:
    telemetry.count("bcsync.changes", mapping="CUSTOMER", outcome="modified")
    telemetry.record("bcsync.sync.latency", 0.25, mapping="CUSTOMER")
    telemetry.gauge("bcsync.queue.depth", 7)
    telemetry.observe("bcsync.api.budget_left", lambda: [(5_799, {"side": "bc"})])
    telemetry.flush()
    names = {
        metric["name"]: metric["data"]["data_points"]
        for line in telemetry.load_lines(str(file_telemetry)) if line["signal"] == "metrics"
        for resource in line["resource_metrics"] for scope in resource["scope_metrics"]
        for metric in scope["metrics"]
    }  # fmt: skip
    assert names["bcsync.changes"][0]["attributes"] == {"mapping": "CUSTOMER", "outcome": "modified"}
    assert names["bcsync.sync.latency"][0]["count"] == 1
    # Seconds, in buckets that tell a quick sync (0.25 s) from a slow one, not the SDK's millisecond ones.
    assert names["bcsync.sync.latency"][0]["explicit_bounds"][:4] == [0.1, 0.25, 0.5, 1.0]
    assert names["bcsync.sync.latency"][0]["bucket_counts"][:3] == [0, 1, 0]
    assert names["bcsync.queue.depth"][0]["value"] == 7
    assert names["bcsync.api.budget_left"][0]["value"] == 5_799


def test_a_costly_measurement_is_due_once_per_interval_and_never_when_off(file_telemetry: Path) -> None:
    assert telemetry.due("bcsync.couplings", 3600)
    assert not telemetry.due("bcsync.couplings", 3600)
    assert telemetry.due("something else", 3600)
    assert telemetry.due("bcsync.couplings", 0)
    telemetry.shutdown()
    assert not telemetry.due("bcsync.couplings", 0)  # off: nothing is measured


def test_azure_monitor_distro_is_configured_without_its_url_carrying_instrumentations() -> None:
    # The distro's httpx / requests / Azure SDK spans would carry URLs ($filter values, record keys).
    code = """
from shared import telemetry
from shared.settings import load_settings
telemetry.configure(load_settings())
assert telemetry.enabled() and telemetry._state.exporter == "azure_monitor"
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
assert not RequestsInstrumentor().is_instrumented_by_opentelemetry
with telemetry.span("bc webhook"):
    assert telemetry.traceparent() is not None
# The service's INFO lines, of `shared` and of the functions, reach the distro's log handler.
import logging
for name in ("shared", "sync_functions"):
    logger = logging.getLogger(name)
    assert logger.getEffectiveLevel() <= logging.INFO, name
    assert any(type(h).__name__ == "LoggingHandler" for h in logger.handlers), name
print("ok")
"""
    # A loopback ingestion endpoint that refuses connections: nothing leaves the machine.
    connection = (
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
    )
    result = _run(code, APPLICATIONINSIGHTS_CONNECTION_STRING=connection)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_the_processor_logs_no_record_values(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its log line is exported with the trace: a conflict's error quotes both values, so it is left out.
    from types import SimpleNamespace

    from shared.mapping.loader import load_mapping_set
    from shared.messages import to_json
    from shared.sync import processor
    from shared.sync.engine import SyncResult

    error = "field 'phoneNumber' changed on both sides: BC phoneNumber = '+1 404 555 0111'"
    result = SyncResult("conflict", "phoneNumber changed on both sides", "b", "d", error=error)
    runtime = SimpleNamespace(
        mappings=load_mapping_set("mappings/default.yaml"),
        engine=SimpleNamespace(sync_record=lambda m: result),
        multi_company=False,
    )
    monkeypatch.setattr(processor, "get_runtime", lambda: runtime)
    guid = "6d81597f-0f9f-e711-8122-000d3aa2331c"
    with caplog.at_level(logging.INFO, logger="shared.sync.processor"):
        processor.process_message(to_json(SyncMessage(mapping="CUSTOMER", side="bc", id=guid)).encode())
    assert f"CUSTOMER bc:{guid} -> conflict" in caplog.text
    assert "555 0111" not in caplog.text and "bcsync errors" in caplog.text
