"""Bulk synchronization: full resync, BC `collection` scans, match-based coupling.

The same pure `reconcile` decides every pair; only the I/O differs from the one-record path. Both
sides are read in pages (BC 20,000, Dataverse 5,000 per request), pairs are formed from the
couplings and by matching in memory, and writes go out in bulk: Dataverse `UpsertMultiple` (the
deterministic ids make it idempotent) and `$batch` PATCHes with `If-Match`, BC JSON `$batch`.
Couplings are written in table transactions. What does not fit the bulk path (creates in BC,
deletions, conflicts, records that left the scope) goes through `Engine.sync_record` one by one,
so the rules live in one place.

Request budget for an initial sync of N customers into an empty Dataverse: N/20,000 BC pages + 1
Dataverse page + N/1,000 UpsertMultiple + N/1,000 `$batch` read-backs (exact snapshots).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.mapping.lookups import StaticLookups
from shared.mapping.queries import (
    LookupKey,
    in_scope,
    lookup_keys,
    record_id,
    scope_clauses,
    scope_filter,
    select_fields,
)
from shared.mapping.schema import EntityMapping, Side
from shared.mapping.values import LookupMissing, TranslationError, read, translate
from shared.messages import ChunkMessage, ScanMessage, SyncMessage
from shared.store.couplings import Coupling
from shared.store.journal import JournalEntry, RunSummary
from shared.store.storage import Storage
from shared.sync.bulk_documents import converge_bc_documents, run_document_resync
from shared.sync.engine import (
    Engine,
    SyncResult,
    audit,
    count_failure,
    planned_result,
    requeue_delay,
    settle,
)
from shared.sync.gateways import Record
from shared.sync.reconcile import Candidate, Outcome, Plan, change_times, reconcile, take_snapshot
from shared.timestamps import now_iso, parse_iso

log = logging.getLogger(__name__)

CHUNK = 1000
SAMPLE = 20  # records a dry run keeps on its run (all of them go to `on_record`)


@dataclass
class Pair:
    coupling: Coupling | None
    bc: Record | None
    dv: Record | None
    candidates: list[Candidate] = field(default_factory=list)
    single: bool = False  # decide through the one-record path (re-reads by id)

    def record_on(self, side: Side) -> Record | None:
        return self.bc if side == "bc" else self.dv

    def put(self, side: Side, record: Record) -> None:
        if side == "bc":
            self.bc = record
        else:
            self.dv = record


@dataclass
class MatchReport:
    would_couple: list[tuple[str, str]] = field(default_factory=list)
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)
    no_match: list[str] = field(default_factory=list)
    already_coupled: int = 0


# --------------------------------------------------------------------------------- entry points
def request_full_resync(storage: Storage, mapping_name: str, *, dry_run: bool = False) -> str:
    """Queue a full resync (the processor runs it); follow it with `Journal.get_run`."""
    run_id = uuid.uuid4().hex
    storage.enqueue([ScanMessage(mapping=mapping_name, side="bc", since=None, run_id=run_id, dry_run=dry_run,
                                 reason="full resync requested")])  # fmt: skip
    return run_id


def scan(engine: Engine, message: ScanMessage) -> None:
    """A full resync (no `since`), a BC `collection` notification (changes since `since`), or a
    sweep of BC's ids (a bare `collection`, a gap in notifications, the periodic deletion sweep)."""
    if message.sweep is not None:
        counts = sweep_bc(
            engine, message.mapping, deletions_only=message.sweep == "deletions",
            correlation_id=message.correlation_id,
        )  # fmt: skip
        log.info("%s: BC sweep (%s, %s): %s", message.mapping, message.sweep, message.reason, dict(counts))
    elif message.since is None:
        run_full_resync(engine, message.mapping, dry_run=message.dry_run, run_id=message.run_id)
    else:
        scan_bc_changes(engine, message.mapping, message.since, message.correlation_id)


