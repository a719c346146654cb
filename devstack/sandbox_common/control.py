"""The control surface every sandbox mounts under `/_sandbox`: faults and counters.

    POST   /_sandbox/faults        add a rule (JSON, see `faults.py`); 201 with the rule
    GET    /_sandbox/faults        the active rules
    DELETE /_sandbox/faults        clear all rules; 204
    GET    /_sandbox/stats         `RequestCounters.snapshot()`
    POST   /_sandbox/stats/reset   zero the counters; 204

Each sandbox adds its own routes (seeding, clock, limits, ...) through `extra_routes`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from devstack.sandbox_common.counters import RequestCounters
from devstack.sandbox_common.faults import FaultInjector


async def read_json(request: Request) -> Any:
    """The request's JSON body, or `ValueError` with a message fit for a 400 answer."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from exc


def bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def control_routes(
    injector: FaultInjector, counters: RequestCounters, extra_routes: Iterable[BaseRoute] = ()
) -> list[BaseRoute]:
    """Routes to mount with `Mount("/_sandbox", routes=...)`."""

    async def add_fault(request: Request) -> Response:
        try:
            rule = injector.add(await read_json(request))
        except ValueError as exc:
            return bad_request(str(exc))
        return JSONResponse(rule.to_json(), status_code=201)

    async def list_faults(request: Request) -> Response:
        return JSONResponse({"rules": [r.to_json() for r in injector.rules()]})

    async def clear_faults(request: Request) -> Response:
        injector.clear()
        return Response(status_code=204)

    async def stats(request: Request) -> Response:
        return JSONResponse(counters.snapshot())

    async def reset_stats(request: Request) -> Response:
        counters.reset()
        return Response(status_code=204)

    return [
        Route("/faults", add_fault, methods=["POST"]),
        Route("/faults", list_faults, methods=["GET"]),
        Route("/faults", clear_faults, methods=["DELETE"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats/reset", reset_stats, methods=["POST"]),
        *extra_routes,
    ]
