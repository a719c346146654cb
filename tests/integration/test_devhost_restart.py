"""A dev host killed with SIGKILL serves again at once on the same port (issue 13, point 8).

Killing a server while a client holds a connection leaves that connection in TIME_WAIT /
FIN_WAIT_2 on the server's port; a listening socket bound without SO_REUSEADDR cannot take the
port until the kernel lets go (about 60 s), so every webhook failed for a minute after a crash.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from devstack.serve import PortInUseError, bind_listening_socket, free_port
from devstack.stack import REPO

pytestmark = pytest.mark.integration

NEVER = "0 0 0 1 1 *"


def _host_env(storage_connection_string: str, port: int) -> dict[str, str]:
    closed = free_port()  # nothing listens there: the host must start without BC and Dataverse
    return {
        **os.environ,
        "AzureWebJobsStorage": storage_connection_string,
        "SYNC_QUEUE_NAME": f"restart-{port}",
        "DATAVERSE_URL": f"http://127.0.0.1:{closed}",
        "DATAVERSE_STATIC_TOKEN": "integration-user",
        "DATAVERSE_WEBHOOK_SECRET": "restart-test-secret-0123456789",
        "BC_API_URL": f"http://127.0.0.1:{closed}/v2.0/contoso/production/api/v2.0",
        "BC_COMPANY_IDS": "5c7f2c4e-8d1a-4b6e-9f3a-2d4c6e8a0b1c",
        "BC_STATIC_TOKEN": "integration-user",
        "BC_WEBHOOK_CLIENT_STATE": "restart-test-client-state-0123",
        "SERVICE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MAPPINGS_FILE": str(REPO / "mappings" / "default.yaml"),
        "DELTA_POLL_SCHEDULE": NEVER,
        "FULL_RESYNC_SCHEDULE": NEVER,
        "SUBSCRIPTION_UPKEEP_SCHEDULE": NEVER,
        "STATISTICS_SCHEDULE": NEVER,
    }


def _start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", "host", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_serving(process: subprocess.Popen[bytes], port: int, timeout: float) -> int:
    """The status of the host's first answer on `port`; fails if it exits or is silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the dev host exited with code {process.returncode} instead of serving on {port}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"the dev host did not serve on port {port} within {timeout:.0f} s")


def _read_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(4096)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()  # our own child, by its handle
        process.wait(timeout=10)


def test_dev_host_restarts_on_its_port_at_once_after_sigkill(storage_connection_string: str) -> None:
    port = free_port()
    env = _host_env(storage_connection_string, port)
    first = _start(env, port)
    try:
        _wait_serving(first, port, timeout=60)
        # A client keeps a connection open (as BC's or Dataverse's webhook sender would)...
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        _read_response(client)  # all of it: closing with unread data would reset, not linger
        # ...while the host dies without any clean-up.
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        client.close()  # the server's side of it now waits in TIME_WAIT on `port`
    finally:
        _stop(first)
    second = _start(env, port)
    try:
        # It answers at once (health's verdict on the absent BC and Dataverse is not the point).
        assert 200 <= _wait_serving(second, port, timeout=30) < 600
    finally:
        _stop(second)


def test_a_port_someone_listens_on_is_still_refused() -> None:
    """SO_REUSEADDR lets a restart take a port with lingering connections, not a live listener's."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(PortInUseError):
            bind_listening_socket(listener.getsockname()[1])
