"""What a sandbox received: request counts per method and entity set, throttling, webhook deliveries.

Benchmarks and tests read these to check the number that matters in production (API requests
per change), so they count what arrived on the wire, including requests that were refused. Per
authenticated user they also keep requests, refusals (429/503) and the most requests that user had
open at once (`peak_concurrent`: running and queued, as the caller sees them), which is how a
scale-out test shows that the service's instances together never exceeded BC's 5 per user.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class RequestCounters:
    """Thread-safe counters; `snapshot()` is JSON-ready."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._throttled: Counter[str] = Counter()
        self._webhooks: Counter[str] = Counter()
        self._by_user: Counter[str] = Counter()
        self._throttled_by_user: Counter[str] = Counter()
        self._open: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()

    def record(self, method: str, entity_set: str) -> None:
        with self._lock:
            self._requests[f"{method.upper()} {entity_set}"] += 1

    def record_throttled(self, reason: str, user: str | None = None) -> None:
        with self._lock:
            self._throttled[reason] += 1
            if user is not None:
                self._throttled_by_user[user] += 1

    def opened(self, user: str) -> None:
        """An authenticated request of `user` arrived (before any limit is applied)."""
        with self._lock:
            self._by_user[user] += 1
            self._open[user] += 1
            self._peak[user] = max(self._peak[user], self._open[user])

    def closed(self, user: str) -> None:
        with self._lock:
            self._open[user] -= 1

    def record_webhook(self, outcome: str) -> None:
        with self._lock:
            self._webhooks[outcome] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(sorted(self._requests.items())),
                "total": sum(self._requests.values()),
                "throttled": dict(sorted(self._throttled.items())),
                "webhooks": dict(sorted(self._webhooks.items())),
                "users": {
                    user: {
                        "requests": count,
                        "throttled": self._throttled_by_user[user],
                        "peak_concurrent": self._peak[user],
                    }
                    for user, count in sorted(self._by_user.items())
                },
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._throttled.clear()
            self._webhooks.clear()
            self._by_user.clear()
            self._throttled_by_user.clear()
            # Requests still open stay counted, so the next peak starts from them.
            self._peak = Counter({user: n for user, n in self._open.items() if n > 0})
