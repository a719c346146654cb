"""The imperative shell around `reconcile`: read fresh, decide, write conditionally, couple, journal.

One `Engine.handle(message)` call converges one record pair (or hands bulk work to the bulk
module). It is idempotent: a redelivered message re-reads the record and finds nothing to do.

Request budget for a change on a coupled record: read the changed side (1); if its mapped values
equal the snapshot it is an echo and we stop (1 request, no write); otherwise write the other side
with the ETag stored at the last sync, its values presumed from the snapshot (2). If it changed
since, that write is refused, and it is read and merged with the source already read (4 in all).
An uncoupled record costs a read, one match query per match priority, and the create.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.connectors.errors import ConcurrencyError, NotFoundError, RetriableApiError
from shared.connectors.odata import and_, eq
from shared.mapping.lookups import StaticLookups
from shared.mapping.queries import (
    LookupKey,
    in_scope,
    lookup_keys,
    lookup_needs,
    match_queries,
    primary_key,
    record_id,
    scope_filter,
    select_fields,
)
from shared.mapping.schema import EntityMapping, MappingSet, OptionSetMapping, Side
from shared.mapping.values import COMPANY_CONTACT_KEY, MissingLookup, other
from shared.messages import ChunkMessage, ScanMessage, SyncMessage
from shared.store.couplings import AlreadyCoupledError, Coupling, CouplingConflictError, CouplingStore
from shared.store.journal import Journal, JournalEntry
from shared.sync.reconcile import Candidate, Outcome, Plan, Write, presumed_record, reconcile, take_snapshot
from shared.timestamps import iso_ms, parse_iso

log = logging.getLogger(__name__)

MAX_RACE_RETRIES = 4  # re-read and re-reconcile after a lost race (ETag) at most this often
MAX_DEFERRALS = 6  # a record waiting for its lookup target is retried this often, then fails
DEFER_DELAY_SECONDS = 5
MAX_TRANSIENT_REQUEUES = 8
REFERENCE_TTL_SECONDS = 600
# Results after which the snapshot is trustworthy enough to call an unchanged source an echo.
_SETTLED = {Outcome.UNCHANGED, Outcome.MODIFIED, Outcome.INSERTED, Outcome.COUPLED, Outcome.RESTORED}


class RequeueError(Exception):
    """The message must be tried again later; the caller re-enqueues it with `delay` seconds."""

    def __init__(self, message: SyncMessage | ChunkMessage | ScanMessage, delay: float, why: str) -> None:
        super().__init__(why)
        self.message = message
        self.delay = delay


@dataclass
class SyncResult:
    outcome: Outcome | str
    reason: str = ""
    bc_id: str | None = None
    dv_id: str | None = None
    error: str = ""
    fields: list[str] = field(default_factory=list)


# What the engine needs from the queue: send these messages, visible after `delay` seconds.
Enqueue = Callable[[list[Any], int], None]


class Engine:
    def __init__(
        self,
        *,
        mappings: MappingSet,
        bc: Any,  # shared.connectors.business_central.BusinessCentralClient
        dv: Any,  # shared.connectors.dataverse.DataverseClient
        company_id: str,
        couplings: CouplingStore,
        journal: Journal,
        enqueue: Enqueue,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.ms = mappings
        self.bc = bc
        self.dv = dv
        self.company_id = company_id
        self.couplings = couplings
        self.journal = journal
        self.enqueue = enqueue
        self.clock = clock
        self._local_currency: dict[str, str | None] = {}
        self._cache: dict[str, tuple[float, Any]] = {}  # see `_fresh`

    # ------------------------------------------------------------------------------- dispatch
    def handle(self, message: SyncMessage | ChunkMessage | ScanMessage) -> SyncResult | None:
        if isinstance(message, SyncMessage):
            return self.sync_record(message)
        from shared.sync import bulk

        if isinstance(message, ChunkMessage):
            bulk.sync_chunk(self, message)
        else:
            bulk.scan(self, message)
        return None

    # ---------------------------------------------------------------------------- one record
    def sync_record(self, message: SyncMessage, *, force: bool = False) -> SyncResult:
        """Converge the pair containing `message.id`; journal the outcome. Raises `RequeueError`
        for transient trouble (the caller re-enqueues with the delay)."""
        mapping = self.ms.entity(message.mapping)
        requests_before = self.requests_in_this_thread()
        try:
            result = self._sync_with_race_retries(mapping, message, force)
        except RetriableApiError as exc:
            attempt = message.attempt + 1
            if attempt > MAX_TRANSIENT_REQUEUES:
                raise  # let the host retry and finally poison the message, body intact
            delay = exc.retry_after if exc.retry_after is not None else min(300, 2**attempt)
            raise RequeueError(message.model_copy(update={"attempt": attempt}), delay, str(exc)) from exc
        result_requests = self.requests_in_this_thread() - requests_before
        self._journal(mapping, message, result, result_requests)
        return result

    def _sync_with_race_retries(
        self, mapping: EntityMapping, message: SyncMessage, force: bool
    ) -> SyncResult:
        last: Exception | None = None
        for _ in range(MAX_RACE_RETRIES):
            try:
                return self._sync_once(mapping, message, force)
            except (ConcurrencyError, CouplingConflictError, AlreadyCoupledError) as exc:
                # Someone else wrote the record or the coupling since we read it: decide again.
                last = exc
                log.info("%s %s:%s lost a race (%s); re-reading", mapping.name, message.side, message.id, exc)
        return self._fail(
            mapping, None, message, f"gave up after {MAX_RACE_RETRIES} concurrent changes: {last}"
        )

    def _sync_once(self, mapping: EntityMapping, message: SyncMessage, force: bool) -> SyncResult:
        side: Side = message.side
        coupling = self.couplings.get(mapping.name, side, message.id)
        if coupling is not None and coupling.skipped and not force:
            why = "record is skipped after repeated failures; retry it to resume"
            return SyncResult(Outcome.SKIPPED, why, coupling.bc_id, coupling.dv_id)
        if coupling is not None and coupling.state == "pending_bc":
            return self._finish_pending_bc_create(mapping, coupling, message)

        if coupling is None:
            sibling = self._coupled_elsewhere(mapping, side, message.id)
            if sibling is not None:
                return SyncResult(Outcome.SKIPPED, f"coupled under {sibling}")
        source = self.read(mapping, side, message.id)
        if coupling is None:
            return self._sync_uncoupled(mapping, side, message, source)

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
        source: dict[str, Any] | None,
        counterpart: dict[str, Any] | None,
    ) -> SyncResult:
        bc, dv = (source, counterpart) if message.side == "bc" else (counterpart, source)
        lookups = self.lookups_for(mapping, bc, dv)
        plan = reconcile(self.ms, mapping, snapshot=coupling.snapshot, bc=bc, dv=dv, lookups=lookups)
        return self._apply(mapping, plan, coupling, message, bc, dv)

    def _presumed(self, mapping: EntityMapping, coupling: Coupling, side: Side) -> dict[str, Any] | None:
        """`side`'s record as the last settled sync left it, rebuilt from the coupling, so a change
        on the other side costs one read and one conditional write instead of two reads and a write.
        None when the coupling cannot stand in for a read (see `presumed_record`)."""
        etag = coupling.bc_etag if side == "bc" else coupling.dv_etag
        record_id_ = coupling.id_on(side)
        if coupling.snapshot is None or coupling.last_result not in _SETTLED or not etag or not record_id_:
            return None
        return presumed_record(
            self.ms, mapping, side, coupling.snapshot, record_id=record_id_, etag=etag,
            modified=coupling.bc_modified if side == "bc" else coupling.dv_modified, key=coupling.bc_key,
        )  # fmt: skip

    def _is_echo(
        self, mapping: EntityMapping, coupling: Coupling, side: Side, record: dict[str, Any]
    ) -> bool:
        if coupling.snapshot is None or coupling.last_result not in _SETTLED:
            return False
        current = take_snapshot(
            self.ms, mapping, record if side == "bc" else None, record if side == "dv" else None
        )
        return current[side] == coupling.snapshot.get(side)

    # ------------------------------------------------------------------------------ uncoupled
    def _sync_uncoupled(
        self, mapping: EntityMapping, side: Side, message: SyncMessage, source: dict[str, Any] | None
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
        bc, dv = (source, None) if side == "bc" else (None, source)
        lookups = self.lookups_for(mapping, bc, dv)
        found = self._candidates(mapping, side, source, lookups)
        for record, coupling in found:
            if side == "bc" and coupling is not None and self._is_planned_record(mapping, coupling, source):
                # The BC record our own create made, announced before the create's answer was
                # processed (or after it was lost): complete that coupling, never create again.
                bc_id, dv_id = str(source["id"]), str(coupling.dv_id)
                snapshot = take_snapshot(self.ms, mapping, source, record)
                self._store_coupling(
                    mapping, coupling, bc_id, dv_id, source, record, snapshot, Outcome.INSERTED, ""
                )
                why = "adopted the BC record created for this Dataverse record"
                return SyncResult(Outcome.INSERTED, why, bc_id, dv_id)
        candidates = [Candidate(record, already_coupled=coupling is not None) for record, coupling in found]
        plan = reconcile(
            self.ms, mapping, snapshot=None, bc=bc, dv=dv, lookups=lookups, candidates=candidates
        )
        return self._apply(mapping, plan, None, message, bc, dv, matched=[r for r, _ in found])

    def _candidates(
        self, mapping: EntityMapping, side: Side, record: dict[str, Any], lookups: StaticLookups
    ) -> list[tuple[dict[str, Any], Coupling | None]]:
        """Possible counterparts on the other side, each with its coupling (if any)."""
        target = other(side)
        select = select_fields(self.ms, mapping, target)
        pk = primary_key(mapping, target)
        for _priority, filter_ in match_queries(self.ms, mapping, record, side, lookups):
            rows = self._query(mapping, target, filter_, select, top=5)
            if rows:
                return [(r, self.couplings.get(mapping.name, target, str(r[pk]))) for r in rows]
        return []

    def _coupled_elsewhere(self, mapping: EntityMapping, side: Side, record_id: str) -> str | None:
        """A mapping sharing this table (CUSTOMER and VENDOR both map accounts) that has coupled
        the record: then it is not this mapping's, and no API request is needed to say so."""
        for sibling in self.ms.entities():
            same_table = (
                sibling.dataverse.table == mapping.dataverse.table
                if side == "dv"
                else sibling.bc.entity_set == mapping.bc.entity_set
            )
            if (
                sibling.name != mapping.name
                and same_table
                and self.couplings.get(sibling.name, side, record_id)
            ):
                return sibling.name
        return None

    # ---------------------------------------------------------------------------------- apply
    def _apply(
        self,
        mapping: EntityMapping,
        plan: Plan,
        coupling: Coupling | None,
        message: SyncMessage,
        bc: dict[str, Any] | None,
        dv: dict[str, Any] | None,
        matched: Sequence[dict[str, Any]] = (),
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
        bc_after = self._write_bc(mapping, plan.bc_write, bc)
        dv_after = self._write_dv(mapping, plan.dv_write, dv)
        bc_id = bc_id or record_id(mapping, "bc", bc_after)
        dv_id = dv_id or record_id(mapping, "dv", dv_after)

        if plan.uncouple and coupling is not None:
            self.couplings.delete(coupling)
            coupling = None
        deleted = any(w.kind == "delete" for w in plan.writes)
        if deleted or plan.outcome == Outcome.UNCOUPLED:
            if coupling is not None:
                self.couplings.delete(coupling)
            return SyncResult(plan.outcome, plan.reason, bc_id, dv_id, fields=_fields(plan))

        if plan.couple_with is not None:
            couple_side, couple_id = plan.couple_with
            known = next((r for r in matched if record_id(mapping, couple_side, r) == couple_id), None)
            if couple_side == "bc":
                bc_id = couple_id
                bc_after = bc_after or known or self.read(mapping, "bc", couple_id)
            else:
                dv_id = couple_id
                dv_after = dv_after or known or self.read(mapping, "dv", couple_id)
        if bc_id is None or dv_id is None:
            return SyncResult(plan.outcome, plan.reason, bc_id, dv_id, fields=_fields(plan))
        snapshot = (
            plan.snapshot
            if plan.outcome == Outcome.CONFLICT
            else take_snapshot(self.ms, mapping, bc_after, dv_after)
        )
        error = plan.error or "" if plan.outcome == Outcome.CONFLICT else ""
        self._store_coupling(
            mapping, coupling, bc_id, dv_id, bc_after, dv_after, snapshot, plan.outcome, error
        )
        return SyncResult(plan.outcome, plan.reason, bc_id, dv_id, error=error, fields=_fields(plan))

    def _store_coupling(
        self,
        mapping: EntityMapping,
        coupling: Coupling | None,
        bc_id: str,
        dv_id: str,
        bc: dict[str, Any] | None,
        dv: dict[str, Any] | None,
        snapshot: Any,
        outcome: Outcome,
        error: str,
    ) -> Coupling:
        c = settle(mapping, coupling, bc_id, dv_id, bc, dv, snapshot, outcome, error)
        return self.couplings.create(c) if coupling is None else self.couplings.save(c)

    # ------------------------------------------------------------------------------ BC creates
    def _create_in_bc(
        self,
        mapping: EntityMapping,
        plan: Plan,
        coupling: Coupling | None,
        message: SyncMessage,
        dv: dict[str, Any] | None,
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
        created = self.bc.create(self.company_id, mapping.bc.entity_set, plan.bc_write.body)
        bc_id = str(created["id"])
        snapshot = take_snapshot(self.ms, mapping, created, dv)
        self._store_coupling(mapping, pending, bc_id, dv_id, created, dv, snapshot, Outcome.INSERTED, "")
        return SyncResult(Outcome.INSERTED, plan.reason, bc_id, dv_id, fields=list(plan.bc_write.fields))

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
            snapshot = take_snapshot(self.ms, mapping, adopted, dv)
            bc_id = str(adopted["id"])
            self._store_coupling(
                mapping, pending, bc_id, pending.dv_id, adopted, dv, snapshot, Outcome.INSERTED, ""
            )
            return SyncResult(
                Outcome.INSERTED, "adopted the BC record created by an earlier attempt", bc_id, pending.dv_id
            )
        # Nothing was created: plan again from scratch (the pending row stays until the create lands).
        lookups = self.lookups_for(mapping, None, dv)
        plan = reconcile(self.ms, mapping, snapshot=None, bc=None, dv=dv, lookups=lookups)
        if plan.bc_write is None or plan.bc_write.kind != "create":
            self.couplings.delete(pending)
            return self._apply(mapping, plan, None, message, None, dv)
        return self._create_in_bc(mapping, plan, pending, message, dv)

    def _adoptable_bc_record(self, mapping: EntityMapping, pending: Coupling) -> dict[str, Any] | None:
        """A BC record created since the pending row whose mapped values are the ones we planned."""
        if not pending.pending_since or not pending.snapshot:
            return None
        since = parse_iso(pending.pending_since)
        select = select_fields(self.ms, mapping, "bc")
        for record in self.bc.modified_since(self.company_id, mapping.bc.entity_set, since, select=select):
            if self.couplings.get(mapping.name, "bc", str(record["id"])) is not None:
                continue
            if self._is_planned_record(mapping, pending, record):
                return dict(record)
        return None

    def _is_planned_record(self, mapping: EntityMapping, pending: Coupling, record: dict[str, Any]) -> bool:
        """Whether `record` is the BC record a pending create planned (same mapped values)."""
        if pending.state != "pending_bc" or not pending.snapshot:
            return False
        planned = pending.snapshot.get("bc", {})
        values = take_snapshot(self.ms, mapping, record, None)["bc"]
        return bool(planned) and all(values.get(k) == v for k, v in planned.items() if v is not None)

    # ---------------------------------------------------------------------------------- writes
    def _write_bc(
        self, mapping: EntityMapping, write: Write | None, current: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if write is None:
            return current
        entity_set = mapping.bc.entity_set
        if write.kind == "update":
            assert current is not None
            return dict(
                self.bc.update(
                    self.company_id, entity_set, current["id"], write.body, etag=current["@odata.etag"]
                )
            )
        if write.kind == "delete":
            assert current is not None
            self.bc.delete(self.company_id, entity_set, current["id"], etag=current["@odata.etag"])
            return None
        raise ValueError(f"unexpected BC write {write.kind}")

    def _write_dv(
        self, mapping: EntityMapping, write: Write | None, current: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if write is None:
            return current
        entity_set = mapping.dataverse.entity_set
        select = select_fields(self.ms, mapping, "dv")
        pk = mapping.dataverse.primary_key
        if write.kind == "create":
            return dict(self.dv.create(entity_set, write.body, record_id=write.record_id, select=select))
        assert current is not None
        if write.kind == "update":
            return dict(
                self.dv.update(
                    entity_set, current[pk], write.body, etag=current["@odata.etag"], select=select
                )
            )
        self.dv.delete(entity_set, current[pk], etag=current["@odata.etag"])
        return None

    # ---------------------------------------------------------------------------------- reads
    def read(self, mapping: EntityMapping, side: Side, record_id: str | None) -> dict[str, Any] | None:
        if not record_id:
            return None
        select = select_fields(self.ms, mapping, side)
        if side == "bc":
            found = self.bc.get(self.company_id, mapping.bc.entity_set, record_id, select=select)
        else:
            found = self.dv.get(mapping.dataverse.entity_set, record_id, select=select)
        return dict(found) if found is not None else None

    def _query(
        self, mapping: EntityMapping, side: Side, filter_: str, select: list[str], top: int
    ) -> list[dict[str, Any]]:
        if side == "bc":
            pages = self.bc.query_pages(
                self.company_id, mapping.bc.entity_set, select=select, filter=filter_, page_size=top
            )
        else:
            pages = self.dv.query_pages(
                mapping.dataverse.entity_set, select=select, filter=filter_, page_size=top
            )
        return list(next(iter(pages), []))

    # --------------------------------------------------------------------------------- lookups
    def lookups_for(
        self, mapping: EntityMapping, bc: dict[str, Any] | None, dv: dict[str, Any] | None
    ) -> StaticLookups:
        """Only the couplings these records refer to (point reads in Table Storage, no API request)
        and BC code tables (cached for a few minutes: they change rarely)."""
        lookups = StaticLookups()
        for need in lookup_needs(self.ms, mapping):
            if need.kind == "bc_reference":
                lookups.add_reference(need.mapping, self._bc_reference(need.mapping, need.bc_entity_set))
        for side, record in (("bc", bc), ("dv", dv)):
            if record is None:
                continue
            for key in lookup_keys(self.ms, mapping, side, record):  # type: ignore[arg-type]
                self.resolve_lookup(lookups, key)
        return lookups

    def resolve_lookup(self, lookups: StaticLookups, key: LookupKey) -> None:
        target = self.ms.entity(key.mapping)
        if key.side == "bc":
            if key.company_contact:
                bc_id = self._related_to_company_contact(target, key.value)
            else:
                bc_id = key.value if target.bc.key == "id" else self._bc_id_for_key(target, key.value)
            coupling = self.couplings.get(key.mapping, "bc", bc_id) if bc_id else None
            if coupling is not None and coupling.dv_id:
                lookups.couple(key.space, key.value, coupling.dv_id)
            elif (
                target.bc_blank_means_local_currency and key.value == self.ms.settings.bc_local_currency_code
            ):
                local = self._local_currency_id(target, key.value)
                if local:
                    lookups.couple(key.space, key.value, local)
            return
        coupling = self.couplings.get(key.mapping, "dv", key.value)
        if coupling is None or not coupling.bc_id:
            return
        if key.company_contact:
            number = self._company_contact_of(target, coupling.bc_id)
            if number:
                lookups.couple(key.space, number, key.value)
            return
        lookups.couple(key.space, coupling.bc_key or coupling.bc_id, key.value)

    def _bc_id_for_key(self, mapping: EntityMapping, key: str) -> str | None:
        """BC id of the record whose key field (a code, a number) is `key`. The whole key->id
        index of the entity set is read in pages and cached: codes and numbers rarely change, and
        one read serves every later lookup. A miss refreshes it at most once a minute."""

        def load() -> dict[str, str]:
            rows = self.bc.query(self.company_id, mapping.bc.entity_set, select=["id", mapping.bc.key])
            return {str(r[mapping.bc.key]): str(r["id"]) for r in rows if r.get(mapping.bc.key)}

        index: dict[str, str] = self._fresh(f"keys:{mapping.name}", load)
        if key not in index:
            index = self._fresh(f"keys:{mapping.name}", load, max_age=60)
        return index.get(key)

    # A person contact's `companyNumber` is its company contact's number. BC's API cannot list
    # contact business relations (contactsInformation answers one related record at a time), so a
    # relation is found per record and remembered: company contact number <-> customer or vendor id.
    def _company_contact_of(self, mapping: EntityMapping, bc_id: str) -> str | None:
        """The number of the company contact BC relates to customer (vendor) `bc_id`: 1 request."""
        links = self._contact_links_of(mapping)
        if bc_id not in links:
            rows = self.bc.related_contacts(
                self.company_id, mapping.bc.entity_set, bc_id, filter=eq("contactType", "Company")
            )
            number = next((str(r["contactNumber"]) for r in rows if r.get("contactNumber")), "")
            links[bc_id] = number  # "" = none, remembered like a link (a deferred record asks again)
            if number:
                links[number] = bc_id
        return links[bc_id] or None

    def _related_to_company_contact(self, mapping: EntityMapping, number: str) -> str | None:
        """The customer (vendor) id BC relates company contact `number` to. BC copies a customer's
        name to its company contact, so the customers of that name are the candidates (up to 5),
        each checked through its relation until one matches: 3 requests for a company contact not
        seen before, 1 more per namesake checked first."""
        links = self._contact_links_of(mapping)
        if number not in links:
            company = self.bc.query(
                self.company_id, "contacts", select=["displayName"],
                filter=and_(eq("number", number), eq("type", "Company")), page_size=1,
            )  # fmt: skip
            name = next((str(c["displayName"]) for c in company), None)
            if not name:
                links[number] = ""
                return None
            namesakes = self.bc.query(
                self.company_id, mapping.bc.entity_set, select=["id"], filter=eq("displayName", name),
                page_size=5,
            )  # fmt: skip
            for candidate in itertools.islice(namesakes, 5):
                if self._company_contact_of(mapping, str(candidate["id"])) == number:
                    break
            links.setdefault(number, "")
        return links[number] or None

    def _contact_links_of(self, mapping: EntityMapping) -> dict[str, str]:
        """Company contact number <-> customer/vendor id, both directions ("" where BC has none),
        filled as they are found and forgotten after REFERENCE_TTL_SECONDS."""
        links: dict[str, str] = self._fresh(f"contact links:{mapping.name}", dict)
        return links

    def _local_currency_id(self, mapping: EntityMapping, code: str) -> str | None:
        """BC's local currency is not in its currencies list, so it is never coupled: find the
        Dataverse currency with that ISO code instead (once per process)."""
        if code not in self._local_currency:
            iso = next((f.dv for f in mapping.fields if f.bc == mapping.bc.key and f.dv), "isocurrencycode")
            pk = mapping.dataverse.primary_key
            rows = self._query(mapping, "dv", eq(iso, code), [pk], top=1)
            self._local_currency[code] = str(rows[0][pk]) if rows else None
        return self._local_currency[code]

    def _bc_reference(self, mapping_name: str, entity_set: str) -> list[dict[str, Any]]:
        option = self.ms.get(mapping_name)
        select = None
        if isinstance(option, OptionSetMapping):
            select = list(dict.fromkeys(["id", option.bc.key, option.bc.code_field]))
        rows: list[dict[str, Any]] = self._fresh(
            f"reference:{mapping_name}",
            lambda: [dict(r) for r in self.bc.query(self.company_id, entity_set, select=select)],
        )
        return rows

    def _fresh(self, name: str, load: Callable[[], Any], max_age: float = REFERENCE_TTL_SECONDS) -> Any:
        """The cached value `name`, loaded again with `load()` once older than `max_age` seconds:
        BC code tables, key indexes and relations rarely change, and one read serves every later
        lookup in this process."""
        entry = self._cache.get(name)
        if entry is None or time.monotonic() - entry[0] > max_age:
            entry = (time.monotonic(), load())
            self._cache[name] = entry
        return entry[1]

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
        retry = message.model_copy(
            update={"attempt": message.attempt + 1, "reason": "waiting for a lookup target"}
        )
        self.enqueue([retry], DEFER_DELAY_SECONDS * (message.attempt + 1))
        return SyncResult(Outcome.DEFERRED, plan.reason, bc_id, dv_id)

    def _dependency_messages(self, missing: MissingLookup, message: SyncMessage) -> list[SyncMessage]:
        """Messages that sync the record a lookup waits for (found by its key on its own side)."""
        target = self.ms.entity(missing.mapping)
        if missing.side == "dv":
            ids = [missing.value]
            side: Side = "dv"
        elif missing.key_field == "id":
            ids, side = [missing.value], "bc"
        elif missing.key_field == COMPANY_CONTACT_KEY:
            bc_id = self._related_to_company_contact(target, missing.value)
            ids, side = [bc_id] if bc_id else [], "bc"
        else:
            rows = self._query(target, "bc", eq(missing.key_field, missing.value), ["id"], top=2)
            ids, side = [str(r["id"]) for r in rows], "bc"
        return [
            SyncMessage(mapping=target.name, side=side, id=i, reason=f"dependency of {message.mapping}",
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
            coupling = count_failure(coupling, error)
            coupling.last_result = "failed"
            try:
                self.couplings.save(coupling)
            except CouplingConflictError:
                log.info("coupling changed while recording a failure; the next sync records it again")
            if coupling.skipped:
                outcome = Outcome.SKIPPED
            bc_id, dv_id = coupling.bc_id, coupling.dv_id
        return SyncResult(outcome, error, bc_id, dv_id, error=error)

    # ----------------------------------------------------------------------------- journal
    def _journal(
        self, mapping: EntityMapping, message: SyncMessage, result: SyncResult, requests: int
    ) -> None:
        entry = JournalEntry(
            mapping=mapping.name,
            outcome=str(result.outcome),
            bc_id=result.bc_id or (message.id if message.side == "bc" else None),
            dv_id=result.dv_id or (message.id if message.side == "dv" else None),
            fields=result.fields,
            correlation_id=message.correlation_id,
            error=result.error,
            reason=result.reason or message.reason,
            api_requests=requests,
            at=self.clock(),
        )
        try:
            self.journal.record(entry)
        except Exception:
            log.exception("could not write the journal entry for %s", entry)

    def requests_in_this_thread(self) -> int:
        """API requests sent by this thread (per-record costs stay exact with parallel workers)."""
        return int(self.bc.stats.in_this_thread + self.dv.stats.in_this_thread)


def settle(
    mapping: EntityMapping,
    coupling: Coupling | None,
    bc_id: str,
    dv_id: str,
    bc: dict[str, Any] | None,
    dv: dict[str, Any] | None,
    snapshot: Any,
    outcome: Outcome | str,
    error: str = "",
) -> Coupling:
    """The coupling after a sync of the pair, from the records as read back (not stored yet)."""
    c = coupling or Coupling(mapping.name, bc_id, dv_id)
    c.bc_id, c.dv_id, c.state, c.snapshot, c.pending_since = bc_id, dv_id, "coupled", snapshot, None
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
    return c


def count_failure(coupling: Coupling, error: str) -> Coupling:
    """One more failure; the same error twice in a row marks the record skipped, as the built-in
    connector does."""
    repeated = coupling.last_result in ("failed", "conflict") and coupling.last_error == error
    coupling.attempts += 1
    coupling.last_error = error
    if repeated:
        coupling.skipped = True
    return coupling


def _fields(plan: Plan) -> list[str]:
    return sorted({key for w in plan.writes for key in w.fields})
