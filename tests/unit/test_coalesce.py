"""Coalesced bursts (`shared.sync.coalesce`) on in-memory gateways: the same outcomes as the
one-record path, per record, at the cost of one request per batch, not per record."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any

import pytest

from shared import odata
from shared.connectors.errors import AmbiguousWriteError
from shared.messages import BatchMessage, RecordChange, ScanMessage, SyncMessage, pack, to_json
from shared.store.journal import Journal
from shared.sync import coalesce
from shared.sync.coalesce import Coalescer, Done, Failed, Requeue, Taken, claim, converge, run, settle_claimed
from shared.sync.engine import PENDING_CREATE_GRACE
from shared.sync.reconcile import Outcome
from shared.timestamps import iso_ms, parse_iso
from tests.unit.test_engine import CUSTOMER, Harness


def _dv_messages(ids: list[str]) -> list[SyncMessage]:
    return [SyncMessage(mapping="CUSTOMER", side="dv", id=i, change="created") for i in ids]


def _new_accounts(h: Harness, count: int) -> list[str]:
    return [
        h.dv.seed(CUSTOMER, {"name": f"Acct {n:03d}", "telephone1": str(n)})["accountid"]
        for n in range(count)
    ]


def _coupled_pairs(h: Harness, count: int) -> list[tuple[str, str]]:
    pairs = []
    for n in range(count):
        pairs.append(h.coupled_customer(number=f"C{n:03d}", displayName=f"Cust {n:03d}"))
    h.bc.requests.clear()
    h.dv.requests.clear()
    return pairs


def _journal(h: Harness, outcome: str) -> list[dict[str, Any]]:
    """One row per record: its own row under its Dataverse id (each record of these tests has one),
    with what was written; and it is among the hour's entries (a routine one in a compact row)."""
    rows = [
        row
        for (pk, rk), (row, _) in h.journal_table.rows.items()
        if pk.startswith("rec|") and rk.startswith("dv|") and row["outcome"] == outcome
    ]
    hour = Journal(h.journal_table).between(  # type: ignore[arg-type]
        dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), dt.datetime.now(dt.UTC), outcomes=[outcome]
    )
    assert sorted(e.dv_id or "" for e in hour) == sorted(r["dv_id"] for r in rows)
    return rows


def test_a_burst_of_new_sales_accounts_is_created_in_bc_with_a_request_per_batch_not_per_record() -> None:
    h = Harness()
    ids = _new_accounts(h, 40)
    results = converge(h.engine, _dv_messages(ids))
    assert all(isinstance(r, Done) and r.result.outcome == Outcome.INSERTED for r in results)
    # Dataverse: the 40 accounts in one `$batch` of `In` queries, BC's numbers back in one `$batch`;
    # BC: one match query (40 names joined by `or`, within the URL budget) and one `$batch` of 40 POSTs.
    assert h.dv.requests == {"$batch accounts": 2}
    assert sum(v for k, v in h.bc.requests.items() if k.startswith("GET")) <= 2
    assert h.bc.requests["$batch customers"] == 1
    # Every record coupled and settled, BC's number back in Sales, one journal row each.
    for dv_id in ids:
        c = h.couplings.get("CUSTOMER", "dv", dv_id)
        assert c is not None and c.state == "coupled" and c.last_result == "inserted"
        bc = h.bc.rows("customers")[str(c.bc_id)]
        assert h.dv.rows("accounts")[dv_id]["accountnumber"] == bc["number"]
        assert c.dv_etag == h.dv.rows("accounts")[dv_id]["@odata.etag"]
    assert len(h.bc.rows("customers")) == 40
    assert len(_journal(h, "inserted")) == 40


def test_the_same_burst_one_by_one_costs_requests_per_record() -> None:
    """The baseline the coalesced path is measured against (4 requests per new account)."""
    h = Harness()
    ids = _new_accounts(h, 10)
    for dv_id in ids:
        h.engine.sync_record(_dv_messages([dv_id])[0])
    assert h.bc.total() + h.dv.total() == 40


