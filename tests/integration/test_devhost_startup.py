"""`python -m devstack host` refuses a broken configuration: it exits non-zero at once with the one
start-up message (what `function_app.py` raises at import), and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.azurite import ACCOUNT_KEY
from devstack.serve import free_port
from shared.startup import BINDING_SETTINGS

REPO = Path(__file__).resolve().parents[2]
VALID = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "DATAVERSE_URL": "http://127.0.0.1:7081",
    "DATAVERSE_WEBHOOK_SECRET": "s" * 20,
    "BC_API_URL": "http://127.0.0.1:7082/v2.0/contoso/production/api/v2.0",
    "BC_COMPANY_IDS": "f64eba74-dacd-4854-a584-1834f68cfc3a",
    "BC_WEBHOOK_CLIENT_STATE": "c" * 20,
    "MAPPINGS_FILE": str(REPO / "mappings" / "default.yaml"),
    **BINDING_SETTINGS,
}


def run_host(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only PATH and HOME from the caller: the test's own settings must not leak in.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **settings}
    return subprocess.run(
        [sys.executable, "-m", "devstack", "host", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_dev_host_exits_with_the_message_for_a_broken_mapping_file(tmp_path: Path) -> None:
    broken = tmp_path / "mappings.yaml"
    broken.write_bytes(b"version: 1\nmappings:\n  - \x00\x01\x02 garbage\n")
    result = run_host({**VALID, "MAPPINGS_FILE": str(broken)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{broken}:3: not valid YAML: control character U+0000" in result.stderr
    assert "cannot start: 1 problem(s)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_dev_host_exits_with_the_message_for_bad_settings() -> None:
    result = run_host({**VALID, "DELTA_POLL_SCHEDULE": "every two minutes", "BC_COMPANY_IDS": "CRONUS"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "DELTA_POLL_SCHEDULE: NCRONTAB needs 6 fields" in result.stderr
    assert "BC_COMPANY_IDS: not a company id (GUID): 'CRONUS'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("storage", ["garbage", "AccountName=x;AccountKey=abc"])
def test_dev_host_names_a_garbage_storage_connection_string(storage: str) -> None:
    result = run_host({**VALID, "AzureWebJobsStorage": storage})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "AzureWebJobsStorage: " in result.stderr and "Access keys page" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_dev_host_stops_within_seconds_naming_unreachable_storage() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}/devstoreaccount1"
    storage = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
               f"QueueEndpoint={base};TableEndpoint={base};")  # fmt: skip
    started = time.monotonic()
    result = run_host({**VALID, "AzureWebJobsStorage": storage})
    assert time.monotonic() - started < 25
    assert result.returncode == 2, result.stdout + result.stderr
    assert "AzureWebJobsStorage: storage" in result.stderr and "Start Azurite" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
