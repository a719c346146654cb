"""Start and stop Azurite (the npm package pinned in package.json) for the local stack and tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.serve import check_port_free, free_port

REPO = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    pass


@dataclass
class Azurite:
    process: subprocess.Popen[bytes] | None
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Azurite runs in its own process group so that Ctrl-C in a terminal or a test timeout
        # never leaves it behind; stop the whole group.
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def connection_string(blob_port: int, queue_port: int, table_port: int, host: str = "127.0.0.1") -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/devstoreaccount1;"
        f"QueueEndpoint=http://{host}:{queue_port}/devstoreaccount1;"
        f"TableEndpoint=http://{host}:{table_port}/devstoreaccount1;"
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_azurite(
    blob_port: int | None = None,
    queue_port: int | None = None,
    table_port: int | None = None,
    *,
    timeout: float = 30.0,
) -> Azurite:
    """Start Azurite in memory on loopback and wait until queue and table ports accept connections."""
    binary = AZURITE_BIN if AZURITE_BIN.exists() else shutil.which("azurite")
    if not binary:
        raise AzuriteError("Azurite is not installed: run `npm ci` (or `make setup`) in the repository root")
    ports = [blob_port or free_port(), queue_port or free_port(), table_port or free_port()]
    for port in ports:
        check_port_free(port)
    cmd = [
        str(binary), "--silent", "--disableTelemetry", "--inMemoryPersistence", "--skipApiVersionCheck",
        "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", str(ports[0]), "--queuePort", str(ports[1]), "--tablePort", str(ports[2]),
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    handle = Azurite(process, *ports)
    deadline = time.monotonic() + timeout
    while not (_listening(ports[1]) and _listening(ports[2])):
        if process.poll() is not None:
            err = (process.stderr.read() if process.stderr else b"").decode(errors="replace")
            raise AzuriteError(f"Azurite exited with code {process.returncode}: {err.strip()[:500]}")
        if time.monotonic() > deadline:
            handle.stop()
            raise AzuriteError(f"Azurite did not listen on ports {ports} within {timeout:.0f} s")
        time.sleep(0.05)
    return handle