def test_a_record_bc_refuses_fails_alone_and_its_neighbours_are_created() -> None:
    h = Harness()
    ids = _new_accounts(h, 10)
    h.bc.refuse = frozenset({"Acct 003"})
    results = converge(h.engine, _dv_messages(ids))
    outcomes = [r.result.outcome for r in results if isinstance(r, Done)]
    assert len(outcomes) == 10
    assert outcomes.count(Outcome.INSERTED) == 9 and outcomes[3] == Outcome.FAILED
    # The refused record went the one-record path: its failure is journaled with BC's words, and no
    # pending coupling is left behind (nothing was created in BC for it).
    assert "Acct 003 is refused" in results[3].result.error  # type: ignore[union-attr]
    assert h.couplings.get("CUSTOMER", "dv", ids[3]) is None
    assert len(h.bc.rows("customers")) == 9
    assert len(_journal(h, "failed")) == 1 and len(_journal(h, "inserted")) == 9


def test_a_lost_create_batch_requeues_its_records_and_redelivery_adopts_instead_of_duplicating() -> None:
    h = Harness()
    ids = _new_accounts(h, 5)
    real = h.bc.create_many

    def lost(mapping: Any, bodies: Any, **kw: Any) -> Any:
        real(mapping, bodies, **kw)  # BC created them ...
        raise AmbiguousWriteError("connection dropped after sending")  # ... and the answer was lost

    h.bc.create_many = lost  # type: ignore[method-assign]
    results = converge(h.engine, _dv_messages(ids))
    assert all(isinstance(r, Requeue) and r.message.attempt == 1 for r in results)
    assert all(h.couplings.get("CUSTOMER", "dv", i).state == "pending_bc" for i in ids)  # type: ignore[union-attr]
    later = dt.datetime.now(dt.UTC) + PENDING_CREATE_GRACE + dt.timedelta(seconds=1)
    h.engine.clock = lambda: later
    for r in results:
        assert isinstance(r, Requeue)
        assert h.engine.sync_record(r.message).outcome == Outcome.INSERTED
    assert len(h.bc.rows("customers")) == 5  # adopted, not created again
    assert all(h.couplings.get("CUSTOMER", "dv", i).state == "coupled" for i in ids)  # type: ignore[union-attr]


def test_coupled_sales_changes_are_written_to_bc_in_one_conditional_batch() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 20)
    for _, dv_id in pairs:
        h.dv.edit(CUSTOMER, dv_id, telephone1="555")
    results = converge(h.engine, _dv_messages([dv for _, dv in pairs]))
    assert all(isinstance(r, Done) and r.result.outcome == Outcome.MODIFIED for r in results)
    assert h.dv.requests == {"$batch accounts": 1}
    assert h.bc.requests == {"$batch GET customers": 1, "$batch customers": 1}
    for bc_id, dv_id in pairs:
        assert h.bc.rows("customers")[bc_id]["phoneNumber"] == "555"
        c = h.couplings.get("CUSTOMER", "dv", dv_id)
        assert c is not None and c.bc_etag == h.bc.rows("customers")[bc_id]["@odata.etag"]
        assert c.snapshot["bc"]["phoneNumber"] == "555"  # type: ignore[index]
    rows = _journal(h, "modified")
    assert len(rows) == 20 and all(
        "telephone1" in r["details"] or "phoneNumber" in r["details"] for r in rows
    )


