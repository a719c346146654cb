"""The delta poll: the safety net for missed notifications, and the only feed for BC contacts and
salespeople (BC sends no webhooks for them).

Per mapping and side, from the watermark in `Watermarks`:
- BC: records with `lastModifiedDateTime` after the watermark (minus an overlap for clock skew);
  those whose time equals what the coupling recorded after our own write are echoes and dropped.
- Dataverse: change tracking from the stored delta link; changes by the integration user are
  echoes. An expired token falls back to a full resync of the mapping. A table without change
  tracking (checked once per table every few hours, `DataverseClient.change_tracking_enabled`) is
  polled by `modifiedon` instead, which shows no deletions; set-up reports it with the fix. A row the
  last sync left is told by its ETag there (`Coupling.unchanged_since_sync`): `modifiedon` counts
  whole seconds, so a person's change in the second of our own write carries the same time.
The first poll of a mapping only sets the baseline: bringing everything across is the full
resync's job. Watermarks are written conditionally, so two instances polling at once cannot move
one backwards; the one that loses skips that mapping this round.

Two things no change time can show are checked here too, so that they are found within minutes
rather than at the nightly resync:
- A BC subscription that no longer exists (BC deletes one after 6 failed deliveries or a refusing
  answer, and when it expires): one request lists them; a missing one is re-created at once and
  its mappings get a sweep of changes *and* deletions (`shared.sync.bulk.sweep_bc`) for the gap.
- BC deletions no notification reports (contacts and salespeople have no webhooks; a gap): every
  `BC_SWEEP_MINUTES` each mapping towards Dataverse gets a sweep of BC's ids for deletions.
Both sweeps are queued as `ScanMessage`s and run in the processor.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Literal

from shared import odata
from shared.connectors.dataverse import CHANGE_TRACKING_NOT_ENABLED
from shared.connectors.errors import ApiError, ValidationError
from shared.feeds.registration import ensure_bc_subscriptions, missing_bc_subscriptions
from shared.mapping.queries import in_scope, scope_clauses
from shared.mapping.schema import EntityMapping
from shared.messages import ScanMessage, SyncMessage
from shared.runtime import Runtime
from shared.store.watermarks import Watermark, WatermarkConflictError
from shared.timestamps import iso_ms, parse_iso

log = logging.getLogger(__name__)

OVERLAP = dt.timedelta(seconds=5)
SWEEP_MARK = "bc-sweep"  # Watermarks row: when the last deletion sweep of the mapping was queued
# A Dataverse watermark of a table without change tracking: the newest `modifiedon` seen, not a delta link.
MODIFIED_MARK = "modifiedon:"


@dataclass
class PollReport:
    enqueued: dict[str, int] = field(default_factory=dict)
    echoes: int = 0
    out_of_scope: int = 0  # uncoupled records the mapping does not take (e.g. BC's company contacts)
    baselines: list[str] = field(default_factory=list)
    resyncs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)  # "<mapping>: all|deletions"
    recreated: list[str] = field(default_factory=list)  # BC subscriptions found missing, re-created
    untracked: list[str] = field(default_factory=list)  # mappings polled by modifiedon (no change tracking)


def delta_poll(rt: Runtime, now: dt.datetime | None = None) -> PollReport:
    """BC is polled per company (each with its own watermarks, report keys `<company id>:<mapping>`
    for all but the home company); Dataverse once, its changes routed to their company by the
    processor."""
    report = PollReport()
    now = now or dt.datetime.now(dt.UTC)
    gap = _recreate_missing_subscriptions(rt, report)
    views = [rt.for_company(c) for c in rt.companies]
    for name in rt.mappings.sync_order():
        m = rt.mappings.entity(name)
        try:
            if m.writes_to("dv"):
                for view in views:
                    _poll_bc(view, m, now, report)
                    _queue_sweep(view, m, now, report, gap=(view.company_id.lower(), m.bc.entity_set) in gap)
            if m.writes_to("bc"):
                # Once for all companies, unscoped: the processor finds each change's company (`route`).
                _poll_dataverse(rt.root, m, report)
        except WatermarkConflictError:
            report.skipped.append(f"{name}: another instance polled it at the same time")
    return report


def _poll_bc(rt: Runtime, m: EntityMapping, now: dt.datetime, report: PollReport) -> None:
    mark = rt.watermarks.get(m.name, "bc")
    if mark is None:
        rt.watermarks.set(Watermark(m.name, "bc", iso_ms(now)))
        report.baselines.append(f"{rt.scope}{m.name}/bc")
        return
    since = parse_iso(mark.value)
    messages: list[SyncMessage] = []
    newest = since
    select = ["id", *(c.field for c in scope_clauses(m, "bc"))]
    for record in rt.bc.modified_since(rt.company_id, m.bc.entity_set, since, overlap=OVERLAP, select=select):
        modified = str(record["lastModifiedDateTime"])
        newest = max(newest, parse_iso(modified))
        coupling = rt.couplings.get(m.name, "bc", str(record["id"]))
        if coupling is not None and coupling.unchanged_since_sync("bc", record, "lastModifiedDateTime"):
            report.echoes += 1
            continue
        if coupling is None and not in_scope(m, "bc", record):
            # A coupled record leaving the scope is news; an uncoupled one outside it is not (BC
            # changes a customer's company contact with every customer change).
            report.out_of_scope += 1
            continue
        messages.append(SyncMessage(mapping=m.name, side="bc", id=str(record["id"]), modified=modified,
                                    reason="delta poll"))  # fmt: skip
    # Never past the poll's own start: a record stamped later is read again next time (the overlap
    # and the echo check make a re-read harmless).
    rt.watermarks.set(Watermark(m.name, "bc", iso_ms(min(newest, now)), mark.etag))
    rt.storage.enqueue(messages)
    report.enqueued[f"{rt.scope}{m.name}/bc"] = len(messages)


def _recreate_missing_subscriptions(rt: Runtime, report: PollReport) -> set[tuple[str, str]]:
    """(company, entity set) whose BC subscription was gone (now re-created): notifications of the
    gap are lost."""
    try:
        missing = missing_bc_subscriptions(rt.bc, rt.settings, rt.mappings)
        if not missing:
            return set()
        upkeep = ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings, rt.subscriptions)
    except ApiError as exc:
        report.skipped.append(f"BC subscriptions: {exc}")
        return set()
    report.recreated.extend(upkeep.created)
    report.skipped.extend(upkeep.failed)
    log.warning("BC subscriptions were missing (%s); re-created: %s", missing, upkeep.created)
    return {(company.lower(), entity_set) for company, entity_set in missing}


def _queue_sweep(rt: Runtime, m: EntityMapping, now: dt.datetime, report: PollReport, *, gap: bool) -> None:
    mark = rt.watermarks.get(m.name, SWEEP_MARK)
    every = dt.timedelta(minutes=rt.settings.bc_sweep_minutes)
    if not gap and mark is not None and now - parse_iso(mark.value) < every:
        return
    # Conditional, so two instances polling at once queue one sweep; the other skips it.
    try:
        rt.watermarks.set(Watermark(m.name, SWEEP_MARK, iso_ms(now), mark.etag if mark else None))
    except WatermarkConflictError:
        report.skipped.append(f"{rt.scope}{m.name}: another instance queued its BC sweep")
        return
    kind: Literal["all", "deletions"] = "all" if gap else "deletions"
    reason = "bc subscription was missing" if gap else "periodic bc deletion sweep"
    rt.storage.enqueue([ScanMessage(mapping=m.name, side="bc", sweep=kind, reason=reason)])
    report.sweeps.append(f"{rt.scope}{m.name}: {kind}")


def _poll_dataverse(rt: Runtime, m: EntityMapping, report: PollReport) -> None:
    mark = rt.watermarks.get(m.name, "dv")
    pk = m.dataverse.primary_key
    # Delta links need change tracking on the table (asked once per table every few hours).
    if not rt.dataverse.change_tracking_enabled(m.dataverse.table):
        _poll_dataverse_by_time(rt, m, mark, report)
        return
    delta_link = mark.value if mark and not mark.value.startswith(MODIFIED_MARK) else None
    try:
        batch = rt.dataverse.changes(
            m.dataverse.entity_set, select=[pk, "_modifiedby_value"], delta_link=delta_link
        )
    except ValidationError as exc:
        if exc.code != CHANGE_TRACKING_NOT_ENABLED:
            raise
        _poll_dataverse_by_time(rt, m, mark, report)
        return
    if mark is not None and delta_link is None:
        # Change tracking was turned on since the last poll: catch up on the time-based mark once, then
        # keep the delta link this first tracking request gave.
        _poll_dataverse_by_time(rt, m, mark, report, keep_mark=True)
        report.baselines.append(f"{m.name}/dv")
        rt.watermarks.set(Watermark(m.name, "dv", batch.delta_link, mark.etag))
        return
    if mark is None:
        report.baselines.append(f"{m.name}/dv")
    elif batch.full_scan:
        # The token expired: changes since then are unknown, so converge the whole mapping in bulk.
        rt.storage.enqueue([ScanMessage(mapping=m.name, side="dv", since=None, reason="delta token expired")])
        report.resyncs.append(m.name)
    else:
        integration_user = rt.known_integration_user_id()
        messages = []
        for record in batch.upserted:
            if integration_user and str(record.get("_modifiedby_value", "")).lower() == integration_user:
                report.echoes += 1
                continue
            messages.append(SyncMessage(mapping=m.name, side="dv", id=str(record[pk]), reason="delta poll"))
        messages += [
            SyncMessage(mapping=m.name, side="dv", id=record_id, change="deleted", reason="delta poll")
            for record_id in batch.deleted
        ]
        rt.storage.enqueue(messages)
        report.enqueued[f"{m.name}/dv"] = len(messages)
    rt.watermarks.set(Watermark(m.name, "dv", batch.delta_link, mark.etag if mark else None))


def _poll_dataverse_by_time(
    rt: Runtime, m: EntityMapping, mark: Watermark | None, report: PollReport, *, keep_mark: bool = False
) -> None:
    """A table without change tracking: the rows whose `modifiedon` is at or after the mark (minus the
    overlap), the mark being the newest `modifiedon` seen (Dataverse's clock, not ours). Deletions are
    not visible this way (the webhook reports them); set-up says how to turn change tracking on."""
    field, pk = m.dataverse.modified_field, m.dataverse.primary_key
    entity_set = m.dataverse.entity_set
    if not keep_mark:
        report.untracked.append(m.name)
    since = (
        parse_iso(mark.value.removeprefix(MODIFIED_MARK))
        if mark and mark.value.startswith(MODIFIED_MARK)
        else None
    )
    if since is None:
        newest_row = next(
            iter(rt.dataverse.query_pages(entity_set, select=[field], orderby=f"{field} desc", page_size=1)),
            [],
        )
        newest = (
            str(newest_row[0][field])
            if newest_row and newest_row[0].get(field)
            else iso_ms(dt.datetime.now(dt.UTC))
        )
        if not keep_mark:
            rt.watermarks.set(Watermark(m.name, "dv", MODIFIED_MARK + newest, mark.etag if mark else None))
            report.baselines.append(f"{m.name}/dv")
        return
    integration_user = rt.known_integration_user_id()
    messages: list[SyncMessage] = []
    newest_seen = since
    rows = rt.dataverse.query(
        entity_set, select=[pk, field, "_modifiedby_value"], filter=odata.ge(field, since - OVERLAP)
    )
    for record in rows:
        modified = parse_iso(str(record[field]))
        newest_seen = max(newest_seen, modified)
        if integration_user and str(record.get("_modifiedby_value", "")).lower() == integration_user:
            report.echoes += 1
            continue
        coupling = rt.couplings.get(m.name, "dv", str(record[pk]))
        if coupling is not None and coupling.unchanged_since_sync("dv", record, field):
            report.echoes += 1  # read again within the overlap
            continue
        messages.append(
            SyncMessage(mapping=m.name, side="dv", id=str(record[pk]), reason="delta poll (modifiedon)")
        )
    rt.storage.enqueue(messages)
    report.enqueued[f"{m.name}/dv"] = len(messages)
    if not keep_mark:
        rt.watermarks.set(
            Watermark(m.name, "dv", MODIFIED_MARK + iso_ms(newest_seen), mark.etag if mark else None)
        )
