"""One BC sandbox and one webhook receiver per session, both on loopback; reset before each test."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from devstack.bc import DEFAULT_COMPANY_ID, BcSandbox, BcSandboxConfig, create_app
from devstack.serve import ServerHandle, serve_in_thread
from shared.connectors.business_central import BusinessCentralClient
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.retry import RetryPolicy

API_PATH = "/v2.0/contoso/production/api/v2.0"


@dataclass
class Receiver:
    """A webhook endpoint that records what BC sends and answers as the test scripts it."""

    url: str = ""
    handshakes: list[str] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    handshake_answer: str = "echo"  # echo | wrong | 400 | slow
    slow_seconds: float = 1.0
    statuses: deque[int] = field(default_factory=deque)  # answers to notifications, then 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.handshakes.clear()
            self.notifications.clear()
            self.statuses.clear()
        self.handshake_answer = "echo"

    def entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return [entry for body in self.notifications for entry in body["value"]]

    async def endpoint(self, request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            self.handshakes.append(token)
            if self.handshake_answer == "slow":
                time.sleep(self.slow_seconds)  # blocks this receiver only (its own server thread)
            if self.handshake_answer == "wrong":
                return PlainTextResponse("not-the-token")
            if self.handshake_answer == "400":
                return PlainTextResponse("no", status_code=400)
            return PlainTextResponse(token)
        body = await request.json()
        with self.lock:
            self.notifications.append(body)
            status = self.statuses.popleft() if self.statuses else 200
        return Response(status_code=status)


@pytest.fixture(scope="session")
def bc_server() -> Iterator[tuple[ServerHandle, BcSandbox]]:
    app = create_app(BcSandboxConfig.for_tests())
    handle = serve_in_thread(app)
    try:
        yield handle, app.state.sandbox
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def receiver_server() -> Iterator[tuple[ServerHandle, Receiver]]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hook", receiver.endpoint, methods=["GET", "POST"])])
    handle = serve_in_thread(app)
    receiver.url = f"{handle.url}/hook"
    try:
        yield handle, receiver
    finally:
        handle.stop()


@dataclass
class Bc:
    url: str  # server root
    base: str  # .../api/v2.0
    sandbox: BcSandbox
    http: httpx.Client
    company: str = DEFAULT_COMPANY_ID

    def entity_url(self, entity_set: str, record_id: str | None = None) -> str:
        url = f"{self.base}/companies({self.company})/{entity_set}"
        return url if record_id is None else f"{url}({record_id})"

    def client(self, **kw: Any) -> BusinessCentralClient:
        kw.setdefault("policy", RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05))
        return BusinessCentralClient(self.base, StaticTokenCredential("integration-user"), **kw)


@pytest.fixture
def bc(bc_server: tuple[ServerHandle, BcSandbox]) -> Iterator[Bc]:
    handle, sandbox = bc_server
    webhook_defaults = sandbox.webhook_config()
    limit_defaults = sandbox.limits()
    sandbox.reset()
    http = httpx.Client(headers={"Authorization": "Bearer integration-user"}, timeout=30)
    try:
        yield Bc(handle.url, handle.url + API_PATH, sandbox, http)
    finally:
        http.close()
        sandbox.flush_webhooks()
        sandbox.set_webhook_config(**webhook_defaults)
        sandbox.set_limits(**limit_defaults)
        sandbox.reset()


@pytest.fixture
def receiver(receiver_server: tuple[ServerHandle, Receiver]) -> Receiver:
    _, receiver = receiver_server
    receiver.reset()
    return receiver


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
