"""The admin and data HTTP API: request -> (status, JSON), with the caller's Entra ID token checked.

Pure of `azure.functions`: the blueprints in `sync_functions/admin.py` and `products.py` (one
catch-all function each, `manage/{*path}` and `products/{*path}`) turn the trigger into an
`ApiRequest` and the `ApiResponse` back; the routing table `ROUTES` picks the handler and role.
Every action is one call into `shared.ops.operations` (or availability/statistics), so the CLI
and this API do the same thing.

Paths (under `/api/`) and the app role each needs:

- Integration User (read-only): GET `manage/status`, `manage/errors`, `manage/history`,
  `manage/runs`, `manage/runs/{run_id}`.
- Integration Administrator: everything under `manage/` (POST `couple`, `uncouple`,
  `match-coupling`, `sync`, `full-resync`, `retry`, `poison/replay`, `statistics/push`; GET `poison`).
- Product Availability User: GET `products/{number}/availability`,
  `products/by-id/{product id}/availability`.

The admin routes live under `manage/`, not `admin/`: the Functions host reserves routes that start
with `admin` ("The specified route conflicts with one or more built in routes",
Azure/azure-functions-host#1781), even behind the `api` prefix.

Without `AUTH_ISSUER`, `AUTH_AUDIENCE` and `AUTH_JWKS_URL` every call is answered 503 naming what to
set: the API is never open by default.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.auth import HttpJwksSource, Principal, Role, RoleNames, TokenValidator, authorize
from shared.errors import ServiceError
from shared.ops import operations as ops
from shared.runtime import Runtime
from shared.sales.availability import availability_service
from shared.sales.statistics import push_statistics
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str  # below /api/, e.g. "manage/status"
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return json.dumps(self.body, separators=(",", ":"), default=str)


class BadRequest(ServiceError):
    """The request's body or query is not what the endpoint takes (400 with the message)."""

    http_status = 400


# ---------------------------------------------------------------------------------------- bodies
class Body:
    """A JSON object body, read field by field; unknown fields are refused (typos are not ignored)."""

    def __init__(self, raw: bytes, allowed: set[str]) -> None:
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        self.data = data

    def text(self, name: str, *, required: bool = True) -> str | None:
        value = self.data.get(name)
        if value is None or value == "":
            if required:
                raise BadRequest(f"`{name}` is required")
            return None
        if not isinstance(value, str) or len(value) > 200:
            raise BadRequest(f"`{name}` must be a string of at most 200 characters")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise BadRequest(f"`{name}` must be true or false")
        return value


def _query_flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise BadRequest(f"query parameter `{name}` must be true or false")
    return value in ("true", "1")


def _query_text(query: Mapping[str, str], name: str, *, required: bool = True) -> str | None:
    value = query.get(name) or None
    if value is None and required:
        raise BadRequest(f"query parameter `{name}` is required")
    return value


def _record(source: Callable[..., str | None]) -> tuple[Any, str]:
    return ops.record_ref(source("bc_id", required=False), source("dv_id", required=False))


# -------------------------------------------------------------------------------------- handlers
Handler = Callable[[Runtime, dict[str, str], ApiRequest], tuple[int, Any]]


def _status(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    return 200, ops.status(rt)


def _errors(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    mapping = _query_text(req.query, "mapping", required=False)
    return 200, {"errors": ops.list_errors(rt, mapping, skipped_only=_query_flag(req.query, "skipped"))}


def _history(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    mapping = _query_text(req.query, "mapping") or ""
    side, record_id = _record(lambda n, required: _query_text(req.query, n, required=required))
    return 200, {"entries": ops.history(rt, mapping, side, record_id)}


def _runs(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    return 200, {"runs": ops.list_runs(rt, _query_text(req.query, "mapping") or "")}


def _run(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    return 200, ops.get_run(rt, _query_text(req.query, "mapping") or "", params["run_id"])


def _couple(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"mapping", "bc_id", "dv_id", "sync_from", "dry_run"})
    result = ops.couple(
        rt, body.text("mapping") or "", body.text("bc_id") or "", body.text("dv_id") or "",
        sync_from=body.text("sync_from", required=False) or "bc", dry_run=body.flag("dry_run"),
    )  # fmt: skip
    return 200, result


def _uncouple(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"mapping", "bc_id", "dv_id"})
    side, record_id = _record(body.text)
    return 200, ops.uncouple(rt, body.text("mapping") or "", side, record_id)


def _match(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"mapping", "dry_run"})
    return 200, ops.match_couple(rt, body.text("mapping") or "", dry_run=body.flag("dry_run"))


def _sync(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"mapping", "bc_id", "dv_id", "prefer", "dry_run"})
    side, record_id = _record(body.text)
    return 200, ops.sync_now(
        rt, body.text("mapping") or "", side, record_id, prefer=body.text("prefer", required=False),
        dry_run=body.flag("dry_run"),
    )  # fmt: skip


def _full_resync(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"mapping", "dry_run"})
    run = ops.start_full_resync(rt, body.text("mapping") or "", dry_run=body.flag("dry_run"))
    progress = f"/api/manage/runs/{run.run_id}?mapping={run.mapping}"
    return 202, {"run": ops.to_json(run), "progress_url": progress}


