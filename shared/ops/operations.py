"""The operator's actions, one function each. The CLI (`bcsync`) and the admin HTTP API both call
these and only render the result, so every action has one implementation.

Results are plain dataclasses (or lists of them); `to_json` turns any of them into JSON-ready data.
Bad input raises `OperationError` with a message that says what to do (the API answers 400/404).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from azure.core.exceptions import AzureError, ResourceNotFoundError

from shared import telemetry
from shared.errors import ServiceError
from shared.mapping.schema import EntityMapping, Side
from shared.messages import MessageDecodeError, SyncMessage, parse_json
from shared.odata import eq
from shared.runtime import Runtime
from shared.store.couplings import UNSYNCED_RESULTS, AlreadyCoupledError, Coupling
from shared.store.journal import JournalEntry, RunSummary
from shared.sync import bulk
from shared.sync.engine import MAX_TRANSIENT_REQUEUES, RequeueError, SyncResult, audit, base_preferring
from shared.sync.reconcile import Snapshot
from shared.timestamps import iso_ms, parse_iso

SIDES: tuple[Side, Side] = ("bc", "dv")
# How far back `list_errors` looks in the journal for failures of records that have no coupling.
RECENT_FAILURE_HOURS = 24
# Azure queues return at most 32 messages per peek/receive.
QUEUE_PAGE = 32


class OperationError(ServiceError):
    """The request cannot be carried out as asked; `status` is the HTTP answer (400 or 404)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = status


