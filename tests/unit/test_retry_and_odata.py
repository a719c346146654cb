"""The one retry policy and the one OData filter builder (pure: httpx.MockTransport, no servers)."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import httpx
import pytest

from shared import odata
from shared.connectors.errors import (
    AmbiguousWriteError,
    ApiError,
    NotFoundError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.connectors.retry import ApiTransport, RetryPolicy, parse_retry_after


def map_error(response: httpx.Response) -> ApiError:
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if response.status_code == 429:
        return ThrottledError("slow down", status=429, retry_after=retry_after)
    if response.status_code >= 500:
        return TransientError("server", status=response.status_code, retry_after=retry_after)
    if response.status_code == 404:
        return NotFoundError("gone", status=404)
    return ValidationError("bad", status=response.status_code)


def transport(
    answers: list[int | Exception], policy: RetryPolicy | None = None
) -> tuple[ApiTransport, list[float], list[str]]:
    sleeps: list[float] = []
    seen: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        headers = {"Retry-After": "7"} if answer == 429 else {}
        return httpx.Response(answer, headers=headers, json={})

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://svc")
    t = ApiTransport(
        client,
        service="svc",
        map_error=map_error,
        policy=policy or RetryPolicy(),
        sleep=sleeps.append,
        clock=lambda: sum(sleeps),  # time passes only while the transport waits
        rng=random.Random(1),
    )
    return t, sleeps, seen


def test_throttling_honours_retry_after() -> None:
    t, sleeps, _ = transport([429, 429, 200])
    assert t.send("GET", "/x", kind="x").status_code == 200
    assert sleeps == [7.0, 7.0]
    assert t.stats.throttled == 2 and t.stats.requests["GET x"] == 3


def test_transient_errors_back_off_exponentially_with_jitter() -> None:
    t, sleeps, _ = transport([503, 503, 503, 200], RetryPolicy(base_delay=1, max_delay=30))
    t.send("GET", "/x")
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1 and 1 <= sleeps[1] <= 2 and 2 <= sleeps[2] <= 4


def test_attempts_are_bounded() -> None:
    t, sleeps, seen = transport([503] * 10, RetryPolicy(max_attempts=3, base_delay=0.01))
    with pytest.raises(TransientError):
        t.send("GET", "/x")
    assert len(seen) == 3 and len(sleeps) == 2


def test_total_time_is_bounded() -> None:
    t, _, seen = transport([429] * 10, RetryPolicy(max_attempts=10, max_total_seconds=10))
    with pytest.raises(ThrottledError):
        t.send("GET", "/x")
    assert len(seen) == 2  # 7 s waited once; another 7 s would pass the 10 s budget


def test_fatal_errors_are_not_retried() -> None:
    t, sleeps, seen = transport([404])
    with pytest.raises(NotFoundError):
        t.send("GET", "/x")
    assert seen == ["GET"] and sleeps == []


def test_non_idempotent_write_is_not_resent_after_a_5xx_that_may_have_committed() -> None:
    t, _, seen = transport([500, 200])
    with pytest.raises(TransientError):
        t.send("POST", "/x")
    assert seen == ["POST"]


def test_non_idempotent_write_is_resent_after_throttling() -> None:
    t, _, seen = transport([429, 201])
    assert t.send("POST", "/x").status_code == 201
    assert seen == ["POST", "POST"]


def test_lost_answer_to_a_create_is_ambiguous_not_retried() -> None:
    t, _, seen = transport([httpx.ReadTimeout("timed out"), 201])
    with pytest.raises(AmbiguousWriteError, match="re-read"):
        t.send("POST", "/x")
    assert seen == ["POST"]


def test_connection_refused_is_always_safe_to_retry() -> None:
    t, _, seen = transport([httpx.ConnectError("refused"), 201])
    assert t.send("POST", "/x").status_code == 201
    assert seen == ["POST", "POST"]


def test_idempotent_flag_allows_resending_a_conditional_write() -> None:
    t, _, seen = transport([httpx.ReadTimeout("lost"), 200])
    assert t.send("PATCH", "/x", idempotent=True).status_code == 200
    assert seen == ["PATCH", "PATCH"]


@pytest.mark.parametrize(("header", "expected"), [("5", 5.0), ("0", 0.0), (None, None), ("soon", None)])
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_quotes_are_escaped_and_names_round_trip() -> None:
    assert odata.eq("name", "O'Brien & Sons") == "name eq 'O''Brien & Sons'"
    assert odata.literal("''") == "''''''"


def test_literals() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    assert odata.literal(when) == "2026-01-02T03:04:05.123Z"
    assert odata.literal(None) == "null" and odata.literal(True) == "true" and odata.literal(3) == "3"
    g = uuid.uuid4()
    assert odata.literal(g) == str(g)
    with pytest.raises(ValueError, match="naive"):
        odata.literal(dt.datetime(2026, 1, 1))


def test_composition() -> None:
    assert odata.and_(odata.eq("a", 1), odata.or_(odata.eq("b", "x"), odata.ne("c", None))) == (
        "(a eq 1) and ((b eq 'x') or (c ne null))"
    )
    assert odata.any_eq("code", ["A", "B"]) == "(code eq 'A') or (code eq 'B')"
    assert odata.dataverse_in("accountid", ["1", "2"]) == (
        "Microsoft.Dynamics.CRM.In(PropertyName='accountid',PropertyValues=['1','2'])"
    )


@pytest.mark.parametrize("field", ["", "name eq 'x' or 1", "a b", "x)"])
def test_field_names_cannot_inject_syntax(field: str) -> None:
    with pytest.raises(ValueError, match="property name"):
        odata.eq(field, 1)


def test_guid_validation() -> None:
    with pytest.raises(ValueError):
        odata.guid("1) or (1 eq 1")


def test_request_budget_waits_instead_of_exceeding_the_window() -> None:
    from shared.connectors.retry import RequestBudget

    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    budget = RequestBudget(3, 10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        budget.acquire()
    assert waits == []
    now[0] = 4.0
    budget.acquire()  # the 4th request within 10 s waits until the first one leaves the window
    assert waits == [6.0] and now[0] == 10.0
    assert budget.waited_seconds == 6.0


def test_transport_consults_the_budget_before_every_request() -> None:
    from shared.connectors.retry import RequestBudget

    t, _, seen = transport([200, 200, 200])
    calls: list[int] = []

    class CountingBudget(RequestBudget):
        def acquire(self) -> None:
            calls.append(1)

    t.budget = CountingBudget(10, 1.0)
    for _ in range(3):
        t.send("GET", "/x")
    assert len(calls) == len(seen) == 3


def test_transport_keeps_at_most_max_concurrent_requests_on_the_wire() -> None:
    import threading
    import time

    lock = threading.Lock()
    open_now = [0, 0]  # in flight, most at once

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            open_now[0] += 1
            open_now[1] = max(open_now[1], open_now[0])
        time.sleep(0.02)
        with lock:
            open_now[0] -= 1
        return httpx.Response(200)

    t = ApiTransport(
        httpx.Client(transport=httpx.MockTransport(handler), base_url="http://test"),
        service="test",
        map_error=map_error,
        max_concurrent=2,
    )
    threads = [threading.Thread(target=lambda: [t.send("GET", "/x") for _ in range(3)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert t.stats.total == 24
    assert open_now[1] == 2  # never more, and the limit was reached (the threads did overlap)
