"""A full resync of 6,000 customers into an empty Dataverse, through the queue and the dev host's
processor, and a second one that finds nothing to do (it reads Dataverse in two pages of up to 5,000).
`python -m bench.initial_sync` measures 100,000. Like every e2e module it gets its own stack
(conftest), so its Dataverse starts without accounts."""

from __future__ import annotations

import time

import pytest

from shared.store.journal import RunSummary
from shared.sync import bulk
from tests.e2e.harness import E2EStack, diff, wait_for, writes

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"
COUNT = 6_000


def _resync(e2e: E2EStack) -> tuple[RunSummary, float]:
    started = time.monotonic()
    run_id = bulk.request_full_resync(e2e.rt.storage, CUSTOMER)

    def finished() -> RunSummary | None:
        run = e2e.rt.journal.get_run(CUSTOMER, run_id)
        return run if run is not None and not run.in_progress else None

    run = wait_for(finished, "the full resync to finish", timeout=300, interval=0.25)
    return run, time.monotonic() - started


def test_full_resync_of_6000_customers_couples_all_and_a_second_run_writes_nothing(e2e: E2EStack) -> None:
    assert not e2e.dv.rows("accounts"), "Dataverse must start without accounts"
    ids = e2e.bc.seed_customers(COUNT)
    numbers = {e2e.bc.get("customers", i)["number"] for i in ids}
    before, dv_writes_before = e2e.service_requests(), writes(e2e.dv)

    run, elapsed = _resync(e2e)
    spent = diff(e2e.service_requests(), before)
    print(
        f"\nfull resync of {COUNT:,} customers into an empty Dataverse: {elapsed:.1f} s, {run.counts}, "
        f"{sum(spent.values())} requests {spent}; Dataverse writes {diff(writes(e2e.dv), dv_writes_before)}"
    )
    assert run.status == "succeeded", run
    created = {r["accountnumber"]: r["accountid"] for r in e2e.dv.rows("accounts")}
    assert numbers <= set(created), f"{len(numbers - set(created))} customers have no account"
    coupled = dict(e2e.rt.couplings.all_ids(CUSTOMER, "bc"))
    assert all(coupled.get(i) == created[e2e.bc.get("customers", i)["number"]] for i in ids)
    assert sum(spent.values()) < 200, spent  # bulk reads and writes, not one request per record
    e2e.settle(timeout=120)

    dv_writes_before, bc_writes_before = writes(e2e.dv), writes(e2e.bc)
    before = e2e.service_requests()
    second, elapsed = _resync(e2e)
    spent = diff(e2e.service_requests(), before)
    print(f"second full resync: {elapsed:.1f} s, {second.counts}, {sum(spent.values())} requests {spent}")
    assert second.status == "succeeded", second
    assert diff(writes(e2e.dv), dv_writes_before) == {}
    assert diff(writes(e2e.bc), bc_writes_before) == {}


def test_an_interrupted_resync_says_so_and_the_queue_finishes_it(e2e: E2EStack) -> None:
    ids = e2e.bc.seed_customers(300, start=COUNT + 1)
    # Dataverse refuses the credentials once (a secret rotated under a running job): the attempt
    # stops, and the queue's redelivery runs the resync again.
    e2e.dv.injector.add(
        {"action": "status", "status": 401, "method": "POST", "path_contains": "UpsertMultiple", "times": 1}
    )
    run_id = bulk.request_full_resync(e2e.rt.storage, CUSTOMER)

    def finished() -> RunSummary | None:
        run = e2e.rt.journal.get_run(CUSTOMER, run_id)
        return run if run is not None and not run.in_progress else None

    run = wait_for(finished, "the interrupted resync to finish", timeout=300, interval=0.1)
    assert not e2e.dv.injector.rules(), "the fault was never hit: the test proves nothing"
    # The interrupted state may last less than a poll of the journal; the finished run keeps it.
    assert run.status == "succeeded", run
    assert run.attempts == 2 and run.message.endswith("(attempt 2)"), run
    assert "AuthenticationError" in run.interrupted_by and "poison" in run.interrupted_by, run
    coupled = dict(e2e.rt.couplings.all_ids(CUSTOMER, "bc"))
    assert all(i in coupled for i in ids)
