"""RequestCounters."""

from __future__ import annotations

import json
import threading

from devstack.sandbox_common.counters import RequestCounters


def test_snapshot_is_json_ready_and_reset_clears() -> None:
    counters = RequestCounters()
    counters.record("get", "customers")
    counters.record("GET", "customers")
    counters.record("PATCH", "customers")
    counters.record_throttled("rate")
    counters.record_webhook("delivered")
    snapshot = counters.snapshot()
    assert snapshot == {
        "requests": {"GET customers": 2, "PATCH customers": 1},
        "total": 3,
        "throttled": {"rate": 1},
        "webhooks": {"delivered": 1},
        "users": {},
    }
    assert json.loads(json.dumps(snapshot)) == snapshot
    counters.reset()
    assert counters.snapshot()["total"] == 0


def test_counting_is_thread_safe() -> None:
    counters = RequestCounters()

    def work() -> None:
        for _ in range(10_000):
            counters.record("GET", "items")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.snapshot()["total"] == 40_000


def test_per_user_requests_refusals_and_the_most_open_at_once() -> None:
    counters = RequestCounters()
    for _ in range(3):
        counters.opened("INTEGRATION")
    counters.record_throttled("concurrency", "INTEGRATION")
    for _ in range(3):
        counters.closed("INTEGRATION")
    counters.opened("INTEGRATION")
    counters.opened("SALES")
    assert counters.snapshot()["users"] == {
        "INTEGRATION": {"requests": 4, "throttled": 1, "peak_concurrent": 3},
        "SALES": {"requests": 1, "throttled": 0, "peak_concurrent": 1},
    }
    counters.reset()  # requests still open count towards the next peak
    counters.opened("INTEGRATION")
    expected = {"requests": 1, "throttled": 0, "peak_concurrent": 2}
    assert counters.snapshot()["users"]["INTEGRATION"] == expected
