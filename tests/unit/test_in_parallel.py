"""`in_parallel`: a step's independent storage requests sent together."""

import threading
import time

import pytest

from shared.store.storage import in_parallel


def test_results_come_in_the_order_of_the_items() -> None:
    assert in_parallel(lambda n: n * n, [3, 1, 2]) == [9, 1, 4]
    assert in_parallel(lambda n: n, []) == []


def test_the_items_run_at_once() -> None:
    """Two items that each wait for the other: one after another they never meet."""
    meeting = threading.Barrier(2, timeout=5)
    assert in_parallel(lambda n: meeting.wait() >= 0 and n, [1, 2]) == [1, 2]


def test_a_failure_is_raised_once_every_item_has_finished() -> None:
    finished: list[int] = []

    def work(n: int) -> int:
        if n == 0:
            raise ValueError("the first item failed")
        time.sleep(0.05)
        finished.append(n)
        return n

    with pytest.raises(ValueError, match="first item"):
        in_parallel(work, [0, 1, 2, 3])
    assert sorted(finished) == [1, 2, 3]


def test_at_most_limit_items_run_at_once() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def work(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return n

    assert in_parallel(work, list(range(12)), limit=3) == list(range(12))
    assert most <= 3