def test_a_refused_conditional_write_is_decided_again_alone_with_a_three_way_merge() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 5)
    for _, dv_id in pairs:
        h.dv.edit(CUSTOMER, dv_id, telephone1="555")
    raced_bc, _ = pairs[2]
    h.bc.race.add(raced_bc)  # someone edits it in BC between our read and our write: 412
    results = converge(h.engine, _dv_messages([dv for _, dv in pairs]))
    assert [r.result.outcome for r in results if isinstance(r, Done)] == [Outcome.MODIFIED] * 5
    assert all(h.bc.rows("customers")[bc]["phoneNumber"] == "555" for bc, _ in pairs)
    # The raced record alone paid the one-record path (read Sales, write BC with the stored ETag: 412
    # would need another read; here the re-read finds BC's new ETag and the write lands).
    assert h.bc.requests["$batch customers"] == 1 and h.bc.requests["GET customers"] >= 1


def test_echoes_cost_the_read_only() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 10)
    results = converge(h.engine, _dv_messages([dv for _, dv in pairs]))
    assert all(isinstance(r, Done) and r.result.outcome == Outcome.UNCHANGED for r in results)
    assert h.dv.requests == {"$batch accounts": 1} and h.bc.total() == 0


def test_bc_notifications_of_our_own_writes_are_echoes_without_a_read() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 10)
    h.bc.edit(CUSTOMER, pairs[0][0], city="Oslo")  # a person's change, after our last sync
    messages = []
    for bc_id, _ in pairs:
        written = parse_iso(h.bc.rows("customers")[bc_id]["lastModifiedDateTime"])
        modified = written - dt.timedelta(milliseconds=2)
        messages.append(SyncMessage(mapping="CUSTOMER", side="bc", id=bc_id, change="updated",
                                    modified=iso_ms(modified)))  # fmt: skip
    results = converge(h.engine, messages)
    outcomes = [r.result.outcome for r in results if isinstance(r, Done)]
    assert outcomes == [Outcome.MODIFIED] + [Outcome.UNCHANGED] * 9
    # Only the person's change was read (and its account, then written).
    assert h.bc.requests == {"$batch GET customers": 1}
    assert h.dv.rows("accounts")[pairs[0][1]]["address1_city"] == "Oslo"


def test_bc_changes_of_coupled_records_are_read_and_written_in_bulk() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 20)
    for bc_id, _ in pairs:
        h.bc.edit(CUSTOMER, bc_id, city="Oslo")
    messages = [SyncMessage(mapping="CUSTOMER", side="bc", id=bc) for bc, _ in pairs]
    results = converge(h.engine, messages)
    assert all(isinstance(r, Done) and r.result.outcome == Outcome.MODIFIED for r in results)
    # BC: the 20 ids in one `id eq ... or ...` filter (within URL_FILTER_CHARS);
    # Dataverse: the counterparts in one `$batch` read, the writes in one `$batch`.
    assert h.bc.requests == {"$batch GET customers": 1}
    assert h.dv.requests == {"$batch accounts": 2}
    assert all(h.dv.rows("accounts")[dv]["address1_city"] == "Oslo" for _, dv in pairs)


def test_a_deleted_or_unknown_record_takes_the_one_record_path() -> None:
    h = Harness()
    ids = _new_accounts(h, 3)
    gone = str(uuid.uuid4())
    results = converge(h.engine, _dv_messages([*ids, gone]))
    assert [r.result.outcome for r in results if isinstance(r, Done)] == [Outcome.INSERTED] * 3 + [
        Outcome.SKIPPED
    ]


def test_an_exception_on_one_record_fails_that_message_only() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 3)
    for _, dv_id in pairs:
        h.dv.edit(CUSTOMER, dv_id, telephone1="555")
    h.bc.race.add(pairs[1][0])
    real = h.engine.sync_record

    def broken(message: SyncMessage, **kw: Any) -> Any:
        raise RuntimeError("storage fell over")

    h.engine.sync_record = broken  # type: ignore[method-assign]
    results = converge(h.engine, _dv_messages([dv for _, dv in pairs]))
    h.engine.sync_record = real  # type: ignore[method-assign]
    assert isinstance(results[0], Done) and isinstance(results[2], Done)
    assert isinstance(results[1], Failed)