def to_json(value: Any) -> Any:
    """Dataclasses, enums and datetimes as JSON-ready values (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def entity_mapping(rt: Runtime, name: str) -> EntityMapping:
    """The active entity mapping called `name` (404 naming the known ones otherwise)."""
    known = [m.name for m in rt.mappings.entities()]
    if name not in known:
        raise OperationError(f"no entity mapping named {name!r}; known: {', '.join(known)}", 404)
    return rt.mappings.entity(name)


# BC API v2.0 records are addressed by their `id` (SystemId) and Dataverse rows by their primary key:
# both GUIDs, and the engine, the coupling store and both clients only ever take those (BC numbers
# and codes are not ids anywhere in operations). Checked here, at the boundary both the CLI and the
# admin API go through, because an id ends up in an OData URL and in a Table Storage key: without
# the check `http://...` or `' or 1 eq 1` surfaced as a 500 from deep inside.
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ID_FIELDS: dict[Side, str] = {"bc": "bc_id", "dv": "dv_id"}


def valid_id(side: Side, value: str, field_name: str | None = None) -> str:
    """`value` as a lowercase GUID, or `OperationError` (400) naming the field and the expected form."""
    name = field_name or _ID_FIELDS[side]
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        system = "BC record's `id` (SystemId)" if side == "bc" else "Dataverse row's primary key"
        shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
        raise OperationError(
            f"`{name}` must be the {system}, a GUID like 6d81597f-0f9f-e711-8122-000d3aa2331c; got {shown}"
        )
    return value.lower()


def record_ref(bc_id: str | None, dv_id: str | None) -> tuple[Side, str]:
    """Exactly one of the two references (an id, or a BC number / code, see `resolve_record`)."""
    if bool(bc_id) == bool(dv_id):
        raise OperationError("name the record by exactly one of its BC id or its Dataverse id")
    return ("bc", check_reference("bc", bc_id)) if bc_id else ("dv", check_reference("dv", dv_id))


def key_field(m: EntityMapping, side: Side) -> str | None:
    """The field people name a record by on `side`: BC's key (a customer's number, a
    salesperson's code) and the Dataverse field it maps to (`accountnumber`), or else the
    Dataverse field matched first (a user's e-mail)."""
    if side == "bc":
        return m.bc.key or None
    mapped = next((f.dv for f in m.fields if f.bc and f.bc == m.bc.key and f.dv), None)
    ranked = sorted((f for f in m.fields if f.match_priority and f.dv), key=lambda f: f.match_priority or 0)
    return mapped or (ranked[0].dv if ranked else None)


# A number or code: BC's are Code[20]; the Dataverse columns they map to hold up to 100 characters.
# URL and path characters are refused before any request (the value only ever goes into an escaped
# OData literal, but a URL or a braced GUID here is a mistake worth naming).
_REFERENCE = re.compile(r"[^\x00-\x1f\x7f/\\?#{}\ud800-\udfff]{1,100}")


def check_reference(side: Side, value: Any) -> str:
    """`value` as a record reference (a GUID, lowercased, or a number or code), checked without any
    request; `OperationError` (400) naming the field and the two forms otherwise."""
    if isinstance(value, str) and _GUID.fullmatch(value):
        return value.lower()
    if isinstance(value, str) and value == value.strip() and _REFERENCE.fullmatch(value):
        return value
    name = _ID_FIELDS[side]
    system = "BC record's `id` (SystemId)" if side == "bc" else "Dataverse row's primary key"
    shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
    raise OperationError(
        f"`{name}` must be the {system}, a GUID like 6d81597f-0f9f-e711-8122-000d3aa2331c, or the "
        f"record's number or code (up to 100 characters, none of / \\ ? # {{ }}); got {shown}"
    )


def resolve_record(rt: Runtime, m: EntityMapping, side: Side, ref: str) -> str:
    """The record id `ref` names: an id as it is, or a BC number or code (`C00010`, `OF`) looked
    up by `key_field` with one query. 400/404 with the reason otherwise."""
    ref = check_reference(side, ref)
    if _GUID.fullmatch(ref):
        return ref
    key = key_field(m, side)
    system = "BC" if side == "bc" else "Dataverse"
    if key is None:
        valid_id(side, ref)  # raises, naming the id's form
    assert key is not None
    pk = "id" if side == "bc" else m.dataverse.primary_key
    gateway = rt.engine.sides[side]
    found = next(iter(gateway.query_pages(m, select=[pk, key], filter=eq(key, ref), page_size=2)), [])
    if not found:
        raise OperationError(f"{m.name}: no {system} record with {key} {ref!r} (nor is it an id)", 404)
    if len(found) > 1:
        ids = ", ".join(str(r[pk]) for r in found)
        raise OperationError(f"{m.name}: several {system} records have {key} {ref!r} ({ids}); give the id")
    return str(found[0][pk]).lower()


def _side(value: str | None, what: str) -> Side | None:
    if value in (None, ""):
        return None
    if value not in SIDES:
        raise OperationError(f"{what} must be 'bc' or 'dv', not {value!r}")
    return value  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ status
@dataclass
class MappingStatus:
    mapping: str
    coupled: int
    failed: int  # failed records, coupled or not (a failed create has no coupling)
    skipped: int  # records (failed or conflicting) not synced again until an operator retries them
    last_run: RunSummary | None
    # When the oldest change that has not reached the other side was observed: of a failed,
    # skipped, conflicting or retrying record, or of a message in the poison queue.
    oldest_unsynced_change: str | None
    watermarks: dict[str, str]  # side -> where the delta poll has read up to
    subscription_expires: str | None  # BC webhook subscription of this mapping's entity set
    poison_messages: int  # of the poison messages peeked (at most 32), those for this mapping
    conflicts: int = 0
    retrying: int = 0  # transient trouble: the queue tries again by itself
    oldest_unsynced_seconds: int | None = None  # the age of `oldest_unsynced_change`


@dataclass
class ServiceStatus:
    mappings: list[MappingStatus]
    queue_depth: int
    poison_queue_depth: int


def coupled_count(rt: Runtime, mapping: str) -> int:
    """The records of `mapping` coupled (or being coupled) in `rt`'s company: reads every pair's ids."""
    coupled = sum(1 for _ in rt.couplings.all_ids(mapping, "bc"))
    return coupled + sum(1 for _, other in rt.couplings.all_ids(mapping, "dv") if other is None)  # pending


def record_couplings_metric(rt: Runtime, mapping: str, coupled: int) -> None:
    """`bcsync.couplings` of `mapping`, per company when several are synchronized."""
    if rt.multi_company:
        telemetry.gauge("bcsync.couplings", coupled, mapping=mapping, company=rt.company_id)
    else:
        telemetry.gauge("bcsync.couplings", coupled, mapping=mapping)


def status(rt: Runtime) -> ServiceStatus:
    """Per mapping: couplings, records not in sync by state, the last run, the age of the oldest
    change not synced yet; queue depths."""
    now = dt.datetime.now(dt.UTC)
    poison = [(m, raw) for m, raw in _peek_messages(rt, rt.storage.poison_queue_name) if _is_message(m)]
    poison_by_mapping = Counter(m.mapping for m, _ in poison)
    expiries = _subscription_expiries(rt)
    result = []
    for m in rt.mappings.entities():
        coupled = coupled_count(rt, m.name)
        unsynced = list_errors(rt, m.name)
        states = Counter(e.state for e in unsynced)
        since = [e.since for e in unsynced if e.since]
        since += [iso_ms(raw.inserted_on) for msg, raw in poison if msg.mapping == m.name and raw.inserted_on]
        oldest = min(since, key=parse_iso) if since else None
        runs = rt.journal.runs(m.name, limit=1)
        marks: dict[str, str] = {
            side: mark.value for side in SIDES if (mark := rt.watermarks.get(m.name, side)) is not None
        }
        record_couplings_metric(rt, m.name, coupled)
        result.append(
            MappingStatus(
                mapping=m.name,
                coupled=coupled,
                failed=states["failed"],
                skipped=sum(1 for e in unsynced if e.skipped or e.state == "skipped"),
                last_run=runs[0] if runs else None,
                oldest_unsynced_change=oldest,
                watermarks=marks,
                subscription_expires=expiries.get(m.bc.entity_set),
                poison_messages=poison_by_mapping.get(m.name, 0),
                conflicts=states["conflict"],
                retrying=states["retrying"],
                oldest_unsynced_seconds=(
                    max(0, int((now - parse_iso(oldest)).total_seconds())) if oldest else None
                ),
            )
        )
    status = ServiceStatus(
        mappings=result,
        queue_depth=_queue_depth(rt, rt.storage.sync_queue_name),
        poison_queue_depth=_queue_depth(rt, rt.storage.poison_queue_name),
    )
    telemetry.gauge("bcsync.queue.depth", status.queue_depth)
    telemetry.gauge("bcsync.poison.count", status.poison_queue_depth)
    return status


def _queue_depth(rt: Runtime, name: str) -> int:
    try:
        return int(rt.storage.queue(name).get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


def _subscription_expiries(rt: Runtime) -> dict[str, str]:
    """Entity set -> the earliest expiry of its BC subscriptions, as recorded by registration."""
    expiries: dict[str, str] = {}
    for sub in rt.subscriptions.bc_subscriptions():
        entity_set, expires = sub.entity_set, sub.expires
        if entity_set and expires and (entity_set not in expiries or expires < expiries[entity_set]):
            expiries[entity_set] = expires
    return expiries


# ---------------------------------------------------------------------------------- couple, uncouple
@dataclass
class CoupleResult:
    mapping: str
    bc_id: str
    dv_id: str
    synced_from: Side
    outcome: str
    reason: str
    error: str = ""
    dry_run: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)  # per field: old -> new (see JournalEntry)
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def couple(
    rt: Runtime, mapping_name: str, bc_id: str, dv_id: str, *, sync_from: str = "bc", dry_run: bool = False
) -> CoupleResult:
    """Couple two existing records by hand, then synchronize the pair from `sync_from` (the side whose
    values win, as the built-in's "synchronize after coupling"). A dry run checks the same and says per
    field what the first sync would write, without coupling or writing anything."""
    bc_id, dv_id = check_reference("bc", bc_id), check_reference("dv", dv_id)
    m = entity_mapping(rt, mapping_name)
    bc_id, dv_id = resolve_record(rt, m, "bc", bc_id), resolve_record(rt, m, "dv", dv_id)
    source = _side(sync_from, "sync_from") or "bc"
    bc, dv = _read_pair(rt, m, bc_id, dv_id)
    for side, record_id in (("bc", bc_id), ("dv", dv_id)):
        existing = rt.couplings.get(m.name, side, record_id)  # type: ignore[arg-type]
        if existing is not None:
            raise OperationError(
                f"{'BC' if side == 'bc' else 'Dataverse'} record {record_id} is already coupled "
                f"(BC {existing.bc_id} / Dataverse {existing.dv_id}); uncouple it first"
            )
    if dry_run:
        source_id, other_id = (bc_id, dv_id) if source == "bc" else (dv_id, bc_id)
        message = SyncMessage(mapping=m.name, side=source, id=source_id, reason="couple (dry run)")
        preview = rt.engine.preview(
            message, force=True, snapshot=_base_preferring(rt, m, source, bc, dv), counterpart_id=other_id
        )
        return CoupleResult(
            m.name, bc_id, dv_id, source, str(preview.outcome), preview.reason, preview.error, True,
            **_changes(preview),
        )  # fmt: skip
    key = bc.get(m.bc.key)
    coupling = Coupling(
        m.name,
        str(bc["id"]),
        str(dv[m.dataverse.primary_key]),
        snapshot=_base_preferring(rt, m, source, bc, dv),
        bc_key=str(key) if key not in (None, "") else None,
        last_result="coupled",
    )
    try:
        rt.couplings.create(coupling)
    except AlreadyCoupledError as exc:
        raise OperationError(str(exc)) from None
    rt.journal.record(
        JournalEntry(m.name, "coupled", bc_id=coupling.bc_id, dv_id=coupling.dv_id, reason="coupled by admin")
    )
    result = _sync(rt, m, source, coupling.id_on(source) or "", "sync after manual coupling")
    return CoupleResult(
        m.name, str(coupling.bc_id), str(coupling.dv_id), source, str(result.outcome), result.reason,
        result.error, False, **_changes(result),
    )  # fmt: skip


def _changes(result: Any) -> dict[str, list[dict[str, Any]]]:
    """A sync result's per-field changes and conflicts, as the journal words them."""
    if not isinstance(result, SyncResult):
        return {"changes": [], "conflicts": []}
    details = audit(result, "")
    return {"changes": details["changes"], "conflicts": details["conflicts"]}


def _read_pair(
    rt: Runtime, m: EntityMapping, bc_id: str, dv_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    bc = rt.engine.read(m, "bc", bc_id)
    if bc is None:
        raise OperationError(f"BC {m.bc.entity_set} record {bc_id} does not exist", 404)
    dv = rt.engine.read(m, "dv", dv_id)
    if dv is None:
        raise OperationError(f"Dataverse {m.dataverse.entity_set} record {dv_id} does not exist", 404)
    return bc, dv


def _base_preferring(
    rt: Runtime, m: EntityMapping, prefer: Side, bc: dict[str, Any], dv: dict[str, Any]
) -> Snapshot:
    """See `engine.base_preferring` (coupling by a number typed in Sales uses the same base)."""
    return cast(Snapshot, base_preferring(rt.mappings, m, prefer, bc, dv))


def uncouple(rt: Runtime, mapping_name: str, side: Side, record_id: str) -> dict[str, Any]:
    """Remove the coupling of a record (both records stay as they are)."""
    record_id = check_reference(side, record_id)
    m = entity_mapping(rt, mapping_name)
    record_id = resolve_record(rt, m, side, record_id)
    coupling = rt.couplings.get(m.name, side, record_id)
    if coupling is None:
        raise OperationError(f"{m.name}: {side} record {record_id} is not coupled", 404)
    rt.couplings.delete(coupling)
    rt.journal.record(
        JournalEntry(
            m.name, "uncoupled", bc_id=coupling.bc_id, dv_id=coupling.dv_id, reason="uncoupled by admin"
        )
    )
    return {"mapping": m.name, "bc_id": coupling.bc_id, "dv_id": coupling.dv_id, "outcome": "uncoupled"}


@dataclass
class MatchResult:
    mapping: str
    dry_run: bool
    coupled: list[tuple[str, str]]  # (bc id, dv id): coupled, or would be on a dry run
    ambiguous: list[tuple[str, list[str]]]
    no_match: list[str]
    already_coupled: int
    # Matched but not coupled yet: waiting for a lookup target (queued) or failed (see `errors`).
    not_coupled: list[tuple[str, str]] = field(default_factory=list)


def match_couple(rt: Runtime, mapping_name: str, *, dry_run: bool) -> MatchResult:
    """Match-based coupling: couple uncoupled records with exactly one uncoupled match."""
    m = entity_mapping(rt, mapping_name)
    report = bulk.match_coupling(rt.engine, m.name, dry_run=dry_run)
    coupled, pending = report.would_couple, []
    if not dry_run:
        done = [pair for pair in coupled if rt.couplings.get(m.name, "dv", pair[1]) is not None]
        pending = [pair for pair in coupled if pair not in done]
        coupled = done
    return MatchResult(
        m.name, dry_run, coupled, report.ambiguous, report.no_match, report.already_coupled, pending
    )


# ------------------------------------------------------------------------------------- sync one now
@dataclass
class SyncNowResult:
    mapping: str
    side: Side
    id: str
    prefer: Side | None
    outcome: str
    reason: str
    bc_id: str | None
    dv_id: str | None
    fields: list[str]
    error: str = ""
    dry_run: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)  # per field: old -> new (see JournalEntry)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(
        cls, m: EntityMapping, side: Side, record_id: str, prefer: Side | None, result: Any
    ) -> SyncNowResult:
        return cls(
            m.name, side, record_id, prefer, str(result.outcome), result.reason, result.bc_id, result.dv_id,
            list(result.fields), result.error, bool(getattr(result, "dry_run", False)), **_changes(result),
        )  # fmt: skip


