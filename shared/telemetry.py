"""OpenTelemetry traces, metrics and logs: off by default, and then nothing of OpenTelemetry is imported.

`configure(settings)` (called when the runtime is built) picks one exporter:

- `APPLICATIONINSIGHTS_CONNECTION_STRING` set: the Azure Monitor distro (`azure-monitor-opentelemetry`),
  with its automatic instrumentations off: HTTP and Azure SDK spans would carry URLs, and ours carry
  `$filter` values and record keys. The service makes its own spans instead (below).
- `OTEL_EXPORTER_OTLP_ENDPOINT` set: OTLP over HTTP/protobuf to that collector.
- `TELEMETRY_FILE` set: JSON lines (one span, log record or metrics snapshot a line) in that file, which
  the local stack uses (`make run` prints where it is).

One trace per change: the webhook or poll that saw it (`bc webhook`, `dataverse webhook`, `delta poll`)
is the root; sending the queue message is its child (`send sync-requests`, a producer span), whose W3C
`traceparent` the message carries (`SyncMessage.trace`), so the processor's `process message` span is
the send's child in the same trace; inside it each API request (`BC GET customers`: method, entity set,
status, retry count) and the coupling write (`coupling write`).

What goes into telemetry is chosen here, never a whole URL, body or exception message: attributes are
names, ids, counts and statuses. A record's values, the webhook secrets and bearer tokens never appear
(tests/e2e/test_telemetry_e2e.py scans an end-to-end run's export for them).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

AttributeValue = str | int | float | bool
SpanKind = Literal["internal", "server", "producer", "consumer", "client"]

# Every metric the service records: name -> (instrument, unit, description).
METRICS: dict[str, tuple[str, str, str]] = {
    "bcsync.changes": ("counter", "{change}", "changes synchronized, by mapping and outcome"),
    "bcsync.sync.latency": ("histogram", "s", "time from the notification (or poll) to the write"),
    "bcsync.api.requests": ("counter", "{request}", "API requests sent (each attempt), by side"),
    "bcsync.api.throttled": ("counter", "{request}", "API requests answered 429, by side"),
    "bcsync.api.budget_left": ("gauge", "{request}", "requests left in the client's 5-minute budget"),
    "bcsync.queue.depth": ("gauge", "{message}", "messages waiting in the sync queue"),
    "bcsync.queue.oldest_age": ("gauge", "s", "age of the oldest message in the sync queue"),
    "bcsync.poison.count": ("gauge", "{message}", "messages in the poison queue"),
    "bcsync.couplings": ("gauge", "{record}", "coupled records, by mapping"),
}

# Buckets of the latency histogram, in seconds: a change takes well under a second when all is well
# and minutes when the request budget paces a burst or a record waits for another. (The SDK's default
# buckets, 0-10,000, are for milliseconds: every change would land in its first two.)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# The distro's automatic instrumentations, all off (see the module docstring).
_DISTRO_INSTRUMENTATIONS = (
    "azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3", "httpx",
)  # fmt: skip


class _NoSpan:
    """What `span` gives when telemetry is off: a context manager that does nothing, at no cost."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: AttributeValue | None) -> None:
        return None


NO_SPAN = _NoSpan()