# ------------------------------------------------------------------------------ the queue side
class Raw:
    def __init__(self, message: Any, dequeue_count: int = 1) -> None:
        self.content = to_json(message) if not isinstance(message, str) else message
        self.dequeue_count = dequeue_count


class FakeQueue:
    def __init__(self, raws: list[Raw]) -> None:
        self.visible = list(raws)
        self.peeks = self.receives = 0
        self.deleted: list[Raw] = []
        self.released: list[tuple[Raw, int]] = []

    def peek(self, count: int) -> list[str]:
        self.peeks += 1
        return [r.content for r in self.visible[:count]]

    def receive(self, count: int, lease_seconds: int) -> list[Raw]:
        self.receives += 1
        taken, self.visible = self.visible[:count], self.visible[count:]
        return taken

    def delete(self, raw: Raw) -> None:
        self.deleted.append(raw)

    def release(self, raw: Raw, delay: int) -> None:
        self.released.append((raw, delay))


def test_a_change_alone_costs_one_peek_and_takes_the_one_record_path() -> None:
    h = Harness()
    [dv_id] = _new_accounts(h, 1)
    queue = FakeQueue([])
    assert run(h.engine, queue, _dv_messages([dv_id])[0]) is None
    assert queue.peeks == 1 and queue.receives == 0 and h.bc.total() + h.dv.total() == 0


def test_a_queue_of_other_work_is_not_claimed() -> None:
    deletion = SyncMessage(mapping="CUSTOMER", side="bc", id=str(uuid.uuid4()), change="deleted")
    other_company = SyncMessage(mapping="CUSTOMER", side="bc", id=str(uuid.uuid4()), company="c2")
    queue = FakeQueue([Raw(deletion), Raw(other_company), Raw(ScanMessage(mapping="CUSTOMER", side="bc"))])
    assert claim(queue, _dv_messages([str(uuid.uuid4())])[0]) == []
    assert queue.receives == 0


def test_claimed_other_work_and_retries_go_back_at_once_and_twins_are_settled_together() -> None:
    h = Harness()
    ids = _new_accounts(h, 4)
    first, *rest = _dv_messages(ids)
    other = SyncMessage(mapping="CUSTOMER", side="bc", id=str(uuid.uuid4()), change="deleted")
    retried = Raw(_dv_messages([str(uuid.uuid4())])[0], dequeue_count=2)
    twin = Raw(rest[0])
    raws = [Raw(rest[0]), Raw(other), twin, retried, Raw(rest[1]), Raw(rest[2]), Raw("not json")]
    queue = FakeQueue(raws)
    disposition = run(h.engine, queue, first)
    assert isinstance(disposition, Done) and disposition.result.outcome == Outcome.INSERTED
    assert {id(r) for r, delay in queue.released if delay == 0} == {id(raws[1]), id(retried), id(raws[6])}
    assert {id(r) for r in queue.deleted} == {id(raws[0]), id(twin), id(raws[4]), id(raws[5])}
    assert len(h.bc.rows("customers")) == 4 and h.bc.requests["$batch customers"] == 1


def test_settling_deletes_done_requeues_with_delay_and_leaves_failures_for_redelivery_alone() -> None:
    h = Harness()
    messages = _dv_messages([str(uuid.uuid4()) for _ in range(3)])
    raws = [Raw(m) for m in messages]
    queue = FakeQueue([])
    done = Done(coalesce.SyncResult(Outcome.UNCHANGED))
    requeue = Requeue(messages[1].model_copy(update={"attempt": 1}), 7)
    taken = [Taken(raw, [m], batch=False) for raw, m in zip(raws, messages, strict=True)]
    settle_claimed(h.engine, queue, taken, [[done], [requeue], [Failed(ValueError())]])
    assert queue.deleted == [raws[0], raws[1]]
    assert [(r, d > 0) for r, d in queue.released] == [(raws[2], True)]
    assert h.queued == [(requeue.message, 7)]