def sync_now(
    rt: Runtime,
    mapping_name: str,
    side: Side,
    record_id: str,
    *,
    prefer: str | None = None,
    dry_run: bool = False,
) -> SyncNowResult:
    """Synchronize one record now. With `prefer`, a coupled pair is synchronized in that direction:
    `prefer`'s values overwrite the other side's, also where both sides changed. A dry run decides the
    same from both records read fresh and writes nothing (no API write, coupling or journal entry)."""
    record_id = check_reference(side, record_id)
    m = entity_mapping(rt, mapping_name)
    record_id = resolve_record(rt, m, side, record_id)
    winner = _side(prefer, "prefer")
    start_side: Side = side
    start_id = record_id
    if winner is not None:
        coupling = rt.couplings.get(m.name, side, record_id)
        if coupling is None or coupling.bc_id is None or coupling.dv_id is None:
            raise OperationError(f"{m.name}: {side} record {record_id} is not coupled; `prefer` needs a pair")
        bc, dv = _read_pair(rt, m, coupling.bc_id, coupling.dv_id)
        base = _base_preferring(rt, m, winner, bc, dv)
        start_side, start_id = winner, str(coupling.id_on(winner))
        if dry_run:
            message = SyncMessage(
                mapping=m.name, side=winner, id=start_id, reason="synchronize now (dry run)"
            )
            preview = rt.engine.preview(message, force=True, snapshot=base)
            return SyncNowResult.of(m, side, record_id, winner, preview)
        coupling.snapshot = base
        coupling.skipped = False
        rt.couplings.save(coupling)
    if dry_run:
        message = SyncMessage(mapping=m.name, side=side, id=record_id, reason="synchronize now (dry run)")
        return SyncNowResult.of(m, side, record_id, None, rt.engine.preview(message, force=True))
    result = _sync(rt, m, start_side, start_id, "synchronize now (admin)")
    return SyncNowResult.of(m, side, record_id, winner, result)


