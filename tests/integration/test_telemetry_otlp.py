"""The OTLP exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`): spans, metrics and logs reach a collector over
OTLP/HTTP (protobuf), here a loopback stand-in that records what it is sent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared import telemetry
from shared.settings import Settings
from tests.unit.test_telemetry import BASE

received: list[tuple[str, str, bytes]] = []


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_spans_metrics_and_logs_go_to_the_otlp_collector(collector: str) -> None:
    telemetry.configure(Settings.model_validate({**BASE, "OTEL_EXPORTER_OTLP_ENDPOINT": collector}))
    try:
        assert telemetry.enabled()
        with telemetry.span("bc webhook", {"bcsync.messages": 1}, kind="server"):
            # A logger of its own: the dev stack turns `shared.feeds` down to warnings in this process.
            logger = logging.getLogger("shared.telemetry_otlp_test")
            logger.setLevel(logging.INFO)
            logger.info("bc webhook: 202 accepted")
        telemetry.count("bcsync.changes", mapping="CUSTOMER", outcome="modified")
        telemetry.flush()
    finally:
        telemetry.shutdown()
    paths = {path: (kind, body) for path, kind, body in received}
    assert set(paths) >= {"/v1/traces", "/v1/metrics", "/v1/logs"}, sorted(paths)
    assert all(kind == "application/x-protobuf" for kind, _ in paths.values())
    assert b"bc webhook" in paths["/v1/traces"][1]
    assert b"bcsync.changes" in paths["/v1/metrics"][1]
    assert b"bc webhook: 202 accepted" in paths["/v1/logs"][1]