def test_webhook_calls_queued_together_are_claimed_whole_unless_they_hold_a_deletion() -> None:
    h = Harness()
    ids = _new_accounts(h, 7)
    first, *rest = _dv_messages(ids)
    together = Raw(pack(rest[:3])[0][0])  # three calls' creates in one batch message
    with_deletion = Raw(pack([*rest[3:5], rest[5].model_copy(update={"change": "deleted"})])[0][0])
    queue = FakeQueue([together, with_deletion])
    disposition = run(h.engine, queue, first)
    assert isinstance(disposition, Done) and disposition.result.outcome == Outcome.INSERTED
    assert queue.deleted == [together] and [r for r, _ in queue.released] == [with_deletion]
    assert len(h.bc.rows("customers")) == 4 and h.bc.requests["$batch customers"] == 1


def test_a_claimed_batch_message_is_deleted_once_its_unfinished_changes_are_queued_alone() -> None:
    h = Harness()
    messages = _dv_messages([str(uuid.uuid4()) for _ in range(3)])
    raw = Raw(pack(messages)[0][0])
    queue = FakeQueue([])
    done = Done(coalesce.SyncResult(Outcome.UNCHANGED))
    requeue = Requeue(messages[1].model_copy(update={"attempt": 1}), 7)
    settle_claimed(
        h.engine, queue, [Taken(raw, messages, batch=True)], [[done, requeue, Failed(ValueError())]]
    )
    assert queue.deleted == [raw] and queue.released == []
    retried = messages[2].model_copy(update={"attempt": 1})
    [(first_retry, delay), later] = h.queued  # by delay: the first retry's (jittered, a few seconds)
    assert first_retry == retried and 0 < delay < 7 and later == (requeue.message, 7)


def test_only_first_attempts_of_plain_changes_coalesce() -> None:
    ms = Harness().engine.ms
    plain = SyncMessage(mapping="CUSTOMER", side="dv", id=str(uuid.uuid4()))
    assert coalesce.coalescable(ms, plain)
    assert not coalesce.coalescable(ms, plain, dequeue_count=2)
    assert not coalesce.coalescable(ms, plain.model_copy(update={"attempt": 1}))
    assert not coalesce.coalescable(ms, plain.model_copy(update={"change": "deleted"}))
    assert not coalesce.coalescable(ms, plain.model_copy(update={"mapping": "NOPE"}))


def test_id_filters_are_cut_to_the_url_budget() -> None:
    clauses = [f"id eq {uuid.uuid4()}" for _ in range(100)]
    parts = list(odata.or_chunks(clauses))
    assert sum(len(p) for p in parts) == 100 and len(parts) > 1
    assert all(len(" or ".join(f"({c})" for c in p)) <= odata.URL_FILTER_CHARS for p in parts)


def test_a_worker_arriving_while_a_batch_gathers_hands_its_message_over_and_gets_its_outcome() -> None:
    h = Harness()
    first, handed, queued = _dv_messages(_new_accounts(h, 3))
    queue = FakeQueue([Raw(queued)])
    outcomes: dict[str, Any] = {}
    workers: list[threading.Thread] = []

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        # While the leader gathers, another worker of this process brings its own message.
        if workers:
            return
        worker = threading.Thread(
            target=lambda: outcomes.update(handed=coalescer.handle(h.engine, queue, [handed])[0])  # type: ignore[index]
        )
        workers.append(worker)
        worker.start()
        key = None
        while not coalescer._open[key].followers:
            time.sleep(0.01)

    coalescer = Coalescer(gather_seconds=0.5, sleep=sleep, clock=lambda: now[0], eager=True)
    [led] = coalescer.handle(h.engine, queue, [first]) or [None]
    workers[0].join(timeout=10)
    assert isinstance(led, Done) and led.result.outcome == Outcome.INSERTED
    assert isinstance(outcomes["handed"], Done) and outcomes["handed"].result.outcome == Outcome.INSERTED
    assert h.bc.requests["$batch customers"] == 1 and len(h.bc.rows("customers")) == 3
    assert [r.content for r in queue.deleted] == [to_json(queued)]  # the handed one is its worker's to settle


