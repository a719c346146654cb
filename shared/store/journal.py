"""The sync journal: what happened to each record, and to each run, queryable by record and time.

Rows in `SyncJournal`:
- per record: PartitionKey `rec|<mapping>|<bucket>` (16 buckets by id), RowKey `<bc|dv>|<id>|...`
  (one row under each id the pair has), so a record's history is one range query. Spread over
  buckets because one partition per mapping is a hot partition (every write of a burst to one
  partition server), and Azurite's transactions slow down with the size of their partition. Rows
  written before the buckets (`rec|<mapping>`) are still read;
- by time: PartitionKey `t|<yyyymmddhh>` (UTC hour), so "what happened between A and B" reads only
  the hours it needs;
- per run: PartitionKey `run|<mapping>`, RowKey the run id, updated while the run goes (progress);
- compact results: routine outcomes (`ROUTINE`: inserted, modified, coupled, unchanged) of a bulk
  run or of a batch of changes are written in the `t|` partition one row per few hundred records
  (outcome `bulk`, `Results`: JSON list of [outcome, bc id, dv id, fields, source]), so a
  100,000-record run costs hundreds of rows, not hundreds of thousands; `between` reads them as one
  entry per record. A batch's inserted and modified records keep their own per-record rows (with the
  values written); a batch's unchanged records (echoes of the service's own writes) are only in the
  compact rows. Failures, conflicts and skips always get their own rows of both kinds.
Below the record prefix and in `t|` partitions, RowKeys carry an inverted timestamp, so the newest
entries come first.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.odata import and_, eq, ge, le, lt, or_
from shared.store.transactions import submit_transaction
from shared.timestamps import now_iso

_MAX_TICKS = 10**19
# Bulk `Results` are ASCII (outcomes, GUIDs, field keys): 2 bytes a character in UTF-16, so this keeps
# them within MAX_STRING_BYTES (32 KB) with room for the JSON punctuation.
_MAX_PROPERTY_CHARS = 15_000
RECORD_BUCKETS = 16
# Outcomes that say the pair is in sync: written compactly where many come together.
ROUTINE = frozenset({"inserted", "modified", "coupled", "unchanged"})
COMPACT = "bulk"  # the outcome of a compact row


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
    # The side whose change was handled (`bc`, `dv`; "" for an operator's action) and who made it there:
    # Dataverse's `modifiedby` systemuser id; BC API v2.0 records say when, never who (empty).
    source: str = ""
    user: str = ""
    # Per field written: {"field", "old", "new", "direction", "from", "user"}; old and new are the
    # target's values (canonical). Per field changed on both sides: {"field", "bc", "dv", "policy",
    # "winner" (bc, dv or null: nothing written), "why"}.
    changes: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["fields"] = ",".join(self.fields)
        row["at"] = self.at.isoformat()
        del row["changes"], row["conflicts"]
        if self.changes or self.conflicts:
            row["details"] = json.dumps(
                {"changes": self.changes, "conflicts": self.conflicts}, separators=(",", ":"), default=str
            )
        return fit_row({k: ("" if v is None else v) for k, v in row.items()})

    @classmethod
    def from_row(cls, row: Any) -> JournalEntry:
        details = _details(row.get("details", ""))
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
            source=row.get("source", ""),
            user=row.get("user", ""),
            changes=details.get("changes", []),
            conflicts=details.get("conflicts", []),
        )


def _details(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        # Cut to fit the row (see `fit_row`): what is left is shown as it is.
        return {"changes": [{"field": "…", "note": text}]}
    return value if isinstance(value, dict) else {}


# Azure Table limits kept with a margin (the stricter figures: 32 KB per string property, 64 KB per row,
# strings counted as UTF-16). A journal row that would exceed them is cut with TRUNCATED, never refused:
# a sync must never fail because of its journal.
MAX_STRING_BYTES = 32 * 1024
MAX_ROW_BYTES = 64 * 1024
_ROW_MARGIN = 2 * 1024  # keys, property names and types
TRUNCATED = " …[truncated]"
# Cut first: what the journal can lose before the operator-facing error and reason.
_SHRINK_ORDER = ("details", "fields", "error", "reason")


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le"))


def _cut(text: str, max_bytes: int) -> str:
    if _utf16(text) <= max_bytes:
        return text
    budget = max(0, max_bytes - _utf16(TRUNCATED))
    # UTF-16 is 2 bytes per character except outside the BMP (4): cut by characters, then trim.
    cut = text[: budget // 2]
    while cut and _utf16(cut) > budget:
        cut = cut[:-1]
    return cut + TRUNCATED


def _row_bytes(row: dict[str, Any]) -> int:
    return sum(_utf16(str(k)) + (_utf16(v) if isinstance(v, str) else 8) for k, v in row.items())


def fit_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` within the limits: every string at most MAX_STRING_BYTES, the row at most MAX_ROW_BYTES,
    cutting the least needed properties first. Cut values end with TRUNCATED."""
    fitted = {k: _cut(v, MAX_STRING_BYTES) if isinstance(v, str) else v for k, v in row.items()}
    for name in _SHRINK_ORDER:
        excess = _row_bytes(fitted) + _ROW_MARGIN - MAX_ROW_BYTES
        if excess <= 0:
            break
        value = fitted.get(name)
        if isinstance(value, str) and value:
            fitted[name] = _cut(value, max(0, _utf16(value) - excess))
    return fitted


