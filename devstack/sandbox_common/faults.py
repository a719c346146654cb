"""Fault injection for the sandboxes: the failures a real service and network produce, on demand.

A rule (JSON over `POST /_sandbox/faults`, or `FaultInjector.add` in Python):

    {"action": "latency" | "status" | "timeout" | "drop" | "commit_then_fail",
     "status": 503, "seconds": 1.0, "method": "PATCH", "path_contains": "customers",
     "times": 1, "retry_after": 2}

- `latency`: wait `seconds`, then process the request normally.
- `status`: answer `status` (default 503) with the service's error body, and `Retry-After` when
  `retry_after` is set, without touching data.
- `timeout`: hold the request `seconds`, then answer 504 without processing it.
- `drop`: close the connection in the middle of the response; the client sees a protocol error.
- `commit_then_fail`: process the request (the write commits), then replace the response with
  `status` (default 500), or drop the connection when `status` is 0. The client cannot tell
  whether its write happened: exactly the case idempotent writes must survive.

`method` and `path_contains` (matched against path and query) narrow a rule; `times` is how many
matching requests it affects (0 or null: all of them until the rules are cleared). The first rule
that matches wins. Requests under `/_sandbox/` are never faulted.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.sandbox_common.limits import charge_execution

ACTIONS = frozenset({"latency", "status", "timeout", "drop", "commit_then_fail"})
CONTROL_PREFIX = "/_sandbox"

# The service's error body for a status: `(status, message) -> JSON object`.
ErrorBody = Callable[[int, str], Mapping[str, Any]]


@dataclass
class FaultRule:
    action: str
    status: int | None = None
    seconds: float = 0.0
    method: str | None = None
    path_contains: str | None = None
    times: int | None = 1
    retry_after: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        """Validate a rule from JSON; `ValueError` says what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault rule is a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault rule field(s): {sorted(unknown)}")
        action = data.get("action")
        if action not in ACTIONS:
            raise ValueError(f"'action' must be one of {sorted(ACTIONS)}, got {action!r}")
        rule = cls(
            action=action,
            status=_optional_int(data, "status"),
            seconds=float(data.get("seconds") or 0.0),
            method=str(data["method"]).upper() if data.get("method") else None,
            path_contains=str(data["path_contains"]) if data.get("path_contains") else None,
            times=_optional_int(data, "times", default=1),
            retry_after=_optional_int(data, "retry_after"),
        )
        if rule.seconds < 0:
            raise ValueError("'seconds' must not be negative")
        if rule.action in {"latency", "timeout"} and rule.seconds == 0:
            raise ValueError(f"'{rule.action}' needs 'seconds' > 0")
        if rule.status is not None and rule.status != 0 and not 400 <= rule.status <= 599:
            raise ValueError("'status' must be an HTTP error status (400-599), or 0 to drop")
        return rule

    def matches(self, method: str, target: str) -> bool:
        if self.method and self.method != method.upper():
            return False
        return not self.path_contains or self.path_contains in target

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _optional_int(data: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{key}' must be a number")
    return int(value)


class FaultInjector:
    """Thread-safe list of rules; each matching request consumes one use of the first rule."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule | Mapping[str, Any]) -> FaultRule:
        parsed = rule if isinstance(rule, FaultRule) else FaultRule.from_json(rule)
        with self._lock:
            self._rules.append(parsed)
        return parsed

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, method: str, target: str) -> FaultRule | None:
        """The rule for this request, if any, counting one use of it."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, target):
                    if rule.times is not None and rule.times > 0:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    return rule
        return None


class FaultMiddleware:
    """ASGI middleware applying the injector's rules to every request outside `/_sandbox/`."""

    def __init__(self, app: ASGIApp, injector: FaultInjector, error_body: ErrorBody) -> None:
        self.app = app
        self.injector = injector
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        rule = self.injector.take(scope["method"], target)
        if rule is None:
            await self.app(scope, receive, send)
        elif rule.action == "latency":
            await asyncio.sleep(rule.seconds)
            charge_execution(scope, rule.seconds * 1000)  # a slow server, as the limits see it
            await self.app(scope, receive, send)
        elif rule.action == "status":
            await self._error(send, rule.status or 503, "Injected fault.", rule.retry_after)
        elif rule.action == "timeout":
            await asyncio.sleep(rule.seconds)
            charge_execution(scope, rule.seconds * 1000)
            await self._error(send, 504, "The request timed out (injected fault).", None)
        elif rule.action == "drop":
            await _drop(send)
        else:  # commit_then_fail
            await self.app(scope, receive, _discard)
            if rule.status == 0:
                await _drop(send)
            else:
                status = rule.status or 500
                await self._error(send, status, "Injected fault after the change was committed.", None)

    async def _error(self, send: Send, status: int, message: str, retry_after: int | None) -> None:
        body = json.dumps(self.error_body(status, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _discard(message: Message) -> None:
    return None


async def _drop(send: Send) -> None:
    # Promise a body and stop half-way: the server closes the connection and the client sees an
    # incomplete message. (uvicorn logs "ASGI callable returned without completing response".)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b'{"value": [', "more_body": True})