@pytest.mark.parametrize("behind", ["no", "a page waits", "the change waited"])
def test_a_leader_gathers_longer_when_the_service_is_behind(behind: str) -> None:
    """Changes keep arriving (2 per look): a leader gathers for `gather_seconds`; when its first claim
    found a full page waiting, or its own change waited on the queue, for `backlog_gather_seconds`,
    so its batch is larger."""
    h = Harness()
    backlog = behind != "no"
    waiting = coalesce.CLAIM_PAGE if behind == "a page waits" else 4
    ids = _new_accounts(h, 1 + waiting + 100)
    first, *rest = _dv_messages(ids)
    if behind == "the change waited":
        waited = dt.timedelta(seconds=coalesce.BEHIND_AFTER + 1)
        first = first.model_copy(update={"observed": dt.datetime.now(dt.UTC) - waited})
    queue = FakeQueue([Raw(m) for m in rest[:waiting]])
    arriving = iter(rest[waiting:])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        queue.visible += [Raw(next(arriving)), Raw(next(arriving))]

    coalescer = Coalescer(gather_seconds=0.5, backlog_gather_seconds=2.0, sleep=sleep, clock=lambda: now[0],
                          eager=True)  # fmt: skip
    assert coalescer.handle(h.engine, queue, [first]) is not None
    gathered = len(queue.deleted) - waiting
    assert now[0] == pytest.approx(2.0 if backlog else 0.5)
    assert gathered == (40 if backlog else 10)  # 2 changes per 0.1 s look


def test_a_change_while_another_worker_is_busy_goes_alone_when_nothing_else_arrives() -> None:
    h = Harness()
    [first] = _dv_messages(_new_accounts(h, 1))
    coalescer = Coalescer(gather_seconds=30, sleep=lambda _: None, min_burst=1)
    coalescer._busy[None] = 2  # two workers of this process are on this company's changes
    queue = FakeQueue([])
    assert coalescer.handle(h.engine, queue, [first]) is None  # one look, nothing there: no delay
    assert h.bc.total() + h.dv.total() == 0


def test_a_batch_takes_every_mapping_and_side_of_the_burst_grouped() -> None:
    """An account is announced to CUSTOMER and VENDOR, and our writes come back as BC echoes: one batch
    takes them all, each group converged in bulk, instead of putting them back (and counting a
    delivery against each)."""
    h = Harness()
    pairs = _coupled_pairs(h, 4)
    for _, dv_id in pairs:
        h.dv.edit(CUSTOMER, dv_id, telephone1="555")
    first, *rest = _dv_messages([dv for _, dv in pairs])
    echoes = [SyncMessage(mapping="CUSTOMER", side="bc", id=bc) for bc, _ in pairs]  # unchanged in BC
    queue = FakeQueue([Raw(m) for m in [*rest, *echoes]])
    disposition = run(h.engine, queue, first)
    assert isinstance(disposition, Done) and disposition.result.outcome == Outcome.MODIFIED
    assert queue.released == [] and len(queue.deleted) == 7
    # Sales side: 1 read; BC: the counterparts' read, the writes' `$batch`, and the 4 echoes' read.
    assert h.dv.requests == {"$batch accounts": 1}
    assert h.bc.requests == {"$batch GET customers": 2, "$batch customers": 1}


