"""The imperative shell around `reconcile`: read fresh, decide, write conditionally, couple, journal.

One `Engine.sync_record(message)` call converges one record pair through the two gateways
(`shared.sync.gateways`). It is idempotent: a redelivered message re-reads the record and finds
nothing to do.

Request budget for a change on a coupled record: read the changed side (1); if its mapped values
equal the snapshot it is an echo and we stop (1 request, no write); otherwise write the other side
with the ETag stored at the last sync, its values presumed from the snapshot (2). If it changed
since, that write is refused, and it is read and merged with the source already read (4 in all).
An uncoupled record costs a read, one match query per match priority, and the create.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shared.connectors.dataverse import missing_customization, setup_hint
from shared.connectors.errors import (
    AlreadyExistsError,
    ApiError,
    AuthenticationError,
    ConcurrencyError,
    FatalApiError,
    NotFoundError,
    RetriableApiError,
)
from shared.connectors.retry import RetryPolicy
from shared.errors import ServiceError
from shared.mapping.lookups import StaticLookups
from shared.mapping.queries import (
    DV_MODIFIED_BY,
    clause_holds,
    in_scope,
    match_queries,
    primary_key,
    record_id,
    scope_clauses,
    scope_filter,
    select_fields,
)
from shared.mapping.schema import EntityMapping, MappingSet, Side
from shared.mapping.values import MissingLookup, by_side, other
from shared.messages import AnyMessage, ChunkMessage, ScanMessage, SyncMessage
from shared.odata import eq
from shared.store.couplings import AlreadyCoupledError, Coupling, CouplingConflictError, CouplingStore
from shared.store.journal import Journal, JournalEntry
from shared.sync.documents import (
    DocumentPlan,
    LinePlan,
    LineState,
    describe_writes,
    document_snapshot,
    lines_of,
    reconcile_document,
    side_state,
    stored_state,
)
from shared.sync.echoes import ECHO_BY_STAMP, SETTLED, stamped_before_sync
from shared.sync.gateways import BcGateway, DvGateway, Gateway, LineWrite, Record
from shared.sync.quote_orders import (
    availability_updates,
    fulfil_request,
    is_won,
    item_lookup_field,
    made_order_marker,
    pair_lines,
    pick_made_order,
    quote_of,
    should_fulfil,
)
from shared.sync.reconcile import (
    Candidate,
    FieldChange,
    FieldConflict,
    FieldTimes,
    Outcome,
    Plan,
    Snapshot,
    Write,
    change_times,
    observe,
    presumed_record,
    reconcile,
    take_snapshot,
    unsynced_times,
)
from shared.sync.resolver import LookupResolver
from shared.timestamps import iso_ms, now_iso, parse_iso

log = logging.getLogger(__name__)
# The status column's length in the Sales solution (solution/Entities/*/Entity.xml, bcs_BCCouplingStatus).
STATUS_MAX_LENGTH = 1000

MAX_RACE_RETRIES = 4  # re-read and re-reconcile after a lost race (ETag) at most this often
MAX_DEFERRALS = 6  # a record waiting for its lookup target is retried this often, then fails
MAX_TRANSIENT_REQUEUES = 8
# A pending BC create younger than this may still be in flight on another worker (the transport
# retries a request for up to 120 s): wait for it instead of creating a second BC record.
PENDING_CREATE_GRACE = dt.timedelta(seconds=150)
# The one policy for putting a message back on the queue (transient API trouble, a lookup target
# not synced yet, a record that failed in bulk): exponential from 1.5 s to 5 minutes, jittered so
# that a burst that failed together does not come back together. `Retry-After` wins when given.
# A record deferred MAX_DEFERRALS times has waited at most 94.5 s (1.5 + 3 + ... + 48) for its target.
_REQUEUE = RetryPolicy(base_delay=1.5, max_delay=300.0)
_jitter = random.Random()


def requeue_delay(attempt: int, error: RetriableApiError | None = None) -> int:
    """Seconds before the `attempt`-th retry of a message (1-based) becomes visible again."""
    delay = _REQUEUE.delay(attempt, error, _jitter) if error else _REQUEUE.backoff(attempt, _jitter)
    return max(1, math.ceil(delay))


# A BC create whose BC-assigned values are not back in Dataverse yet (see `_settle_bc_create`).
SETTLING = "settling"
# A document whose lines a worker is writing (`Engine._claim_lines`): others wait for it.
WRITING_LINES = "writing lines"


class RequeueError(ServiceError):
    """The message must be tried again later; the caller re-enqueues it with `delay` seconds."""

    http_status = 503
    retriable = True

    def __init__(self, message: SyncMessage | ChunkMessage | ScanMessage, delay: int, why: str) -> None:
        super().__init__(why)
        self.message = message
        self.delay = delay
        self.retry_after = delay


@dataclass
class SyncResult:
    outcome: Outcome | str
    reason: str = ""
    bc_id: str | None = None
    dv_id: str | None = None
    error: str = ""
    fields: list[str] = field(default_factory=list)
    changes: list[FieldChange] = field(default_factory=list)  # written (or, on a dry run, to be written)
    conflicts: list[FieldConflict] = field(default_factory=list)  # unresolved and resolved
    users: dict[str, str] = field(default_factory=dict)  # side -> who last changed the record there
    dry_run: bool = False


# What the engine needs from the queue: send these messages, visible after `delay` seconds.
Enqueue = Callable[[Sequence[AnyMessage], int], None]


class Engine:
    def __init__(
        self,
        *,
        mappings: MappingSet,
        bc: BcGateway,
        dv: DvGateway,
        couplings: CouplingStore,
        journal: Journal,
        enqueue: Enqueue,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.ms = mappings
        self.bc = bc
        self.dv = dv
        self.sides: dict[Side, Gateway] = {"bc": bc, "dv": dv}
        self.couplings = couplings
        self.journal = journal
        self.enqueue = enqueue
        self.clock = clock
        self.resolver = LookupResolver(mappings, couplings, bc, dv)
        # Per thread (the host runs several messages at once): whether the record being synced had a
        # failure recorded before this sync, so its status column may need emptying.
        self._local = threading.local()

    # ---------------------------------------------------------------------------- one record
    def sync_record(self, message: SyncMessage, *, force: bool = False) -> SyncResult:
        """Converge the pair containing `message.id`; journal the outcome. Raises `RequeueError`
        for transient trouble (the caller re-enqueues with the delay)."""
        mapping = self.ms.entity(message.mapping)
        requests_before = self.requests_in_this_thread()
        try:
            result = self._sync_with_race_retries(mapping, message, force)
        except RequeueError:
            raise
        except RetriableApiError as exc:
            attempt = message.attempt + 1
            if attempt > MAX_TRANSIENT_REQUEUES:
                # Out of patience: a visible failure on the record (errors, status, retry), not a
                # poison message that shows only an id.
                why = f"gave up after {MAX_TRANSIENT_REQUEUES} retries over {self._since(message)}: {exc}"
                result = self._fail(mapping, None, message, why)
            else:
                delay = requeue_delay(attempt, exc)
                self._record_retry(mapping, message, attempt, delay, exc, requests_before)
                why = refusal(exc, "did not serve")
                raise RequeueError(message.model_copy(update={"attempt": attempt}), delay, why) from exc
        except Exception as exc:
            # Raised to the host, which delivers the message again and finally moves it to the
            # poison queue: journaled first, so `history` and `poison` say why, not just an id.
            error = f"{type(exc).__name__}: {exc}"[:2000]
            bc_id, dv_id = by_side(message.side, message.id, None)
            self._journal(mapping, message, SyncResult("error", "raised to the host", bc_id, dv_id, error), 0)
            raise
        self._show_status(mapping, message, result)
        result_requests = self.requests_in_this_thread() - requests_before
        self._journal(mapping, message, result, result_requests)
        return result

    # ------------------------------------------------------------------- what Sales shows
    def _show_status(self, mapping: EntityMapping, message: SyncMessage, result: SyncResult) -> None:
        """The mapping's `status_column` says why a record is not in sync (the failure's sentence) and
        is emptied once it is: written only when that changes (1 request), never for routine syncs.

        What it shows is decided from the status row in storage (`CouplingStore.shown_status`), not
        from what this instance wrote: with several instances, another may have written or emptied
        it since. The change is claimed on the row's ETag before the column is written."""
        column = mapping.dataverse.status_column
        dv_id = result.dv_id or (message.id if message.side == "dv" else None)
        if column is None or dv_id is None or result.outcome == Outcome.DEFERRED:
            return
        failed = result.outcome in (Outcome.FAILED, Outcome.SKIPPED) and bool(result.error)
        text = (result.error or "")[:STATUS_MAX_LENGTH] if failed else None
        # A failure recorded on the coupling before any status row existed (written by an older
        # version of the service) may still be showing: empty it once, which creates the row.
        had_error = bool(getattr(self._local, "had_error", False))
        for _ in range(MAX_RACE_RETRIES):
            shown = self.couplings.shown_status(mapping.name, dv_id)
            if shown.text == text and not (text is None and shown.etag is None and had_error):
                return
            try:
                claimed = self.couplings.claim_status(mapping.name, dv_id, text, shown.etag)
            except CouplingConflictError:
                continue  # another instance changed it meanwhile: decide again from what it wrote
            try:
                self._write_status(mapping, dv_id, text)
            except ApiError as exc:  # the sync's own outcome stands; the next sync shows it again
                log.warning("could not write %s on %s: %s", column, dv_id, exc)
                with contextlib.suppress(CouplingConflictError):  # else another instance's write stands
                    self.couplings.claim_status(mapping.name, dv_id, shown.text, claimed)
            return
        log.info("%s of %s changed by other instances %d times: left to its next sync", column, dv_id,
                 MAX_RACE_RETRIES)  # fmt: skip

    def set_status(self, mapping: EntityMapping, dv_id: str, text: str | None, **extra: Any) -> None:
        """Write the status column (and `extra` columns) whatever it shows, and record it."""
        if mapping.dataverse.status_column is None:
            return
        self._write_status(mapping, dv_id, text, **extra)
        self.couplings.put_status(mapping.name, dv_id, text)

    def _write_status(self, mapping: EntityMapping, dv_id: str, text: str | None, **extra: Any) -> None:
        column = mapping.dataverse.status_column
        assert column is not None
        pk = mapping.dataverse.primary_key
        self.dv.update(mapping, {pk: dv_id, "@odata.etag": "*"}, {column: text, **extra}, select=[pk])

    def preview(
        self,
        message: SyncMessage,
        *,
        force: bool = False,
        snapshot: Snapshot | None = None,
        counterpart_id: str | None = None,
    ) -> SyncResult:
        """What `sync_record` would do, decided from both records read fresh, without writing anything:
        no API write, no coupling, no journal, nothing queued. `snapshot` and `counterpart_id` stand in
        for a coupling (a sync in a chosen direction, or a pair not coupled yet)."""
        mapping = self.ms.entity(message.mapping)
        side: Side = message.side
        coupling = self.couplings.get(mapping.name, side, message.id)
        if coupling is not None and coupling.skipped and not force:
            why = "record is skipped after repeated failures; retry it to resume"
            return SyncResult(Outcome.SKIPPED, why, coupling.bc_id, coupling.dv_id, dry_run=True)
        if coupling is not None and coupling.state == "pending_bc":
            why = "its BC record is being created; a real sync finishes that first"
            return SyncResult(Outcome.DEFERRED, why, coupling.bc_id, coupling.dv_id, dry_run=True)
        if mapping.lines is not None:
            return self._preview_document(mapping, coupling, message, snapshot, counterpart_id)
        source = self.read(mapping, side, message.id)
        if coupling is None and snapshot is None:
            return self._preview_uncoupled(mapping, side, message, source)
        other_id = coupling.id_on(other(side)) if coupling is not None else counterpart_id
        counterpart = self.read(mapping, other(side), other_id) if other_id else None
        bc, dv = by_side(side, source, counterpart)
        lookups = self.resolver.lookups_for(mapping, bc, dv)
        seen = self._observed(mapping, coupling, bc, dv) if coupling is not None else None
        base = snapshot if snapshot is not None else coupling.snapshot if coupling is not None else None
        plan = reconcile(
            self.ms, mapping, snapshot=base, bc=bc, dv=dv, lookups=lookups, changed_at=change_times(seen)
        )
        ids: dict[Side, str | None] = {side: message.id, other(side): other_id}
        return replace(
            planned_result(plan, ids["bc"], ids["dv"], bc, dv, error=plan.error or ""), dry_run=True
        )

    def _preview_uncoupled(
        self, mapping: EntityMapping, side: Side, message: SyncMessage, source: Record | None
    ) -> SyncResult:
        if source is None:
            why = f"{side} record {message.id} does not exist and is not coupled"
            return SyncResult(Outcome.SKIPPED, why, dry_run=True)
        if not in_scope(mapping, side, source):
            why = f"{side} record is out of scope ({scope_filter(mapping, side)})"
            return SyncResult(Outcome.SKIPPED, why, dry_run=True)
        typed = typed_number(mapping, side, source)
        if typed is not None:
            return self._couple_typed(mapping, message, source, typed)
        bc, dv = by_side(side, source, None)
        lookups = self.resolver.lookups_for(mapping, bc, dv)
        found = self._candidates(mapping, side, source, lookups)
        candidates = [Candidate(r, already_coupled=c is not None) for r, c in found]
        plan = reconcile(
            self.ms,
            mapping,
            snapshot=None,
            bc=bc,
            dv=dv,
            lookups=lookups,
            candidates=candidates,
            id_scope=self.couplings.scope,
        )
        ids: dict[Side, str | None] = {"bc": record_id(mapping, "bc", bc), "dv": record_id(mapping, "dv", dv)}
        if plan.couple_with is not None:
            ids[plan.couple_with[0]] = plan.couple_with[1]
        return replace(
            planned_result(plan, ids["bc"], ids["dv"], bc, dv, error=plan.error or ""), dry_run=True
        )

    def _sync_with_race_retries(
        self, mapping: EntityMapping, message: SyncMessage, force: bool
    ) -> SyncResult:
        last: Exception | None = None
        for _ in range(MAX_RACE_RETRIES):
            try:
                return self._sync_once(mapping, message, force)
            except (ConcurrencyError, AlreadyExistsError, CouplingConflictError, AlreadyCoupledError) as exc:
                # Someone else wrote the record or the coupling since we read it (or created one
                # with the same key: a create's 412, with or without a code): decide again.
                last = exc
                log.info("%s %s:%s lost a race (%s); re-reading", mapping.name, message.side, message.id, exc)
            except FatalApiError as exc:
                if isinstance(exc, AuthenticationError):
                    raise  # our credentials or roles, not this record: every record would fail
                # BC or Dataverse refused this record's write for a reason of its own (a customer
                # with an outstanding order cannot be deleted, a value it does not accept): the
                # same message would be refused again, so it is a failure with the service's
                # own words on the record, retried once the cause is fixed.
                return self._fail(mapping, None, message, refusal(exc))
        if isinstance(last, AlreadyExistsError):
            why = (
                f"{last.service or 'the other side'} refused the create {MAX_RACE_RETRIES} times because "
                f"a record with its key already exists ({last}); couple the two records with "
                f"`bcsync couple {mapping.name} --bc <id> --dv <id>` or change the key, then retry"
            )
            return self._fail(mapping, None, message, why)
        return self._fail(
            mapping, None, message, f"gave up after {MAX_RACE_RETRIES} concurrent changes: {last}"
        )

    def _sync_once(self, mapping: EntityMapping, message: SyncMessage, force: bool) -> SyncResult:
        side: Side = message.side
        coupling = self.couplings.get(mapping.name, side, message.id)
        self._local.had_error = coupling is not None and bool(coupling.last_error)
        if coupling is not None and coupling.skipped and not force:
            why = "record is skipped after repeated failures; retry it to resume"
            return SyncResult(Outcome.SKIPPED, why, coupling.bc_id, coupling.dv_id)
        if mapping.lines is not None:
            return self._sync_document(mapping, coupling, message, force)
        if coupling is not None and coupling.state == "pending_bc":
            return self._finish_pending_bc_create(mapping, coupling, message)

        if coupling is None:
            sibling = self._coupled_elsewhere(mapping, side, message.id)
            if sibling is not None:
                return SyncResult(Outcome.SKIPPED, f"coupled under {sibling}")
        if not force and stamped_before_sync(message, coupling):
            assert coupling is not None
            return SyncResult(Outcome.UNCHANGED, ECHO_BY_STAMP, coupling.bc_id, coupling.dv_id)
        source = self.read(mapping, side, message.id)
        if coupling is None:
            return self._sync_uncoupled(mapping, side, message, source)

        if side == "dv" and source is not None and self._number_cleared(mapping, coupling, source):
            return self._uncouple_cleared(mapping, coupling)
        if source is not None and not force and self._is_echo(mapping, coupling, side, source):
            return SyncResult(Outcome.UNCHANGED, f"{side} values equal the last synced snapshot (echo)",
                              coupling.bc_id, coupling.dv_id)  # fmt: skip

        other_side = other(side)
        other_id = coupling.id_on(other_side)
        # A deletion is decided on both records as they are: nothing is written to the counterpart
        # that could refuse a stale presumption.
        presumed = self._presumed(mapping, coupling, other_side) if not force and source is not None else None
        if presumed is not None:
            try:
                return self._merge(mapping, coupling, message, source, presumed)
            except (ConcurrencyError, NotFoundError) as exc:
                if not other_id or other_id not in (exc.url or ""):
                    raise
                # Refused (412) or gone (404): it changed since the last sync. Read it and decide
                # again with the source just read (if that moved too, its own write is refused).
        counterpart = self.read(mapping, other_side, other_id) if other_id else None
        return self._merge(mapping, coupling, message, source, counterpart)

    def _merge(
        self,
        mapping: EntityMapping,
        coupling: Coupling,
        message: SyncMessage,
        source: Record | None,
        counterpart: Record | None,
    ) -> SyncResult:
        bc, dv = by_side(message.side, source, counterpart)
        lookups = self.resolver.lookups_for(mapping, bc, dv)
        seen_before, coupling.seen = coupling.seen, self._observed(mapping, coupling, bc, dv)
        plan = reconcile(
            self.ms, mapping, snapshot=coupling.snapshot, bc=bc, dv=dv, lookups=lookups,
            changed_at=change_times(coupling.seen),
        )  # fmt: skip
        try:
            result = self._apply(mapping, plan, coupling, message, bc, dv)
        except RetriableApiError:
            self._keep_seen(coupling, seen_before)  # requeued: the next attempt dates what this one saw
            raise
        if result.outcome == Outcome.DEFERRED:
            self._keep_seen(coupling, seen_before)
        return result

    def _keep_seen(self, coupling: Coupling, before: FieldTimes | None) -> None:
        """Store the field times a sync that could not finish has seen (one write, only when they changed),
        so a change is dated when first seen even if the pair is synchronized minutes later."""
        seen = unsynced_times(coupling.seen, coupling.snapshot)
        if seen == unsynced_times(before, coupling.snapshot) or coupling.etag is None:
            return
        try:
            self.couplings.save(replace(coupling, seen=seen))
        except CouplingConflictError:
            log.info("coupling changed meanwhile; the next attempt observes the record again")

    def _observed(
        self, mapping: EntityMapping, coupling: Coupling, bc: Record | None, dv: Record | None
    ) -> FieldTimes | None:
        """The coupling's per-field first-seen times after reading `bc` and `dv` now (stored with the
        coupling, pruned to the values not synchronized yet; see `observe`)."""
        seen, now = coupling.seen, self.clock()
        for side, record in (("bc", bc), ("dv", dv)):
            if record is not None:
                seen = observe(self.ms, mapping, seen, side, record, now)  # type: ignore[arg-type]
        return seen

    def _presumed(self, mapping: EntityMapping, coupling: Coupling, side: Side) -> Record | None:
        """`side`'s record as the last settled sync left it, rebuilt from the coupling, so a change
        on the other side costs one read and one conditional write instead of two reads and a write.
        None when the coupling cannot stand in for a read (see `presumed_record`)."""
        etag = coupling.etag_on(side)
        record_id_ = coupling.id_on(side)
        if coupling.snapshot is None or coupling.last_result not in SETTLED or not etag or not record_id_:
            return None
        return presumed_record(
            self.ms, mapping, side, coupling.snapshot, record_id=record_id_, etag=etag,
            modified=coupling.modified_on(side), key=coupling.bc_key,
        )  # fmt: skip

    def _is_echo(self, mapping: EntityMapping, coupling: Coupling, side: Side, record: Record) -> bool:
        if coupling.snapshot is None or coupling.last_result not in SETTLED:
            return False
        current = take_snapshot(self.ms, mapping, *by_side(side, record, None))
        return current[side] == coupling.snapshot.get(side)

    # ------------------------------------------------------------------------------ uncoupled
    def _sync_uncoupled(
        self, mapping: EntityMapping, side: Side, message: SyncMessage, source: Record | None
    ) -> SyncResult:
        if source is None:
            return SyncResult(
                Outcome.SKIPPED, f"{side} record {message.id} does not exist and is not coupled"
            )
        if not in_scope(mapping, side, source):
            # Before any match query: a customer's account is also announced to VENDOR.
            return SyncResult(
                Outcome.SKIPPED, f"{side} record is out of scope ({scope_filter(mapping, side)})"
            )
        typed = typed_number(mapping, side, source)
        if typed is not None:
            return self._couple_typed(mapping, message, source, typed)
        bc, dv = by_side(side, source, None)
        lookups = self.resolver.lookups_for(mapping, bc, dv)
        found = self._candidates(mapping, side, source, lookups)
        for record, coupling in found:
            if side == "bc" and coupling is not None and self._is_planned_record(mapping, coupling, source):
                # The BC record our own create made, announced before the create's answer was
                # processed (or after it was lost): complete that coupling, never create again.
                why = "adopted the BC record created for this Dataverse record"
                return self._settle_bc_create(mapping, coupling, source, record, message, why)
        candidates = [Candidate(record, already_coupled=coupling is not None) for record, coupling in found]
        plan = reconcile(
            self.ms,
            mapping,
            snapshot=None,
            bc=bc,
            dv=dv,
            lookups=lookups,
            candidates=candidates,
            id_scope=self.couplings.scope,
        )
        return self._apply(mapping, plan, None, message, bc, dv, matched=[r for r, _ in found])

    def _couple_typed(
        self, mapping: EntityMapping, message: SyncMessage, dv: Record, typed: str
    ) -> SyncResult:
        """A Sales user typed a BC number into an uncoupled record: couple it with that BC record and
        synchronize from BC (as "couple, then synchronize after coupling"); refused, with the reason
        in the status column, when there is no such BC record or it is coupled to another record."""
        column, entity = mapping.dataverse.couple_by_column, mapping.bc.entity_set
        dv_id = str(dv[mapping.dataverse.primary_key])
        rows = self._first_page(
            mapping, "bc", eq(mapping.bc.key, typed), select_fields(self.ms, mapping, "bc"), top=1
        )
        if not rows:
            why = (f"{mapping.name}: no BC {entity} has {mapping.bc.key} {typed!r} (typed into {column}); "
                   "correct the number, or clear it to let the record sync on its own")  # fmt: skip
            return SyncResult(Outcome.FAILED, why, None, dv_id, error=why)
        bc = rows[0]
        bc_id = str(bc["id"])
        other_pair = self.couplings.get(mapping.name, "bc", bc_id)
        if other_pair is not None:
            why = (f"{mapping.name}: BC {entity} {typed} is already coupled to Dataverse "
                   f"{mapping.dataverse.table} {other_pair.dv_id}; clear its {column} first to couple "
                   "it here")  # fmt: skip
            return SyncResult(Outcome.FAILED, why, None, dv_id, error=why)
        key = bc.get(mapping.bc.key)
        coupling = Coupling(
            mapping.name, bc_id, dv_id, snapshot=base_preferring(self.ms, mapping, "bc", bc, dv),
            bc_key=str(key) if key not in (None, "") else None, last_result="coupled",
        )  # fmt: skip
        try:
            coupling = self.couplings.create(coupling)
        except AlreadyCoupledError as exc:
            return SyncResult(Outcome.FAILED, str(exc), bc_id, dv_id, error=str(exc))
        self._local.had_error = True  # a refusal may be showing: the status is emptied after this sync
        from_bc = message.model_copy(update={"side": "bc", "id": bc_id})
        result = self._merge(mapping, coupling, from_bc, bc, dv)
        return replace(result, reason=f"coupled by the BC number typed in Sales; {result.reason}")

    def _number_cleared(self, mapping: EntityMapping, coupling: Coupling, dv: Record) -> bool:
        """The coupled record's `couple_by_column` was emptied in Sales (it held a number before)."""
        column = mapping.dataverse.couple_by_column
        if column is None or column not in dv or dv.get(column) not in (None, ""):
            return False
        key = next((f.key for f in mapping.fields if f.dv == column), None)
        before = ((coupling.snapshot or {}).get("dv") or {}).get(key) if key else None
        return before not in (None, "")

    def _uncouple_cleared(self, mapping: EntityMapping, coupling: Coupling) -> SyncResult:
        self.couplings.delete(coupling)
        number = coupling.bc_key or coupling.bc_id
        why = f"uncoupled from BC {mapping.bc.entity_set} {number}: its number was cleared in Sales"
        links = {f.dv: None for f in mapping.fields if f.bc_card_page is not None and f.dv}
        if mapping.dataverse.status_column and coupling.dv_id:
            try:
                self.set_status(mapping, coupling.dv_id, None, **links)
            except ApiError as exc:
                log.warning("could not clear the BC link of %s: %s", coupling.dv_id, exc)
        self._local.had_error = False
        return SyncResult(Outcome.UNCOUPLED, why, coupling.bc_id, coupling.dv_id)

    def _candidates(
        self, mapping: EntityMapping, side: Side, record: Record, lookups: StaticLookups
    ) -> list[tuple[Record, Coupling | None]]:
        """Possible counterparts on the other side, each with its coupling (if any)."""
        target = other(side)
        select = select_fields(self.ms, mapping, target)
        pk = primary_key(mapping, target)
        for _priority, filter_ in match_queries(self.ms, mapping, record, side, lookups):
            rows = self._first_page(mapping, target, filter_, select, top=5)
            if rows:
                return [(r, self.couplings.get(mapping.name, target, str(r[pk]))) for r in rows]
        return []

    def _coupled_elsewhere(self, mapping: EntityMapping, side: Side, record_id: str) -> str | None:
        """A mapping sharing this table (CUSTOMER and VENDOR both map accounts) that has coupled
        the record: then it is not this mapping's, and no API request is needed to say so."""
        return self.coupled_elsewhere(mapping, side, [record_id]).get(record_id)

    def coupled_elsewhere(
        self, mapping: EntityMapping, side: Side, record_ids: Sequence[str]
    ) -> dict[str, str]:
        """Which of `record_ids` a mapping sharing this table has coupled, and which mapping (a
        `get_many` per sibling: a point read for one record, a query per partition for many)."""
        found: dict[str, str] = {}
        rest = list(record_ids)
        for sibling in self._scope_siblings(mapping, side):
            if rest:
                found.update(dict.fromkeys(self.couplings.get_many(sibling.name, side, rest), sibling.name))
                rest = [i for i in rest if i not in found]
        return found

    def _scope_siblings(self, mapping: EntityMapping, side: Side) -> list[EntityMapping]:
        """Mappings of the same table that split it by scope. Only those are alternatives: a BC unit
        is coupled both to its unit group (UNIT OF MEASURE) and to that group's base unit (UNIT), and
        a BC item in the same scope both to its product (ITEM-PRODUCT) and to its price list item
        (ITEM PRICE)."""
        table = self.sides[side].table
        scope = scope_clauses(mapping, side)
        if not scope:
            return []
        return [
            sibling
            for sibling in self.ms.entities()
            if sibling.name != mapping.name
            and table(sibling) == table(mapping)
            and scope_clauses(sibling, side) not in ([], scope)
        ]

    # ---------------------------------------------------------------------------------- apply
    def _apply(
        self,
        mapping: EntityMapping,
        plan: Plan,
        coupling: Coupling | None,
        message: SyncMessage,
        bc: Record | None,
        dv: Record | None,
        matched: Sequence[Record] = (),
    ) -> SyncResult:
        """`matched`: the candidates the plan may couple with (already read: no second read)."""
        bc_id = coupling.bc_id if coupling else record_id(mapping, "bc", bc)
        dv_id = coupling.dv_id if coupling else record_id(mapping, "dv", dv)
        if plan.outcome == Outcome.DEFERRED:
            return self._defer(mapping, plan, coupling, message, bc_id, dv_id)
        if plan.outcome == Outcome.FAILED:
            return self._fail(mapping, coupling, message, plan.error or plan.reason, bc_id, dv_id)
        if plan.outcome == Outcome.SKIPPED:
            return SyncResult(Outcome.SKIPPED, plan.reason, bc_id, dv_id)

        if plan.bc_write is not None and plan.bc_write.kind == "create":
            return self._create_in_bc(mapping, plan, coupling, message, dv)
        if plan.couple_with is not None:
            # The matched counterpart is the record the plan writes to (aligning its values) and
            # couples with: one of the candidates already read, so it is not read again.
            couple_side, couple_id = plan.couple_with
            known = next((r for r in matched if record_id(mapping, couple_side, r) == couple_id), None)
            records, ids = {"bc": bc, "dv": dv}, {"bc": bc_id, "dv": dv_id}
            ids[couple_side] = couple_id
            planned = plan.write_on(couple_side)
            if planned is None or planned.kind != "create":  # else it is created just below
                records[couple_side] = (
                    records[couple_side] or known or self.read(mapping, couple_side, couple_id)
                )
            bc, dv, bc_id, dv_id = records["bc"], records["dv"], ids["bc"], ids["dv"]
        bc_after = self._write(mapping, "bc", plan.bc_write, bc)
        dv_after = self._write(mapping, "dv", plan.dv_write, dv)
        bc_id = bc_id or record_id(mapping, "bc", bc_after)
        dv_id = dv_id or record_id(mapping, "dv", dv_after)

        if plan.uncouple and coupling is not None:
            self.couplings.delete(coupling)
            coupling = None
        deleted = any(w.kind == "delete" for w in plan.writes)
        if deleted or plan.outcome == Outcome.UNCOUPLED:
            if coupling is not None:
                self.couplings.delete(coupling)
            return planned_result(plan, bc_id, dv_id, bc, dv)

        if bc_id is None or dv_id is None:
            return planned_result(plan, bc_id, dv_id, bc, dv)
        snapshot = (
            plan.snapshot
            if plan.outcome == Outcome.CONFLICT
            else take_snapshot(self.ms, mapping, bc_after, dv_after)
        )
        error = plan.error or "" if plan.outcome == Outcome.CONFLICT else ""
        self._store_coupling(
            mapping, coupling, bc_id, dv_id, bc_after, dv_after, snapshot, plan.outcome, error
        )
        return planned_result(plan, bc_id, dv_id, bc, dv, error=error)

    def _store_coupling(
        self,
        mapping: EntityMapping,
        coupling: Coupling | None,
        bc_id: str,
        dv_id: str,
        bc: Record | None,
        dv: Record | None,
        snapshot: Any,
        outcome: Outcome | str,
        error: str,
    ) -> Coupling:
        if coupling is not None:
            # Values as read back after the writes: a value written here is no pending change.
            coupling.seen = self._observed(mapping, coupling, bc, dv)
        c = settle(mapping, coupling, bc_id, dv_id, bc, dv, snapshot, outcome, error)
        return self.couplings.create(c) if coupling is None else self.couplings.save(c)

    # ------------------------------------------------------------------------------ BC creates
    def _create_in_bc(
        self,
        mapping: EntityMapping,
        plan: Plan,
        coupling: Coupling | None,
        message: SyncMessage,
        dv: Record | None,
    ) -> SyncResult:
        """BC assigns ids, so a create cannot be made idempotent by id. Write a pending coupling on the
        Dataverse row first; if the create's answer is lost, the retry finds the pending row and adopts
        the record the integration user created (matched by the planned values) instead of creating again."""
        assert plan.bc_write is not None and dv is not None
        dv_id = record_id(mapping, "dv", dv)
        assert dv_id is not None
        now = iso_ms(self.clock())
        pending = coupling or Coupling(mapping.name, None, dv_id)
        pending.state, pending.pending_since, pending.snapshot = "pending_bc", now, plan.snapshot
        pending.last_result = "pending"
        pending = self.couplings.create(pending) if coupling is None else self.couplings.save(pending)
        try:
            created = self.bc.create(
                mapping, plan.bc_write.body, select=select_fields(self.ms, mapping, "bc"), record_id=None
            )
        except FatalApiError:
            # BC answered and refused: nothing was created, so nothing may be waited for or adopted.
            self.couplings.delete(pending)
            raise
        self.bc_written(mapping, created)  # its "created" notification is our echo from now on
        result = self._settle_bc_create(mapping, pending, created, dv, message, plan.reason)
        result.changes = [*plan.changes, *result.changes]
        result.users = result.users or _users(None, dv)
        return result

    def _settle_bc_create(
        self,
        mapping: EntityMapping,
        pending: Coupling,
        created: Record,
        dv: Record,
        message: SyncMessage,
        reason: str,
    ) -> SyncResult:
        """Couple a Dataverse record with the BC record created for it, then bring back what BC
        filled in itself (the number from its number series, defaults). The planned values are the
        merge base, so BC's additions read as BC changes and reach Dataverse like any other: 1 more
        request, and only when BC added something. The coupling is stored before that write on
        purpose: if the write fails, the pair is already coupled and the next sync finishes it,
        instead of a pending row that would wait out the create grace. Until that write lands the
        coupling is not settled (`SETTLING`): a redelivered Dataverse message then reads both
        records rather than taking the unchanged account for an echo and leaving BC's values out."""
        assert pending.dv_id is not None
        planned = pending.snapshot or take_snapshot(self.ms, mapping, created, dv)
        bc_id = str(created["id"])
        lookups = self.resolver.lookups_for(mapping, created, dv)
        follow = reconcile(self.ms, mapping, snapshot=planned, bc=created, dv=dv, lookups=lookups)
        stored_as = SETTLING if follow.writes else Outcome.INSERTED
        coupling = self._store_coupling(
            mapping, pending, bc_id, pending.dv_id, created, dv, planned, stored_as, ""
        )
        fields = sorted(planned.get("bc", {}))
        changes: list[FieldChange] = []
        if follow.writes:
            changes = self._apply(mapping, follow, coupling, message, created, dv).changes
            fields = sorted({*fields, *_fields(follow)})
        return SyncResult(Outcome.INSERTED, reason, bc_id, pending.dv_id, fields=fields, changes=changes)

    def _finish_pending_bc_create(
        self, mapping: EntityMapping, pending: Coupling, message: SyncMessage
    ) -> SyncResult:
        """A previous attempt wrote the pending row and may or may not have created the BC record."""
        assert pending.dv_id is not None
        dv = self.read(mapping, "dv", pending.dv_id)
        if dv is None:
            self.couplings.delete(pending)
            return SyncResult(
                Outcome.SKIPPED,
                "Dataverse record vanished while its BC copy was pending",
                None,
                pending.dv_id,
            )
        adopted = self._adoptable_bc_record(mapping, pending)
        if adopted is not None:
            why = "adopted the BC record created by an earlier attempt"
            return self._settle_bc_create(mapping, pending, adopted, dv, message, why)
        waited = self.clock() - parse_iso(pending.pending_since or iso_ms(self.clock()))
        if waited < PENDING_CREATE_GRACE:
            # Another worker's create may still land; creating now would make a second BC record.
            delay = math.ceil((PENDING_CREATE_GRACE - waited).total_seconds())
            raise RequeueError(message, max(1, delay), "the BC create of this record may still be in flight")
        # Nothing was created: plan again from scratch (the pending row stays until the create lands).
        lookups = self.resolver.lookups_for(mapping, None, dv)
        plan = reconcile(self.ms, mapping, snapshot=None, bc=None, dv=dv, lookups=lookups)
        if plan.bc_write is None or plan.bc_write.kind != "create":
            self.couplings.delete(pending)
            return self._apply(mapping, plan, None, message, None, dv)
        return self._create_in_bc(mapping, plan, pending, message, dv)

    def _adoptable_bc_record(self, mapping: EntityMapping, pending: Coupling) -> Record | None:
        """A BC record created since the pending row whose mapped values are the ones we planned."""
        if not pending.pending_since or not pending.snapshot:
            return None
        since = parse_iso(pending.pending_since)
        select = select_fields(self.ms, mapping, "bc")
        for record in self.bc.modified_since(mapping, since, select=select):
            if self.couplings.get(mapping.name, "bc", str(record["id"])) is not None:
                continue
            if self._is_planned_record(mapping, pending, record):
                return dict(record)
        return None

    def _is_planned_record(self, mapping: EntityMapping, pending: Coupling, record: Record) -> bool:
        """Whether `record` is the BC record a pending create planned (same mapped values)."""
        if pending.state != "pending_bc" or not pending.snapshot:
            return False
        planned = pending.snapshot.get("bc", {})
        values = take_snapshot(self.ms, mapping, record, None)["bc"]
        return bool(planned) and all(values.get(k) == v for k, v in planned.items() if v is not None)

    # ------------------------------------------------------------------------------- documents
    def read_document(self, mapping: EntityMapping, side: Side, record_id: str | None) -> Record | None:
        """A document with its lines: 1 request."""
        if not record_id:
            return None
        return self.sides[side].get_document(mapping, record_id, select=select_fields(self.ms, mapping, side))

    def _document_lookups(
        self, mapping: EntityMapping, bc: Record | None, dv: Record | None
    ) -> StaticLookups:
        lookups = self.resolver.lookups_for(mapping, bc, dv)
        lm = mapping.line_mapping()
        self.resolver.add_lookups(lookups, lm, "bc", lines_of(mapping, "bc", bc))
        self.resolver.add_lookups(lookups, lm, "dv", lines_of(mapping, "dv", dv))
        return lookups

    def _preview_document(
        self,
        mapping: EntityMapping,
        coupling: Coupling | None,
        message: SyncMessage,
        snapshot: Snapshot | None,
        counterpart_id: str | None,
    ) -> SyncResult:
        """A dry run of a document: the header's and every line's plan, nothing written."""
        side: Side = message.side
        source = self.read_document(mapping, side, message.id)
        other_id = coupling.id_on(other(side)) if coupling is not None else counterpart_id
        counterpart = self.read_document(mapping, other(side), other_id) if other_id else None
        bc, dv = by_side(side, source, counterpart)
        base = snapshot if snapshot is not None else coupling.snapshot if coupling is not None else None
        if base is None and counterpart is not None:
            base = None  # a chosen pair that is not coupled: decided as uncoupled from the source
            bc, dv = by_side(side, source, None)
        plan = reconcile_document(
            self.ms, mapping, snapshot=base, bc=bc, dv=dv, lookups=self._document_lookups(mapping, bc, dv)
        )
        ids: dict[Side, str | None] = {side: message.id, other(side): other_id}
        words = describe_writes(mapping, plan)
        steps = "; ".join(f"{SIDE_LABEL[s]}: {', '.join(w)}" for s, w in words.items() if w)
        reason = plan.reason + (f" [plan: {steps}]" if steps else "")
        return SyncResult(
            plan.outcome, reason, ids["bc"], ids["dv"], error=plan.error or "",
            fields=_document_fields(plan), changes=plan.changes(), dry_run=True,
        )  # fmt: skip

    def _sync_document(
        self, mapping: EntityMapping, coupling: Coupling | None, message: SyncMessage, force: bool
    ) -> SyncResult:
        """A document and its lines as one unit: read each side with its lines (1 request each), decide
        header and lines together, write each side's header (1) and its lines in one atomic batch (1)."""
        side: Side = message.side
        if coupling is not None and coupling.state == "pending_bc":
            return self._finish_pending_document(mapping, coupling, message)
        if coupling is None:
            sibling = self._coupled_elsewhere(mapping, side, message.id)
            if sibling is not None:
                return SyncResult(Outcome.SKIPPED, f"coupled under {sibling}")
        if coupling is not None and coupling.last_result == WRITING_LINES:
            waited = self.clock() - parse_iso(coupling.pending_since or iso_ms(self.clock()))
            if waited < PENDING_CREATE_GRACE:
                raise RequeueError(message, 2, "another worker is writing this document's lines")
        source = self.read_document(mapping, side, message.id)
        if side == "dv" and source is not None:
            self._show_availability(mapping, source)
        counterpart: Record | None = None
        if coupling is None:
            if source is None:
                why = f"{side} record {message.id} does not exist and is not coupled"
                return SyncResult(Outcome.SKIPPED, why)
            if not in_scope(mapping, side, source):
                why = f"{side} record is out of scope ({scope_filter(mapping, side)})"
                return SyncResult(Outcome.SKIPPED, why)
            if side == "dv" and mapping.from_quote is not None:
                made = self._order_from_quote(mapping, None, message, source)
                if made is not None:
                    return made
        else:
            won = self._quote_won(mapping, coupling, source) if side == "dv" and source is not None else None
            if won is not None:
                return won
            if (
                source is not None
                and not force
                and coupling.last_result in SETTLED
                and side_state(self.ms, mapping, side, source) == stored_state(coupling.snapshot, side)
            ):
                why = f"{side} header and lines equal the last synced snapshot (echo)"
                return SyncResult(Outcome.UNCHANGED, why, coupling.bc_id, coupling.dv_id)
            counterpart = self.read_document(mapping, other(side), coupling.id_on(other(side)))
        bc, dv = by_side(side, source, counterpart)
        plan = reconcile_document(
            self.ms, mapping, snapshot=coupling.snapshot if coupling else None, bc=bc, dv=dv,
            lookups=self._document_lookups(mapping, bc, dv),
        )  # fmt: skip
        return self._apply_document(mapping, plan, coupling, message, bc, dv)

    def _apply_document(
        self,
        mapping: EntityMapping,
        plan: DocumentPlan,
        coupling: Coupling | None,
        message: SyncMessage,
        bc: Record | None,
        dv: Record | None,
    ) -> SyncResult:
        bc_id = coupling.bc_id if coupling else record_id(mapping, "bc", bc)
        dv_id = coupling.dv_id if coupling else record_id(mapping, "dv", dv)
        if plan.outcome == Outcome.DEFERRED:
            return self._defer(mapping, plan.as_plan(), coupling, message, bc_id, dv_id)
        if plan.outcome == Outcome.FAILED:
            return self._fail(mapping, coupling, message, plan.error or plan.reason, bc_id, dv_id)
        if plan.outcome == Outcome.SKIPPED:
            return SyncResult(Outcome.SKIPPED, plan.reason, bc_id, dv_id)
        header = plan.header
        if header.uncouple or header.outcome in (Outcome.DELETED, Outcome.UNCOUPLED):
            # The document itself was deleted on one side: its lines go with it.
            for side, record in (("bc", bc), ("dv", dv)):
                write = header.write_on(side)  # type: ignore[arg-type]
                if write is not None and write.kind == "delete" and record is not None:
                    self.sides[side].delete(mapping, record)  # type: ignore[index]
            if coupling is not None:
                self.couplings.delete(coupling)
            return planned_result(header, bc_id, dv_id, bc, dv)
        if header.bc_write is not None and header.bc_write.kind == "create":
            return self._create_document_in_bc(mapping, plan, coupling, message, dv)
        if header.dv_write is not None and header.dv_write.kind == "create":
            assert bc is not None
            return self._create_document_in_dv(mapping, plan, message, bc)
        if coupling is None:
            return SyncResult(Outcome.SKIPPED, plan.reason or "nothing to do for an uncoupled document")
        return self._write_document(mapping, plan, coupling, message, bc, dv)

    def _write_document(
        self,
        mapping: EntityMapping,
        plan: DocumentPlan,
        coupling: Coupling,
        message: SyncMessage,
        bc: Record | None,
        dv: Record | None,
        *,
        outcome: Outcome | None = None,
    ) -> SyncResult:
        """Header first (a line write changes the header's totals and ETag), then the lines of each side
        in one atomic batch. A refused batch changes nothing; the error fails or retries the document."""
        assert mapping.lines is not None and coupling.bc_id and coupling.dv_id
        header = plan.header
        if plan.line_writes:
            coupling = self._claim_lines(coupling)
        assert coupling.bc_id and coupling.dv_id
        try:
            bc_after = self._write(mapping, "bc", header.bc_write, bc)
            dv_after = self._write(mapping, "dv", header.dv_write, dv)
            states = self._write_lines(mapping, plan, coupling.bc_id, coupling.dv_id, bc, dv)
        except Exception:
            if plan.line_writes:
                self._release_lines(coupling)
            raise
        if mapping.fulfil is not None and should_fulfil(mapping.fulfil, bc_after, dv_after):
            # Before the coupling is stored: a failed close leaves the change unsynced, so it is retried.
            number = str((bc_after or {}).get(mapping.bc.key) or "") or None
            self.dv.run_action(
                "FulfillSalesOrder", fulfil_request(mapping, mapping.fulfil, coupling.dv_id, number)
            )
        snapshot = (
            header.snapshot or {"bc": {}, "dv": {}}
            if plan.outcome == Outcome.CONFLICT
            else take_snapshot(self.ms, mapping, bc_after, dv_after)
        )
        error = plan.error or "" if plan.outcome == Outcome.CONFLICT else ""
        self._store_coupling(
            mapping, coupling, coupling.bc_id, coupling.dv_id, bc_after, dv_after,
            document_snapshot(snapshot, states), plan.outcome, error,
        )  # fmt: skip
        return SyncResult(
            outcome or plan.outcome, plan.reason, coupling.bc_id, coupling.dv_id, error=error,
            fields=_document_fields(plan), changes=plan.changes(), users=_users(bc, dv),
        )  # fmt: skip

    def _claim_lines(self, coupling: Coupling) -> Coupling:
        """Mark the document's lines as being written, conditional on the coupling as read: a line write
        is not conditional on anything BC or Dataverse would refuse, so two workers that read the same
        document (a line's notification and its document's) would both create the new lines. The one that
        loses this claim decides again from fresh reads; one that reads the claim waits (`_sync_document`)."""
        claimed = replace(coupling, pending_since=iso_ms(self.clock()))
        claimed.last_result = WRITING_LINES
        return self.couplings.save(claimed)

    def _release_lines(self, coupling: Coupling) -> None:
        try:
            self.couplings.save(replace(coupling, last_result="retrying", pending_since=None))
        except CouplingConflictError:
            log.info("coupling changed while releasing a line write; the next sync reads both sides")

    def _write_lines(
        self,
        mapping: EntityMapping,
        plan: DocumentPlan,
        bc_id: str,
        dv_id: str,
        bc: Record | None,
        dv: Record | None,
    ) -> list[LineState]:
        """Carry out the line plans (one batch per side) and return the line couplings after them."""
        assert mapping.lines is not None
        lines = mapping.lines
        current: dict[str, dict[str, Record]] = {
            "bc": {str(line["id"]): line for line in lines_of(mapping, "bc", bc)},
            "dv": {str(line[lines.dataverse.primary_key]): line for line in lines_of(mapping, "dv", dv)},
        }
        states = [
            LineState(lp.bc_id, lp.dv_id, lp.plan.snapshot or {"bc": {}, "dv": {}}) for lp in plan.lines
        ]
        for side in ("bc", "dv"):
            ops: list[tuple[LineWrite, int]] = []
            for index, lp in enumerate(plan.lines):
                write = lp.plan.write_on(side)  # type: ignore[arg-type]
                if write is None:
                    continue
                body = dict(write.body)
                line_id = lp.bc_id if side == "bc" else lp.dv_id
                if write.kind == "create":
                    parent = {"bc": bc_id, "dv": dv_id}[side]
                    ops.append((LineWrite("create", None, body, write.record_id, parent), index))
                else:
                    record = current[side].get(str(line_id))  # type: ignore[index]
                    if record is None:
                        continue  # already gone
                    ops.append((LineWrite(write.kind, record, body), index))
            if not ops:
                continue
            answers = self.sides[side].write_lines(mapping, [op for op, _ in ops])  # type: ignore[index]
            # A refused batch changes nothing; raise the line's own error, not the others' "rolled back".
            errors = [a.error for a in answers if a.error is not None]
            refused = next((e for e in errors if e.code != "TransactionRolledBack"), None) or next(
                iter(errors), None
            )
            if refused is not None:
                raise refused
            for (op, index), answer in zip(ops, answers, strict=True):
                state = states[index]
                if op.kind == "delete":
                    state.bc_id = state.dv_id = None
                elif op.kind == "create" and side == "bc":
                    state.bc_id = str((answer.record or {}).get("id") or "") or None
                elif op.kind == "create":
                    state.dv_id = op.record_id
        return [s for s in states if s.bc_id and s.dv_id and not plan_uncouples(plan, s)]

    def _create_document_in_dv(
        self, mapping: EntityMapping, plan: DocumentPlan, message: SyncMessage, bc: Record
    ) -> SyncResult:
        """Deep insert with deterministic ids (header and lines): a retried create finds them. 1 request."""
        header = plan.header
        assert header.dv_write is not None and header.dv_write.record_id
        creates = [lp for lp in plan.lines if lp.plan.dv_write is not None]
        created = self.dv.create_document(
            mapping, header.dv_write.body, [lp.plan.dv_write.body for lp in creates if lp.plan.dv_write],
            select=select_fields(self.ms, mapping, "dv"), record_id=header.dv_write.record_id,
        )  # fmt: skip
        states = [
            LineState(lp.bc_id, lp.plan.dv_write.record_id, lp.plan.snapshot or {"bc": {}, "dv": {}})
            for lp in creates
            if lp.plan.dv_write is not None
        ]
        bc_id, dv_id = str(bc["id"]), str(header.dv_write.record_id)
        snapshot = document_snapshot(take_snapshot(self.ms, mapping, bc, created), states)
        self._store_coupling(mapping, None, bc_id, dv_id, bc, created, snapshot, Outcome.INSERTED, "")
        return SyncResult(
            Outcome.INSERTED, plan.reason, bc_id, dv_id, fields=_document_fields(plan), changes=plan.changes()
        )

    def _create_document_in_bc(
        self,
        mapping: EntityMapping,
        plan: DocumentPlan,
        coupling: Coupling | None,
        message: SyncMessage,
        dv: Record | None,
    ) -> SyncResult:
        """Deep insert (1 request): BC creates the header and every line, numbers them and computes the
        amounts. As for any BC create, a pending coupling is written first (BC assigns the ids)."""
        header = plan.header
        assert header.bc_write is not None and dv is not None
        dv_id = record_id(mapping, "dv", dv)
        assert dv_id is not None
        pending = coupling or Coupling(mapping.name, None, dv_id)
        pending.state, pending.pending_since, pending.snapshot = (
            "pending_bc",
            iso_ms(self.clock()),
            header.snapshot,
        )
        pending.last_result = "pending"
        pending = self.couplings.create(pending) if coupling is None else self.couplings.save(pending)
        creates = [lp for lp in plan.lines if lp.plan.bc_write is not None]
        try:
            created = self.bc.create_document(
                mapping, header.bc_write.body, [lp.plan.bc_write.body for lp in creates if lp.plan.bc_write],
                select=select_fields(self.ms, mapping, "bc"), record_id=None,
            )  # fmt: skip
        except FatalApiError:
            self.couplings.delete(pending)
            raise
        return self._settle_document_create(mapping, pending, plan, creates, created, dv, message)

    def _settle_document_create(
        self,
        mapping: EntityMapping,
        pending: Coupling,
        plan: DocumentPlan,
        creates: Sequence[LinePlan],
        created: Record,
        dv: Record,
        message: SyncMessage,
    ) -> SyncResult:
        """Couple the document and its lines (BC keeps the order of a deep insert's lines), with the
        planned values as the merge base, then bring back what BC filled in (its number, line numbers,
        prices it computed): 2 more Dataverse requests (header, lines batch), only when BC added something."""
        assert pending.dv_id is not None
        bc_lines = lines_of(mapping, "bc", created)
        states = [
            LineState(str(line["id"]), lp.dv_id, lp.plan.snapshot or {"bc": {}, "dv": {}})
            for lp, line in zip(creates, bc_lines, strict=False)
        ]
        planned = plan.header.snapshot or take_snapshot(self.ms, mapping, created, dv)
        bc_id = str(created["id"])
        snapshot = document_snapshot(planned, states)
        coupling = self._store_coupling(
            mapping, pending, bc_id, pending.dv_id, created, dv, snapshot, Outcome.INSERTED, ""
        )
        follow = reconcile_document(
            self.ms, mapping, snapshot=snapshot, bc=created, dv=dv,
            lookups=self._document_lookups(mapping, created, dv),
        )  # fmt: skip
        changes = plan.changes()
        if follow.header.writes or follow.line_writes:
            result = self._write_document(
                mapping, follow, coupling, message, created, dv, outcome=Outcome.INSERTED
            )
            changes += result.changes
        return SyncResult(
            Outcome.INSERTED, plan.reason, bc_id, pending.dv_id, fields=_document_fields(plan),
            changes=changes, users=_users(None, dv),
        )  # fmt: skip

    def _finish_pending_document(
        self, mapping: EntityMapping, pending: Coupling, message: SyncMessage
    ) -> SyncResult:
        """A previous attempt wrote the pending row and may or may not have created the BC document."""
        assert pending.dv_id is not None
        dv = self.read_document(mapping, "dv", pending.dv_id)
        if dv is None:
            self.couplings.delete(pending)
            why = "Dataverse document vanished while its BC copy was pending"
            return SyncResult(Outcome.SKIPPED, why, None, pending.dv_id)
        plan = reconcile_document(
            self.ms, mapping, snapshot=None, bc=None, dv=dv, lookups=self._document_lookups(mapping, None, dv)
        )
        adopted = self._adoptable_bc_record(mapping, pending)
        if adopted is not None:
            document = self.read_document(mapping, "bc", str(adopted["id"]))
            if document is not None:
                creates = [lp for lp in plan.lines if lp.plan.bc_write is not None]
                return self._settle_document_create(mapping, pending, plan, creates, document, dv, message)
        waited = self.clock() - parse_iso(pending.pending_since or iso_ms(self.clock()))
        if waited < PENDING_CREATE_GRACE:
            delay = math.ceil((PENDING_CREATE_GRACE - waited).total_seconds())
            raise RequeueError(
                message, max(1, delay), "the BC create of this document may still be in flight"
            )
        if plan.header.bc_write is None or plan.header.bc_write.kind != "create":
            self.couplings.delete(pending)
            return self._apply_document(mapping, plan, None, message, None, dv)
        if mapping.from_quote is not None:
            made = self._order_from_quote(mapping, pending, message, dv)
            if made is not None:
                return made
        return self._create_document_in_bc(mapping, plan, pending, message, dv)

    # ------------------------------------------------------------------ availability on lines
    def _show_availability(self, mapping: EntityMapping, document: Record) -> None:
        """BC's quantity on hand of each line's item on the Dataverse lines of a document being prepared
        (`lines.availability`): one BC read per 40 distinct items, one Dataverse batch for the lines whose
        value changed, nothing when none did. A failure here never fails the document's sync."""
        shown = mapping.lines.availability if mapping.lines is not None else None
        if shown is None or not all(clause_holds(c, document) for c in shown.when):
            return
        items = {m.name for m in self.ms.entities() if m.bc.entity_set == "items"}
        product_column = item_lookup_field(mapping, items)
        if product_column is None:
            return
        lm = mapping.line_mapping()
        lines = lines_of(mapping, "dv", document)
        item_of_product: dict[str, str] = {}
        for product in {str(line[product_column]) for line in lines if line.get(product_column)}:
            found = (self.couplings.get(name, "dv", product) for name in sorted(items))
            coupling = next((c for c in found if c is not None), None)
            if coupling is not None and coupling.bc_id:
                item_of_product[product] = coupling.bc_id
        try:
            inventory = self.resolver.item_inventory(list(item_of_product.values()))
            updates = availability_updates(
                lines, line_key=lm.dataverse.primary_key, product_column=product_column, column=shown.column,
                item_of_product=item_of_product, inventory=inventory,
            )  # fmt: skip
            if updates:
                pk = lm.dataverse.primary_key
                changes = [({pk: i, "@odata.etag": "*"}, {shown.column: value}) for i, value in updates]
                refused = [r.error for r in self.dv.update_many(lm, changes, select=[pk]) if r.error]
                if refused:
                    log.warning("%s: %d lines did not take their availability: %s", mapping.name,
                                len(refused), refused[0])  # fmt: skip
        except ApiError as exc:
            log.warning("%s: could not show availability on the lines of %s: %s", mapping.name, document, exc)

    # ------------------------------------------------------------------ quotes won in Sales
    def _quote_won(self, mapping: EntityMapping, coupling: Coupling, quote: Record) -> SyncResult | None:
        """A coupled quote won in Sales: its BC quote becomes the BC order of the Sales order created from
        it, once that order is submitted (the order's own sync does it; this queues the orders already
        there, 1 request). None when `mapping` is no won quote's."""
        orders = [
            m for m in self.ms.entities() if m.from_quote and m.from_quote.quote_mapping == mapping.name
        ]
        if not orders or not any(is_won(m.from_quote, quote) for m in orders if m.from_quote):
            return None
        number = coupling.bc_key or coupling.bc_id
        queued: list[str] = []
        for m in orders:
            assert m.from_quote is not None
            column = f"_{m.from_quote.quote_column}_value"
            select = [m.dataverse.primary_key, *(c.field for c in scope_clauses(m, "dv"))]
            for page in self.dv.query_pages(
                m, select=select, filter=eq(column, coupling.dv_id or ""), page_size=50
            ):
                for order in page:
                    order_id = str(order[m.dataverse.primary_key])
                    if in_scope(m, "dv", order) and self.couplings.get(m.name, "dv", order_id) is None:
                        queued.append(order_id)
                        self.enqueue([SyncMessage(mapping=m.name, side="dv", id=order_id,
                                                  reason=f"made from won quote {number}")], 0)  # fmt: skip
        if queued:
            why = f"won in Sales: BC quote {number} is being made into the order of Sales order {queued[0]}"
        else:
            why = (f"won in Sales: BC quote {number} becomes a BC order when the Sales order created from "
                   "this quote is submitted")  # fmt: skip
        return SyncResult(Outcome.UNCHANGED, why, coupling.bc_id, coupling.dv_id)

    def _order_from_quote(
        self, mapping: EntityMapping, pending: Coupling | None, message: SyncMessage, dv: Record
    ) -> SyncResult | None:
        """A submitted Sales order created from a quote whose BC quote is coupled: BC makes the quote into
        the order (`makeOrder`, 1 request), which is found (1) and coupled to the Sales order line by line;
        BC's number and line numbers come back (2). None when the quote has no BC quote: the order is then
        created as any other. Safe to repeat: a pending coupling marks the attempt, a quote already made
        into an order answers 404 and the order it made is found."""
        fq = mapping.from_quote
        assert fq is not None and mapping.lines is not None
        quote_id = quote_of(fq, dv)
        quote_mapping = self.ms.entity(fq.quote_mapping)
        if quote_id is None:
            return None
        quote = self.couplings.get(quote_mapping.name, "dv", quote_id)
        plan = reconcile_document(
            self.ms, mapping, snapshot=None, bc=None, dv=dv, lookups=self._document_lookups(mapping, None, dv)
        )
        if plan.outcome in (Outcome.DEFERRED, Outcome.FAILED, Outcome.SKIPPED):
            return self._apply_document(mapping, plan, pending, message, None, dv)
        if quote is None or quote.state != "coupled" or not quote.bc_id:
            result = self._apply_document(mapping, plan, pending, message, None, dv)
            why = (f"its quote {quote_id} has no BC quote ({quote_mapping.name} never synchronized it, "
                   "or BC deleted it), so the BC order was created from the Sales order; "
                   f"{result.reason}")  # fmt: skip
            return replace(result, reason=why)
        marker = made_order_marker(quote.snapshot)
        number = quote.bc_key or quote.bc_id
        if pending is None:
            dv_id = record_id(mapping, "dv", dv)
            assert dv_id is not None
            pending = self.couplings.create(Coupling(
                mapping.name, None, dv_id, state="pending_bc", pending_since=iso_ms(self.clock()),
                snapshot={"bc": marker, "dv": {}}, last_result="pending",
            ))  # fmt: skip
        try:
            self.bc.run_action(quote_mapping, quote.bc_id, fq.action)
            quote_gone = False
        except NotFoundError:
            quote_gone = True  # made into an order by an earlier attempt, or deleted in BC
        made = self._made_order(mapping, marker)
        if made is None and quote_gone:
            self.couplings.delete(pending)
            self._forget_quote(quote)
            result = self._apply_document(mapping, plan, None, message, None, dv)
            why = (f"BC quote {number} (coupled to quote {quote_id}) no longer exists in BC and no "
                   f"order was made from it, so the order was created from the Sales order; "
                   f"{result.reason}")  # fmt: skip
            return replace(result, reason=why)
        if made is None:
            raise RequeueError(message, 5, f"the BC order made from quote {number} is not readable yet")
        creates = [lp for lp in plan.lines if lp.plan.bc_write is not None]
        dv_lines = {
            str(line[mapping.lines.dataverse.primary_key]): line for line in lines_of(mapping, "dv", dv)
        }
        pairs = pair_lines(lines_of(mapping, "bc", made), [dv_lines.get(str(lp.dv_id), {}) for lp in creates])
        document = {**made, mapping.lines.bc.entity_set: [line for _, line in pairs]}
        result = self._settle_document_create(
            mapping, pending, plan, [creates[i] for i, _ in pairs], document, dv, message
        )
        self._forget_quote(quote)  # BC deleted the quote it made into this order
        return replace(result, reason=f"made from BC quote {number} (won in Sales); {result.reason}")

    def _forget_quote(self, quote: Coupling) -> None:
        """Remove the coupling of a BC quote that is gone. BC's deletion notification removes it too
        (`deletion: remove_coupling`), so a coupling already changed or removed is left to that."""
        current = self.couplings.get(quote.mapping, "dv", quote.dv_id or "")
        if current is None:
            return
        try:
            self.couplings.delete(current)
        except Exception as exc:  # removed meanwhile by the quote's own sync (not found, or changed)
            log.info("%s %s: coupling removed meanwhile (%s)", quote.mapping, quote.dv_id, exc)

    def _made_order(self, mapping: EntityMapping, marker: Mapping[str, Any]) -> Record | None:
        """The BC order made from a quote, with its lines (1 request)."""
        if not marker:
            return None
        clauses = [eq(k, v) for k, v in marker.items()]
        found: list[Record] = []
        for page in self.bc.query_document_pages(
            mapping, select=select_fields(self.ms, mapping, "bc"), filter=" and ".join(clauses), page_size=20
        ):
            found += page
        coupled = {str(r["id"]) for r in found if self.couplings.get(mapping.name, "bc", str(r["id"]))}
        picked = pick_made_order(marker, found, coupled)
        return dict(picked) if picked is not None else None

    # ---------------------------------------------------------------------------------- writes
    def _write(
        self, mapping: EntityMapping, side: Side, write: Write | None, current: Record | None
    ) -> Record | None:
        """One planned write on `side`, conditional on `current`'s ETag; the record as written."""
        if write is None:
            return current
        gateway, select = self.sides[side], select_fields(self.ms, mapping, side)
        if write.kind == "create":
            return gateway.create(mapping, write.body, select=select, record_id=write.record_id)
        assert current is not None
        if write.kind == "update":
            written = gateway.update(mapping, current, write.body, select=select)
            if side == "bc":
                self.bc_written(mapping, written)
            return written
        gateway.delete(mapping, current)
        return None

    def bc_written(self, mapping: EntityMapping, record: Record | None) -> None:
        """BC answered an update or a create of this process: its notification is our echo from now
        on (shared/sync/echoes.py), not only once the coupling is stored, since BC may notify sooner."""
        if record is not None:
            bc_id = str(record[primary_key(mapping, "bc")])
            self.couplings.bc_written(mapping.name, bc_id, record.get("lastModifiedDateTime"))

    # ---------------------------------------------------------------------------------- reads
    def read(self, mapping: EntityMapping, side: Side, record_id: str | None) -> Record | None:
        if not record_id:
            return None
        return self.sides[side].get(mapping, record_id, select=select_fields(self.ms, mapping, side))

    def _first_page(
        self, mapping: EntityMapping, side: Side, filter_: str, select: list[str], top: int
    ) -> list[Record]:
        pages = self.sides[side].query_pages(mapping, select=select, filter=filter_, page_size=top)
        return list(next(iter(pages), []))

    # ---------------------------------------------------------------------------- deferrals
    def _defer(
        self,
        mapping: EntityMapping,
        plan: Plan,
        coupling: Coupling | None,
        message: SyncMessage,
        bc_id: str | None,
        dv_id: str | None,
    ) -> SyncResult:
        if message.attempt >= MAX_DEFERRALS:
            return self._fail(mapping, coupling, message, plan.error or plan.reason, bc_id, dv_id)
        for missing in plan.missing:
            self.enqueue(self._dependency_messages(missing, message), 0)
        attempt = message.attempt + 1
        retry = message.model_copy(update={"attempt": attempt, "reason": "waiting for a lookup target"})
        self.enqueue([retry], requeue_delay(attempt))
        return SyncResult(Outcome.DEFERRED, plan.reason, bc_id, dv_id)

    def _dependency_messages(self, missing: MissingLookup, message: SyncMessage) -> list[SyncMessage]:
        """Messages that sync the record a lookup waits for."""
        side, ids = self.resolver.records_waited_for(missing)
        return [
            SyncMessage(mapping=missing.mapping, side=side, id=i, reason=f"dependency of {message.mapping}",
                        correlation_id=message.correlation_id)
            for i in ids
        ]  # fmt: skip

    # ---------------------------------------------------------------------------- failures
    def _fail(
        self,
        mapping: EntityMapping,
        coupling: Coupling | None,
        message: SyncMessage,
        error: str,
        bc_id: str | None = None,
        dv_id: str | None = None,
    ) -> SyncResult:
        """A permanent failure: recorded on the coupling (the same error twice marks it skipped)."""
        if coupling is None:
            coupling = self.couplings.get(mapping.name, message.side, message.id)
        outcome: Outcome | str = Outcome.FAILED
        if coupling is not None:
            coupling = count_failure(coupling, error, since=iso_ms(message.observed))
            coupling.last_result, coupling.next_attempt = "failed", None
            coupling.seen = unsynced_times(coupling.seen, coupling.snapshot)
            try:
                self.couplings.save(coupling)
            except CouplingConflictError:
                log.info("coupling changed while recording a failure; the next sync records it again")
            if coupling.skipped:
                outcome = Outcome.SKIPPED
            bc_id, dv_id = coupling.bc_id, coupling.dv_id
        return SyncResult(outcome, error, bc_id, dv_id, error=error)

    def _record_retry(
        self,
        mapping: EntityMapping,
        message: SyncMessage,
        attempt: int,
        delay: int,
        error: RetriableApiError,
        requests_before: int,
    ) -> None:
        """A transient failure the queue retries: the record shows `retrying n of m` with the next
        attempt's time in `status` and `errors` meanwhile (best effort: storage may be what fails)."""
        next_at = iso_ms(self.clock() + dt.timedelta(seconds=delay))
        bc_id, dv_id = by_side(message.side, message.id, None)
        try:
            coupling = self.couplings.get(mapping.name, message.side, message.id)
            if coupling is not None:
                coupling.last_result, coupling.last_error = "retrying", refusal(error, "did not serve")
                coupling.attempts, coupling.next_attempt = attempt, next_at
                coupling.unsynced_since = coupling.unsynced_since or iso_ms(message.observed)
                self.couplings.save(coupling)
                bc_id, dv_id = coupling.bc_id, coupling.dv_id
        except Exception:  # the requeue matters more than the bookkeeping
            log.warning("could not record the retry of %s %s:%s", mapping.name, message.side, message.id)
        reason = f"retrying {attempt} of {MAX_TRANSIENT_REQUEUES} at {next_at}"
        result = SyncResult("retrying", reason, bc_id, dv_id, error=refusal(error, "did not serve"))
        self._journal(mapping, message, result, self.requests_in_this_thread() - requests_before)

    def _since(self, message: SyncMessage) -> str:
        minutes = (self.clock() - message.observed).total_seconds() / 60
        return f"{minutes:.0f} min"

    # ----------------------------------------------------------------------------- journal
    def _journal(
        self, mapping: EntityMapping, message: SyncMessage, result: SyncResult, requests: int
    ) -> None:
        entry = self.journal_entry(mapping, message, result, requests)
        try:
            self.journal.record(entry)
        except Exception:
            log.exception("could not write the journal entry for %s", entry)

    def journal_entry(
        self, mapping: EntityMapping, message: SyncMessage, result: SyncResult, requests: int
    ) -> JournalEntry:
        """The journal row of one record's sync (the coalesced path writes many in transactions)."""
        return JournalEntry(
            mapping=mapping.name,
            outcome=str(result.outcome),
            bc_id=result.bc_id or by_side(message.side, message.id, None)[0],
            dv_id=result.dv_id or by_side(message.side, message.id, None)[1],
            fields=result.fields,
            correlation_id=message.correlation_id,
            error=result.error,
            reason=result.reason or message.reason,
            api_requests=requests,
            at=self.clock(),
            **audit(result, message.side),
        )

    def requests_in_this_thread(self) -> int:
        """API requests sent by this thread (per-record costs stay exact with parallel workers)."""
        return self.bc.requests_in_this_thread() + self.dv.requests_in_this_thread()


