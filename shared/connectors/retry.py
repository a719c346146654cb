"""The one retry policy and HTTP transport shared by every API client.

`ApiTransport.send` sends a request, maps a failed response to a typed error with the client's
`map_error`, and retries only what may succeed later: throttling honours `Retry-After`, transient
failures back off exponentially with full jitter, all bounded by attempts and total time. A write
that is not idempotent is never re-sent after the request may have reached the server.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from shared import telemetry
from shared.connectors.errors import (
    AmbiguousWriteError,
    ApiError,
    RetriableApiError,
    ThrottledError,
    TransientError,
)

ErrorMapper = Callable[[httpx.Response], ApiError]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# A client's `service` -> its side in metrics and the start of its spans' names.
_SIDES = {"business_central": ("bc", "BC"), "dataverse": ("dv", "Dataverse")}


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    max_total_seconds: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff for the `attempt`-th retry (1-based)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return rng.uniform(cap / 2, cap)

    def delay(self, attempt: int, error: RetriableApiError, rng: random.Random) -> float:
        if error.retry_after is not None:
            return max(0.0, error.retry_after)
        return self.backoff(attempt, rng)


@dataclass
class RequestStats:
    """What a client sent: the number production pays for. Keys are `"METHOD kind"`.

    `in_this_thread` and `this_thread` count only the calling thread's requests, so a worker (or a
    test) can say what one record cost while others share the client.
    """

    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    throttled: int = 0
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, key: str) -> None:
        with self._lock:
            self.requests[key] += 1
        self._thread_counter()[key] += 1

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def in_this_thread(self) -> int:
        return sum(self._thread_counter().values())

    @property
    def this_thread(self) -> Counter[str]:
        """A copy of the calling thread's requests by key."""
        return Counter(self._thread_counter())

    def _thread_counter(self) -> Counter[str]:
        counter: Counter[str] | None = getattr(self._local, "requests", None)
        if counter is None:
            counter = self._local.requests = Counter()
        return counter

    def reset(self) -> None:
        self.requests.clear()
        self.retries = 0
        self.throttled = 0


class Budget(Protocol):
    """What the transport asks before each request: `acquire` returns when one more request fits
    the integration user's allowance (waiting if it must)."""

    def acquire(self) -> None: ...


class RequestBudget:
    """Client-side sliding window under the service's per-user limit (both BC and Dataverse allow
    6,000 requests per 5 minutes): when the window is full, `acquire` waits for the oldest request
    to leave it instead of sending a request the server would answer with 429. Per process: the
    runtime shares the limit across instances with `shared.store.request_budget.SharedRequestBudget`,
    which falls back to one of these (an instance's share) when storage cannot be asked."""

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.waited_seconds = 0.0
        self._sent: deque[float] = deque()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def left(self) -> int:
        """Requests that may still be sent in the current window (a metric)."""
        with self._lock:
            now = self._clock()
            return self.max_requests - sum(1 for sent in self._sent if now - sent < self.window_seconds)

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and now - self._sent[0] >= self.window_seconds:
                    self._sent.popleft()
                if len(self._sent) < self.max_requests:
                    self._sent.append(now)
                    return
                wait = self.window_seconds - (now - self._sent[0])
            self.waited_seconds += wait
            self._sleep(wait)


class ApiTransport:
    """An `httpx.Client` with error mapping, retry and request counting for one service."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        service: str,
        map_error: ErrorMapper,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        budget: Budget | None = None,
        max_concurrent: int | None = None,
    ) -> None:
        self.client = client
        self.budget = budget
        # Requests of this process in flight at once (BC: 5 per user across every instance, see
        # docs/architecture.md#request-budget); waiting for a slot never counts against a retry.
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        self.service = service
        self.map_error = map_error
        self.policy = policy or RetryPolicy()
        self.stats = RequestStats()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._local = threading.local()  # the retry count of this thread's request (telemetry)

    def send(
        self,
        method: str,
        url: str,
        *,
        kind: str = "",
        idempotent: bool | None = None,
        **kwargs: object,
    ) -> httpx.Response:
        """`_send` in a span named by the service, method and entity set (never the URL: its `$filter`
        holds record values), with the final status and the retry count."""
        if not telemetry.enabled():
            return self._send(method, url, kind=kind, idempotent=idempotent, **kwargs)
        side, name = _SIDES.get(self.service, (self.service, self.service))
        attributes = {"http.request.method": method.upper(), "bcsync.entity_set": kind, "bcsync.side": side}
        with telemetry.span(f"{name} {method.upper()} {kind}".strip(), attributes, kind="client") as span:
            self._local.retries = 0
            try:
                response = self._send(method, url, kind=kind, idempotent=idempotent, **kwargs)
            except ApiError as exc:
                span.set("http.response.status_code", exc.status or None)
                raise
            finally:
                span.set("bcsync.retry_count", self._local.retries)
            span.set("http.response.status_code", response.status_code)
            return response

    def _send(
        self,
        method: str,
        url: str,
        *,
        kind: str = "",
        idempotent: bool | None = None,
        **kwargs: object,
    ) -> httpx.Response:
        """Send with retry; return a 2xx/3xx response or raise a typed `ApiError`.

        `idempotent` defaults by method (POST and PATCH are not); pass True for a create with a
        client-chosen id or a conditional write, which are safe to repeat.
        """
        method = method.upper()
        safe_to_resend = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            if self.budget is not None:
                self.budget.acquire()
            self.stats.record(f"{method} {kind}".strip())
            telemetry.count("bcsync.api.requests", side=_SIDES.get(self.service, (self.service,))[0])
            reached_server = True
            try:
                response = self._request(method, url, kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Never reached the server: always safe to send again.
                reached_server = False
                error: ApiError = TransientError(
                    f"cannot connect: {exc!r}", service=self.service, method=method, url=url
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if safe_to_resend:
                    error = TransientError(
                        f"no response: {exc!r}", service=self.service, method=method, url=url
                    )
                else:
                    raise AmbiguousWriteError(
                        f"no response to a non-idempotent {method}: re-read before writing again ({exc!r})",
                        service=self.service,
                        method=method,
                        url=url,
                    ) from exc
            else:
                if response.status_code < 400:
                    return response
                error = self.map_error(response)
                error.service, error.method, error.url = self.service, method, url

            if not isinstance(error, RetriableApiError):
                raise error
            if isinstance(error, ThrottledError):
                self.stats.throttled += 1
                telemetry.count("bcsync.api.throttled", side=_SIDES.get(self.service, (self.service,))[0])
            elif reached_server and not safe_to_resend and not _certainly_not_processed(error):
                raise error
            wait = self.policy.delay(attempt, error, self._rng)
            out_of_time = self._clock() - started + wait > self.policy.max_total_seconds
            if attempt >= self.policy.max_attempts or out_of_time:
                raise error
            self.stats.retries += 1
            self._local.retries = getattr(self._local, "retries", 0) + 1
            self._sleep(wait)

    def _request(self, method: str, url: str, kwargs: dict[str, object]) -> httpx.Response:
        if self._slots is None:
            return self.client.request(method, url, **kwargs)  # type: ignore[arg-type]
        with self._slots:  # held while the request is on the wire, released before any backoff
            return self.client.request(method, url, **kwargs)  # type: ignore[arg-type]


def _certainly_not_processed(error: RetriableApiError) -> bool:
    # Throttled requests are refused before any work is done; a plain 5xx may have committed.
    return isinstance(error, ThrottledError)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (both services send an integer); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
