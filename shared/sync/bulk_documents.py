"""Bulk synchronization of documents with lines (a mapping with `lines`): full resync and BC scans.

An initial sync of posted invoices is the large case: BC's documents are read with their lines in
pages (`$expand`, PAGE documents per request), each new document is decided with the same pure
`reconcile_document` as on the one-record path, and the new Dataverse documents are written with
`UpsertMultiple`: headers first, then their details (deterministic ids for both, so a repeated run
converges instead of duplicating). Couplings, with their line couplings, go in table transactions.

Request budget for N documents of L lines into an empty Dataverse: N/PAGE BC pages + N/1,000 header
`UpsertMultiple` + N*L/1,000 detail `UpsertMultiple` (10,000 invoices of 10 lines: 10 + 10 + 100).

What does not fit the bulk path goes through `Engine.sync_record`: documents changed since the last
sync (both sides read with their lines, merged, written as one unit), Dataverse documents that create
BC documents (one deep insert each), and anything that failed in bulk. A document whose customer or
product is not coupled is skipped, counted and listed (journal and the run's message): it is synced
by the next full resync, or at its next change, once its references are coupled.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.mapping.lookups import StaticLookups
from shared.mapping.queries import LookupKey, in_scope, lookup_keys, scope_filter, select_fields
from shared.mapping.schema import EntityMapping
from shared.messages import SyncMessage
from shared.store.couplings import Coupling
from shared.store.journal import JournalEntry, RunSummary
from shared.sync.documents import (
    DocumentPlan,
    LineState,
    document_snapshot,
    lines_of,
    reconcile_document,
)
from shared.sync.engine import Engine, requeue_delay, settle
from shared.sync.gateways import Record, dataverse_parent_bind
from shared.sync.reconcile import Outcome
from shared.timestamps import now_iso

log = logging.getLogger(__name__)

PAGE = 1000  # BC documents per page (their lines come with them)
LISTED = 50  # skipped documents named in the run's message


def run_document_resync(
    engine: Engine, m: EntityMapping, *, dry_run: bool = False, run_id: str | None = None
) -> RunSummary:
    """Converge a document mapping (see the module docstring)."""
    run = engine.journal.start_run(m.name, "full_resync", run_id, dry_run=dry_run)
    requests_before = engine.requests_in_this_thread()
    started = time.monotonic()
    counts: Counter[str] = Counter()
    skipped: list[str] = []
    known = _Known()
    try:
        marks = dict(engine.couplings.bc_marks(m.name))
        for page in bc_document_pages(engine, m):
            fresh: list[Record] = []
            for document in page:
                run.total += 1
                bc_id = str(document["id"])
                mark = marks.get(bc_id)
                if mark is not None:
                    if mark == str(document.get("lastModifiedDateTime") or ""):
                        counts["unchanged"] += 1
                    else:
                        counts.update([_one(engine, m, "bc", bc_id, dry_run)])
                elif in_scope(m, "bc", document):
                    fresh.append(document)
                else:
                    counts["skipped"] += 1
            if fresh:
                counts.update(
                    create_in_dataverse(engine, m, fresh, dry_run=dry_run, skipped=skipped, known=known)
                )
            run.done = run.total
            run.counts = dict(counts)
            run.api_requests = engine.requests_in_this_thread() - requests_before
            engine.journal.save_run(run)
        if m.creates_on("bc"):
            counts.update(_dataverse_side(engine, m, dry_run))
        run.status = "succeeded"
    except Exception as exc:
        run.status = "interrupted"
        run.message = f"{type(exc).__name__}: {exc}. The queue delivers this resync again."
        raise
    finally:
        run.finished = now_iso()
        run.counts = dict(counts)
        run.api_requests = engine.requests_in_this_thread() - requests_before
        listed = f"; skipped (references not coupled): {', '.join(skipped[:LISTED])}" if skipped else ""
        more = f" and {len(skipped) - LISTED} more" if len(skipped) > LISTED else ""
        run.message = (
            run.message or f"{run.done} documents in {time.monotonic() - started:.1f} s{listed}{more}"
        )
        if run.attempts > 1 and run.status == "succeeded":
            run.message += f" (attempt {run.attempts})"
        engine.journal.save_run(run)
    return run


def bc_document_pages(engine: Engine, m: EntityMapping, filter: str | None = None) -> Iterator[list[Record]]:
    return engine.bc.query_document_pages(
        m, select=select_fields(engine.ms, m, "bc"), filter=filter or scope_filter(m, "bc"), page_size=PAGE
    )


def create_in_dataverse(
    engine: Engine,
    m: EntityMapping,
    documents: list[Record],
    *,
    dry_run: bool,
    skipped: list[str],
    known: _Known | None = None,
) -> Counter[str]:
    """New BC documents: decided one by one (pure), written in bulk. Returns outcome counts.
    `known`: the lookups resolved for earlier pages of the same run (each key is resolved once)."""
    assert m.lines is not None
    counts: Counter[str] = Counter()
    lookups = _lookups(engine, m, documents, known or _Known())
    lm = m.line_mapping()
    headers: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    planned: list[tuple[Record, DocumentPlan]] = []
    entries: list[JournalEntry] = []
    for document in documents:
        plan = reconcile_document(engine.ms, m, snapshot=None, bc=document, dv=None, lookups=lookups)
        write = plan.header.dv_write
        if plan.outcome in (Outcome.DEFERRED, Outcome.FAILED) or write is None or write.kind != "create":
            outcome = "skipped" if plan.outcome in (Outcome.DEFERRED, Outcome.SKIPPED) else str(plan.outcome)
            counts[outcome] += 1
            if plan.outcome in (Outcome.DEFERRED, Outcome.FAILED):
                skipped.append(str(document.get(m.bc.key) or document["id"]))
                entries.append(JournalEntry(
                    m.name, outcome, bc_id=str(document["id"]), reason=plan.reason, error=plan.error or "",
                ))  # fmt: skip
            continue
        planned.append((document, plan))
        headers.append(dict(write.body))
        assert write.record_id is not None
        parent = dataverse_parent_bind(m, write.record_id)
        for lp in plan.lines:
            if lp.plan.dv_write is not None and lp.plan.dv_write.kind == "create":
                body = {lm.dataverse.primary_key: lp.plan.dv_write.record_id, **lp.plan.dv_write.body}
                details.append({**body, **parent})
    if dry_run:
        counts["inserted"] += len(planned)
        return counts
    failed_headers = {r.id for r in engine.dv.upsert_many(m, headers) if not r.ok} if headers else set()
    failed_details = {r.id for r in engine.dv.upsert_many(lm, details) if not r.ok} if details else set()
    new: list[Coupling] = []
    for document, plan in planned:
        write = plan.header.dv_write
        assert write is not None and write.record_id
        line_ids = {lp.plan.dv_write.record_id for lp in plan.lines if lp.plan.dv_write is not None}
        if write.record_id in failed_headers or line_ids & failed_details:
            # Decided again on the one-record path, which says why Dataverse refused it.
            counts[_one(engine, m, "bc", str(document["id"]), False)] += 1
            continue
        states = [
            LineState(lp.bc_id, lp.plan.dv_write.record_id, lp.plan.snapshot or {"bc": {}, "dv": {}})
            for lp in plan.lines
            if lp.plan.dv_write is not None
        ]
        snapshot = document_snapshot(plan.header.snapshot or {"bc": {}, "dv": {}}, states)
        c = settle(m, None, str(document["id"]), write.record_id, document, None, snapshot, Outcome.INSERTED)
        new.append(c)
        counts["inserted"] += 1
        entries.append(JournalEntry(
            m.name, "inserted", bc_id=str(document["id"]), dv_id=write.record_id,
            reason=f"{plan.reason} (bulk, {len(lines_of(m, 'bc', document))} lines)",
        ))  # fmt: skip
    for stored in engine.couplings.create_many(new) if new else []:
        if isinstance(stored, Exception):
            log.warning("%s: coupling not stored: %s", m.name, stored)
    routine = [e for e in entries if e.outcome == "inserted"]
    engine.journal.record_compact(m.name, routine)
    engine.journal.record_many([e for e in entries if e.outcome != "inserted"])
    return counts


def converge_bc_documents(
    engine: Engine, m: EntityMapping, bc_ids: list[str], correlation_id: str
) -> Counter[str]:
    """Changed BC documents (a `collection` notification, a sweep): each converged as one unit."""
    counts: Counter[str] = Counter()
    for bc_id in bc_ids:
        counts[_one(engine, m, "bc", bc_id, False, correlation_id)] += 1
    return counts


def _dataverse_side(engine: Engine, m: EntityMapping, dry_run: bool) -> Counter[str]:
    """Documents that Dataverse creates in BC (submitted orders): uncoupled ones in scope, and
    coupled ones changed since their last sync, each on the one-record path (one deep insert)."""
    counts: Counter[str] = Counter()
    pk, modified = m.dataverse.primary_key, m.dataverse.modified_field
    recorded = {c.dv_id: c for c in engine.couplings.each(m.name)}
    select = list(dict.fromkeys([pk, modified, *(c.field for c in m.dataverse.filter)]))
    for page in engine.dv.query_pages(m, select=select, filter=scope_filter(m, "dv")):
        for row in page:
            dv_id = str(row[pk])
            if dv_id in recorded and recorded[dv_id].unchanged_since_sync("dv", row, modified):
                counts["unchanged"] += 1
                continue
            counts[_one(engine, m, "dv", dv_id, dry_run)] += 1
    return counts


def _one(
    engine: Engine, m: EntityMapping, side: str, record_id: str, dry_run: bool, correlation_id: str = ""
) -> str:
    message = SyncMessage(
        mapping=m.name, side=side, id=record_id, reason="bulk: one by one",  # type: ignore[arg-type]
        correlation_id=correlation_id or str(uuid.uuid4()),
    )  # fmt: skip
    try:
        result = engine.preview(message) if dry_run else engine.sync_record(message)
    except Exception as exc:  # one document must not fail its neighbours
        log.warning("%s %s:%s failed in bulk: %s", m.name, side, record_id, exc)
        engine.enqueue([message.model_copy(update={"reason": "retry after bulk failure"})], requeue_delay(1))
        return "failed"
    return str(result.outcome)


@dataclass
class _Known:
    """Lookups resolved so far in a run, and the keys they were resolved for."""

    lookups: StaticLookups | None = None
    seen: set[LookupKey] = field(default_factory=set)


def _lookups(engine: Engine, m: EntityMapping, documents: list[Record], known: _Known) -> StaticLookups:
    """One `Lookups` for many documents and their lines: each distinct key resolved once a run."""
    lm = m.line_mapping()
    if known.lookups is None:
        known.lookups = engine.resolver.code_tables(m)
        engine.resolver.add_lookups(known.lookups, lm, "bc", [])  # the lines' code tables
    lookups, seen = known.lookups, known.seen
    for document in documents:
        keys = [*lookup_keys(engine.ms, m, "bc", document)]
        for line in lines_of(m, "bc", document):
            keys += lookup_keys(engine.ms, lm, "bc", line)
        for key in keys:
            if key not in seen:
                seen.add(key)
                engine.resolver.resolve(lookups, key)
    return lookups
