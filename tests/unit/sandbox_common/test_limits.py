"""SlidingWindowLimiter and ConcurrencyGate."""

from __future__ import annotations

import asyncio

import pytest

from devstack.sandbox_common.limits import (
    ConcurrencyGate,
    GateRejected,
    SlidingWindowLimiter,
    retry_after_header,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_refuses_the_request_over_the_limit_and_says_when_a_slot_frees() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 300, clock)
    assert [limiter.hit("u") for _ in range(3)] == [None, None, None]
    clock.now += 100
    assert limiter.hit("u") == pytest.approx(200)  # the first hit leaves the window at t+300
    assert limiter.total("u") == 3  # a refused request is not counted
    clock.now += 200
    assert limiter.hit("u") is None


def test_window_is_sliding_and_per_user() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 10, clock)
    limiter.hit("a")
    clock.now += 6
    limiter.hit("a")
    assert limiter.hit("a") == pytest.approx(4)
    assert limiter.hit("b") is None
    clock.now += 4.01
    assert limiter.hit("a") is None  # only the first hit expired
    assert limiter.hit("a") == pytest.approx(5.99)  # the hit at t+6 leaves at t+16


def test_amounts_for_execution_time_budgets() -> None:
    clock = FakeClock()
    budget = SlidingWindowLimiter(0, 300, clock)
    budget.add("u", 700)
    clock.now += 10
    budget.add("u", 600)
    assert budget.over("u", 1200) == pytest.approx(290)
    assert budget.over("u", 1400) is None
    clock.now += 290
    assert budget.over("u", 1200) is None


def test_retry_after_header_rounds_up_to_at_least_one_second() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 1.01, 59.5)] == ["1", "1", "1", "2", "60"]


async def _hold(gate: ConcurrencyGate, user: str, seconds: float, log: list[str], name: str) -> None:
    try:
        async with gate.enter(user):
            log.append(f"{name} in")
            await asyncio.sleep(seconds)
    except GateRejected as rejected:
        log.append(f"{name} {rejected.reason}")


def test_gate_without_queue_rejects_at_once() -> None:
    async def scenario() -> list[str]:
        gate, log = ConcurrencyGate(1), []
        await asyncio.gather(_hold(gate, "u", 0.05, log, "a"), _hold(gate, "u", 0.05, log, "b"),
                             _hold(gate, "v", 0.05, log, "c"))  # fmt: skip
        return log

    assert sorted(asyncio.run(scenario())) == ["a in", "b concurrency", "c in"]


def test_gate_queues_in_order_then_rejects_full_queue_and_timeouts() -> None:
    async def scenario() -> tuple[list[str], ConcurrencyGate]:
        gate, log = ConcurrencyGate(1, max_queue=2, queue_timeout=0.15), []
        await asyncio.gather(
            _hold(gate, "u", 0.1, log, "a"),
            _hold(gate, "u", 0.1, log, "b"),  # queued, gets the slot after 0.1 s
            _hold(gate, "u", 0.1, log, "c"),  # queued, would wait 0.2 s: times out at 0.15 s
            _hold(gate, "u", 0.1, log, "d"),  # queue full
        )
        return log, gate

    log, gate = asyncio.run(scenario())
    assert log[0] == "a in" and "d queue_full" in log and "b in" in log and "c queue_timeout" in log
    assert gate.in_use("u") == 0 and gate.queued("u") == 0


def test_gate_limits_can_change_at_runtime() -> None:
    async def scenario() -> list[str]:
        gate, log = ConcurrencyGate(1), []
        gate.max_concurrent = 2
        await asyncio.gather(_hold(gate, "u", 0.02, log, "a"), _hold(gate, "u", 0.02, log, "b"))
        return log

    assert sorted(asyncio.run(scenario())) == ["a in", "b in"]
