"""Health against Azurite and the BC sandbox: storage reachable; unknown or unreachable BC
companies are `degraded` (200), not fatal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.bc import DEFAULT_COMPANY_ID, create_app
from devstack.serve import ServerHandle, free_port, serve_in_thread
from shared.ops.health import check_health
from shared.startup import BINDING_SETTINGS, reset_company_check

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
UNKNOWN = "00000000-0000-0000-0000-00000000abcd"


@pytest.fixture(scope="module")
def bc() -> Iterator[ServerHandle]:
    server = serve_in_thread(create_app(None), free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, storage_connection_string: str) -> Iterator[pytest.MonkeyPatch]:
    reset_company_check()
    values = {
        "AzureWebJobsStorage": storage_connection_string,
        "DATAVERSE_URL": "http://127.0.0.1:7081",
        "DATAVERSE_WEBHOOK_SECRET": "s" * 20,
        "BC_STATIC_TOKEN": "integration-user",
        "BC_WEBHOOK_CLIENT_STATE": "c" * 20,
        "MAPPINGS_FILE": str(REPO / "mappings" / "default.yaml"),
        **BINDING_SETTINGS,
        "SYNC_QUEUE_NAME": "health-probe",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("AUTH_JWKS_URL", "DATAVERSE_STATIC_TOKEN", "AzureWebJobsStorage__accountName"):
        monkeypatch.delenv(key, raising=False)
    from shared.store.storage import storage_from_connection_string

    storage_from_connection_string(storage_connection_string, "health-probe").ensure()
    yield monkeypatch
    reset_company_check()


def _bc_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v2.0/contoso/production/api/v2.0"


def test_healthy_when_storage_answers_and_the_companies_exist(
    env: pytest.MonkeyPatch, bc: ServerHandle
) -> None:
    env.setenv("BC_API_URL", f"{bc.url}/v2.0/contoso/production/api/v2.0")
    env.setenv("BC_COMPANY_IDS", str(DEFAULT_COMPANY_ID))
    status, report = check_health()
    assert (status, report["status"], report["storage"], report["bc_companies"]) == (
        200, "healthy", "reachable", "ok")  # fmt: skip


def test_an_unknown_company_is_degraded_not_fatal(env: pytest.MonkeyPatch, bc: ServerHandle) -> None:
    env.setenv("BC_API_URL", f"{bc.url}/v2.0/contoso/production/api/v2.0")
    env.setenv("BC_COMPANY_IDS", f"{DEFAULT_COMPANY_ID},{UNKNOWN}")
    status, report = check_health()
    assert status == 200 and report["status"] == "degraded"
    assert UNKNOWN in str(report["bc_companies"]) and str(DEFAULT_COMPANY_ID) not in str(
        report["bc_companies"]
    )


def test_unreachable_bc_is_degraded_not_fatal(env: pytest.MonkeyPatch) -> None:
    env.setenv("BC_API_URL", _bc_url(free_port()))
    env.setenv("BC_COMPANY_IDS", UNKNOWN)
    status, report = check_health()
    assert status == 200 and report["status"] == "degraded"
    assert str(report["bc_companies"]).startswith("unreachable")