def settle(
    mapping: EntityMapping,
    coupling: Coupling | None,
    bc_id: str,
    dv_id: str,
    bc: Record | None,
    dv: Record | None,
    snapshot: Any,
    outcome: Outcome | str,
    error: str = "",
) -> Coupling:
    """The coupling after a sync of the pair, from the records as read back (not stored yet)."""
    c = coupling or Coupling(mapping.name, bc_id, dv_id)
    c.bc_id, c.dv_id, c.state, c.snapshot, c.pending_since = bc_id, dv_id, "coupled", snapshot, None
    # After a settled sync both records are the snapshot: no change waits, so no time is kept. Under a
    # conflict the conflicting fields keep their old base, and their times until it is resolved.
    c.seen = unsynced_times(c.seen, snapshot) if outcome == Outcome.CONFLICT else None
    c.next_attempt = None
    if bc is not None:
        c.bc_modified, c.bc_etag = bc.get("lastModifiedDateTime"), bc.get("@odata.etag")
        key = bc.get(mapping.bc.key)
        c.bc_key = str(key) if key not in (None, "") else None
    if dv is not None:
        c.dv_modified, c.dv_etag = dv.get(mapping.dataverse.modified_field), dv.get("@odata.etag")
    if outcome == Outcome.CONFLICT:
        count_failure(c, error)
        c.last_result = "conflict"
    else:
        c.last_result, c.last_error, c.attempts, c.skipped = str(outcome), "", 0, False
        c.unsynced_since = None
    return c


