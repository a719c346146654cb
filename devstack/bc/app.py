"""The BC sandbox as an ASGI app: URL shapes, auth, service protection, faults and `/_sandbox/`.

Request path (outermost first): `ServiceProtection` (count, bearer token -> user, 6000 requests per
5 minutes, 5 concurrent + queue of 95) -> `FaultMiddleware` -> `api_app` (URL prefix, then
subscriptions, `$batch` or `BcApi.handle`). Injected latency therefore holds a concurrency slot,
like a slow request on the real service does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.bc import metadata
from devstack.bc.api import JSON_TYPE, ApiRequest, ApiResponse, BcApi, error_response
from devstack.bc.config import BcSandboxConfig
from devstack.bc.entities import COMPUTED_SETS, ENTITY_SETS
from devstack.bc.errors import BcError, bad_request, code_for_status, error_body
from devstack.bc.posting import ship_order
from devstack.bc.sandbox import BcSandbox, user_id
from devstack.bc.web_client import web_client_routes
from devstack.sandbox_common.control import bad_request as control_bad_request
from devstack.sandbox_common.control import control_routes, read_json
from devstack.sandbox_common.faults import CONTROL_PREFIX, FaultMiddleware
from devstack.sandbox_common.limits import GateRejected, retry_after_header

# The standard API (`/api/v2.0`) and the runtime API (`/api/microsoft/runtime/v1.0`, BC's page 5460).
RUNTIME_API = "microsoft/runtime/v1.0"
PREFIX_RE = re.compile(
    r"^(?:/v2\.0/(?:(?P<tenant>[^/]+)/)?(?P<environment>[^/]+))?"
    r"/api/(?P<api>v2\.0|microsoft/runtime/v1\.0)(?:/(?P<rest>.*))?$"
)
SEGMENT_NAME_RE = re.compile(r"([A-Za-z$]+)(?:\([^)]*\))?")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status_code=status,
        headers=headers,
        media_type=JSON_TYPE,
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, error_body(code_for_status(status), message), headers)


def count_label(path: str) -> str:
    """The entity set a request is about, for the counters (`customers`, `$batch`, ...)."""
    match = PREFIX_RE.match(path)
    rest = (match.group("rest") or "") if match else path
    names = SEGMENT_NAME_RE.findall(rest)
    return names[-1] if names else "(root)"


class ServiceProtection:
    """Counting, authentication and BC's per-user limits, in front of everything but `/_sandbox/`."""

    def __init__(self, app: ASGIApp, sandbox: BcSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        sandbox = self.sandbox
        sandbox.counters.record(scope["method"], count_label(scope["path"]))
        request = Request(scope)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and sandbox.config.web_service_keys:
            user = sandbox.user_for_web_service_key(token.strip())
            if user is None:
                # BC on-premises (NavUserPassword): a wrong user name or web service access key.
                await _error(
                    401,
                    "The server has rejected the client credentials: the user name or the web service "
                    "access key is not valid.",
                    {"www-authenticate": 'Basic realm=""'},
                )(scope, receive, send)
                return
        else:
            user = sandbox.user_for_token(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            response = _error(
                401,
                "The server has rejected the client credentials. Send 'Authorization: Bearer <token>' with "
                f"one of the sandbox's tokens ({', '.join(sorted(sandbox.config.users))}).",
                {"www-authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        sandbox.counters.opened(user)
        try:
            await self._limited(scope, receive, send, user)
        finally:
            sandbox.counters.closed(user)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, user: str) -> None:
        sandbox = self.sandbox
        wait = sandbox.limiter.hit(user)
        if wait is not None:
            sandbox.counters.record_throttled("rate", user)
            limit = sandbox.limiter.max_requests
            await _error(
                429,
                f"Too many requests: more than {limit} in {sandbox.limiter.window_seconds:g} seconds "
                f"for user {user}.",
                {"retry-after": retry_after_header(wait)},
            )(scope, receive, send)
            return
        try:
            async with sandbox.gate.enter(user):
                await self.app(scope, receive, send)
        except GateRejected as rejected:
            sandbox.counters.record_throttled(rejected.reason, user)
            if rejected.reason == "queue_timeout":
                response = _error(
                    503,
                    "The request waited too long in the queue of concurrent requests.",
                    {"retry-after": retry_after_header(sandbox.gate.queue_timeout or 1)},
                )
            elif rejected.reason == "concurrency":
                # Only with the queue switched off (max_queue 0): a strict mode for tests.
                limit = sandbox.gate.max_concurrent
                response = _error(429, f"Too many concurrent requests for user {user}: more than {limit}.")
            else:
                response = _error(
                    429, f"Too many concurrent requests for user {user}; the request queue is full."
                )
            await response(scope, receive, send)


class ApiEndpoint:
    """The BC API behind the middleware: resolves the URL prefix and dispatches."""

    def __init__(self, sandbox: BcSandbox) -> None:
        self.sandbox = sandbox
        self.api = BcApi(sandbox.store, sandbox.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._dispatch(request)
        except BcError as error:
            response = error_response(error)
        if response.body is None:
            http_response = Response(status_code=response.status, headers=response.headers)
        elif isinstance(response.body, str):  # `/$count`: a bare number, text/plain
            http_response = Response(str(response.body), response.status, response.headers)
        else:
            http_response = _json(response.status, response.body, response.headers)
        await http_response(scope, receive, send)

    async def _dispatch(self, request: Request) -> ApiResponse:
        config = self.sandbox.config
        match = PREFIX_RE.match(request.url.path)
        if match is None:
            raise BcError(
                404,
                "BadRequest_NotFound",
                f"No resource at '{request.url.path}'. "
                f"Use /v2.0/{config.tenant}/{config.environment}/api/v2.0/...",
            )
        tenant, environment = match.group("tenant"), match.group("environment")
        if (tenant not in (None, config.tenant)) or (environment not in (None, config.environment)):
            raise BcError(
                404,
                "BadRequest_NotFound",
                f"Environment '{environment}' of tenant '{tenant or config.tenant}' does not exist; "
                f"this sandbox serves tenant '{config.tenant}', environment '{config.environment}'.",
            )
        rest = match.group("rest") or ""
        root_path = request.url.path[: len(request.url.path) - len(rest)].rstrip("/")
        service_root = f"{request.url.scheme}://{request.url.netloc}{root_path}"
        api_request = ApiRequest(
            method=request.method,
            path=rest,
            params=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await _read_body(request),
            user=request.state.user,
            service_root=service_root,
            url=str(request.url),
        )
        if match.group("api") == RUNTIME_API:
            return self.api.handle_runtime(api_request)
        if rest == "$batch":
            if request.method != "POST":
                raise BcError(405, "BadRequest_MethodNotAllowed", "$batch only accepts POST.")
            return self.api.batch(api_request)
        if rest == "subscriptions" or rest.startswith("subscriptions("):
            return await self._subscriptions(api_request)
        if rest in ("", "$metadata"):
            if request.method != "GET":
                raise BcError(405, "BadRequest_MethodNotAllowed", f"Only GET is allowed on '/{rest}'.")
            if rest:
                return ApiResponse(200, metadata.edmx(), {"content-type": "application/xml"})
            return ApiResponse(200, metadata.service_document(service_root))
        return self.api.handle(api_request)

    async def _subscriptions(self, request: ApiRequest) -> ApiResponse:
        hub = self.sandbox.webhooks
        context = f"{request.service_root}/$metadata#subscriptions"
        key = request.path[len("subscriptions(") : -1] if request.path.startswith("subscriptions(") else None
        method = request.method
        if key is None and method == "GET":
            return ApiResponse(200, {"@odata.context": context, "value": [s.to_json() for s in hub.all()]})
        if key is None and method == "POST":
            subscription = await hub.create(request.body, user_id(request.user))
            return ApiResponse(201, {"@odata.context": context + "/$entity", **subscription.to_json()})
        if key is not None and method == "GET":
            return ApiResponse(200, {"@odata.context": context + "/$entity", **hub.get(key).to_json()})
        if key is not None and method == "PATCH":
            subscription = await hub.renew(key, request.body, request.headers.get("if-match"))
            return ApiResponse(200, {"@odata.context": context + "/$entity", **subscription.to_json()})
        if key is not None and method == "DELETE":
            hub.delete(key, request.headers.get("if-match"))
            return ApiResponse(204)
        raise BcError(
            405, "BadRequest_MethodNotAllowed", f"The {method} method is not allowed on subscriptions."
        )


async def _read_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("The request body is not valid JSON.") from None


def _sandbox_routes(sandbox: BcSandbox) -> list[Route]:
    """BC-specific control routes, mounted under `/_sandbox` next to faults and stats."""

    async def info(request: Request) -> Response:
        config = sandbox.config
        return JSONResponse(
            {
                "tenant": config.tenant,
                "environment": config.environment,
                "apiPath": f"/v2.0/{config.tenant}/{config.environment}/api/v2.0",
                "defaultCompanyId": sandbox.company_id,
                "companies": [c.to_json() for c in sandbox.store.companies.values()],
                "users": {token: {"name": name, "id": user_id(name)} for token, name in config.users.items()},
                "entitySets": sorted([*ENTITY_SETS, *COMPUTED_SETS]),
                "now": sandbox.clock.now().isoformat(),
            }
        )

    async def reset(request: Request) -> Response:
        sandbox.reset()
        return Response(status_code=204)

    async def seed(request: Request) -> Response:
        try:
            body = await read_json(request)
            entity_set = body.get("entity_set", "customers")
            company_id = body.get("company_id") or sandbox.company_id
            if entity_set not in ENTITY_SETS:
                raise ValueError(f"unknown entity_set '{entity_set}'; known: {sorted(ENTITY_SETS)}")
            if "records" in body:
                ids = sandbox.seed(entity_set, body["records"], company_id=company_id)
            elif entity_set == "customers" and isinstance(body.get("count"), int):
                ids = sandbox.seed_customers(
                    body["count"],
                    company_id=company_id,
                    seed=int(body.get("seed", 0)),
                    start=int(body.get("start", 1)),
                    company_contacts=bool(body.get("company_contacts", False)),
                )
            else:
                raise ValueError(
                    'send {"entity_set", "records": [...]} or {"entity_set": "customers", "count": n}'
                )
        except BcError as error:
            return control_bad_request(error.message)
        except (ValueError, TypeError, AttributeError) as exc:
            return control_bad_request(str(exc))
        return JSONResponse({"created": len(ids), "ids": ids if len(ids) <= 1000 else None}, status_code=201)

    async def add_company(request: Request) -> Response:
        """A company as BC's admin center creates one (the API's `companies` is read-only), seeded
        like the built-in ones; gone again after `/reset`."""
        try:
            body = await read_json(request)
            company = sandbox.add_company(str(body["id"]), str(body["name"]), body.get("displayName"))
        except KeyError as exc:
            return control_bad_request(f'send {{"id": <guid>, "name": ..., "displayName"?}} (missing {exc})')
        except BcError as error:
            return control_bad_request(error.message)
        except (ValueError, TypeError, AttributeError) as exc:
            return control_bad_request(str(exc))
        return JSONResponse(company, status_code=201)

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            try:
                seconds = float((await read_json(request)).get("seconds", 0))
                sandbox.advance_clock(seconds)
            except (ValueError, TypeError, AttributeError) as exc:
                return control_bad_request(f'send {{"seconds": n}} with n >= 0 ({exc})')
        return JSONResponse({"now": sandbox.clock.now().isoformat()})

    async def limits(request: Request) -> Response:
        if request.method == "PUT":
            try:
                return JSONResponse(sandbox.set_limits(**(await read_json(request))))
            except (ValueError, TypeError) as exc:
                return control_bad_request(str(exc))
        return JSONResponse(sandbox.limits())

    async def webhook_config(request: Request) -> Response:
        if request.method == "PUT":
            try:
                return JSONResponse(sandbox.set_webhook_config(**(await read_json(request))))
            except (ValueError, TypeError) as exc:
                return control_bad_request(str(exc))
        return JSONResponse(sandbox.webhook_config())

    async def flush(request: Request) -> Response:
        return JSONResponse({"attempts": await sandbox.webhooks.flush()})

    async def wait_idle(request: Request) -> Response:
        timeout = float(request.query_params.get("timeout", "10"))
        return JSONResponse({"idle": await sandbox.webhooks.wait_idle(timeout)})

    async def deliveries(request: Request) -> Response:
        if request.method == "DELETE":
            sandbox.webhooks.deliveries.clear()
            return Response(status_code=204)
        return JSONResponse({"deliveries": list(sandbox.webhooks.deliveries)})

    async def post_entries(request: Request) -> Response:
        """Post stock as BC does: item ledger entries (the items' `inventory` follows, unnotified)."""
        try:
            body = await read_json(request)
            entries = body.get("entries")
            if not isinstance(entries, list) or not entries:
                raise ValueError('send {"entries": [{"itemNumber": "I00010", "quantity": 5}, ...]}')
            posted = sandbox.post_item_entries(entries, company_id=body.get("company_id"))
        except BcError as error:
            return control_bad_request(error.message)
        except (ValueError, TypeError, AttributeError) as exc:
            return control_bad_request(str(exc))
        return JSONResponse(
            {"posted": len(posted), "entryNumbers": [e["entryNumber"] for e in posted]}, status_code=201
        )

    async def ship(request: Request) -> Response:
        """A user's Post > Ship of a sales order in the client (API v2.0 has only shipAndInvoice)."""
        try:
            body = await read_json(request) if await request.body() else {}
            order_id = request.path_params["order_id"]
            company = body.get("company_id") or sandbox.company_id
            ship_order(sandbox.store, company, order_id, "SANDBOX USER")
        except BcError as error:
            return control_bad_request(error.message)
        except (ValueError, TypeError, AttributeError) as exc:
            return control_bad_request(str(exc))
        return Response(status_code=204)

    async def opportunity(request: Request) -> Response:
        """A BC user's work on an opportunity card, which API v2.0 cannot do: `close` (the Close
        action, `{"won": true|false}`) or `estimate` (the sales cycle's `estimatedValue` and
        `estimatedClosingDate`)."""
        try:
            body = await read_json(request) if await request.body() else {}
            record_id = request.path_params["opportunity_id"]
            company = body.get("company_id") or sandbox.company_id
            if request.path_params["action"] == "close":
                record = sandbox.store.close_opportunity(
                    company, record_id, won=bool(body["won"]), user="SANDBOX USER"
                )
            elif request.path_params["action"] == "estimate":
                values = {k: body[k] for k in ("estimatedValue", "estimatedClosingDate") if k in body}
                record = sandbox.store.system_update(
                    company, "opportunities", record_id, values, "SANDBOX USER"
                )
            else:
                raise ValueError("unknown action: use close or estimate")
        except BcError as error:
            return control_bad_request(error.message)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            return control_bad_request(f'send {{"won": true|false}} to close ({exc})')
        return JSONResponse({k: v for k, v in record.items() if not k.startswith("_")})

    async def changes(request: Request) -> Response:
        since = int(request.query_params.get("since", "0"))
        return JSONResponse(
            {"changes": [c.to_json() for c in list(sandbox.store.change_log) if c.seq > since]}
        )

    return [
        Route("/info", info, methods=["GET"]),
        Route("/reset", reset, methods=["POST"]),
        Route("/seed", seed, methods=["POST"]),
        Route("/companies", add_company, methods=["POST"]),
        Route("/clock", clock, methods=["GET"]),
        Route("/clock/advance", clock, methods=["POST"]),
        Route("/limits", limits, methods=["GET", "PUT"]),
        Route("/webhooks/config", webhook_config, methods=["GET", "PUT"]),
        Route("/webhooks/flush", flush, methods=["POST"]),
        Route("/webhooks/wait", wait_idle, methods=["POST"]),
        Route("/webhooks/deliveries", deliveries, methods=["GET", "DELETE"]),
        Route("/changes", changes, methods=["GET"]),
        Route("/itemLedgerEntries/post", post_entries, methods=["POST"]),
        Route("/salesOrders/{order_id}/ship", ship, methods=["POST"]),
        Route("/opportunities/{opportunity_id}/{action}", opportunity, methods=["POST"]),
    ]


def create_app(config: BcSandboxConfig | None = None) -> Starlette:
    """The BC sandbox. `app.state.sandbox` is the `BcSandbox` (data, clock, webhooks, limits)."""
    sandbox = BcSandbox(config)

    def fault_body(status: int, message: str) -> dict[str, Any]:
        return error_body(code_for_status(status), message)

    api_stack = ServiceProtection(FaultMiddleware(ApiEndpoint(sandbox), sandbox.faults, fault_body), sandbox)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dispatcher = asyncio.create_task(sandbox.webhooks.run(), name="bc-webhook-dispatcher")
        try:
            yield
        finally:
            dispatcher.cancel()
            await sandbox.webhooks.aclose()

    app = Starlette(
        routes=[
            Mount(
                "/_sandbox", routes=control_routes(sandbox.faults, sandbox.counters, _sandbox_routes(sandbox))
            ),
            *web_client_routes(sandbox),
            Mount("", app=api_stack),
        ],
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    return app
