"""The delta poll: the safety net for missed notifications, and the only feed for BC contacts and
salespeople (BC sends no webhooks for them).

Per mapping and side, from the watermark in `Watermarks`:
- BC: records with `lastModifiedDateTime` after the watermark (minus an overlap for clock skew);
  those whose time equals what the coupling recorded after our own write are echoes and dropped.
- Dataverse: change tracking from the stored delta link; changes by the integration user are
  echoes. An expired token falls back to a full resync of the mapping.
The first poll of a mapping only sets the baseline: bringing everything across is the full
resync's job. Watermarks are written conditionally, so two instances polling at once cannot move
one backwards; the one that loses skips that mapping this round.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from shared.mapping.queries import in_scope, scope_clauses
from shared.mapping.schema import EntityMapping
from shared.messages import ScanMessage, SyncMessage
from shared.runtime import Runtime
from shared.store.watermarks import Watermark, WatermarkConflictError
from shared.timestamps import iso_ms, parse_iso

log = logging.getLogger(__name__)

OVERLAP = dt.timedelta(seconds=5)


@dataclass
class PollReport:
    enqueued: dict[str, int] = field(default_factory=dict)
    echoes: int = 0
    out_of_scope: int = 0  # uncoupled records the mapping does not take (e.g. BC's company contacts)
    baselines: list[str] = field(default_factory=list)
    resyncs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def delta_poll(rt: Runtime, now: dt.datetime | None = None) -> PollReport:
    report = PollReport()
    now = now or dt.datetime.now(dt.UTC)
    for name in rt.mappings.sync_order():
        m = rt.mappings.entity(name)
        try:
            if m.writes_to("dv"):
                _poll_bc(rt, m, now, report)
            if m.writes_to("bc"):
                _poll_dataverse(rt, m, report)
        except WatermarkConflictError:
            report.skipped.append(f"{name}: another instance polled it at the same time")
    return report


def _poll_bc(rt: Runtime, m: EntityMapping, now: dt.datetime, report: PollReport) -> None:
    mark = rt.watermarks.get(m.name, "bc")
    if mark is None:
        rt.watermarks.set(Watermark(m.name, "bc", iso_ms(now)))
        report.baselines.append(f"{m.name}/bc")
        return
    since = parse_iso(mark.value)
    messages: list[SyncMessage] = []
    newest = since
    select = ["id", *(c.field for c in scope_clauses(m, "bc"))]
    for record in rt.bc.modified_since(rt.company_id, m.bc.entity_set, since, overlap=OVERLAP, select=select):
        modified = str(record["lastModifiedDateTime"])
        newest = max(newest, parse_iso(modified))
        coupling = rt.couplings.get(m.name, "bc", str(record["id"]))
        if coupling is not None and coupling.bc_modified == modified:
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
    report.enqueued[f"{m.name}/bc"] = len(messages)


def _poll_dataverse(rt: Runtime, m: EntityMapping, report: PollReport) -> None:
    mark = rt.watermarks.get(m.name, "dv")
    pk = m.dataverse.primary_key
    batch = rt.dataverse.changes(
        m.dataverse.entity_set, select=[pk, "_modifiedby_value"], delta_link=mark.value if mark else None
    )
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