def count_failure(coupling: Coupling, error: str, since: str | None = None) -> Coupling:
    """One more failure; the same error twice in a row marks the record skipped, as the built-in
    connector does. `since`: when the change it holds back was observed (default: now)."""
    repeated = coupling.last_result in ("failed", "conflict") and coupling.last_error == error
    if coupling.last_result == "retrying":
        coupling.attempts = 0  # the transient retries were counted apart
    coupling.attempts += 1
    coupling.last_error = error
    coupling.unsynced_since = coupling.unsynced_since or since or now_iso()
    if repeated:
        coupling.skipped = True
    return coupling


def typed_number(mapping: EntityMapping, side: Side, record: Record) -> str | None:
    """The BC number a Sales user typed into an uncoupled record's `couple_by_column`, if any."""
    column = mapping.dataverse.couple_by_column
    if side != "dv" or column is None:
        return None
    value = str(record.get(column) or "").strip()
    return value or None


def base_preferring(ms: MappingSet, m: EntityMapping, prefer: Side, bc: Record, dv: Record) -> Any:
    """A merge base under which `prefer`'s values win: the other side's current values are the base (so
    nothing there counts as changed) and `prefer` has none (so each of its non-empty values is news,
    reconcile's rule for a field missing from the base). Used for "sync after coupling" and for a
    one-off sync in a chosen direction."""
    current = take_snapshot(ms, m, bc, dv)
    # Only what may flow from `prefer` is news: a field that flows the other way only keeps its
    # current value as the base, so `prefer`'s value stays instead of being "restored" over it
    # (SALESPEOPLE is to_bc: coupled with sync_from bc, the salesperson keeps BC's name).
    target = other(prefer)
    fields = {f.key: f for f in m.fields}
    current[prefer] = {
        key: value
        for key, value in current[prefer].items()
        if not (m.writes_to(target) and key in fields and fields[key].writes_to(target))
    }
    return current


