"""`GET /api/health` answers within its deadline whatever storage does, and never says healthy while
the service cannot work (issue 13, point 4)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.ops.health import check_health
from shared.startup import BINDING_SETTINGS, reset_company_check

ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO = Path(__file__).resolve().parents[2]


def connection_string(port: int) -> str:
    base = f"http://127.0.0.1:{port}/devstoreaccount1"
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={base};TableEndpoint={base};")  # fmt: skip


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def frozen_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a frozen Azurite."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    reset_company_check()
    values = {
        "DATAVERSE_URL": "http://127.0.0.1:7081",
        "DATAVERSE_WEBHOOK_SECRET": "s" * 20,
        "BC_API_URL": f"http://127.0.0.1:{closed_port()}/v2.0/contoso/production/api/v2.0",
        "BC_STATIC_TOKEN": "integration-user",
        "BC_COMPANY_IDS": "f64eba74-dacd-4854-a584-1834f68cfc3a",
        "BC_WEBHOOK_CLIENT_STATE": "c" * 20,
        "MAPPINGS_FILE": str(REPO / "mappings" / "default.yaml"),
        **BINDING_SETTINGS,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("AUTH_JWKS_URL", "DATAVERSE_STATIC_TOKEN", "AzureWebJobsStorage__accountName"):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    reset_company_check()


def timed_health() -> tuple[float, int, dict[str, object]]:
    started = time.monotonic()
    status, report = check_health()
    return time.monotonic() - started, status, report


def test_unreachable_storage_is_unhealthy_within_the_deadline(env: pytest.MonkeyPatch) -> None:
    env.setenv("AzureWebJobsStorage", connection_string(closed_port()))
    seconds, status, report = timed_health()
    assert seconds < 5.5
    assert status == 503 and report["status"] == "unhealthy"
    assert str(report["storage"]).startswith("unreachable")
    assert report["configuration"] == "ok" and report["mapping"] == "ok"


def test_frozen_storage_is_unhealthy_within_the_deadline(env: pytest.MonkeyPatch, frozen_port: int) -> None:
    env.setenv("AzureWebJobsStorage", connection_string(frozen_port))
    seconds, status, report = timed_health()
    assert seconds < 5.5
    assert status == 503 and report["storage"] == "unreachable: no answer within 4 s"


def test_a_broken_mapping_file_is_reported_and_unhealthy(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nmappings: [\n")
    env.setenv("MAPPINGS_FILE", str(broken))
    env.setenv("AzureWebJobsStorage", connection_string(closed_port()))
    _, status, report = timed_health()
    assert status == 503 and report["status"] == "unhealthy"
    assert report["mapping"] == {
        "file": str(broken),
        "problems": [f"{broken}:3: not valid YAML: expected the node content, but found '<stream end>'"],
    }


def test_bad_settings_are_reported_and_unhealthy(env: pytest.MonkeyPatch) -> None:
    env.setenv("AzureWebJobsStorage", connection_string(closed_port()))
    env.setenv("DELTA_POLL_SCHEDULE", "every two minutes")
    _, status, report = timed_health()
    assert status == 503
    problems = report["configuration"]["problems"]  # type: ignore[index]
    assert "6 fields" in problems["DELTA_POLL_SCHEDULE"]
    assert report["bc_companies"] == "not checked (settings invalid)"
