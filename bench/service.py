"""What the single-process benchmarks share: the sandboxes in a child process (so the service's
memory and CPU are measured alone) and the service's settings that point at them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from devstack.serve import free_port
from devstack.stack import BC_ENVIRONMENT, BC_TENANT, INTEGRATION_TOKEN, REPO


@dataclass(frozen=True)
class SandboxPorts:
    bc: int
    dv: int


@contextmanager
def sandboxes(*flags: str) -> Iterator[SandboxPorts]:
    """`python -m bench.sandboxes` on free ports with `flags`; stopped (stdin closed) on exit."""
    ports = SandboxPorts(free_port(), free_port())
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.sandboxes", "--bc-port", str(ports.bc), "--dv-port", str(ports.dv),
         *flags],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("sandboxes did not start")
        yield ports
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=60)


def service_settings(storage: str, ports: SandboxPorts, **overrides: str) -> dict[str, str]:
    """The app settings of a service that talks to `ports` as the integration user."""
    from devstack.bc import DEFAULT_COMPANY_ID

    return {
        "AzureWebJobsStorage": storage,
        "DATAVERSE_URL": f"http://127.0.0.1:{ports.dv}", "DATAVERSE_STATIC_TOKEN": INTEGRATION_TOKEN,
        "DATAVERSE_WEBHOOK_SECRET": "bench-secret-0123456789",
        "BC_API_URL": f"http://127.0.0.1:{ports.bc}/v2.0/{BC_TENANT}/{BC_ENVIRONMENT}/api/v2.0",
        "BC_COMPANY_IDS": str(DEFAULT_COMPANY_ID), "BC_STATIC_TOKEN": INTEGRATION_TOKEN,
        "BC_WEBHOOK_CLIENT_STATE": "bench-client-state-0123456789",
        "MAPPINGS_FILE": str(REPO / "mappings" / "default.yaml"),
        **overrides,
    }  # fmt: skip