def test_a_fresh_change_with_nobody_busy_does_not_even_look_at_the_queue() -> None:
    h = Harness()
    [dv_id] = _new_accounts(h, 1)
    queue = FakeQueue([Raw(m) for m in _dv_messages(_new_accounts(h, 3))])
    coalescer = Coalescer(min_burst=1)
    assert coalescer.handle(h.engine, queue, _dv_messages([dv_id])) is None
    assert queue.peeks == 0 and queue.receives == 0
    # The same change after waiting on the queue (a backlog) leads a batch.
    waited = _dv_messages([dv_id])[0].model_copy(
        update={"observed": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)}
    )
    [led] = Coalescer(gather_seconds=0.0, min_burst=1).handle(h.engine, queue, [waited]) or [None]
    assert isinstance(led, Done) and led.result.outcome == Outcome.INSERTED and queue.peeks >= 1


def test_a_few_waiting_changes_go_the_one_record_way() -> None:
    h = Harness()
    [dv_id] = _new_accounts(h, 1)
    waited = _dv_messages([dv_id])[0].model_copy(
        update={"observed": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)}
    )
    few = FakeQueue([Raw(m) for m in _dv_messages(_new_accounts(h, coalesce.MIN_BURST - 1))])
    assert Coalescer(gather_seconds=0.0).handle(h.engine, few, [waited]) is None
    assert few.receives == 0  # looked, claimed nothing
    enough = FakeQueue([Raw(m) for m in _dv_messages(_new_accounts(h, coalesce.MIN_BURST))])
    assert isinstance((Coalescer(gather_seconds=0.0).handle(h.engine, enough, [waited]) or [None])[0], Done)


def test_webhook_calls_that_arrived_together_lead_a_batch_with_whatever_of_the_burst_waits() -> None:
    """Several changes in one message are a burst already: two more waiting are enough to take (a
    single change needs `MIN_BURST` waiting)."""
    h = Harness()
    lead = _dv_messages(_new_accounts(h, 3))
    queue = FakeQueue([Raw(m) for m in _dv_messages(_new_accounts(h, 2))])
    answers = Coalescer(gather_seconds=0.0).handle(h.engine, queue, lead)
    assert answers is not None and all(isinstance(a, Done) for a in answers)
    assert len(queue.deleted) == 2 and h.bc.requests["$batch customers"] == 1
    assert len(h.bc.rows("customers")) == 5