def sync_chunk(engine: Engine, message: ChunkMessage) -> None:
    """A chunk that could not be finished in bulk: converge each record on its own."""
    for one_id in message.ids:
        retry = SyncMessage(
            mapping=message.mapping, side=message.side, id=one_id, reason="chunk retry",
            correlation_id=message.correlation_id,
        )  # fmt: skip
        engine.sync_record(retry)


def run_full_resync(
    engine: Engine,
    mapping_name: str,
    *,
    dry_run: bool = False,
    run_id: str | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Converge the whole mapping. BC is streamed page by page (20,000 records), so memory grows
    with the Dataverse side and the couplings, not with the BC table. `on_progress` sees the run
    after each chunk (a caller in this process needs no polling of the journal). A dry run tells
    `on_record` each record it would touch (`dry_run_item`) and keeps the first ones in `run.sample`."""
    m = engine.ms.entity(mapping_name)
    if m.lines is not None:
        return run_document_resync(engine, m, dry_run=dry_run, run_id=run_id)
    run = engine.journal.start_run(m.name, "full_resync", run_id, dry_run=dry_run)
    requests_before = engine.requests_in_this_thread()
    started = time.monotonic()
    counts: Counter[str] = Counter()

    def keep(item: dict[str, Any]) -> None:
        if len(run.sample) < SAMPLE:
            run.sample.append(item)
        if on_record is not None:
            on_record(item)

    def process(pairs: list[Pair]) -> None:
        run.total += len(pairs)
        for chunk in _chunks(pairs, CHUNK):
            counts.update(process_pairs(engine, m, chunk, dry_run=dry_run, on_record=keep))
            run.done += len(chunk)
            run.counts = dict(counts)
            run.api_requests = engine.requests_in_this_thread() - requests_before
            engine.journal.save_run(run)  # progress, readable while the run goes
            if on_progress is not None:
                on_progress(run)

    try:
        pairing = _Pairing(engine, m)
        for page in _pages(engine, m, "bc"):
            process(pairing.bc_page(page))
        process(pairing.rest())
        run.status = "succeeded"
    except Exception as exc:
        # Raised on, so the host delivers the request again; until the last delivery ends in the
        # poison queue, this run is not over.
        run.status = "interrupted"
        run.message = (
            f"{type(exc).__name__}: {exc}. The queue delivers this resync again (host.json "
            "maxDequeueCount); if it ends in the poison queue, fix the cause and replay it "
            "(`bcsync poison --replay`)"
        )
        raise
    finally:
        run.finished = now_iso()
        run.api_requests = engine.requests_in_this_thread() - requests_before
        run.message = run.message or f"{run.done} pairs in {time.monotonic() - started:.1f} s"
        if run.attempts > 1 and run.status == "succeeded":
            run.message += f" (attempt {run.attempts})"
        engine.journal.save_run(run)
    return run


def scan_bc_changes(
    engine: Engine, mapping_name: str, since: dt.datetime, correlation_id: str
) -> Counter[str]:
    """A BC `collection` notification: everything changed since `since`, with bulk reads and writes
    for coupled records and the one-record path for the rest."""
    m = engine.ms.entity(mapping_name)
    select = select_fields(engine.ms, m, "bc")
    changed = list(engine.bc.modified_since(m, since, select=select))
    return converge_bc_records(engine, m, changed, correlation_id)


def sweep_bc(
    engine: Engine, mapping_name: str, *, deletions_only: bool = False, correlation_id: str = ""
) -> Counter[str]:
    """Find what changed and what was deleted in a BC entity set without a notification per record.

    BC's ids and `lastModifiedDateTime` (plus the scope's fields) are read in pages of 20,000 and
    compared with the couplings' ids and recorded times (Table Storage, those columns only):
    - a coupled id BC no longer has was deleted: one `SyncMessage` each, so the one-record path
      decides it by the mapping's deletion policy (and retries it on its own);
    - unless `deletions_only`, a record whose time differs from the one the last sync recorded, or
      an uncoupled one in scope, changed: they are read in one filtered query from the oldest such
      time on (pages of 20,000) and converged in bulk. An echo of our own write has the recorded
      time and costs nothing.
    Cost: N/20,000 BC requests for the ids, plus the changed records' pages, plus one queue
    message per deletion; never a request per record."""
    m = engine.ms.entity(mapping_name)
    # Couplings first: a pair coupled after BC was read would otherwise look deleted.
    recorded = dict(engine.couplings.bc_marks(m.name))
    select = list(dict.fromkeys(["id", "lastModifiedDateTime", *(c.field for c in scope_clauses(m, "bc"))]))
    present: set[str] = set()
    changed: dict[str, str] = {}
    for page in engine.bc.query_pages(m, select=select, filter=None):
        for record in page:
            bc_id = str(record["id"])
            present.add(bc_id)
            if deletions_only:
                continue
            modified = str(record.get("lastModifiedDateTime") or "")
            mark = recorded.get(bc_id)
            if (mark is None and in_scope(m, "bc", record)) or (mark is not None and mark != modified):
                changed[bc_id] = modified
    counts: Counter[str] = Counter()
    gone = [bc_id for bc_id in recorded if bc_id not in present]
    if gone:
        engine.enqueue(
            [SyncMessage(mapping=m.name, side="bc", id=bc_id, change="deleted", reason="bc sweep: deleted",
                         correlation_id=correlation_id or str(uuid.uuid4())) for bc_id in gone],
            0,
        )  # fmt: skip
        counts["deleted"] = len(gone)
    if changed:
        # A record always has a time; the epoch only guards a row without one (then all pages).
        oldest = min(
            (parse_iso(t) for t in changed.values() if t), default=dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        )
        full = select_fields(engine.ms, m, "bc")
        records = [r for r in engine.bc.modified_since(m, oldest, select=full) if str(r["id"]) in changed]
        counts.update(converge_bc_records(engine, m, records, correlation_id))
    return counts


def converge_bc_records(
    engine: Engine, m: EntityMapping, changed: list[Record], correlation_id: str
) -> Counter[str]:
    """BC records just read (with `select_fields`) converged in bulk: their coupled counterparts
    read with one `$batch`, the writes sent in bulk; uncoupled records take the one-record path.
    Documents are converged one by one, each with its lines (`bulk_documents`)."""
    if m.lines is not None:
        return converge_bc_documents(engine, m, [str(r["id"]) for r in changed], correlation_id)
    pairs: list[Pair] = []
    coupled_dv: dict[str, Pair] = {}
    for record in changed:
        coupling = engine.couplings.get(m.name, "bc", str(record["id"]))
        pair = Pair(coupling, record, None, single=coupling is None or coupling.state != "coupled")
        pairs.append(pair)
        if not pair.single and coupling is not None and coupling.dv_id:
            coupled_dv[coupling.dv_id] = pair
    for dv in engine.dv.read_many(m, list(coupled_dv), select=select_fields(engine.ms, m, "dv")):
        coupled_dv.pop(str(dv[m.dataverse.primary_key])).dv = dv
    for pair in coupled_dv.values():  # counterpart gone or out of scope: decide one by one
        pair.single = True
    counts: Counter[str] = Counter()
    for chunk in _chunks(pairs, CHUNK):
        counts.update(process_pairs(engine, m, chunk, dry_run=False, correlation_id=correlation_id))
    return counts


def match_coupling(engine: Engine, mapping_name: str, *, dry_run: bool) -> MatchReport:
    """Couple uncoupled records whose match fields identify exactly one uncoupled counterpart."""
    m = engine.ms.entity(mapping_name)
    bc_records = {str(r["id"]): r for r in _read_all(engine, m, "bc")}
    dv_records = {str(r[m.dataverse.primary_key]): r for r in _read_all(engine, m, "dv")}
    report = MatchReport()
    couplings = list(engine.couplings.each(m.name))
    for c in couplings:
        if c.bc_id in bc_records:
            report.already_coupled += 1
        bc_records.pop(c.bc_id or "", None)
        dv_records.pop(c.dv_id or "", None)
    lookups = _chunk_lookups(engine, m, [Pair(None, r, None) for r in bc_records.values()])
    index = _MatchIndex(engine, m, dv_records, lookups)
    to_couple: list[Pair] = []
    for bc_id, record in bc_records.items():
        found = index.candidates(record)
        if len(found) == 1:
            dv_id = str(found[0][m.dataverse.primary_key])
            index.take(dv_id)
            report.would_couple.append((bc_id, dv_id))
            to_couple.append(Pair(None, record, None, candidates=[Candidate(found[0])]))
        elif found:
            report.ambiguous.append((bc_id, [str(d[m.dataverse.primary_key]) for d in found]))
        else:
            report.no_match.append(bc_id)
    if not dry_run:
        # reconcile couples each pair and, as the built-in's "synch. after coupling", aligns values.
        for chunk in _chunks(to_couple, CHUNK):
            process_pairs(engine, m, chunk, dry_run=False)
    return report


# ------------------------------------------------------------------------------------ pairing
class _Pairing:
    """Forms record pairs for a full resync: couplings first, then matches, then the rest."""

    def __init__(self, engine: Engine, m: EntityMapping) -> None:
        self.engine, self.m = engine, m
        pk = m.dataverse.primary_key
        self.dv_records = {str(r[pk]): r for r in _read_all(engine, m, "dv")}
        self.by_bc: dict[str, Coupling] = {}
        self.unreached: list[Coupling] = []  # pending creates, or no BC id
        for c in engine.couplings.each(m.name):
            if c.bc_id and c.state == "coupled":
                self.by_bc[c.bc_id] = c
            else:
                self.unreached.append(c)
        coupled_dv = {c.dv_id for c in self.by_bc.values()} | {c.dv_id for c in self.unreached}
        uncoupled_dv = {k: v for k, v in self.dv_records.items() if k not in coupled_dv}
        lookups = engine.resolver.code_tables(m)
        self.index = _MatchIndex(engine, m, uncoupled_dv, lookups)

    def bc_page(self, page: list[dict[str, Any]]) -> list[Pair]:
        pairs: list[Pair] = []
        uncoupled: list[dict[str, Any]] = []
        for record in page:
            c = self.by_bc.pop(str(record["id"]), None)
            if c is None:
                uncoupled.append(record)
                continue
            dv = self.dv_records.pop(c.dv_id, None) if c.dv_id else None
            # A side missing from the scoped read may be deleted *or* just out of scope: the
            # one-record path reads it by id and tells the two apart.
            pairs.append(Pair(c, record, dv, single=dv is None))
        if uncoupled:
            self.index.lookups = _chunk_lookups(self.engine, self.m, [Pair(None, r, None) for r in uncoupled])
            for record in uncoupled:
                found = self.index.candidates(record)
                if len(found) == 1:
                    dv_id = str(found[0][self.m.dataverse.primary_key])
                    self.index.take(dv_id)
                    self.dv_records.pop(dv_id, None)
                pairs.append(Pair(None, record, None, candidates=[Candidate(d) for d in found]))
        return pairs

    def rest(self) -> list[Pair]:
        """Couplings whose BC record was not in the scoped read, and uncoupled Dataverse records."""
        pairs = [Pair(c, None, self.dv_records.pop(c.dv_id, None) if c.dv_id else None, single=True)
                 for c in [*self.by_bc.values(), *self.unreached]]  # fmt: skip
        pairs.extend(Pair(None, None, record) for record in self.dv_records.values())
        return pairs


class _MatchIndex:
    """Uncoupled Dataverse records indexed by each match priority's values (case-insensitive)."""

    def __init__(
        self, engine: Engine, m: EntityMapping, dv_records: dict[str, dict[str, Any]], lookups: StaticLookups
    ):
        self.engine, self.m, self.lookups = engine, m, lookups
        self.taken: set[str] = set()
        by_priority: dict[int, list[Any]] = {}
        for f in m.fields:
            if f.match_priority is not None and not f.has_constant:
                by_priority.setdefault(f.match_priority, []).append(f)
        self.groups = [by_priority[p] for p in sorted(by_priority)]
        self.index: list[dict[tuple[Any, ...], list[dict[str, Any]]]] = []
        for group in self.groups:
            by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
            for record in dv_records.values():
                key = tuple(_match_value(f, read(engine.ms, f, "dv", record)) for f in group)
                if all(v is not None for v in key):
                    by_key.setdefault(key, []).append(record)
            self.index.append(by_key)

    def candidates(self, bc_record: dict[str, Any]) -> list[dict[str, Any]]:
        pk = self.m.dataverse.primary_key
        for group, by_key in zip(self.groups, self.index, strict=True):
            try:
                key = tuple(
                    _match_value(
                        f,
                        translate(
                            self.engine.ms,
                            self.m,
                            f,
                            "dv",
                            read(self.engine.ms, f, "bc", bc_record),
                            self.lookups,
                        ),
                    )
                    for f in group
                )
            except (LookupMissing, TranslationError):
                continue
            if any(v is None for v in key):
                continue
            found = [r for r in by_key.get(key, []) if str(r[pk]) not in self.taken]
            if found:
                return found
        return []

    def take(self, dv_id: str) -> None:
        self.taken.add(dv_id)