def _sync(rt: Runtime, m: EntityMapping, side: Side, record_id: str, reason: str) -> Any:
    message = SyncMessage(mapping=m.name, side=side, id=record_id, reason=reason)
    try:
        return rt.engine.sync_record(message, force=True)
    except RequeueError as exc:
        # Throttled or unreachable right now: the queue takes it from here.
        rt.storage.enqueue([exc.message], delay_seconds=max(1, int(exc.delay)))
        return _Deferred(f"{str(exc).rstrip('. ')}; queued, tried again in {int(exc.delay)} s")


@dataclass
class _Deferred:
    reason: str
    outcome: str = "queued"
    bc_id: str | None = None
    dv_id: str | None = None
    fields: tuple[str, ...] = ()
    error: str = ""


# --------------------------------------------------------------------------------- full resync
def start_full_resync(rt: Runtime, mapping_name: str, *, dry_run: bool) -> RunSummary:
    """Queue a full resync (the service runs it); follow it with `get_run`."""
    m = entity_mapping(rt, mapping_name)
    run_id = bulk.request_full_resync(rt.storage, m.name, dry_run=dry_run)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    run = RunSummary(run_id, m.name, "full_resync", started=now, status="queued", dry_run=dry_run)
    rt.journal.save_run(run)  # visible at once; the processor overwrites it when it starts
    return run


