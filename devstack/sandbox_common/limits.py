"""Service-protection limits shared by the sandboxes: a per-user sliding window and a concurrency gate.

Both real services limit each user (or service principal) separately:
- Business Central: 6000 requests per 5-minute sliding window (429), 5 concurrent requests with a
  queue of 95 (429 when full, 503 with `retry-after` when a queued request waits too long).
- Dataverse: 6000 requests and 20 minutes of execution time per 5-minute sliding window, 52
  concurrent requests (429 at once, no queue).

The numbers live in each sandbox's configuration; these classes only count.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any


class SlidingWindowLimiter:
    """Amounts per user over the last `window_seconds`.

    `hit(user)` counts one request and refuses it when the window already holds `max_requests`.
    `add(user, amount)` records an amount unconditionally (e.g. execution seconds) and
    `over(user, limit)` says whether that user's total is at or above `limit`. Use one instance per
    measure: a request counter and an execution-time budget are two limiters.

    Both refusals return the seconds until enough of the window expires to allow the next unit;
    callers round up for `Retry-After` (`retry_after_header`).
    """

    def __init__(
        self, max_requests: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self._clock = clock
        self._entries: dict[str, deque[tuple[float, float]]] = {}
        self._totals: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, user: str) -> float | None:
        """Count one request for `user`; None when allowed, else seconds until a slot frees."""
        with self._lock:
            now = self._clock()
            entries = self._purge(user, now)
            if self._totals.get(user, 0.0) + 1 > self.max_requests:
                return self._wait_until_below(user, entries, self.max_requests - 1, now)
            entries.append((now, 1.0))
            self._totals[user] = self._totals.get(user, 0.0) + 1
            return None

    def add(self, user: str, amount: float) -> None:
        """Record `amount` for `user` now (not refused: the work already happened)."""
        with self._lock:
            now = self._clock()
            entries = self._purge(user, now)
            entries.append((now, amount))
            self._totals[user] = self._totals.get(user, 0.0) + amount

    def over(self, user: str, limit: float | None = None) -> float | None:
        """None while `user`'s total is below `limit` (default `max_requests`), else seconds to wait."""
        limit = self.max_requests if limit is None else limit
        with self._lock:
            now = self._clock()
            entries = self._purge(user, now)
            if self._totals.get(user, 0.0) < limit:
                return None
            return self._wait_until_below(user, entries, limit, now, strictly=True)

    def total(self, user: str) -> float:
        with self._lock:
            self._purge(user, self._clock())
            return self._totals.get(user, 0.0)

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._totals.clear()

    def _purge(self, user: str, now: float) -> deque[tuple[float, float]]:
        entries = self._entries.setdefault(user, deque())
        horizon = now - self.window_seconds
        while entries and entries[0][0] <= horizon:
            _, amount = entries.popleft()
            self._totals[user] -= amount
        return entries

    def _wait_until_below(
        self,
        user: str,
        entries: deque[tuple[float, float]],
        target: float,
        now: float,
        strictly: bool = False,
    ) -> float:
        # Walk from the oldest entry until dropping the expired ones brings the total to `target`.
        total = self._totals.get(user, 0.0)
        for stamp, amount in entries:
            total -= amount
            if total < target or (not strictly and total <= target):
                return max(0.0, stamp + self.window_seconds - now)
        return self.window_seconds


# The execution time a request is charged, kept in its ASGI scope as a one-item list so that every
# layer (fault injection, the handler's worker thread) adds to the same account.
EXECUTION_CHARGE_KEY = "sandbox.execution_ms"


def charge_execution(scope: Any, ms: float) -> None:
    """Add `ms` to the request's execution-time account, when its sandbox keeps one."""
    account = scope.get(EXECUTION_CHARGE_KEY)
    if account is not None:
        account[0] += ms


def retry_after_header(seconds: float) -> str:
    """Seconds as the integer `Retry-After` both services send (at least 1)."""
    return str(max(1, math.ceil(seconds)))


class GateRejected(Exception):
    """A request the concurrency gate refused.

    `reason` is `"concurrency"` (over the limit and no queue: Dataverse answers 429 at once),
    `"queue_full"` (BC: 429) or `"queue_timeout"` (BC: 503 with `retry-after`).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class _UserSlots:
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class ConcurrencyGate:
    """Per-user limit on requests in progress, with an optional FIFO queue.

    The limits are plain attributes so a test (or the sandbox's control API) can change them while
    the server runs. All methods run on the server's event loop.
    """

    def __init__(self, max_concurrent: int, max_queue: int = 0, queue_timeout: float = 0.0) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._users: dict[str, _UserSlots] = {}

    @asynccontextmanager
    async def enter(self, user: str) -> AsyncIterator[None]:
        slots = self._users.setdefault(user, _UserSlots())
        await self._acquire(slots)
        try:
            yield
        finally:
            self._release(slots)

    def in_use(self, user: str) -> int:
        slots = self._users.get(user)
        return slots.active if slots else 0

    def queued(self, user: str) -> int:
        slots = self._users.get(user)
        return len(slots.waiters) if slots else 0

    async def _acquire(self, slots: _UserSlots) -> None:
        if slots.active < self.max_concurrent:
            slots.active += 1
            return
        if self.max_queue <= 0:
            raise GateRejected("concurrency")
        if len(slots.waiters) >= self.max_queue:
            raise GateRejected("queue_full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            # The slot is handed over by `_release` (active stays counted), so no re-check here.
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout)
        except TimeoutError:
            if waiter.done():  # handed over in the same instant: keep the slot
                return
            slots.waiters.remove(waiter)
            waiter.cancel()
            raise GateRejected("queue_timeout") from None
        except asyncio.CancelledError:  # the client went away while queued
            if waiter.done():
                self._release(slots)
            else:
                slots.waiters.remove(waiter)
                waiter.cancel()
            raise

    def _release(self, slots: _UserSlots) -> None:
        # Hand the slot straight to the oldest waiter, unless the limit was lowered meanwhile.
        if slots.active <= self.max_concurrent:
            while slots.waiters:
                waiter = slots.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        slots.active -= 1
