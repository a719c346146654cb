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
