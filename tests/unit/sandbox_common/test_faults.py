"""Fault rules and the fault middleware (in-process ASGI; the wire-level drop is tested on a server)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.sandbox_common.faults import FaultInjector, FaultMiddleware, FaultRule


def test_rules_are_validated_with_clear_messages() -> None:
    for bad, words in [
        ({"action": "explode"}, "'action' must be one of"),
        ({"action": "latency"}, "needs 'seconds'"),
        ({"action": "status", "status": 200}, "400-599"),
        ({"action": "status", "colour": "red"}, "unknown fault rule field"),
        ({"action": "status", "times": "twice"}, "'times' must be a number"),
    ]:
        with pytest.raises(ValueError, match=words):
            FaultRule.from_json(bad)


def test_take_matches_method_and_path_and_counts_uses() -> None:
    injector = FaultInjector()
    injector.add({"action": "status", "method": "patch", "path_contains": "customers", "times": 2})
    assert injector.take("GET", "/x/customers") is None
    assert injector.take("PATCH", "/x/items") is None
    assert injector.take("PATCH", "/x/customers(1)") is not None
    assert injector.take("PATCH", "/x/customers(1)") is not None
    assert injector.take("PATCH", "/x/customers(1)") is None
    injector.add({"action": "status", "times": 0})
    assert all(injector.take("GET", "/any") is not None for _ in range(5))
    injector.clear()
    assert injector.rules() == []


def _app(injector: FaultInjector, calls: list[str]) -> FaultMiddleware:
    async def endpoint(request: Request) -> JSONResponse:
        calls.append(request.url.path)
        return JSONResponse({"ok": True}, status_code=201)

    inner = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
    return FaultMiddleware(
        inner, injector, lambda status, message: {"error": {"code": str(status), "message": message}}
    )


async def _send(app: FaultMiddleware, method: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as client:
        return await client.request(method, path)


def test_status_answers_without_calling_the_app_and_control_paths_are_never_faulted() -> None:
    injector, calls = FaultInjector(), []
    app = _app(injector, calls)
    injector.add({"action": "status", "status": 429, "retry_after": 3, "times": 0})
    response = asyncio.run(_send(app, "GET", "/api/customers"))
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "429" and calls == []
    assert asyncio.run(_send(app, "GET", "/_sandbox/stats")).status_code == 201


def test_commit_then_fail_runs_the_app_then_answers_the_error() -> None:
    injector, calls = FaultInjector(), []
    injector.add({"action": "commit_then_fail"})
    response = asyncio.run(_send(_app(injector, calls), "POST", "/api/customers"))
    assert response.status_code == 500 and calls == ["/api/customers"]


def test_latency_delays_then_proceeds_and_timeout_answers_504() -> None:
    injector, calls = FaultInjector(), []
    app = _app(injector, calls)
    injector.add({"action": "latency", "seconds": 0.1})
    started = time.monotonic()
    assert asyncio.run(_send(app, "GET", "/a")).status_code == 201
    assert time.monotonic() - started >= 0.1
    injector.add({"action": "timeout", "seconds": 0.05})
    assert asyncio.run(_send(app, "GET", "/b")).status_code == 504
    assert calls == ["/a"]
