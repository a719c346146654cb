"""The request budget shared by instances through real Table Storage (Azurite): several budgets, as
several instances would hold, never grant more than the allowance in any window the server counts,
claim in blocks (storage round-trips per block, not per request), and fall back to an instance's
share when storage cannot be asked."""

from __future__ import annotations

import threading
import uuid

import pytest
from azure.data.tables import TableServiceClient

from shared.connectors.retry import RequestBudget
from shared.store import tables
from shared.store.request_budget import SharedRequestBudget
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


class FakeClock:
    """Time that moves only when a budget sleeps (waiting for the window) or the test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def _budgets(storage: Storage, clock: FakeClock, n: int, **kwargs: object) -> list[SharedRequestBudget]:
    storage.ensure()
    service = f"bc{uuid.uuid4().hex[:8]}"
    return [
        SharedRequestBudget(
            storage.table(tables.REQUEST_BUDGET),
            service,
            fallback=RequestBudget(1_000_000, 300),
            clock=clock,
            sleep=clock.sleep,
            **kwargs,  # type: ignore[arg-type]
        )
        for _ in range(n)
    ]


def test_instances_together_stay_within_the_allowance_in_every_window(storage: Storage) -> None:
    clock = FakeClock()
    budgets = _budgets(storage, clock, 3, max_requests=60, window_seconds=30.0, bucket_seconds=5.0)
    sent: list[float] = []
    # Round-robin over the instances, as fast as they are allowed, for four windows of time.
    while clock.now < 1_000_000.0 + 120:
        for budget in budgets:
            budget.acquire()
            sent.append(clock.now)
    # The server's sliding window: no 30 s span may hold more than 60 requests.
    sent.sort()
    start = 0
    worst = 0
    for end, at in enumerate(sent):
        while sent[start] <= at - 30.0:
            start += 1
        worst = max(worst, end - start + 1)
    assert worst <= 60
    # ... while the allowance is used: at least half of it over those four windows (the rest is
    # what the bucketing keeps in reserve and what instances dropped unspent at a bucket's end).
    assert len(sent) >= 0.5 * 60 * 4


def test_claims_are_blocks_not_one_round_trip_per_request(storage: Storage) -> None:
    clock = FakeClock()
    (budget,) = _budgets(storage, clock, 1, max_requests=5_800, window_seconds=300.0)
    for _ in range(200):
        budget.acquire()
    assert budget.claims == 10  # blocks of 20 while the window is far from full


def test_a_lost_race_reads_again_instead_of_overwriting_the_other_instances_grant(
    storage: Storage,
) -> None:
    clock = FakeClock()
    first, second = _budgets(storage, clock, 2, max_requests=100, window_seconds=30.0, max_block=10)
    first.acquire()
    second.acquire()  # same bucket: must add to the first one's grant, not replace it
    rows = list(storage.table(tables.REQUEST_BUDGET).query_entities(
        "PartitionKey eq @p", parameters={"p": first.service}
    ))  # fmt: skip
    assert sum(int(row["Granted"]) for row in rows) == 20

    # Interleave a write between one instance's read and its write: its ETag no longer matches.
    original = second._rows

    def read_then_other_instance_claims() -> list:  # type: ignore[type-arg]
        rows = original()
        first._left = 0
        first.acquire()
        return rows

    second._left = 0
    second._rows = read_then_other_instance_claims  # type: ignore[method-assign]
    conflicts = second.conflicts
    second._claim(clock(), int(clock() // second.bucket_seconds))
    assert second.conflicts == conflicts + 1
    second._rows = original  # type: ignore[method-assign]
    second.acquire()
    rows = list(storage.table(tables.REQUEST_BUDGET).query_entities(
        "PartitionKey eq @p", parameters={"p": first.service}
    ))  # fmt: skip
    assert sum(int(row["Granted"]) for row in rows) == 40


def test_without_storage_an_instance_spends_only_its_share(storage_connection_string: str) -> None:
    clock = FakeClock()
    table = TableServiceClient.from_connection_string(storage_connection_string).get_table_client(
        f"missing{uuid.uuid4().hex[:8]}"
    )
    fallback = RequestBudget(3, 300.0, clock=clock, sleep=clock.sleep)
    budget = SharedRequestBudget(
        table, "bc", max_requests=9, window_seconds=300.0, fallback=fallback, clock=clock, sleep=clock.sleep
    )
    for _ in range(3):
        budget.acquire()
    assert clock.now == 1_000_000.0
    budget.acquire()  # the fourth waits for the share's window
    assert clock.now >= 1_000_000.0 + 299


def test_left_is_the_shared_allowance_not_yet_granted_in_the_window(storage: Storage) -> None:
    # What the `bcsync.api.budget_left` metric reports: every instance's grants count.
    clock = FakeClock()
    first, second = _budgets(storage, clock, 2, max_requests=100, window_seconds=30.0, bucket_seconds=5.0,
                             max_block=10)  # fmt: skip
    assert first.left() == 100
    first.acquire()
    second.acquire()
    assert first.left() == second.left() == 80  # a block of 10 each
    clock.now += 40.0  # past the window (and the bucket it counts on top)
    assert first.left() == 100
