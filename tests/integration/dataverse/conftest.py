"""One Dataverse sandbox and one webhook receiver per session, both on loopback; reset before each test."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.dataverse import DataverseSandbox, DataverseSandboxConfig, create_app
from devstack.serve import ServerHandle, serve_in_thread
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.dataverse import DataverseClient
from shared.connectors.retry import RetryPolicy

API = "/api/data/v9.2/"


@dataclass
class Receiver:
    """A webhook endpoint recording what the sandbox sends; answers `statuses` in turn, then 200."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)
    delay: float = 0.0  # seconds before answering
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
        self.delay = 0.0

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.requests.append(
                {
                    "path": request.url.path,
                    "query": dict(request.query_params),
                    "headers": dict(request.headers),
                    "body": body,
                }
            )
            status = self.statuses.popleft() if self.statuses else 200
        return Response(status_code=status)


@pytest.fixture(scope="session")
def dv_app() -> Starlette:
    return create_app(DataverseSandboxConfig(webhook_timeout_seconds=5, webhook_workers=2))


@pytest.fixture(scope="session")
def dv_server(dv_app: Starlette) -> Iterator[ServerHandle]:
    handle = serve_in_thread(dv_app)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def receiver_server() -> Iterator[tuple[ServerHandle, Receiver]]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hook/{rest:path}", receiver.endpoint, methods=["POST"])])
    handle = serve_in_thread(app)
    receiver.url = f"{handle.url}/hook/dataverse"
    yield handle, receiver
    handle.stop()


@pytest.fixture
def sandbox(dv_app: Starlette, dv_server: ServerHandle) -> DataverseSandbox:
    sandbox: DataverseSandbox = dv_app.state.sandbox
    sandbox.reset()
    real = DataverseSandboxConfig()
    sandbox.set_limits(
        max_requests=6000,
        window_seconds=300,
        max_execution_ms=1_200_000,
        max_concurrent=52,
        create_multiple_ms_per_record=real.create_multiple_ms_per_record,
        update_multiple_ms_per_record=real.update_multiple_ms_per_record,
        upsert_multiple_ms_per_record=real.upsert_multiple_ms_per_record,
    )
    return sandbox


@pytest.fixture
def receiver(receiver_server: tuple[ServerHandle, Receiver]) -> Receiver:
    receiver_server[1].reset()
    return receiver_server[1]


@pytest.fixture
def base_url(dv_server: ServerHandle) -> str:
    return dv_server.url + API


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sandbox: DataverseSandbox, base_url: str, sleeps: list[float]) -> Iterator[DataverseClient]:
    policy = RetryPolicy(max_attempts=4, max_total_seconds=30, base_delay=0.01, max_delay=0.05)
    client = DataverseClient(
        base_url, StaticTokenCredential("integration-user"), policy=policy, sleep=sleeps.append
    )
    yield client
    client.close()


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    """A raw client as the integration user, for wire-level checks."""
    headers = {
        "Authorization": "Bearer integration-user",
        "Accept": "application/json",
        "OData-Version": "4.0",
    }
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def with_solution(sandbox: DataverseSandbox) -> DataverseSandbox:
    """The Sales-side solution imported (as set-up does) and the integration user given its roles."""
    from devstack.dataverse.config import INTEGRATION_USER_ID
    from shared.sales.solution import ROLE_ADMINISTRATOR, ROLE_USER, pack

    sandbox.import_solution(pack())
    for role in (ROLE_ADMINISTRATOR, ROLE_USER):
        sandbox.assign_role(INTEGRATION_USER_ID, role)
    return sandbox