def run_full_resync_here(
    rt: Runtime,
    mapping_name: str,
    *,
    dry_run: bool,
    run_id: str | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Run a full resync in this process (the CLI), journaling progress as it goes and telling
    `on_progress` after each chunk; a dry run tells `on_record` each record it would touch."""
    m = entity_mapping(rt, mapping_name)
    return bulk.run_full_resync(
        rt.engine, m.name, dry_run=dry_run, run_id=run_id or uuid.uuid4().hex, on_progress=on_progress,
        on_record=on_record,
    )  # fmt: skip


def get_run(rt: Runtime, mapping_name: str, run_id: str) -> RunSummary:
    m = entity_mapping(rt, mapping_name)
    run = rt.journal.get_run(m.name, run_id)
    if run is None:
        raise OperationError(f"{m.name} has no run {run_id!r}", 404)
    return run


def list_runs(rt: Runtime, mapping_name: str, limit: int = 20) -> list[RunSummary]:
    return rt.journal.runs(entity_mapping(rt, mapping_name).name, limit=limit)


# ------------------------------------------------------------------------------- errors and retry
@dataclass
class ErrorItem:
    mapping: str
    bc_id: str | None
    dv_id: str | None
    state: str  # failed, skipped, conflict, retrying
    message: str  # BC's or Dataverse's own message, or what the mapping cannot translate
    attempts: int  # failures in a row; for `retrying`, the retry this is (of `max_attempts`)
    updated: str
    coupled: bool
    since: str | None = None  # when the change it holds back was observed
    next_attempt: str | None = None  # `retrying`: when the queue tries again
    max_attempts: int = 0  # `retrying`: retries before it fails
    resolve: str = ""  # the one command that resolves it (after fixing the cause the message names)
    bc_number: str | None = None  # the BC number or code, when known
    skipped: bool = False  # not synced again until an operator retries it (the same error twice)


# Journal outcomes that matter for an uncoupled record's state: a failure or a retry, or what
# ends one (the record got coupled or went away). Read from the table service by outcome, so the
# routine rows of the day (modified, unchanged, bulk) are never sent.
_UNCOUPLED_OUTCOMES = ("failed", "retrying", "inserted", "coupled", "deleted", "uncoupled", "restored")


def list_errors(
    rt: Runtime, mapping_name: str | None = None, *, skipped_only: bool = False
) -> list[ErrorItem]:
    """Every record not in sync, with its state, message and the command that resolves it:
    coupled ones from their coupling (failed, skipped, conflict, retrying), uncoupled ones (a
    failed create, an uncoupled owner, a refused write) from the last day of the journal."""
    mappings = [entity_mapping(rt, mapping_name)] if mapping_name else rt.mappings.entities()
    items: list[ErrorItem] = []
    for m in mappings:
        seen: set[str] = set()
        for c in rt.couplings.each(m.name, only="skipped" if skipped_only else "unsynced"):
            key = f"{c.bc_id}|{c.dv_id}"
            if key in seen:
                continue
            seen.add(key)
            # A skipped record keeps its state (a skipped conflict is still resolved with --prefer).
            state = c.last_result if c.last_result in UNSYNCED_RESULTS else "skipped"
            items.append(
                ErrorItem(
                    m.name, c.bc_id, c.dv_id, state, c.last_error, c.attempts, c.updated, True,
                    since=c.unsynced_since or c.updated or None,
                    next_attempt=c.next_attempt if state == "retrying" else None,
                    max_attempts=MAX_TRANSIENT_REQUEUES if state == "retrying" else 0,
                    resolve=resolve_command(m.name, state, c.bc_key or c.bc_id, c.dv_id),
                    bc_number=c.bc_key,
                    skipped=c.skipped,
                )
            )  # fmt: skip
        if not skipped_only:
            items.extend(_uncoupled_failures(rt, m, seen))
    return items


def resolve_command(mapping: str, state: str, bc_ref: str | None, dv_id: str | None) -> str:
    """The one command that resolves a record in `state` once its cause is fixed. `bc_ref`: the
    BC number or code when known (short, and what people search by), else the BC id."""
    ref = f"--bc {_quoted(bc_ref)}" if bc_ref else f"--dv {dv_id}"
    if state == "conflict":
        return f"bcsync sync {mapping} {ref} --prefer bc|dv"  # the side whose values win
    return f"bcsync retry {mapping} {ref}"


def _quoted(value: str) -> str:
    """`value` as one shell word."""
    return value if re.fullmatch(r"[\w.@:-]+", value) else "'" + value.replace("'", "'\\''") + "'"


def _uncoupled_failures(rt: Runtime, m: EntityMapping, seen: set[str]) -> list[ErrorItem]:
    end = dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(hours=RECENT_FAILURE_HOURS)
    streaks: dict[str, list[JournalEntry]] = {}
    ended: set[str] = set()
    for entry in rt.journal.between(start, end, m.name, outcomes=_UNCOUPLED_OUTCOMES):
        key = f"{entry.bc_id}|{entry.dv_id}"
        if key in ended:
            continue
        if entry.outcome in ("failed", "retrying"):  # newest first: the record's unsynced streak
            streaks.setdefault(key, []).append(entry)
        else:
            ended.add(key)
    items = []
    for key, streak in streaks.items():
        latest = streak[0]
        if key in seen:
            continue
        side, record_id = ("bc", latest.bc_id) if latest.bc_id else ("dv", latest.dv_id)
        if record_id and rt.couplings.get(m.name, side, record_id) is not None:  # type: ignore[arg-type]
            continue  # coupled since: its coupling speaks for it
        retrying = latest.outcome == "retrying"
        items.append(
            ErrorItem(
                m.name, latest.bc_id, latest.dv_id, latest.outcome, latest.error or latest.reason,
                sum(1 for e in streak if e.outcome == latest.outcome),
                latest.at.isoformat(), False,
                since=iso_ms(streak[-1].at),
                next_attempt=_next_attempt(latest.reason) if retrying else None,
                max_attempts=MAX_TRANSIENT_REQUEUES if retrying else 0,
                resolve=resolve_command(m.name, latest.outcome, latest.bc_id, latest.dv_id),
            )
        )  # fmt: skip
    return items


def _next_attempt(reason: str) -> str | None:
    """The next attempt's time from a `retrying n of m at <time>` journal reason."""
    found = re.search(r" at (\S+)$", reason)
    return found.group(1) if found else None


@dataclass
class RetryResult:
    mapping: str
    retried: list[SyncNowResult] = field(default_factory=list)  # retried now (one record)
    queued: int = 0  # queued for the service (all)
    dry_run: bool = False
    records: list[tuple[str, str]] = field(
        default_factory=list
    )  # all, dry run: (side, id) that would be queued


def retry(
    rt: Runtime, mapping_name: str, side: Side, record_id: str, *, dry_run: bool = False
) -> RetryResult:
    """Retry one failed or skipped record now (clears its skipped flag). A dry run says per field what
    the retry would write and changes nothing (the record stays skipped)."""
    record_id = check_reference(side, record_id)
    m = entity_mapping(rt, mapping_name)
    record_id = resolve_record(rt, m, side, record_id)
    if dry_run:
        message = SyncMessage(mapping=m.name, side=side, id=record_id, reason="retry (dry run)")
        preview = rt.engine.preview(message, force=True)
        return RetryResult(
            m.name, retried=[SyncNowResult.of(m, side, record_id, None, preview)], dry_run=True
        )
    coupling = rt.couplings.get(m.name, side, record_id)
    if coupling is not None and coupling.skipped:
        coupling.skipped, coupling.attempts = False, 0
        rt.couplings.save(coupling)
    result = _sync(rt, m, side, record_id, "retry (admin)")
    return RetryResult(m.name, retried=[SyncNowResult.of(m, side, record_id, None, result)])


def retry_all(rt: Runtime, mapping_name: str, *, dry_run: bool = False) -> RetryResult:
    """Queue every failed or skipped record of a mapping for another attempt (a dry run lists them)."""
    m = entity_mapping(rt, mapping_name)
    messages: list[SyncMessage] = []
    for item in list_errors(rt, m.name):
        side, record_id = ("bc", item.bc_id) if item.bc_id else ("dv", item.dv_id)
        if not record_id:
            continue
        if item.coupled and not dry_run:
            coupling = rt.couplings.get(m.name, side, record_id)  # type: ignore[arg-type]
            if coupling is not None and coupling.skipped:
                coupling.skipped, coupling.attempts = False, 0
                rt.couplings.save(coupling)
        why = "retry all (dry run)" if dry_run else "retry all (admin)"
        messages.append(SyncMessage(mapping=m.name, side=side, id=record_id, reason=why))  # type: ignore[arg-type]
    if dry_run:
        return RetryResult(
            m.name, queued=len(messages), dry_run=True, records=[(s.side, s.id) for s in messages]
        )
    return RetryResult(m.name, queued=rt.storage.enqueue(messages))


# ------------------------------------------------------------------------------------ poison queue
@dataclass
class PoisonMessage:
    message_id: str
    inserted: str | None
    dequeue_count: int
    valid: bool
    summary: str  # mapping/side/id, or why it is not a valid message


@dataclass
class ReplayResult:
    dry_run: bool
    replayed: list[PoisonMessage]
    kept: list[PoisonMessage]  # not valid sync messages: inspect and delete by hand


def _peek_messages(rt: Runtime, queue_name: str) -> list[tuple[Any, Any]]:
    """(parsed message or None, raw queue message) for up to 32 messages, without dequeuing."""
    try:
        peeked = rt.storage.raw_queue(queue_name).peek_messages(max_messages=QUEUE_PAGE)
    except ResourceNotFoundError:
        return []
    return [(_parsed(raw.content), raw) for raw in peeked]


@dataclass(frozen=True)
class _Undecodable:
    """A queue body that is not one of our messages, and why (shown, never replayed)."""

    why: str


def _parsed(content: Any) -> Any:
    """The sync message a raw queue body holds, or `_Undecodable`.

    Bodies are read raw (see `Storage.raw_queue`) because a poison queue holds whatever failed,
    including what someone else put there. Ours are base64 of JSON (host.json's `messageEncoding`);
    plain JSON is accepted too, since a message sent without encoding is still a sync request.
    """
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content or "")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = None
    try:
        if data is not None:
            return parse_json(data)
        return parse_json(text)
    except (MessageDecodeError, ValueError) as exc:
        how = "base64, but" if data is not None else "not base64, and as text"
        return _Undecodable(f"{how} {exc}"[:300])


