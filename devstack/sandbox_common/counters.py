"""What a sandbox received: request counts per method and entity set, throttling, webhook deliveries.

Benchmarks and tests read these to check the number that matters in production (API requests
per change), so they count what arrived on the wire, including requests that were refused.
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

    def record(self, method: str, entity_set: str) -> None:
        with self._lock:
            self._requests[f"{method.upper()} {entity_set}"] += 1

    def record_throttled(self, reason: str) -> None:
        with self._lock:
            self._throttled[reason] += 1

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
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._throttled.clear()
            self._webhooks.clear()