class _Span:
    """A live span, current while the `with` block runs; an exception marks it failed by its type only
    (an exception's message can quote a record's values or a URL)."""

    def __init__(self, telemetry: _Telemetry, name: str, attributes: Mapping[str, Any], parent: str | None,
                 kind: SpanKind) -> None:  # fmt: skip
        self._telemetry = telemetry
        self._name = name
        self._attributes = {k: v for k, v in attributes.items() if v is not None}
        self._parent = parent
        self._kind = kind
        self._cm: Any = None
        self._span: Any = None

    def __enter__(self) -> _Span:
        from opentelemetry import trace

        context = None
        if self._parent:
            context = self._telemetry.propagator.extract({"traceparent": self._parent})
        self._cm = self._telemetry.tracer.start_as_current_span(
            self._name,
            context=context,
            kind=getattr(trace.SpanKind, self._kind.upper()),
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._span = self._cm.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("error.type", exc_type.__name__)
            self._span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
        self._cm.__exit__(exc_type, exc, tb)

    def set(self, key: str, value: AttributeValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)


@dataclass
class _Telemetry:
    exporter: str  # "azure_monitor", "otlp" or "file"
    tracer: Any
    meter: Any
    propagator: Any
    instruments: dict[str, Any] = field(default_factory=dict)
    shutdowns: list[Callable[[], Any]] = field(default_factory=list)
    flushes: list[Callable[[], Any]] = field(default_factory=list)
    log_handler: logging.Handler | None = None
    observed: dict[str, list[Callable[[], Iterable[tuple[float, dict[str, str]]]]]] = field(
        default_factory=dict
    )
    measured: dict[str, float] = field(default_factory=dict)  # costly measurements: when last taken


_state: _Telemetry | None = None
_lock = threading.Lock()


def enabled() -> bool:
    return _state is not None


def exporter_of(settings: Settings) -> str | None:
    """Which exporter the settings choose, or None (telemetry off)."""
    if settings.applicationinsights_connection_string:
        return "azure_monitor"
    if settings.otlp_endpoint:
        return "otlp"
    if settings.telemetry_file:
        return "file"
    return None


def configure(settings: Settings) -> None:
    """Turn telemetry on as the settings say (once per process until `shutdown`); off does nothing."""
    global _state
    kind = exporter_of(settings)
    if kind is None:
        return
    with _lock:
        if _state is not None:
            return
        try:
            _state = _build(kind, settings)
        except Exception:
            # Telemetry must never stop the sync: say so once and run without it.
            log.exception("OpenTelemetry could not be configured (%s); running without it", kind)
            return
    log.info("OpenTelemetry on: %s exporter", kind)


def shutdown() -> None:
    """Flush and stop what `configure` started (the dev stack and tests, between runs)."""
    global _state
    with _lock:
        state, _state = _state, None
    if state is None:
        return
    if state.log_handler is not None:
        logging.getLogger().removeHandler(state.log_handler)
    for stop in state.shutdowns:
        try:
            stop()
        except Exception:
            log.warning("an OpenTelemetry exporter did not shut down cleanly", exc_info=True)


def flush() -> None:
    """Export what is buffered now (spans, logs, a metrics snapshot)."""
    state = _state
    if state is not None:
        for each in state.flushes:
            each()


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    parent: str | None = None,
    kind: SpanKind = "internal",
) -> _Span | _NoSpan:
    """A span current for a `with` block, child of the current one or of the `traceparent` `parent`."""
    state = _state
    if state is None:
        return NO_SPAN
    return _Span(state, name, attributes or {}, parent, kind)


def current_span() -> _SpanRef:
    """The current span, to add attributes to it from deeper code (`current_span().set(...)`)."""
    return _SpanRef()


