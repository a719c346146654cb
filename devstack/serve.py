"""Run an ASGI app on a loopback port in a background thread (tests, benchmarks, `devstack up`)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn


class PortInUseError(RuntimeError):
    """Something listens on `port`; `flag` is the command-line option that moves it, when known."""

    def __init__(self, port: int, host: str = "127.0.0.1", flag: str = "") -> None:
        self.port, self.host, self.flag = port, host, flag
        move = f"pick another port with {flag} PORT" if flag else "pick another port"
        super().__init__(f"port {port} on {host} is already in use; stop what is using it or {move}")


# Free ports come from below Linux's ephemeral range (32768-60999 by default). A port the kernel
# picks with bind(0) lies in that range and is free only until some process's outgoing connection
# takes it, which happened ("Address already in use") when test processes ran side by side. Each
# pytest-xdist worker draws from its own slice, so two workers never hand out the same port.
_PORTS = (20000, 32000)
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def _port_slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (_PORTS[1] - _PORTS[0]) // max(workers, 1)
    low = _PORTS[0] + (index % max(workers, 1)) * size
    return low, low + size


def free_port() -> int:
    """A loopback port nothing listens on, not handed out before by this process."""
    low, high = _port_slice()
    with _ports_lock:
        if len(_handed_out) > (high - low) // 2:
            _handed_out.clear()  # long-lived processes: the earliest ports are long closed
        for _ in range(500):
            port = random.randrange(low, high)
            if port in _handed_out:
                continue
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port between {low} and {high}: stop what listens there")


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    bind_listening_socket(port, host).close()


def bind_listening_socket(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEADDR, or `PortInUseError`.

    Without SO_REUSEADDR a process restarted after a crash cannot bind while the dead one's
    connections linger in TIME_WAIT (about 60 s), so webhooks would fail for a minute; with it,
    only a socket that really listens on the port keeps it busy (Linux refuses a second listener).
    """
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and with proto 0 every small answer waited ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(port, host) from exc
    return sock


@dataclass
class ServerHandle:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(
    app: Any,
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> ServerHandle:
    """Start `app` with uvicorn on `host:port` (a free port when None) and wait until it listens.

    With `ssl_certfile`/`ssl_keyfile` it serves HTTPS (for clients that refuse plain HTTP, such as
    Microsoft's Dataverse SDK); the URL then starts with `https://`.
    """
    port = port or free_port()
    # Bound here and handed to uvicorn, so the socket has SO_REUSEADDR and nothing can take the
    # port between the check and the bind.
    sock = bind_listening_socket(port, host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_keep_alive=30,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on port {port} failed to start")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start within 15 s")
        time.sleep(0.01)
    scheme = "https" if ssl_certfile else "http"
    return ServerHandle(url=f"{scheme}://{host}:{port}", port=port, server=server, thread=thread)
