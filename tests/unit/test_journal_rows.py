"""Journal rows stay within Azure Table limits whatever a sync produces: cut with a marker, never refused."""

from __future__ import annotations

import datetime as dt
import json

from shared.store.journal import MAX_ROW_BYTES, MAX_STRING_BYTES, TRUNCATED, JournalEntry, fit_row

AT = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _bytes(value: str) -> int:
    return len(value.encode("utf-16-le"))


def _row_bytes(row: dict[str, object]) -> int:
    return sum(_bytes(k) + (_bytes(v) if isinstance(v, str) else 8) for k, v in row.items())


def test_a_small_entry_is_stored_whole_and_read_back() -> None:
    entry = JournalEntry(
        "CUSTOMER", "modified", bc_id="b", dv_id="d", fields=["city"], direction="to_bc", source="dv",
        user="u1", at=AT,
        changes=[{"field": "city", "old": "A", "new": "B", "direction": "to_bc", "from": "dv", "user": "u1"}],
        conflicts=[{"field": "name", "bc": "x", "dv": "y", "policy": "bc_wins", "winner": "bc", "why": "b"}],
    )  # fmt: skip
    row = entry.to_row()
    assert TRUNCATED not in row["details"]
    assert JournalEntry.from_row(row) == entry


def test_huge_values_are_cut_with_a_marker_to_fit_a_string_and_a_row() -> None:
    wide = "\U0001f600" * 40_000  # outside the BMP: 4 bytes each in UTF-16
    entry = JournalEntry(
        "CUSTOMER", "conflict", bc_id="b", dv_id="d", at=AT, error="e" * 100_000, reason="r" * 50_000,
        fields=[f"f{i}" for i in range(5_000)],
        changes=[{"field": "notes", "old": wide, "new": "x" * 70_000, "direction": "to_dataverse"}],
    )  # fmt: skip
    row = entry.to_row()
    assert all(_bytes(v) <= MAX_STRING_BYTES for v in row.values() if isinstance(v, str))
    assert _row_bytes(row) <= MAX_ROW_BYTES
    assert row["details"].endswith(TRUNCATED) and row["error"].endswith(TRUNCATED)
    assert row["error"].startswith("eeee")  # the operator's message survives, cut last
    back = JournalEntry.from_row(row)  # cut JSON is still read, as a note
    assert back.changes and back.changes[0]["field"] == "…"


def test_fit_row_leaves_rows_within_the_limits_alone() -> None:
    row = {"PartitionKey": "p", "RowKey": "r", "details": json.dumps({"changes": []}), "api_requests": 2}
    assert fit_row(row) == row