class _SpanRef:
    def set(self, key: str, value: AttributeValue | None) -> None:
        if _state is None or value is None:
            return
        from opentelemetry import trace

        trace.get_current_span().set_attribute(key, value)


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to carry inside a queue message; None when off."""
    if _state is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# ------------------------------------------------------------------------------------------ metrics
def count(name: str, value: int = 1, **attributes: str) -> None:
    state = _state
    if state is not None:
        state.instruments[name].add(value, attributes)


def record(name: str, value: float, **attributes: str) -> None:
    state = _state
    if state is not None:
        state.instruments[name].record(value, attributes)


def gauge(name: str, value: float, **attributes: str) -> None:
    state = _state
    if state is not None:
        state.instruments[name].set(value, attributes)


def observe(name: str, callback: Callable[[], Iterable[tuple[float, dict[str, str]]]]) -> None:
    """Read `callback` at each metrics export for gauge `name` (values that live in memory, e.g. the
    request budget); no cost when off."""
    state = _state
    if state is not None:
        state.observed.setdefault(name, []).append(callback)


def due(key: str, every: float) -> bool:
    """Whether a costly measurement `key` is due: True at most once per `every` seconds while telemetry
    is on in this process (then it counts as taken now); False when off."""
    state = _state
    if state is None:
        return False
    now = time.monotonic()
    with _lock:
        last = state.measured.get(key)
        if last is not None and now - last < every:
            return False
        state.measured[key] = now
    return True


def seconds_since(when: dt.datetime) -> float:
    return max(0.0, (dt.datetime.now(dt.UTC) - when).total_seconds())


# ----------------------------------------------------------------------------------------- building
def _build(kind: str, settings: Settings) -> _Telemetry:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    if kind == "azure_monitor":
        state = _azure_monitor(settings, propagator)
    else:
        state = _own_providers(kind, settings, propagator)
    _instruments(state)
    return state


def _azure_monitor(settings: Settings, propagator: Any) -> _Telemetry:
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics, trace

    options: dict[str, Any] = {
        "connection_string": settings.applicationinsights_connection_string,
        "instrumentation_options": {name: {"enabled": False} for name in _DISTRO_INSTRUMENTATIONS},
        "logger_name": "shared",
    }
    if "aad" in (settings.applicationinsights_authentication_string or "").lower():
        # Local authentication is off on the Application Insights resource (infra/): the app's
        # managed identity sends the telemetry.
        from azure.identity import ManagedIdentityCredential

        options["credential"] = ManagedIdentityCredential()
    configure_azure_monitor(**options)
    state = _Telemetry("azure_monitor", trace.get_tracer("bcsync"), metrics.get_meter("bcsync"), propagator)
    # The distro exports one logger's records (`shared`'s); the functions' own go the same way.
    functions = logging.getLogger("sync_functions")
    for handler in logging.getLogger("shared").handlers:
        if type(handler).__name__ == "LoggingHandler":
            functions.addHandler(handler)
            state.shutdowns.append(functools.partial(functions.removeHandler, handler))
    _service_log_levels(state)
    return state


def _service_log_levels(state: _Telemetry) -> None:
    """The service's INFO lines (what each change did) are what its log export is for: let them through
    where the process's logging would stop them at WARNING (Python's default)."""
    for name in ("shared", "sync_functions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
            state.shutdowns.append(functools.partial(logger.setLevel, logging.NOTSET))


def _own_providers(kind: str, settings: Settings, propagator: Any) -> _Telemetry:
    """Providers of our own (not the process-wide globals), so the dev stack and tests can start and
    stop telemetry more than once in a process."""
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "bc-dataverse-sync"})
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = str(settings.otlp_endpoint).rstrip("/")
        span_processor: Any = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/v1/metrics"))
        log_processor: Any = BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{base}/v1/logs"))
    else:
        from shared import telemetry_file

        sink = telemetry_file.JsonLinesFile(str(settings.telemetry_file))
        # Batched, off the request path like the other exporters (`flush()` writes what is pending).
        span_processor = BatchSpanProcessor(telemetry_file.SpanFileExporter(sink), schedule_delay_millis=1000)
        reader = PeriodicExportingMetricReader(telemetry_file.MetricFileExporter(sink), 60_000)
        log_processor = BatchLogRecordProcessor(
            telemetry_file.LogFileExporter(sink), schedule_delay_millis=1000
        )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(span_processor)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(log_processor)
    with warnings.catch_warnings():
        # Deprecated in favour of opentelemetry-instrumentation-logging's (a beta package): the same API.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
    handler.addFilter(lambda record: record.name.startswith(("shared", "sync_functions")))
    state = _Telemetry(
        kind, tracer_provider.get_tracer("bcsync"), meter_provider.get_meter("bcsync"), propagator
    )
    state.log_handler = handler
    logging.getLogger().addHandler(handler)
    _service_log_levels(state)
    state.flushes += [tracer_provider.force_flush, logger_provider.force_flush, meter_provider.force_flush]
    state.shutdowns += [tracer_provider.shutdown, logger_provider.shutdown, meter_provider.shutdown]
    return state


def _instruments(state: _Telemetry) -> None:
    for name, (instrument, unit, description) in METRICS.items():
        if instrument == "counter":
            state.instruments[name] = state.meter.create_counter(name, unit=unit, description=description)
        elif instrument == "histogram":
            state.instruments[name] = state.meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=LATENCY_BUCKETS
            )
        elif name == "bcsync.api.budget_left":
            state.meter.create_observable_gauge(
                name, callbacks=[_observer(state, name)], unit=unit, description=description
            )
        else:
            state.instruments[name] = state.meter.create_gauge(name, unit=unit, description=description)


def _observer(state: _Telemetry, name: str) -> Callable[[Any], Iterable[Any]]:
    def observe_all(options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        for callback in list(state.observed.get(name, [])):
            try:
                yield from (Observation(value, attributes) for value, attributes in callback())
            except Exception:
                log.warning("metric %s could not be read", name, exc_info=True)

    return observe_all


def describe(settings: Settings) -> str:
    """Where telemetry goes, for an operator (`make run` prints it)."""
    kind = exporter_of(settings)
    if kind == "file":
        return f"telemetry (traces, metrics, logs) as JSON lines in {settings.telemetry_file}"
    if kind == "otlp":
        return f"telemetry to the OTLP collector at {settings.otlp_endpoint}"
    if kind == "azure_monitor":
        return "telemetry to Application Insights"
    return "telemetry off"


def load_lines(path: str) -> list[dict[str, Any]]:
    """The JSON lines a `TELEMETRY_FILE` holds (for tests and `python -m devstack traces`)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
