from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shared.store import tables
from shared.store.journal import TRUNCATED, Journal, JournalEntry, RunSummary
from shared.store.storage import Storage
from shared.store.watermarks import Watermark, WatermarkConflictError, WatermarkStore

pytestmark = pytest.mark.integration


@pytest.fixture
def journal(storage: Storage) -> Journal:
    storage.ensure()
    return Journal(storage.table(tables.JOURNAL))


def test_history_of_a_record_newest_first_from_either_id(journal: Journal) -> None:
    mapping = f"M{uuid.uuid4().hex[:6]}"
    t0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
    journal.record(JournalEntry(mapping, "inserted", bc_id="b1", dv_id="d1", at=t0, fields=["name"]))
    journal.record(
        JournalEntry(mapping, "failed", bc_id="b1", dv_id="d1", at=t0 + dt.timedelta(seconds=5), error="boom")
    )
    by_bc = journal.history(mapping, "bc", "b1")
    by_dv = journal.history(mapping, "dv", "d1")
    assert [e.outcome for e in by_bc] == ["failed", "inserted"]
    assert [e.outcome for e in by_dv] == ["failed", "inserted"]
    assert by_bc[1].fields == ["name"] and by_bc[0].error == "boom"


def test_entries_by_time_range(journal: Journal) -> None:
    mapping = f"M{uuid.uuid4().hex[:6]}"
    base = dt.datetime(2030, 1, 1, 9, 59, 58, tzinfo=dt.UTC)
    for i in range(5):  # crosses an hour boundary
        journal.record(JournalEntry(mapping, "modified", bc_id=f"b{i}", at=base + dt.timedelta(seconds=i)))
    got = list(
        journal.between(base + dt.timedelta(seconds=1), base + dt.timedelta(seconds=3), mapping=mapping)
    )
    assert [e.bc_id for e in got] == ["b3", "b2", "b1"]


def test_a_batch_keeps_routine_time_rows_compact_and_echoes_out_of_record_histories(journal: Journal) -> None:
    mapping = f"M{uuid.uuid4().hex[:6]}"
    at = dt.datetime(2030, 2, 1, 10, 30, tzinfo=dt.UTC)
    batch = [JournalEntry(mapping, "inserted", bc_id=f"b{i}", dv_id=f"d{i}", at=at, source="dv",
                          changes=[{"field": "name", "new": f"N{i}"}]) for i in range(150)]  # fmt: skip
    batch += [
        JournalEntry(mapping, "unchanged", bc_id=f"e{i}", dv_id=f"f{i}", at=at, source="bc")
        for i in range(150)
    ]
    batch.append(JournalEntry(mapping, "failed", bc_id="x", dv_id="y", at=at, error="refused", source="dv"))
    journal.record_many(batch)

    hour = journal.table.query_entities(f"PartitionKey eq 't|2030020110' and mapping eq '{mapping}'")
    rows = {r["outcome"]: r for r in hour}
    assert set(rows) == {"bulk", "failed"}  # the 300 routine entries in compact rows, the failure alone
    # Read by time, one entry per record, with its side; filtered by outcome.
    window = (at - dt.timedelta(seconds=1), at + dt.timedelta(seconds=1))
    entries = list(journal.between(*window, mapping=mapping))
    assert len(entries) == 301 and {e.source for e in entries if e.outcome == "unchanged"} == {"bc"}
    assert [e.bc_id for e in journal.between(*window, mapping=mapping, outcomes=["failed"])] == ["x"]
    assert len(list(journal.between(*window, mapping=mapping, outcomes=["inserted"]))) == 150
    # A record's history: what was written, with its values; an echo is not in it.
    [inserted] = journal.history(mapping, "dv", "d7")
    assert inserted.outcome == "inserted" and inserted.changes == [{"field": "name", "new": "N7"}]
    assert journal.history(mapping, "bc", "e7") == []
    assert [e.outcome for e in journal.history(mapping, "dv", "y")] == ["failed"]


