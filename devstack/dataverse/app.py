"""The Dataverse sandbox as a Starlette app: `/api/data/v9.2/...` plus the `/_sandbox/...` control surface.

Request path, outermost first: service protection (bearer token -> user, then the per-user request,
execution-time and concurrency limits of
https://learn.microsoft.com/power-apps/developer/data-platform/api-limits), fault injection, then the Web API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote

from anyio import to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.dataverse.api import API_PREFIX, ApiRequest, ApiResponse
from devstack.dataverse.batch import execute_batch
from devstack.dataverse.config import DataverseSandboxConfig, SandboxUser
from devstack.dataverse.errors import DataverseError, error_body
from devstack.dataverse.sandbox import DataverseSandbox
from devstack.sandbox_common.control import bad_request, control_routes, read_json
from devstack.sandbox_common.faults import CONTROL_PREFIX, FaultMiddleware
from devstack.sandbox_common.limits import (
    EXECUTION_CHARGE_KEY,
    GateRejected,
    charge_execution,
    retry_after_header,
)

USER_SCOPE_KEY = "dataverse.user"

_LIMIT_ERRORS = {
    "requests": (
        "0x80072322",
        "Number of requests exceeded the limit of {max_requests} over time window of {window} seconds.",
    ),
    "execution": (
        "0x80072321",
        "Combined execution time of incoming requests exceeded limit of {max_ms} "
        " milliseconds over time window of {window} seconds. Decrease number of concurrent requests "
        "or reduce the duration of requests and try again later.",
    ),
    "concurrency": ("0x80072326", "Number of concurrent requests exceeded the limit of {max_concurrent}."),
}


class ServiceProtectionMiddleware:
    """Authenticates the caller and applies Dataverse's per-user service-protection limits."""

    def __init__(self, app: ASGIApp, sandbox: DataverseSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        sandbox = self.sandbox
        sandbox.counters.record(scope["method"], _entity_set(scope["path"]))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = headers.get("authorization", "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        user = sandbox.user_for_token(token) if token else None
        if user is None:
            await _send(send, _unauthorized(sandbox, bool(token)))
            return
        if user.isdisabled:
            message = (
                f"The user with SystemUserId={user.systemuserid} is disabled. Enable the user and try again."
            )
            await _send(send, ApiResponse.error(DataverseError(403, message, "0x80040225")))
            return
        key = user.systemuserid
        sandbox.counters.opened(key)
        try:
            await self._limited(scope, receive, send, user)
        finally:
            sandbox.counters.closed(key)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, user: Any) -> None:
        sandbox = self.sandbox
        key = user.systemuserid
        wait = sandbox.request_limiter.hit(key)
        reason = "requests"
        if wait is None:
            wait = sandbox.execution_limiter.over(key)
            reason = "execution"
        if wait is not None:
            await self._throttle(send, reason, wait, key)
            return
        scope[USER_SCOPE_KEY] = user
        # Execution time is what the server spends on the request: the handler's CPU time (and any
        # injected latency), not wall time, which on a shared test machine measures the machine's
        # load, the sandbox's single store lock and the body's transfer rather than the request.
        account = scope[EXECUTION_CHARGE_KEY] = [0.0]
        remaining = max(0, int(sandbox.request_limiter.max_requests - sandbox.request_limiter.total(key)))
        time_left = max(0.0, sandbox.execution_limiter.max_requests - sandbox.execution_limiter.total(key))
        settled = [0.0]

        def settle() -> None:
            # Book what the request was charged so far: when its answer starts (so the caller's next
            # request already sees it) and once more at the end for anything charged after that.
            if account[0] > settled[0]:
                sandbox.execution_limiter.add(key, account[0] - settled[0])
                settled[0] = account[0]

        try:
            async with sandbox.gate.enter(key):
                await self.app(scope, receive, _with_headers(send, remaining, time_left / 1000, settle))
        except GateRejected:
            await self._throttle(send, "concurrency", 1.0, key)
        finally:
            settle()

    async def _throttle(self, send: Send, reason: str, wait: float, user: str) -> None:
        config = self.sandbox.config
        code, template = _LIMIT_ERRORS[reason]
        message = template.format(
            max_requests=config.max_requests,
            window=int(config.window_seconds),
            max_ms=f"{int(config.max_execution_ms):,}",
            max_concurrent=config.max_concurrent,
        )
        self.sandbox.counters.record_throttled(reason, user)
        error = DataverseError(429, message, code, {"Retry-After": retry_after_header(wait)})
        await _send(send, ApiResponse.error(error))


def _with_headers(send: Send, remaining: int, seconds_left: float, on_start: Callable[[], None]) -> Send:
    """The debugging headers of the api-limits page: requests left, and execution time left in
    seconds, formatted as Dataverse sends it (`1,200.00`: grouping separator, two decimals)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"x-ms-ratelimit-burst-remaining-xrm-requests", str(remaining).encode()))
            headers.append((b"x-ms-ratelimit-time-remaining-xrm-requests", f"{seconds_left:,.2f}".encode()))
            on_start()
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


def _unauthorized(sandbox: DataverseSandbox, had_token: bool) -> ApiResponse:
    hint = "an unknown bearer token" if had_token else "no 'Authorization: Bearer <token>' header"
    tokens = ", ".join(f"'{t}'" for t in sandbox.users)
    error = DataverseError(
        401,
        f"The request has {hint}. The sandbox accepts the tokens {tokens} (add users with POST "
        "/_sandbox/users).",
        "0x80072560",
        {
            "WWW-Authenticate": "Bearer authorization_uri="
            "https://login.microsoftonline.com/common/oauth2/authorize, "
            f"resource_id=https://{sandbox.config.domain}/"
        },
    )
    return ApiResponse.error(error)


async def _send(send: Send, response: ApiResponse) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _entity_set(path: str) -> str:
    rest = path.split(API_PREFIX, 1)[1] if API_PREFIX in path else path.strip("/")
    return unquote(rest).split("(", 1)[0].split("/", 1)[0] or "/"


def _base_url(request: Request) -> str:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}{API_PREFIX}"


def _api_endpoint(sandbox: DataverseSandbox):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        user: SandboxUser = request.scope[USER_SCOPE_KEY]
        headers = {k.lower(): ", ".join(request.headers.getlist(k)) for k in request.headers}
        impersonated = headers.get("callerobjectid")
        if impersonated:
            target = sandbox.user_by_object_id(impersonated)
            if target is None:
                error = DataverseError(
                    400,
                    f"No systemuser has azureactivedirectoryobjectid {impersonated} (CallerObjectId).",
                    "0x80040217",
                )
                return _to_response(ApiResponse.error(error))
            user = target
        correlation = headers.get("x-ms-correlation-request-id") or str(uuid.uuid4())
        api_request = ApiRequest(
            method=request.method,
            path=unquote(request.url.path.split(API_PREFIX, 1)[1]),
            query=dict(parse_qsl(request.url.query, keep_blank_values=True)),
            headers=headers,
            body=await request.body(),
            caller=sandbox.caller(user, correlation),
            base_url=_base_url(request),
        )
        if api_request.path.strip("/") == "$batch" and request.method == "POST":

            def run() -> ApiResponse:
                try:
                    return execute_batch(
                        sandbox.api, api_request, max_requests=sandbox.config.max_batch_requests
                    )
                except DataverseError as exc:
                    return ApiResponse.error(exc)
        else:

            def run() -> ApiResponse:
                return sandbox.api.handle(api_request)

        def charged() -> ApiResponse:
            started = time.thread_time()
            modelled = 0.0
            try:
                response = run()
                modelled = response.execution_ms
                return response
            finally:
                charge_execution(request.scope, (time.thread_time() - started) * 1000 + modelled)

        response = await to_thread.run_sync(charged)
        response.headers.setdefault("x-ms-service-request-id", str(uuid.uuid4()))
        return _to_response(response)

    return endpoint


def _to_response(response: ApiResponse) -> Response:
    return Response(content=response.body, status_code=response.status, headers=response.headers)


# --- /_sandbox extra routes --------------------------------------------------------------------------


def _control(sandbox: DataverseSandbox) -> list[Any]:
    async def seed(request: Request) -> Response:
        try:
            data = await read_json(request)
            entity_set, records = data.get("entity_set"), data.get("records")
            if not isinstance(entity_set, str) or not isinstance(records, list):
                raise ValueError('send {"entity_set": "accounts", "records": [{...}, ...]}')
            ids = await to_thread.run_sync(
                lambda: sandbox.seed(entity_set, records, as_user=data.get("as_user", "integration-user"))
            )
        except ValueError as exc:
            return bad_request(str(exc))
        except DataverseError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse({"ids": ids}, status_code=201)

    async def get_limits(request: Request) -> Response:
        return JSONResponse(sandbox.limits())

    async def set_limits(request: Request) -> Response:
        try:
            return JSONResponse(sandbox.set_limits(**(await read_json(request))))
        except (ValueError, TypeError) as exc:
            return bad_request(str(exc))

    async def add_user(request: Request) -> Response:
        try:
            data = await read_json(request)
            user = SandboxUser(**data)
            row = sandbox.add_user(user)
        except (ValueError, TypeError) as exc:
            return bad_request(f"{exc}; send SandboxUser fields: token, systemuserid, fullname, ...")
        except DataverseError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse(row, status_code=201)

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            try:
                data = await read_json(request)
                seconds = float(data["advance_seconds"])
            except (ValueError, KeyError, TypeError):
                return bad_request('send {"advance_seconds": <number>}')
            sandbox.advance_clock(seconds)
        return JSONResponse({"now": sandbox.now().isoformat()})

    async def webhooks(request: Request) -> Response:
        with_payload = request.query_params.get("payload", "true").lower() != "false"
        deliveries = [d.to_json(with_payload=with_payload) for d in sandbox.webhooks.deliveries()]
        return JSONResponse({"deliveries": deliveries, "pending": sandbox.webhooks.pending()})

    async def flush(request: Request) -> Response:
        try:
            data = await read_json(request)
            timeout = float(data.get("timeout", 10))
        except (ValueError, TypeError):
            return bad_request('send {"timeout": <seconds>} or nothing')
        done = await to_thread.run_sync(lambda: sandbox.webhooks.flush(timeout))
        return JSONResponse({"flushed": done, "pending": sandbox.webhooks.pending()})

    async def clear_webhooks(request: Request) -> Response:
        sandbox.webhooks.clear()
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        await to_thread.run_sync(sandbox.reset)
        return Response(status_code=204)

    return [
        Route("/seed", seed, methods=["POST"]),
        Route("/limits", get_limits, methods=["GET"]),
        Route("/limits", set_limits, methods=["POST"]),
        Route("/users", add_user, methods=["POST"]),
        Route("/clock", clock, methods=["GET", "POST"]),
        Route("/webhooks", webhooks, methods=["GET"]),
        Route("/webhooks", clear_webhooks, methods=["DELETE"]),
        Route("/webhooks/flush", flush, methods=["POST"]),
        Route("/reset", reset, methods=["POST"]),
    ]


def create_app(config: DataverseSandboxConfig | None = None) -> Starlette:
    """A ready Dataverse sandbox: default users, USD/EUR, a unit schedule, a price list.

    The sandbox object is `app.state.sandbox` (a `DataverseSandbox`).
    """
    sandbox = DataverseSandbox(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        sandbox.close()

    async def index(request: Request) -> Response:
        return JSONResponse(
            {
                "service": "Dataverse Web API sandbox",
                "base_url": f"{request.url.scheme}://{request.headers.get('host')}{API_PREFIX}",
                "tokens": list(sandbox.users),
                "control": f"{CONTROL_PREFIX}/...",
            }
        )

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Mount(
                CONTROL_PREFIX, routes=control_routes(sandbox.injector, sandbox.counters, _control(sandbox))
            ),
            Route(API_PREFIX + "{path:path}", _api_endpoint(sandbox), methods=methods),
        ],
        middleware=[
            Middleware(ServiceProtectionMiddleware, sandbox=sandbox),
            Middleware(FaultMiddleware, injector=sandbox.injector, error_body=error_body),
        ],
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    return app
