"""The sync journal: what happened to each record, and to each run, queryable by record and time.

Rows in `SyncJournal`:
- per record: PartitionKey `rec|<mapping>|<bc|dv>|<id>` (one row under each id the pair has);
- by time: PartitionKey `t|<yyyymmddhh>` (UTC hour), so "what happened between A and B" reads only
  the hours it needs;
- per run: PartitionKey `run|<mapping>`, RowKey the run id, updated while the run goes (progress).
RowKeys under `rec|` and `t|` start with an inverted timestamp, so the newest entries come first.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.connectors.odata import and_, eq, ge, le

_MAX_TICKS = 10**19


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _inverted(at: dt.datetime) -> str:
    return f"{_MAX_TICKS - int(at.timestamp() * 1_000_000):020d}"


@dataclass
class JournalEntry:
    mapping: str
    outcome: str  # inserted, modified, unchanged, conflict, skipped, failed, coupled, uncoupled, deleted, ...
    bc_id: str | None = None
    dv_id: str | None = None
    fields: list[str] = field(default_factory=list)
    direction: str = ""  # "to_dataverse", "to_bc", "both", ""
    correlation_id: str = ""
    error: str = ""
    reason: str = ""
    api_requests: int = 0
    at: dt.datetime = field(default_factory=_utcnow)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["fields"] = ",".join(self.fields)
        row["at"] = self.at.isoformat()
        row["error"] = self.error[:30_000]
        return {k: ("" if v is None else v) for k, v in row.items()}

    @classmethod
    def from_row(cls, row: Any) -> JournalEntry:
        return cls(
            mapping=row.get("mapping", ""),
            outcome=row.get("outcome", ""),
            bc_id=row.get("bc_id") or None,
            dv_id=row.get("dv_id") or None,
            fields=[f for f in str(row.get("fields", "")).split(",") if f],
            direction=row.get("direction", ""),
            correlation_id=row.get("correlation_id", ""),
            error=row.get("error", ""),
            reason=row.get("reason", ""),
            api_requests=int(row.get("api_requests", 0)),
            at=dt.datetime.fromisoformat(row["at"]),
        )


@dataclass
class RunSummary:
    run_id: str
    mapping: str
    kind: str  # "full_resync", "delta_poll", "statistics", "match_coupling"
    started: str
    finished: str = ""
    status: str = "running"  # running, succeeded, failed
    dry_run: bool = False
    total: int = 0
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    api_requests: int = 0
    message: str = ""


class Journal:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, entry: JournalEntry) -> None:
        row = entry.to_row()
        suffix = uuid.uuid4().hex[:8]
        rk = f"{_inverted(entry.at)}-{suffix}"
        for side, record_id in (("bc", entry.bc_id), ("dv", entry.dv_id)):
            if record_id:
                self.table.create_entity(
                    {**row, "PartitionKey": f"rec|{entry.mapping}|{side}|{record_id}", "RowKey": rk}
                )
        self.table.create_entity({**row, "PartitionKey": f"t|{entry.at:%Y%m%d%H}", "RowKey": rk})

    def record_many(self, entries: Iterable[JournalEntry]) -> None:
        """Bulk: time rows in transactions of 100 per hour partition; record rows one by one."""
        by_hour: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            row = entry.to_row()
            rk = f"{_inverted(entry.at)}-{uuid.uuid4().hex[:8]}"
            by_hour.setdefault(f"t|{entry.at:%Y%m%d%H}", []).append(
                {**row, "PartitionKey": f"t|{entry.at:%Y%m%d%H}", "RowKey": rk}
            )
            for side, record_id in (("bc", entry.bc_id), ("dv", entry.dv_id)):
                if record_id:
                    self.table.upsert_entity(
                        {**row, "PartitionKey": f"rec|{entry.mapping}|{side}|{record_id}", "RowKey": rk}
                    )
        for rows in by_hour.values():
            for start in range(0, len(rows), 100):
                self.table.submit_transaction([("upsert", r) for r in rows[start : start + 100]])

    def history(self, mapping: str, side: str, record_id: str, limit: int = 50) -> list[JournalEntry]:
        """Newest first."""
        pk = f"rec|{mapping}|{'bc' if side == 'bc' else 'dv'}|{record_id}"
        entries = []
        for row in self.table.query_entities(eq("PartitionKey", pk), results_per_page=limit):
            entries.append(JournalEntry.from_row(row))
            if len(entries) >= limit:
                break
        return entries

    def between(
        self, start: dt.datetime, end: dt.datetime, mapping: str | None = None
    ) -> Iterator[JournalEntry]:
        """Entries with start <= at <= end, newest first (reads only the hours in the range)."""
        hour = end.replace(minute=0, second=0, microsecond=0)
        while hour >= start.replace(minute=0, second=0, microsecond=0):
            query = and_(
                eq("PartitionKey", f"t|{hour:%Y%m%d%H}"),
                ge("RowKey", _inverted(end)),
                le("RowKey", _inverted(start) + "-~"),
            )
            for row in self.table.query_entities(query):
                if mapping is None or row.get("mapping") == mapping:
                    yield JournalEntry.from_row(row)
            hour -= dt.timedelta(hours=1)

    # ----------------------------------------------------------------------------------- runs
    def save_run(self, run: RunSummary) -> None:
        row = asdict(run)
        row["counts"] = json.dumps(run.counts)
        self.table.upsert_entity(
            {**row, "PartitionKey": f"run|{run.mapping}", "RowKey": run.run_id}, mode=UpdateMode.REPLACE
        )

    def get_run(self, mapping: str, run_id: str) -> RunSummary | None:
        try:
            row = self.table.get_entity(f"run|{mapping}", run_id)
        except ResourceNotFoundError:
            return None
        return _run_from_row(row)

    def runs(self, mapping: str, limit: int = 20) -> list[RunSummary]:
        rows = list(self.table.query_entities(eq("PartitionKey", f"run|{mapping}")))
        runs = sorted((_run_from_row(r) for r in rows), key=lambda r: r.started, reverse=True)
        return runs[:limit]


def _run_from_row(row: Any) -> RunSummary:
    data = {k: row[k] for k in RunSummary.__dataclass_fields__ if k in row}
    data["counts"] = json.loads(row.get("counts") or "{}")
    return RunSummary(**data)