def _describe(parsed: Any, raw: Any) -> PoisonMessage:
    if isinstance(parsed, _Undecodable) or parsed is None:
        preview = str(raw.content or "")[:120]
        why = parsed.why if isinstance(parsed, _Undecodable) else "empty"
        summary = f"not a sync message (undecodable: {why}); body starts {preview!r}"
        valid = False
    else:
        target = getattr(parsed, "id", None) or f"{len(getattr(parsed, 'ids', []) or [])} ids"
        summary = f"{parsed.kind} {parsed.mapping} {getattr(parsed, 'side', '')}:{target} ({parsed.reason})"
        valid = True
    inserted = raw.inserted_on.isoformat() if getattr(raw, "inserted_on", None) else None
    return PoisonMessage(str(raw.id), inserted, int(raw.dequeue_count or 0), valid, summary)


def _is_message(parsed: Any) -> bool:
    return parsed is not None and not isinstance(parsed, _Undecodable)


def list_poison(rt: Runtime) -> list[PoisonMessage]:
    """The first 32 poison messages, unchanged, each with the error the record last met (from the
    journal) when there is one."""
    described = []
    for parsed, raw in _peek_messages(rt, rt.storage.poison_queue_name):
        item = _describe(parsed, raw)
        if isinstance(parsed, SyncMessage):
            try:
                last = rt.journal.history(parsed.mapping, parsed.side, parsed.id, limit=1)
            except AzureError:  # the listing never fails: the reason is a bonus
                last = []
            if last and last[0].error:
                item.summary += f"; last error: {last[0].error}"
        described.append(item)
    return described