@dataclass
class RunSummary:
    run_id: str
    mapping: str
    kind: str  # "full_resync", "delta_poll", "statistics", "match_coupling"
    started: str
    finished: str = ""
    # queued, running, succeeded, failed; `interrupted`: an attempt stopped on an error and the
    # queue delivers the request again (a new attempt resumes cheaply: coupled pairs cost no writes)
    status: str = "running"
    dry_run: bool = False
    total: int = 0
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    api_requests: int = 0
    message: str = ""
    sample: list[dict[str, Any]] = field(default_factory=list)  # dry run: the first records it would touch
    attempts: int = 1  # deliveries of the request that started this run
    # Why the last interrupted attempt stopped: kept when the queue's redelivery runs it again, so a
    # run that finally succeeds still says it needed more than one attempt, and why.
    interrupted_by: str = ""

    @property
    def in_progress(self) -> bool:
        return self.status in ("queued", "running", "interrupted")


class Journal:
    def __init__(self, table: TableClient, scope: str = "") -> None:
        self.table = table
        # The company's key prefix (`shared.companies.key_prefix`): "" for the home company, whose
        # rows keep the keys of a single-company deployment. Time rows (`t|`) are shared by all
        # companies and say which one they are of in `company` (absent: the home company).
        self.scope = scope
        self._company = {"company": scope.rstrip(":")} if scope else {}

    def record(self, entry: JournalEntry) -> None:
        self.record_many([entry])

    def record_many(self, entries: Iterable[JournalEntry]) -> None:
        """Rows grouped by partition and written in transactions of up to 100. Several entries
        together (a batch of changes) keep their time rows compact where routine (module doc)."""
        entries = list(entries)
        together = len(entries) > 1
        rows: list[dict[str, Any]] = []
        compact: dict[str, list[JournalEntry]] = {}
        for entry in entries:
            routine = together and entry.outcome in ROUTINE
            if routine:
                compact.setdefault(entry.mapping, []).append(entry)
            if not (routine and entry.outcome == "unchanged"):
                rows.extend(_rows(entry, self.scope, self._company, with_time_row=not routine))
        for mapping, group in compact.items():
            rows.extend(self._compact_rows(mapping, group))
        self._write(rows)

    def record_compact(self, mapping: str, entries: list[JournalEntry], run_id: str = "") -> None:
        """Routine bulk outcomes, compactly: one row per ~100-300 records, in transactions."""
        self._write(self._compact_rows(mapping, entries, run_id))

    def _compact_rows(
        self, mapping: str, entries: list[JournalEntry], run_id: str = ""
    ) -> list[dict[str, Any]]:
        if not entries:
            return []
        at = entries[0].at
        groups: list[list[list[str]]] = [[]]
        size = 0
        for e in entries:
            item = [e.outcome, e.bc_id or "", e.dv_id or "", ",".join(e.fields), e.source]
            length = sum(len(x) for x in item) + 15
            if size + length > _MAX_PROPERTY_CHARS:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += length
        return [
            {
                "PartitionKey": f"t|{at:%Y%m%d%H}", "RowKey": f"{_inverted(at)}-{uuid.uuid4().hex[:8]}",
                "mapping": mapping, "outcome": COMPACT, "reason": f"{len(group)} records", "run_id": run_id,
                "at": at.isoformat(), "Results": json.dumps(group, separators=(",", ":")),
                **self._company,
            }
            for group in groups
        ]  # fmt: skip

    def _write(self, rows: list[dict[str, Any]]) -> None:
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_partition.setdefault(row["PartitionKey"], []).append(row)
        for group in by_partition.values():
            for start in range(0, len(group), 100):
                chunk = group[start : start + 100]
                if len(chunk) == 1:
                    self.table.upsert_entity(chunk[0])
                else:
                    submit_transaction(self.table, [("upsert", r) for r in chunk])

    def history(self, mapping: str, side: str, record_id: str, limit: int = 50) -> list[JournalEntry]:
        """The entries stored under one id, newest first (an entry of a pair is stored under both of
        its ids, so this is the pair's timeline from the time both were known)."""
        return self.timeline(mapping, [(side, record_id)], limit)

    def timeline(self, mapping: str, ids: list[tuple[str, str]], limit: int = 50) -> list[JournalEntry]:
        """The entries stored under any of `ids` ((side, id) of one pair), each once, newest first:
        what happened to a record on both systems, also before the two were coupled."""
        rows: dict[str, Any] = {}
        for side, record_id in ids:
            key = "bc" if side == "bc" else "dv"
            prefix = f"{key}|{record_id}|"
            # Its bucket, and the one partition of the mapping rows had before the buckets.
            for partition in (
                _record_partition(self.scope, mapping, key, record_id),
                f"rec|{self.scope}{mapping}",
            ):
                query = and_(eq("PartitionKey", partition), ge("RowKey", prefix), lt("RowKey", prefix + "~"))
                for count, row in enumerate(
                    self.table.query_entities(query, results_per_page=limit), start=1
                ):
                    rows.setdefault(str(row["RowKey"]).rsplit("|", 1)[-1], row)  # one entry, one stamp
                    if count >= limit:
                        break
        return [JournalEntry.from_row(rows[stamp]) for stamp in sorted(rows)[:limit]]

    def between(
        self,
        start: dt.datetime,
        end: dt.datetime,
        mapping: str | None = None,
        outcomes: Iterable[str] = (),
    ) -> Iterator[JournalEntry]:
        """Entries with start <= at <= end, newest first (reads only the hours in the range), one per
        record also where compact rows hold them; `outcomes`: only these (filtered by the table
        service, so routine rows are not sent when no routine outcome is asked)."""
        hour = end.replace(minute=0, second=0, microsecond=0)
        asked = set(outcomes)
        wanted = [eq("outcome", o) for o in sorted(asked | ({COMPACT} if asked & ROUTINE else set()))]
        while hour >= start.replace(minute=0, second=0, microsecond=0):
            query = and_(
                eq("PartitionKey", f"t|{hour:%Y%m%d%H}"),
                ge("RowKey", _inverted(end)),
                le("RowKey", _inverted(start) + "-~"),
                *([eq("mapping", mapping)] if mapping is not None else []),
                *([eq("company", self._company["company"])] if self._company else []),
                *([or_(*wanted)] if wanted else []),
            )
            for row in self.table.query_entities(query):
                if row.get("company", "") != self._company.get("company", ""):
                    continue  # another company's
                if mapping is not None and row.get("mapping") != mapping:
                    continue
                for entry in _entries(row):
                    if not asked or entry.outcome in asked:
                        yield entry
            hour -= dt.timedelta(hours=1)

    # ----------------------------------------------------------------------------------- runs
    def start_run(self, mapping: str, kind: str, run_id: str | None, *, dry_run: bool = False) -> RunSummary:
        """A run starting now, saved as running. The same `run_id` after an interrupted attempt (the
        queue delivering the request again) is the next attempt of that run, not a new one."""
        run = RunSummary(run_id or uuid.uuid4().hex, mapping, kind, started=now_iso(), dry_run=dry_run)
        try:
            # A new run (the usual case) costs one insert and no read.
            self.table.create_entity(self._run_row(run))
            return run
        except ResourceExistsError:
            earlier = self.get_run(mapping, run.run_id)
        if earlier is not None and earlier.status == "interrupted":
            run.started = earlier.started
            run.attempts = earlier.attempts + 1
            run.interrupted_by = earlier.message
        self.save_run(run)
        return run

    def save_run(self, run: RunSummary) -> None:
        self.table.upsert_entity(self._run_row(run), mode=UpdateMode.REPLACE)

    def _run_row(self, run: RunSummary) -> dict[str, Any]:
        row = asdict(run)
        row["counts"] = json.dumps(run.counts)
        row["sample"] = _sample_text(run.sample)
        return fit_row({**row, "PartitionKey": f"run|{self.scope}{run.mapping}", "RowKey": run.run_id})

    def get_run(self, mapping: str, run_id: str) -> RunSummary | None:
        try:
            row = self.table.get_entity(f"run|{self.scope}{mapping}", run_id)
        except ResourceNotFoundError:
            return None
        return _run_from_row(row)

    def runs(self, mapping: str, limit: int = 20) -> list[RunSummary]:
        rows = list(self.table.query_entities(eq("PartitionKey", f"run|{self.scope}{mapping}")))
        runs = sorted((_run_from_row(r) for r in rows), key=lambda r: r.started, reverse=True)
        return runs[:limit]


