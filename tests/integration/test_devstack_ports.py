"""`devstack up` right after stopping it serves again on the same ports (issue 12, point 7): every
listener of the stack (both sandboxes, Azurite, the dev host, see test_devhost_restart) takes a
port whose previous connections still linger in TIME_WAIT, and a port really in use names the
flag that moves it."""

from __future__ import annotations

import errno
import importlib
import socket
from typing import Any

import httpx
import pytest

from devstack.__main__ import main
from devstack.azurite import start_azurite
from devstack.serve import bind_listening_socket, free_port, serve_in_thread

pytestmark = pytest.mark.integration


def _sandbox_app(name: str) -> Any:
    return importlib.import_module(f"devstack.{name}").create_app()


def _linger(port: int, path: str) -> None:
    """One request whose connection the server closes first (the client reads to the end before
    closing): the server's side of it waits in TIME_WAIT on `port` after the server stops."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := client.recv(65536):  # b"" once the server has closed its side
            received += chunk
    assert received.startswith(b"HTTP/1.1 "), received[:100]


def _bind_without_reuse_fails(port: int) -> bool:
    with socket.socket() as plain:
        try:
            plain.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


@pytest.mark.parametrize("sandbox", ["dataverse", "bc"])
def test_a_sandbox_serves_again_on_its_port_at_once(sandbox: str) -> None:
    port = free_port()
    first = serve_in_thread(_sandbox_app(sandbox), port)
    _linger(port, "/_sandbox/stats")
    first.stop()
    # the previous connection lingers: a listener without SO_REUSEADDR could not take the port now
    assert _bind_without_reuse_fails(port)
    second = serve_in_thread(_sandbox_app(sandbox), port)
    try:
        assert httpx.get(f"{second.url}/_sandbox/stats", timeout=10).status_code == 200
    finally:
        second.stop()


def test_azurite_serves_again_on_its_ports_at_once() -> None:
    ports = (free_port(), free_port(), free_port())
    first = start_azurite(*ports)
    _linger(ports[1], "/devstoreaccount1?comp=list")
    first.stop()
    second = start_azurite(*ports)
    try:
        with socket.create_connection(("127.0.0.1", ports[1]), timeout=5):
            pass
    finally:
        second.stop()


FLAGS = ("--port", "--dataverse-port", "--bc-port", "--blob-port", "--queue-port", "--table-port")


@pytest.mark.parametrize("flag", FLAGS)
def test_a_port_in_use_names_the_flag_that_moves_it(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    busy = bind_listening_socket(free_port())
    busy.listen()
    port = busy.getsockname()[1]
    # every other port free (the defaults may be taken by someone else's stack on this machine)
    argv = ["up", "--no-demo"] + [x for f in FLAGS for x in (f, str(port if f == flag else free_port()))]
    try:
        code = main(argv)
    finally:
        busy.close()
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} " in err and f"with {flag} PORT" in err, err