def replay_poison(rt: Runtime, *, dry_run: bool, limit: int = 1000) -> ReplayResult:
    """Move valid poison messages back to the sync queue (attempts reset); leave the others."""
    if dry_run:
        peeked = list_poison(rt)
        return ReplayResult(True, [d for d in peeked if d.valid], [d for d in peeked if not d.valid])
    poison = rt.storage.raw_queue(rt.storage.poison_queue_name)
    replayed: list[PoisonMessage] = []
    kept: list[PoisonMessage] = []
    seen: set[str] = set()
    while len(replayed) + len(kept) < limit:
        # Invalid messages are received too (hidden for a minute) so the loop moves past them.
        batch = list(
            poison.receive_messages(
                messages_per_page=QUEUE_PAGE, max_messages=QUEUE_PAGE, visibility_timeout=60
            )
        )
        fresh = [raw for raw in batch if raw.id not in seen]
        if not fresh:
            break
        for raw in fresh:
            seen.add(raw.id)
            parsed = _parsed(raw.content)
            described = _describe(parsed, raw)
            if not _is_message(parsed):
                kept.append(described)
                continue
            rt.storage.enqueue([parsed.model_copy(update={"attempt": 0, "reason": "replayed from poison"})])
            poison.delete_message(raw)
            replayed.append(described)
    return ReplayResult(False, replayed, kept)


# ----------------------------------------------------------------------------------------- history
def history(
    rt: Runtime, mapping_name: str, side: Side, record_id: str, limit: int = 50
) -> list[JournalEntry]:
    """One record's timeline on both systems, newest first: the entries under its id and, once it is
    coupled, under its counterpart's id (its history before the two were coupled)."""
    record_id = check_reference(side, record_id)
    m = entity_mapping(rt, mapping_name)
    record_id = resolve_record(rt, m, side, record_id)
    ids: list[tuple[str, str]] = [(side, record_id)]
    coupling = rt.couplings.get(m.name, side, record_id)
    if coupling is not None:
        ids += [(s, i) for s in SIDES if (i := coupling.id_on(s)) and (s, i) != (side, record_id)]
    return rt.journal.timeline(m.name, ids, limit=limit)