def _match_value(f: Any, value: Any) -> Any:
    if value in (None, ""):
        return None
    if isinstance(value, str) and not f.case_sensitive_match:
        return value.strip().casefold()
    return value


# ---------------------------------------------------------------------------------- processing
def process_pairs(
    engine: Engine,
    m: EntityMapping,
    pairs: list[Pair],
    *,
    dry_run: bool,
    correlation_id: str = "",
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> Counter[str]:
    """Decide every pair with `reconcile`, then write what was decided in bulk. A dry run writes
    nothing and tells `on_record` about every record it would touch (see `dry_run_item`)."""
    counts: Counter[str] = Counter()
    lookups = _chunk_lookups(engine, m, pairs)
    planned: list[tuple[Pair, Plan]] = []
    singles: list[Pair] = []
    for pair in pairs:
        if pair.single:
            singles.append(pair)
            continue
        plan = reconcile(
            engine.ms, m, snapshot=pair.coupling.snapshot if pair.coupling else None,
            bc=pair.bc, dv=pair.dv, lookups=lookups, candidates=pair.candidates,
            # Times kept while a change waits (usually none); the records' own times stand in for the rest.
            changed_at=change_times(pair.coupling.seen) if pair.coupling else None,
            id_scope=engine.couplings.scope,
        )  # fmt: skip
        if dry_run:
            counts[str(plan.outcome)] += 1
            if plan.outcome != Outcome.UNCHANGED and on_record is not None:
                on_record(dry_run_item(m, pair, plan))
        elif _bulk_friendly(plan):
            planned.append((pair, plan))
        else:
            singles.append(pair)
    if dry_run:
        # Decided one by one when the run is real (the record is re-read then): not known here.
        counts.update("single" for _ in singles)
        for pair in singles if on_record is not None else ():
            on_record({  # type: ignore[misc]
                "outcome": "single", "bc_id": _pair_id(m, pair, "bc"), "dv_id": _pair_id(m, pair, "dv"),
                "reason": "decided one by one when the run is real", "changes": [], "conflicts": [],
            })  # fmt: skip
        return counts

    results = _execute(engine, m, planned)
    entries = []
    for (pair, plan), (outcome, error) in zip(planned, results, strict=True):
        counts[outcome] += 1
        if outcome != Outcome.UNCHANGED:
            entries.append(JournalEntry(
                m.name, outcome, bc_id=record_id(m, "bc", pair.bc),
                dv_id=record_id(m, "dv", pair.dv) or _written_dv_id(plan),
                fields=sorted({k for w in plan.writes for k in w.fields}), error=error, reason=plan.reason,
                correlation_id=correlation_id,
            ))  # fmt: skip
    routine = {Outcome.INSERTED, Outcome.MODIFIED, Outcome.COUPLED}
    engine.journal.record_compact(m.name, [e for e in entries if e.outcome in routine])
    engine.journal.record_many([e for e in entries if e.outcome not in routine])
    for pair in singles:
        side: Side = "bc" if pair.bc is not None or (pair.coupling and pair.coupling.bc_id) else "dv"
        pair_id = record_id(m, side, pair.record_on(side)) or (
            pair.coupling.id_on(side) if pair.coupling else None
        )
        if not pair_id:
            continue
        try:
            result: SyncResult = engine.sync_record(
                SyncMessage(
                    mapping=m.name,
                    side=side,
                    id=pair_id,
                    reason="bulk: one by one",
                    correlation_id=correlation_id or str(uuid.uuid4()),
                )
            )
            counts[str(result.outcome)] += 1
        except Exception as exc:  # one record must not fail its neighbours
            log.warning("%s %s:%s failed in bulk: %s", m.name, side, pair_id, exc)
            counts["failed"] += 1
            engine.enqueue(
                [ChunkMessage(mapping=m.name, side=side, ids=[pair_id], reason="retry after bulk failure")],
                requeue_delay(1),
            )
    return counts


def _pair_id(m: EntityMapping, pair: Pair, side: Side) -> str | None:
    return record_id(m, side, pair.record_on(side)) or (pair.coupling.id_on(side) if pair.coupling else None)


def dry_run_item(m: EntityMapping, pair: Pair, plan: Plan) -> dict[str, Any]:
    """One record a dry run would touch: outcome, ids, reason, per field old -> new, conflicts."""
    bc_id, dv_id = _pair_id(m, pair, "bc"), _pair_id(m, pair, "dv") or _written_dv_id(plan)
    details = audit(planned_result(plan, bc_id, dv_id, pair.bc, pair.dv), "")
    return {
        "outcome": str(plan.outcome), "bc_id": bc_id, "dv_id": dv_id, "reason": plan.reason,
        "changes": details["changes"], "conflicts": details["conflicts"], "error": plan.error or "",
    }  # fmt: skip


def _bulk_friendly(plan: Plan) -> bool:
    """Plans the bulk path executes itself; everything else takes the one-record path."""
    if plan.outcome not in (Outcome.UNCHANGED, Outcome.MODIFIED, Outcome.INSERTED, Outcome.COUPLED):
        return False
    if plan.uncouple or any(w.kind == "delete" for w in plan.writes):
        return False
    return not (plan.bc_write is not None and plan.bc_write.kind == "create")


def _execute(engine: Engine, m: EntityMapping, planned: list[tuple[Pair, Plan]]) -> list[tuple[str, str]]:
    """Send the bulk writes, then store couplings from the records as read back."""
    results: list[tuple[str, str]] = [(str(plan.outcome), "") for _, plan in planned]
    after: dict[Side, dict[int, Record | None]] = {"bc": {}, "dv": {}}
    pk = m.dataverse.primary_key
    for pair, plan in planned:
        _adopt_match(m, pair, plan)

    # Dataverse creates: UpsertMultiple with the deterministic ids, then one read-back per 500.
    creates = [
        (i, plan.dv_write)
        for i, (_, plan) in enumerate(planned)
        if plan.dv_write and plan.dv_write.kind == "create"
    ]
    if creates:
        bodies = [{**w.body, pk: w.record_id} for _, w in creates if w is not None]
        upserted = engine.dv.upsert_many(m, bodies)
        failed = {r.id for r in upserted if not r.ok}
        errors = {r.id: str(r.error) for r in upserted if not r.ok}
        created_ids = [str(w.record_id) for _, w in creates if w is not None and w.record_id not in failed]
        fresh = {
            str(r[pk]): r
            for r in engine.dv.read_many(m, created_ids, select=select_fields(engine.ms, m, "dv"))
        }
        for i, w in creates:
            assert w is not None
            if w.record_id in failed or w.record_id not in fresh:
                results[i] = ("failed", errors.get(w.record_id, "created record could not be read back"))
            after["dv"][i] = fresh.get(str(w.record_id))

    # Updates on each side: conditional PATCHes in bulk (Dataverse `$batch`, BC `$batch` of 100).
    for side, gateway in engine.sides.items():
        updates = [
            (i, current, write.body)
            for i, (pair, plan) in enumerate(planned)
            for write, current in [(plan.write_on(side), pair.record_on(side))]
            if write is not None and write.kind == "update" and current is not None
        ]
        if not updates:
            continue
        answers = gateway.update_many(
            m, [(current, body) for _, current, body in updates], select=select_fields(engine.ms, m, side)
        )
        for (i, _, _), answer in zip(updates, answers, strict=True):
            if answer.ok:
                after[side][i] = answer.record
            else:
                results[i] = ("failed", str(answer.error))

    new: list[Coupling] = []
    changed: list[Coupling] = []
    for i, (pair, plan) in enumerate(planned):
        outcome, error = results[i]
        bc = after["bc"].get(i, pair.bc)
        dv = after["dv"].get(i, pair.dv)
        if outcome == "failed":
            if pair.coupling is not None:
                c = count_failure(pair.coupling, error)
                c.last_result = "failed"
                changed.append(c)
            continue
        if plan.outcome == Outcome.UNCHANGED and pair.coupling is not None:
            continue  # nothing to store: the snapshot already says this
        if bc is None or dv is None:
            continue
        snapshot = take_snapshot(engine.ms, m, bc, dv)
        c = settle(m, pair.coupling, str(bc["id"]), str(dv[pk]), bc, dv, snapshot, outcome)
        (changed if pair.coupling is not None else new).append(c)
    for stored in engine.couplings.create_many(new) if new else []:
        if isinstance(stored, Exception):
            log.warning("%s: coupling not stored: %s", m.name, stored)
    for stored in engine.couplings.update_many(changed) if changed else []:
        if isinstance(stored, Exception):
            log.info("%s: coupling changed concurrently; the next sync settles it (%s)", m.name, stored)
    return results


def _adopt_match(m: EntityMapping, pair: Pair, plan: Plan) -> None:
    """A matched counterpart comes from the candidates: make it the pair's record on its side."""
    if plan.couple_with is None:
        return
    side, matched_id = plan.couple_with
    for candidate in pair.candidates:
        if record_id(m, side, dict(candidate.record)) == matched_id:
            pair.put(side, dict(candidate.record))
            return


# ------------------------------------------------------------------------------------ helpers
def _read_all(engine: Engine, m: EntityMapping, side: Side) -> Iterator[dict[str, Any]]:
    for page in _pages(engine, m, side):
        yield from page


def _pages(engine: Engine, m: EntityMapping, side: Side) -> Iterator[list[Record]]:
    return engine.sides[side].query_pages(
        m, select=select_fields(engine.ms, m, side), filter=scope_filter(m, side)
    )


def _chunk_lookups(engine: Engine, m: EntityMapping, pairs: Iterable[Pair]) -> StaticLookups:
    """One `Lookups` for many records: each distinct key resolved once."""
    lookups = engine.resolver.code_tables(m)  # BC code tables (cached)
    seen: set[LookupKey] = set()
    for pair in pairs:
        for side, record in (("bc", pair.bc), ("dv", pair.dv)):
            if record is None:
                continue
            for key in lookup_keys(engine.ms, m, side, record):  # type: ignore[arg-type]
                if key not in seen:
                    seen.add(key)
                    engine.resolver.resolve(lookups, key)
    return lookups


def _written_dv_id(plan: Plan) -> str | None:
    return plan.dv_write.record_id if plan.dv_write is not None else None


def _chunks(items: list[Pair], size: int) -> Iterator[list[Pair]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