def _rows(
    entry: JournalEntry, scope: str, company: dict[str, str], *, with_time_row: bool = True
) -> list[dict[str, Any]]:
    row = {**entry.to_row(), **company}
    stamp = f"{_inverted(entry.at)}-{uuid.uuid4().hex[:8]}"
    rows = [
        {**row, "PartitionKey": _record_partition(scope, entry.mapping, side, record_id),
         "RowKey": f"{side}|{record_id}|{stamp}"}
        for side, record_id in (("bc", entry.bc_id), ("dv", entry.dv_id))
        if record_id
    ]  # fmt: skip
    if with_time_row:
        rows.append({**row, "PartitionKey": f"t|{entry.at:%Y%m%d%H}", "RowKey": stamp})
    return rows


def _record_partition(scope: str, mapping: str, side: str, record_id: str) -> str:
    return f"rec|{scope}{mapping}|{zlib.crc32(f'{side}|{record_id}'.encode()) % RECORD_BUCKETS:02d}"


def _entries(row: Any) -> list[JournalEntry]:
    """A time row's entries: itself, or one per record of a compact row (its time, mapping, run)."""
    if row.get("outcome") != COMPACT or not row.get("Results"):
        return [JournalEntry.from_row(row)]
    at = dt.datetime.fromisoformat(row["at"])
    out = []
    for item in json.loads(row["Results"]):
        outcome, bc_id, dv_id, fields = item[:4]
        out.append(JournalEntry(
            mapping=row.get("mapping", ""), outcome=outcome, bc_id=bc_id or None, dv_id=dv_id or None,
            fields=[f for f in fields.split(",") if f], at=at, source=item[4] if len(item) > 4 else "",
            reason=f"run {row['run_id']}" if row.get("run_id") else "",
        ))  # fmt: skip
    return out


def _sample_text(sample: list[dict[str, Any]]) -> str:
    """A dry run's first records as JSON, fewer of them where they would not fit half a row."""
    items = list(sample)
    while items:
        text = json.dumps(items, separators=(",", ":"), default=str)
        if _utf16(text) <= MAX_ROW_BYTES // 2:
            return text
        items.pop()
    return ""


def _run_from_row(row: Any) -> RunSummary:
    data = {k: row[k] for k in RunSummary.__dataclass_fields__ if k in row}
    data["counts"] = json.loads(row.get("counts") or "{}")
    data["sample"] = json.loads(row.get("sample") or "[]")
    return RunSummary(**data)