def _users(bc: Record | None, dv: Record | None) -> dict[str, str]:
    """Who last changed each record: Dataverse's `modifiedby`; BC API v2.0 does not expose it."""
    user = (dv or {}).get(DV_MODIFIED_BY)
    return {"dv": str(user)} if user else {}


def planned_result(
    plan: Plan, bc_id: str | None, dv_id: str | None, bc: Record | None, dv: Record | None, error: str = ""
) -> SyncResult:
    """The result of a plan carried out (or, on a dry run, to be carried out)."""
    return SyncResult(
        plan.outcome, plan.reason, bc_id, dv_id, error=error, fields=_fields(plan),
        changes=list(plan.changes), conflicts=[*plan.conflicts, *plan.resolved], users=_users(bc, dv),
    )  # fmt: skip


def audit(result: SyncResult, source: Side | str) -> dict[str, Any]:
    """The journal's audit fields of a result: per field old -> new, from which side and by whom, the
    direction, and both values of each conflict with the winner and why."""
    changes = []
    for c in result.changes:
        origin = "bc" if c.direction == "to_dataverse" else "dv"
        changes.append({
            "field": c.key, "old": c.old, "new": c.new, "direction": c.direction, "from": origin,
            "user": result.users.get(origin, ""), "reason": c.reason,
        })  # fmt: skip
    conflicts = [
        {
            "field": c.key,
            "bc": c.bc_value,
            "dv": c.dv_value,
            "policy": c.policy,
            "winner": c.winner,
            "why": c.why,
        }
        for c in result.conflicts
    ]
    directions = {c.direction for c in result.changes}
    direction = "both" if len(directions) > 1 else next(iter(directions), "")
    return {
        "direction": direction, "source": source, "user": result.users.get(source, ""),
        "changes": changes, "conflicts": conflicts,
    }  # fmt: skip


