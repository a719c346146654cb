"""What the single-process benchmarks share: the sandboxes in a child process (so the service's
memory and CPU are measured alone), the service's settings that point at them, and a count of the
service's storage requests."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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


class StorageRequests:
    """Azure Storage requests this process sends, by `"METHOD kind"` (a table, `queue messages`,
    `$batch`): what the service's process and Azurite spend per change. Counted at the SDK's HTTP
    transport, the one place every storage client's requests pass."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __enter__(self) -> StorageRequests:
        from azure.core.pipeline.transport import RequestsTransport

        real = RequestsTransport.send
        counts, lock = self.counts, self._lock

        def send(transport: Any, request: Any, **kwargs: Any) -> Any:
            path = urlsplit(request.url).path.strip("/").split("/")
            kind = "queue messages" if "messages" in path else (path[1] if len(path) > 1 else path[0])
            with lock:
                counts[f"{request.method} {kind.split('(')[0]}"] += 1
            return real(transport, request, **kwargs)

        self._restore = lambda: setattr(RequestsTransport, "send", real)
        RequestsTransport.send = send  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    @property
    def total(self) -> int:
        return sum(self.counts.values())