def _retry(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"mapping", "bc_id", "dv_id", "all", "dry_run"})
    mapping, dry_run = body.text("mapping") or "", body.flag("dry_run")
    if body.flag("all"):
        if body.text("bc_id", required=False) or body.text("dv_id", required=False):
            raise BadRequest("give `all: true` or one record id, not both")
        return (200 if dry_run else 202), ops.retry_all(rt, mapping, dry_run=dry_run)
    side, record_id = _record(body.text)
    return 200, ops.retry(rt, mapping, side, record_id, dry_run=dry_run)


def _poison(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    return 200, {"messages": ops.list_poison(rt)}


def _replay(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    body = Body(req.body, {"dry_run"})
    return 200, ops.replay_poison(rt, dry_run=body.flag("dry_run"))


def _statistics(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    Body(req.body, set())
    return 200, push_statistics(rt)


def _availability(rt: Runtime, params: dict[str, str], req: ApiRequest) -> tuple[int, Any]:
    service = availability_service(rt)
    if "product_id" in params:
        return 200, service.by_product_id(params["product_id"])
    return 200, service.by_number(params["number"])


def _is_guid_like(text: str) -> bool:
    # As lenient as the route always was (36 hex digits and dashes): a malformed id that looks like one
    # is answered by the availability service ("not coupled", 404), not by "no such endpoint".
    return len(text) == 36 and all(c in "0123456789abcdefABCDEF-" for c in text)


# The constraints a route parameter may name (`{product_id:guid}`).
_CONSTRAINTS: dict[str, Callable[[str], bool]] = {"guid": _is_guid_like}


@dataclass(frozen=True)
class Route:
    """One row of the routing table: `method` + `pattern` -> `handler`, allowed to `role`.

    `pattern` is below `/api/`; each segment is a literal (compared exactly) or a parameter `{name}`
    (one non-empty segment) or `{name:constraint}` (one of `_CONSTRAINTS`)."""

    method: str
    pattern: str
    role: Role
    handler: Handler
    segments: tuple[tuple[str, str | None, Callable[[str], bool] | None], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        segments: list[tuple[str, str | None, Callable[[str], bool] | None]] = []
        for part in self.pattern.split("/"):
            if part.startswith("{") and part.endswith("}"):
                name, _, constraint = part[1:-1].partition(":")
                segments.append((name, None, _CONSTRAINTS[constraint] if constraint else None))
            else:
                segments.append((part, part, None))  # (name, literal, -)
        object.__setattr__(self, "segments", tuple(segments))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """The path parameters if `parts` (the request path split at `/`) fits the pattern."""
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for part, (name, literal, accepts) in zip(parts, self.segments, strict=True):
            if literal is not None:
                if part != literal:
                    return None
            elif not part or (accepts is not None and not accepts(part)):
                return None
            else:
                params[name] = part
        return params


_USER, _ADMIN, _AVAILABILITY = (
    Role.INTEGRATION_USER,
    Role.INTEGRATION_ADMINISTRATOR,
    Role.PRODUCT_AVAILABILITY_USER,
)
# Tried in order; the first route whose pattern and method fit serves the request. A path that fits
# only routes of other methods is answered 405 with their methods.
ROUTES: tuple[Route, ...] = (
    Route("GET", "manage/status", _USER, _status),
    Route("GET", "manage/errors", _USER, _errors),
    Route("GET", "manage/history", _USER, _history),
    Route("GET", "manage/runs", _USER, _runs),
    Route("GET", "manage/runs/{run_id}", _USER, _run),
    Route("POST", "manage/couple", _ADMIN, _couple),
    Route("POST", "manage/uncouple", _ADMIN, _uncouple),
    Route("POST", "manage/match-coupling", _ADMIN, _match),
    Route("POST", "manage/sync", _ADMIN, _sync),
    Route("POST", "manage/full-resync", _ADMIN, _full_resync),
    Route("POST", "manage/retry", _ADMIN, _retry),
    Route("GET", "manage/poison", _ADMIN, _poison),
    Route("POST", "manage/poison/replay", _ADMIN, _replay),
    Route("POST", "manage/statistics/push", _ADMIN, _statistics),
    Route("GET", "products/by-id/{product_id:guid}/availability", _AVAILABILITY, _availability),
    Route("GET", "products/{number}/availability", _AVAILABILITY, _availability),
)


def route_for(method: str, path: str) -> tuple[Route, dict[str, str]] | ApiResponse:
    """The route serving `method` `path` (below `/api/`, no surrounding slashes) and its parameters,
    or the 404 / 405 answer."""
    parts = path.split("/")
    matches = [(route, params) for route in ROUTES if (params := route.match(parts)) is not None]
    if not matches:
        return _error(404, f"no such endpoint: /api/{path}")
    chosen = next(((r, p) for r, p in matches if r.method == method.upper()), None)
    if chosen is None:
        allowed = ", ".join(sorted({r.method for r, _ in matches}))
        return _error(405, f"use {allowed} for /api/{path}", {"Allow": allowed})
    return chosen


# ------------------------------------------------------------------------------------------ auth
class AuthNotConfigured(ServiceError):
    """`AUTH_*` settings are missing: the API stays closed (503 naming them, not retriable)."""

    http_status = 503


@dataclass
class Authenticator:
    validator: TokenValidator
    roles: RoleNames

    def check(self, authorization: str | None, role: Role) -> Principal:
        principal = self.validator.validate(authorization)
        authorize(principal, role, self.roles)
        return principal


_authenticators: dict[tuple[str, str, str], TokenValidator] = {}
_auth_lock = threading.Lock()


def authenticator_from_settings(settings: Settings) -> Authenticator:
    """The validator for the configured issuer, audience and JWKS URL (the JWKS cache lives as long as
    the process); `AuthNotConfigured` names the missing settings."""
    missing = settings.missing_auth_settings()
    if missing:
        raise AuthNotConfigured(
            f"the admin and data API is closed until {', '.join(missing)} is set (Entra ID token "
            "validation: issuer https://login.microsoftonline.com/<tenant>/v2.0, the app registration's "
            "audience, JWKS https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys)"
        )
    key = (str(settings.auth_issuer), str(settings.auth_audience), str(settings.auth_jwks_url))
    with _auth_lock:
        validator = _authenticators.get(key)
        if validator is None:
            validator = TokenValidator(HttpJwksSource(key[2]), issuer=key[0], audience=key[1])
            _authenticators[key] = validator
    roles = RoleNames(settings.role_administrator, settings.role_user, settings.role_availability)
    return Authenticator(validator, roles)


# --------------------------------------------------------------------------------------- dispatch
def handle(
    request: ApiRequest,
    *,
    runtime: Callable[[], Any] | None = None,
    settings: Callable[[], Settings] = get_settings,
    authenticator: Authenticator | None = None,
) -> ApiResponse:
    """Route, authenticate, authorize, run the action; never raises. `runtime` and `authenticator`
    default to the process's (from settings)."""
    path = request.path.strip("/")
    found = route_for(request.method, path)
    if isinstance(found, ApiResponse):
        return found
    route, params = found
    # One try for auth and the action: every expected failure is a `ServiceError` that knows its
    # answer; anything else is a bug, answered 500 with the details kept in the log.
    try:
        auth = authenticator or authenticator_from_settings(settings())
        principal = auth.check(_header(request.headers, "authorization"), route.role)
        log.info("%s %s by %s", request.method, path, principal.name)
        rt = (runtime or _default_runtime)()
        company = _query_text(request.query, "company", required=False)
        if company:  # one company's records, runs and errors (default: the home company's)
            rt = rt.for_company(company)
        status, payload = route.handler(rt, params, request)
    except ServiceError as exc:
        if exc.http_status == 500:  # not the caller's business: see shared.errors
            return _unexpected(request, path)
        return _error(exc.http_status, exc.public_message(), _error_headers(exc))
    except Exception:
        return _unexpected(request, path)
    return ApiResponse(status, ops.to_json(payload))


def _default_runtime() -> Runtime:
    from shared.runtime import get_runtime

    return get_runtime()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, {"error": message}, headers or {})


def _error_headers(exc: ServiceError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if exc.retriable:
        headers["Retry-After"] = exc.retry_after_header()
    return headers


def _unexpected(request: ApiRequest, path: str) -> ApiResponse:
    log.exception("%s %s failed", request.method, path)
    return _error(500, "the operation failed unexpectedly; see the service log")
