"""The `TELEMETRY_FILE` exporters: spans, log records and metrics snapshots as JSON lines in one file,
for the local stack (`make run`, `python -m devstack traces`) and the end-to-end telemetry test.
Imported only when that exporter is chosen (it needs the OpenTelemetry SDK)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import Aggregation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesFile:
    """Appends one JSON object a line; several exporters and threads share it."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, signal: str, items: Sequence[str]) -> None:
        lines = "".join(json.dumps({"signal": signal, **json.loads(item)}) + "\n" for item in items)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)


class SpanFileExporter(SpanExporter):
    def __init__(self, sink: JsonLinesFile) -> None:
        self.sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.sink.write("span", [s.to_json(indent=None) for s in spans])
        return SpanExportResult.SUCCESS


class LogFileExporter(LogRecordExporter):
    def __init__(self, sink: JsonLinesFile) -> None:
        self.sink = sink

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        self.sink.write("log", [record.to_json(indent=None) for record in batch])
        return LogRecordExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        return None


class MetricFileExporter(MetricExporter):
    def __init__(self, sink: JsonLinesFile) -> None:
        super().__init__(
            preferred_temporality=dict[type, AggregationTemporality](),
            preferred_aggregation=dict[type, Aggregation](),
        )
        self.sink = sink

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.sink.write("metrics", [metrics_data.to_json(indent=None)])
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None