_SYSTEMS = {"business_central": "BC", "dataverse": "Dataverse"}


def refusal(exc: ApiError, verb: str = "refused") -> str:
    """An API error in the service's own words, e.g. `BC refused DELETE customers (400
    Application_DialogException): You cannot delete Customer C00010 because ...`."""
    system = _SYSTEMS.get(exc.service, exc.service or "the remote service")
    target = exc.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1].split("(")[0] if exc.url else ""
    what = " ".join(x for x in (exc.method, target) if x)
    status = " ".join(x for x in (str(exc.status) if exc.status else "", exc.code) if x)
    said = f"{system} {verb} {what or 'the request'}{f' ({status})' if status else ''}: {exc.message}"
    missing = missing_customization(exc)
    if missing is None:
        return said
    return f"{said} {setup_hint(missing)}, then `bcsync retry <mapping> --all`."


def _fields(plan: Plan) -> list[str]:
    return sorted({key for w in plan.writes for key in w.fields})


SIDE_LABEL = {"bc": "BC", "dv": "Dataverse"}


def _document_fields(plan: DocumentPlan) -> list[str]:
    """Header fields written, and `line <n>.<field>` for each line field written."""
    keys = set(_fields(plan.header))
    for lp in plan.lines:
        keys |= {f"line {lp.position}.{key}" for key in _fields(lp.plan)}
    return sorted(keys)


def plan_uncouples(plan: DocumentPlan, state: LineState) -> bool:
    """Whether the line pair of `state` is removed by its plan (deleted on one side)."""
    return any(lp.plan.uncouple and lp.bc_id == state.bc_id and lp.dv_id == state.dv_id for lp in plan.lines)
