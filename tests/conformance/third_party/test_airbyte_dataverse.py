"""Airbyte's Dataverse source (`airbyte-source-microsoft-dataverse`, PyPI) against the Dataverse sandbox.

It runs as Airbyte runs a connector: its CLI (`spec`, `check`, `discover`, `read`) with JSON config,
catalog and state files, from its own venv (.venv-airbyte: it pins airbyte-cdk 0.80, pydantic 1).
Its Dataverse URL is its `url` setting (the sandbox on loopback, plain HTTP: see `stack`); its token
endpoint is fixed to `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`, so that
host is reached through a loopback CONNECT proxy (`HTTPS_PROXY`, requests' documented setting;
`NO_PROXY` keeps the loopback Dataverse URL direct) and answered by a token stub on loopback. Nothing
is patched and no request leaves the machine (the proxy refuses every other host).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.dataverse import DataverseSandbox
from devstack.dataverse import create_app as create_dataverse_app
from devstack.serve import ServerHandle, serve_in_thread
from tests.conformance.third_party.conftest import LOGIN_HOST
from tests.conformance.third_party.proxy import LoopbackProxy
from tests.support.tls import write_loopback_certificate

pytestmark = pytest.mark.integration
Stack = tuple["Airbyte", DataverseSandbox, list[dict[str, str]]]
TENANT = "00000000-0000-0000-0000-0000000000aa"


def _token_stub(requests_seen: list[dict[str, str]]) -> Starlette:
    """Entra ID's v2.0 token endpoint for the client-credentials grant: the sandbox's token."""

    async def token(request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))  # form-urlencoded, as OAuth 2.0 sends it
        requests_seen.append({k: str(v) for k, v in form.items()} | {"path": request.url.path})
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599, "access_token": "integration-user"})

    return Starlette(routes=[Route(f"/{TENANT}/oauth2/v2.0/token", token, methods=["POST"])])


class Airbyte:
    def __init__(self, executable: str, workdir: Path, env: dict[str, str], config: dict[str, Any]) -> None:
        self.executable, self.workdir, self.env = executable, workdir, env
        self.config_path = workdir / "config.json"
        self.config_path.write_text(json.dumps(config))

    def run(self, *args: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [self.executable, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        (self.workdir / f"{args[0]}.out").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, (done.stderr[-3000:], messages[-5:])
        errors = [m for m in messages if m["type"] == "TRACE" and m["trace"].get("type") == "ERROR"]
        assert not errors, errors
        return messages

    def write(self, name: str, content: Any) -> str:
        path = self.workdir / name
        path.write_text(json.dumps(content))
        return str(path)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Airbyte, DataverseSandbox, list[dict[str, str]]]]:
    executable = os.environ.get("AIRBYTE_SOURCE_DATAVERSE", "")
    assert executable and Path(executable).exists(), (
        "Set AIRBYTE_SOURCE_DATAVERSE to the connector's CLI (make conformance installs it in .venv-airbyte)."
    )
    workdir = tmp_path_factory.mktemp("airbyte")
    cert, key = write_loopback_certificate(workdir, hosts=[LOGIN_HOST])
    dataverse_app = create_dataverse_app()
    # Plain HTTP on loopback: the connector's stream reads go through airbyte-cdk's `session.send`, which
    # ignores REQUESTS_CA_BUNDLE (requests applies the environment only in `Session.request`), so a
    # loopback certificate cannot be trusted there without patching; its `url` setting takes http.
    dataverse = serve_in_thread(dataverse_app)
    seen: list[dict[str, str]] = []
    login: ServerHandle = serve_in_thread(_token_stub(seen), ssl_certfile=str(cert), ssl_keyfile=str(key))
    login_port = int(login.url.rsplit(":", 1)[1])
    with LoopbackProxy({LOGIN_HOST: login_port}) as proxy:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(workdir),
            "HTTPS_PROXY": proxy.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": str(cert),
        }
        config = {
            "url": dataverse.url,
            "tenant_id": TENANT,
            "client_id": "conformance-client",
            "client_secret_value": "not-a-secret-test-value",
            "odata_maxpagesize": 2,
        }
        yield Airbyte(executable, workdir, env, config), dataverse_app.state.sandbox, seen
        assert set(proxy.tunnelled) == {LOGIN_HOST} and not proxy.refused
    login.stop()
    dataverse.stop()


def _records(messages: list[dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    return [
        m["record"]["data"] for m in messages if m["type"] == "RECORD" and m["record"]["stream"] == stream
    ]


def _state(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["state"] for m in messages if m["type"] == "STATE"]


def test_spec_check_discover_and_incremental_reads(stack: Stack) -> None:
    airbyte, sandbox, token_requests = stack
    (spec,) = [m for m in airbyte.run("spec") if m["type"] == "SPEC"]
    assert "client_secret_value" in spec["spec"]["connectionSpecification"]["properties"]

    status = [
        m
        for m in airbyte.run("check", "--config", str(airbyte.config_path))
        if m["type"] == "CONNECTION_STATUS"
    ]
    assert status == [{"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED"}}], status
    url = json.loads(airbyte.config_path.read_text())["url"]
    assert token_requests[-1]["scope"] == f"{url}/.default"
    assert token_requests[-1]["client_id"] == "conformance-client"

    (catalog,) = [
        m["catalog"]
        for m in airbyte.run("discover", "--config", str(airbyte.config_path))
        if m["type"] == "CATALOG"
    ]
    streams = {s["name"]: s for s in catalog["streams"]}
    account = streams["account"]
    assert account["supported_sync_modes"] == ["full_refresh", "incremental"]
    assert account["source_defined_primary_key"] == [["accountid"]]
    assert account["default_cursor_field"] == ["modifiedon"]
    properties = account["json_schema"]["properties"]
    assert properties["name"] == {"type": ["null", "string"]}
    assert properties["modifiedon"]["format"] == "date-time"
    assert "_ab_cdc_deleted_at" in properties

    ids = sandbox.seed("accounts", [{"name": f"Airbyte {i}", "accountnumber": f"AB-{i}"} for i in range(5)])
    configured = {
        "streams": [
            {
                "stream": account,
                "sync_mode": "incremental",
                "destination_sync_mode": "append",
                "cursor_field": ["modifiedon"],
                "primary_key": [["accountid"]],
            }
        ]
    }
    catalog_path = airbyte.write("catalog.json", configured)
    first = airbyte.run("read", "--config", str(airbyte.config_path), "--catalog", catalog_path)
    first_records = _records(first, "account")
    assert set(ids) <= {r["accountid"] for r in first_records}
    assert all(r["_ab_cdc_updated_at"] == r["modifiedon"] for r in first_records)
    states = _state(first)
    assert states, "no state after the first read"

    # Updates and deletes, then a second read from the saved state (the delta token).
    api = f"{url}/api/data/v9.2"
    with httpx.Client(
        verify=str(airbyte.workdir / "loopback-cert.pem"), headers={"Authorization": "Bearer sales-user"}
    ) as http:
        for record_id in ids[:2]:
            assert http.patch(f"{api}/accounts({record_id})", json={"name": "Updated"}).status_code == 204
        assert http.delete(f"{api}/accounts({ids[4]})").status_code == 204
    state_path = airbyte.write("state.json", [states[-1]])
    second = airbyte.run(
        "read", "--config", str(airbyte.config_path), "--catalog", catalog_path, "--state", state_path
    )
    second_records = _records(second, "account")
    updated = {r["accountid"]: r for r in second_records if r.get("_ab_cdc_deleted_at") is None}
    deleted = [r for r in second_records if r.get("_ab_cdc_deleted_at")]
    assert set(updated) == set(ids[:2]) and all(r["name"] == "Updated" for r in updated.values())
    assert [r["accountid"] for r in deleted] == [ids[4]]
