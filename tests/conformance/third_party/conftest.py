"""Tests with third-party clients, run by `make conformance` only (their packages live in
.venv-conformance and .venv-airbyte, not in .venv). `make conformance` sets BCSYNC_CONFORMANCE=1; without
it (plain `make test`) this folder is not collected at all, so nothing here is ever skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.bc import BcSandbox
from devstack.bc import create_app as create_bc_app
from devstack.serve import ServerHandle, serve_in_thread
from tests.conformance.third_party.proxy import LoopbackProxy
from tests.support.tls import write_loopback_certificate

if os.environ.get("BCSYNC_CONFORMANCE") != "1":
    collect_ignore_glob = ["test_*.py"]

BC_HOST = "api.businesscentral.dynamics.com"
LOGIN_HOST = "login.microsoftonline.com"


@dataclass
class TlsBc:
    handle: ServerHandle
    sandbox: BcSandbox
    proxy: LoopbackProxy
    cert: Path


@pytest.fixture(scope="module")
def tls_bc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBc]:
    """The BC sandbox over TLS on loopback, presenting BC's API host name, reachable as that host only
    through a loopback CONNECT proxy; the client is pointed at both by the documented environment
    variables of its HTTP library (HTTPS_PROXY, SSL_CERT_FILE), never patched."""
    cert, key = write_loopback_certificate(tmp_path_factory.mktemp("tls"), hosts=[BC_HOST])
    app = create_bc_app()
    handle = serve_in_thread(app, ssl_certfile=str(cert), ssl_keyfile=str(key))
    port = int(handle.url.rsplit(":", 1)[1])
    with LoopbackProxy({BC_HOST: port}) as proxy, pytest.MonkeyPatch.context() as env:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
            env.delenv(name, raising=False)
        env.setenv("HTTPS_PROXY", proxy.url)
        env.setenv("SSL_CERT_FILE", str(cert))
        env.setenv("REQUESTS_CA_BUNDLE", str(cert))
        yield TlsBc(handle, app.state.sandbox, proxy, cert)
    handle.stop()