# --------------------------------------------------------------------- a webhook call's batch
def _batch(side: str, changes: list[tuple[str, str]]) -> BatchMessage:
    """Notifications stamped after the records' last sync (so each is read: an echo by its values)."""
    stamp = iso_ms(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    return BatchMessage(
        mapping="CUSTOMER", side=side, reason="bc webhook",
        changes=[RecordChange(id=i, change=c, modified=stamp) for i, c in changes],  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_batch_of_echoes_and_edits_converges_in_place_and_queues_only_the_one_record_path_work() -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 20)
    edited = pairs[0][0]
    h.bc.edit(CUSTOMER, edited, city="Oslo")
    new = h.bc.seed(CUSTOMER, {"number": "NEW1", "displayName": "New in BC"})["id"]
    changes = [(bc, "deleted" if n == 1 else "updated") for n, (bc, _) in enumerate(pairs)]
    changes += [(new, "created"), (pairs[2][0], "updated"), (pairs[1][0], "updated")]  # second notices

    counts = coalesce.converge_batch(h.engine, _batch("bc", changes))

    # The 18 echoes and the edit decided in bulk: one BC read, one Dataverse read, one write.
    assert counts == {"unchanged": 18, "modified": 1, "queued alone": 2}
    assert h.bc.requests == {"$batch GET customers": 1} and h.dv.requests == {"$batch accounts": 2}
    assert h.dv.rows("accounts")[pairs[0][1]]["address1_city"] == "Oslo"
    # The deletion (a policy decides it) and the create in Sales go through the queue, one each.
    assert sorted((m.id, m.change, m.attempt, delay) for m, delay in h.queued) == sorted(
        [(pairs[1][0], "deleted", 0, 0), (new, "created", 0, 0)]
    )


def test_a_batch_whose_bulk_step_fails_queues_each_record_for_a_retry_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness()
    pairs = _coupled_pairs(h, 3)

    def storage_down(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("storage fell over")

    monkeypatch.setattr(coalesce, "converge", storage_down)
    counts = coalesce.converge_batch(h.engine, _batch("bc", [(bc, "updated") for bc, _ in pairs]))

    assert counts == {"queued alone": 3}
    assert sorted((m.id, m.attempt) for m, _ in h.queued) == sorted((bc, 1) for bc, _ in pairs)
    assert all(1 <= delay <= 2 for _, delay in h.queued)  # the first retry's delay
    assert not coalesce.coalescable(h.engine.ms, h.queued[0][0])  # retried alone, poisoned alone


def test_the_processor_converges_a_burst_on_its_first_delivery_and_fans_out_a_few_or_a_redelivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from shared.sync import processor
    from shared.sync.processor import _converged_in_place

    h = Harness()
    pairs = _coupled_pairs(h, 3 * coalesce.MIN_BURST)
    batch = _batch("bc", [(bc, "updated") for bc, _ in pairs[: coalesce.MIN_BURST]])
    rt = SimpleNamespace(engine=h.engine, multi_company=False, mappings=h.engine.ms)

    assert _converged_in_place(rt, batch, dequeue_count=1)
    assert h.queued == [] and h.bc.requests == {"$batch GET customers": 1}
    assert not _converged_in_place(rt, batch, dequeue_count=2)  # `dispatch` fans it out
    several = _batch("dv", [(dv, "updated") for _, dv in pairs])
    assert not _converged_in_place(SimpleNamespace(engine=h.engine, multi_company=True), several, 1)

    # A few changes (concurrent webhook calls queued together) with nothing else waiting: one look at
    # the queue, then fanned out, one message per record.
    few = _batch("bc", [(bc, "updated") for bc, _ in pairs[-3:]])
    queue = FakeQueue([])
    monkeypatch.setattr(processor, "_sync_queue", lambda _rt: queue)
    assert not _converged_in_place(rt, few, 1) and queue.peeks == 1
    # The same few while the rest of the burst waits on the queue: converged with it in one read,
    # the claimed messages deleted.
    rest = [SyncMessage(mapping="CUSTOMER", side="bc", id=bc) for bc, _ in pairs[coalesce.MIN_BURST : -3]]
    queue = FakeQueue([Raw(m) for m in rest])
    h.bc.requests.clear()
    assert _converged_in_place(rt, few, 1)
    assert len(queue.deleted) == len(rest) and queue.released == [] and h.queued == []
    assert h.bc.requests == {"$batch GET customers": 1}


def test_a_change_announced_to_a_sibling_mapping_is_skipped_in_bulk_without_a_request() -> None:
    """An account is announced to CUSTOMER and VENDOR (both map accounts, split by scope); VENDOR's
    message for an account coupled under CUSTOMER says so, as the one-record path does, without
    taking that path (its point reads and journal row per record)."""
    from shared.mapping import load_mapping_set
    from shared.store.couplings import Coupling

    h = Harness(load_mapping_set())
    dv_ids = [str(uuid.uuid4()) for _ in range(10)]
    for dv_id in dv_ids:
        coupling = Coupling("CUSTOMER", str(uuid.uuid4()), dv_id)
        coupling.state = "coupled"
        h.couplings.create(coupling)
    h.engine.resolver.code_tables(h.engine.ms.entity("VENDOR"))  # cached once per process
    h.bc.requests.clear()

    def alone(engine: Any, message: SyncMessage) -> coalesce.Disposition:
        raise AssertionError(f"{message.id} took the one-record path")

    messages = [SyncMessage(mapping="VENDOR", side="dv", id=i) for i in dv_ids]
    results = converge(h.engine, messages, alone)
    assert [(r.result.outcome, r.result.reason) for r in results if isinstance(r, Done)] == [
        (Outcome.SKIPPED, "coupled under CUSTOMER")
    ] * 10
    assert h.requests() == {}