def test_history_written_before_the_buckets_is_still_read(journal: Journal) -> None:
    mapping = f"M{uuid.uuid4().hex[:6]}"
    old = JournalEntry(mapping, "inserted", bc_id="b1", dv_id="d1", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    stamp = f"{10**19 - int(old.at.timestamp() * 1_000_000):020d}-abcdef12"  # newest first
    row = {**old.to_row(), "PartitionKey": f"rec|{mapping}", "RowKey": f"dv|d1|{stamp}"}
    journal.table.upsert_entity(row)  # as versions before the buckets wrote it
    journal.record(JournalEntry(mapping, "modified", bc_id="b1", dv_id="d1"))
    assert [e.outcome for e in journal.history(mapping, "dv", "d1")] == ["modified", "inserted"]


def test_run_summary_progress(journal: Journal) -> None:
    run = RunSummary(
        "r1", "CUSTOMER-" + uuid.uuid4().hex[:4], "full_resync", started="2026-11-27T00:00:00Z", total=10
    )
    journal.save_run(run)
    run.done, run.counts = 4, {"inserted": 4}
    journal.save_run(run)
    got = journal.get_run(run.mapping, "r1")
    assert got is not None and got.done == 4 and got.counts == {"inserted": 4}


def test_a_run_started_again_after_an_interruption_is_its_next_attempt(journal: Journal) -> None:
    mapping = "CUSTOMER-" + uuid.uuid4().hex[:4]
    first = journal.start_run(mapping, "full_resync", "r2")
    first.status, first.message = "interrupted", "AuthenticationError: 401. The queue delivers this again"
    journal.save_run(first)

    again = journal.start_run(mapping, "full_resync", "r2")

    assert (again.attempts, again.status, again.started) == (2, "running", first.started)
    assert again.interrupted_by.startswith("AuthenticationError")
    assert journal.get_run(mapping, "r2") == again
    # A finished run asked for again under its id (a replayed request) starts over as attempt 1.
    again.status = "succeeded"
    journal.save_run(again)
    assert journal.start_run(mapping, "full_resync", "r2").attempts == 1
    assert journal.start_run(mapping, "full_resync", None).attempts == 1


def test_watermarks_are_conditional(storage: Storage) -> None:
    storage.ensure()
    marks = WatermarkStore(storage.table(tables.WATERMARKS))
    mapping = f"M{uuid.uuid4().hex[:6]}"
    first = marks.set(Watermark(mapping, "bc", "2026-01-01T00:00:00Z"))
    stale = marks.get(mapping, "bc")
    marks.set(Watermark(mapping, "bc", "2026-01-02T00:00:00Z", first.etag))
    with pytest.raises(WatermarkConflictError):
        marks.set(Watermark(mapping, "bc", "2026-01-03T00:00:00Z", stale.etag if stale else None))
    assert marks.get(mapping, "bc").value == "2026-01-02T00:00:00Z"  # type: ignore[union-attr]


def test_an_oversized_entry_is_stored_cut_with_a_marker_not_refused(journal: Journal) -> None:
    """Azurite refuses what Azure refuses (a string over 64 KiB): the journal cuts, the sync goes on."""
    mapping = f"M{uuid.uuid4().hex[:6]}"
    huge = "\U0001f600" * 30_000 + "x" * 40_000
    changes = [{"field": f"f{i}", "old": huge, "new": huge, "direction": "to_bc"} for i in range(3)]
    journal.record(
        JournalEntry(mapping, "modified", bc_id="b1", dv_id="d1", error=huge, reason=huge, changes=changes)
    )
    [back] = journal.history(mapping, "dv", "d1")
    assert back.error.endswith(TRUNCATED) and back.error.startswith("\U0001f600")
    assert back.outcome == "modified" and back.changes  # cut JSON is kept as a note
    assert [e.outcome for e in journal.timeline(mapping, [("bc", "b1"), ("dv", "d1")])] == ["modified"]
