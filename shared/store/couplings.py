"""Couplings: which BC record is paired with which Dataverse record, and the merge base.

One coupling is one row in the `Couplings` table with RowKey `dv:<dataverse id>`, holding both
ids, the snapshot, modified times, ETags, result and error. Every update is conditional on the
row's ETag, so two workers can never both win.

Finding a pair from the BC side needs no second row in the common case: a Dataverse record the
service created has the deterministic id `dataverse_id_for(mapping, bc_id)`, so the row key is
computed from the BC id. Only pairs whose Dataverse id is not derived from the BC id (coupled by
matching, or created in BC from Dataverse) also get a pointer row `bc:<bc id>` -> DvId. The
pointer is written before and deleted after the coupling row, so a reader never finds a coupling
it cannot reach; a pointer left behind by a crash points at nothing and is overwritten.

PartitionKey is `<mapping>|<bucket>`, the bucket a hash of the RowKey (16 per mapping): one
partition per mapping holding 100,000 rows makes each insert slower as it grows (measured on
Azurite: a 100-row transaction takes 87 ms into an empty partition and 620 ms into one of 40,000
rows), and spreading a mapping over partitions is what Azure Tables recommend for scale anyway.

The status a mapping's `status_column` shows in Sales for a Dataverse record is kept in a small row
`status:<dataverse id>` beside the coupling (a record that never got coupled has one too): every
instance decides from it whether the column needs writing, and claims a change with the row's ETag.

Why not two full rows per pair (docs/architecture.md#decisions): a full resync of 100,000 pairs is
bound by Table Storage writes; one row per pair halves them, and updates need no transaction.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar, cast

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared import telemetry
from shared.errors import ServiceError
from shared.mapping.values import dataverse_id_for
from shared.odata import and_, eq, ge, lt, or_
from shared.store.storage import stored_if_same
from shared.store.transactions import submit_transaction
from shared.timestamps import now_iso

Side = Literal["bc", "dv"]
State = Literal["coupled", "pending_bc"]
_PREFIX: dict[Side, str] = {"bc": "bc:", "dv": "dv:"}
MAX_TRANSACTION_ROWS = 100  # Azure's limit; Azurite breaks (rather than refuses) above it
BUCKETS = 16
PARALLEL_TRANSACTIONS = 4
# Table Storage allows 15 discrete comparisons in a filter: the partition's and 14 row keys. Row
# keys joined by `or` make a partition scan, not point reads (Microsoft's table design guide), so a
# query replaces point reads only where several keys share a partition: measured on Azurite with
# 100,000 couplings, 16 queries for 100 keys took 412 ms against 604 ms for 100 point reads, while
# one query per key would cost more than its point read.
KEYS_PER_QUERY = 14
KEYS_FOR_A_QUERY = 3
# `LastResult` values of a pair whose sides are not in sync.
UNSYNCED_RESULTS = ("failed", "conflict", "retrying")


class CouplingConflictError(ServiceError):
    """The coupling changed since it was read (another worker): re-read and decide again."""


@dataclass(frozen=True)
class ShownStatus:
    """What the status column was last set to by any instance (None: empty); `etag` None: no row yet."""

    text: str | None
    etag: str | None = None


class AlreadyCoupledError(ServiceError):
    """A record is already coupled to something else; uncouple it first."""


@dataclass
class Coupling:
    mapping: str
    bc_id: str | None
    dv_id: str | None
    state: State = "coupled"
    snapshot: dict[str, Any] | None = None
    # When each side's value of each field was first seen: {"bc": {key: [epoch ms, digest]}} (newest_wins)
    seen: dict[str, Any] | None = None
    bc_modified: str | None = None
    bc_etag: str | None = None
    dv_modified: str | None = None
    dv_etag: str | None = None
    bc_key: str | None = None  # the value other mappings look this record up by (e.g. a code)
    last_result: str = ""
    last_error: str = ""
    skipped: bool = False
    attempts: int = 0
    pending_since: str | None = None
    updated: str = ""
    # When the pair first stopped being in sync (the change a failure, conflict or retry holds
    # back was observed then); cleared by a successful sync. `bcsync status` ages it.
    unsynced_since: str | None = None
    next_attempt: str | None = None  # while `last_result` is "retrying": when the queue tries again
    # Table ETag of the coupling row as read; None = not stored yet.
    etag: str | None = None
    stored_bc_id: str | None = None  # the BC id as stored (a pending create learns it later)

    def id_on(self, side: Side) -> str | None:
        return self.bc_id if side == "bc" else self.dv_id

    def etag_on(self, side: Side) -> str | None:
        """The record's ETag on `side` after the last sync."""
        return self.bc_etag if side == "bc" else self.dv_etag

    def modified_on(self, side: Side) -> str | None:
        return self.bc_modified if side == "bc" else self.dv_modified

    def unchanged_since_sync(self, side: Side, record: Mapping[str, Any], modified_field: str) -> bool:
        """`record` (a row as `side` lists it) is as the last sync left it. By its ETag (the row
        version) where both have one: Dataverse's `modifiedon` counts whole seconds, so a person's
        change within the second of the service's own write carries the same time."""
        etag, synced = record.get("@odata.etag"), self.etag_on(side)
        if etag and synced:
            return bool(etag == synced)
        return self.modified_on(side) == record.get(modified_field)

    def needs_pointer(self, scope: str = "") -> bool:
        return bool(self.bc_id and self.dv_id != dataverse_id_for(self.mapping, self.bc_id, scope))


def partition(mapping: str, row_key: str) -> str:
    return f"{mapping}|{zlib.crc32(row_key.encode()) % BUCKETS:02d}"


def _full_row(c: Coupling, scope: str) -> dict[str, Any]:
    if not c.dv_id:
        raise ValueError("a coupling is stored under its Dataverse id, which must be known")
    row_key = _PREFIX["dv"] + c.dv_id
    return {
        "PartitionKey": partition(scope + c.mapping, row_key),
        "RowKey": row_key,
        "Mapping": c.mapping,
        "BcId": c.bc_id or "",
        "DvId": c.dv_id or "",
        "State": c.state,
        "Snapshot": json.dumps(c.snapshot, separators=(",", ":")) if c.snapshot is not None else "",
        "Seen": json.dumps(c.seen, separators=(",", ":")) if c.seen else "",
        "BcModified": c.bc_modified or "",
        "BcEtag": c.bc_etag or "",
        "DvModified": c.dv_modified or "",
        "DvEtag": c.dv_etag or "",
        "BcKey": c.bc_key or "",
        "LastResult": c.last_result,
        "LastError": c.last_error[:30_000],
        "Skipped": c.skipped,
        "Attempts": c.attempts,
        "PendingSince": c.pending_since or "",
        "Updated": c.updated,
        "UnsyncedSince": c.unsynced_since or "",
        "NextAttempt": c.next_attempt or "",
    }


def _pointer_row(c: Coupling, scope: str, bc_id: str | None = None) -> dict[str, Any]:
    """`bc:<bc id>` -> DvId, for a pair whose Dataverse id is not derived from the BC id."""
    row_key = _PREFIX["bc"] + (bc_id or c.bc_id or "")
    return {
        "PartitionKey": partition(scope + c.mapping, row_key),
        "RowKey": row_key,
        "Mapping": c.mapping,
        "DvId": c.dv_id or "",
        "State": "pointer",
    }


def _status_key(dv_id: str) -> str:
    return f"status:{dv_id.lower()}"


def _status_row(scope: str, mapping: str, dv_id: str, text: str | None) -> dict[str, Any]:
    row_key = _status_key(dv_id)
    return {
        "PartitionKey": partition(scope + mapping, row_key),
        "RowKey": row_key,
        "Mapping": mapping,
        "State": "status",
        "Status": text or "",
    }


def _from_row(e: Any) -> Coupling:
    snapshot = e.get("Snapshot") or ""
    state = e.get("State") or "coupled"
    return Coupling(
        mapping=e["Mapping"],
        bc_id=e.get("BcId") or None,
        dv_id=e.get("DvId") or None,
        state="pending_bc" if state == "pending_bc" else "coupled",
        snapshot=json.loads(snapshot) if snapshot else None,
        seen=json.loads(e["Seen"]) if e.get("Seen") else None,
        bc_modified=e.get("BcModified") or None,
        bc_etag=e.get("BcEtag") or None,
        dv_modified=e.get("DvModified") or None,
        dv_etag=e.get("DvEtag") or None,
        bc_key=e.get("BcKey") or None,
        last_result=e.get("LastResult", ""),
        last_error=e.get("LastError", ""),
        skipped=bool(e.get("Skipped", False)),
        attempts=int(e.get("Attempts", 0)),
        pending_since=e.get("PendingSince") or None,
        updated=e.get("Updated", ""),
        unsynced_since=e.get("UnsyncedSince") or None,
        next_attempt=e.get("NextAttempt") or None,
        etag=e.metadata["etag"],
        stored_bc_id=e.get("BcId") or None,
    )


_Write = TypeVar("_Write", bound=Callable[..., Any])


def _traced(operation: str) -> Callable[[_Write], _Write]:
    """The `coupling write` span of a change's trace (shared/telemetry.py) around a store write."""

    def decorate(write: _Write) -> _Write:
        @functools.wraps(write)
        def traced(self: Any, coupling: Coupling) -> Any:
            if not telemetry.enabled():
                return write(self, coupling)
            attributes = {"bcsync.mapping": coupling.mapping, "bcsync.operation": operation}
            with telemetry.span("coupling write", attributes):
                return write(self, coupling)

        return cast(_Write, traced)

    return decorate


def _transaction_groups(
    couplings: list[Coupling], scope: str, row: Callable[[Coupling, str], dict[str, Any]] = _full_row
) -> list[list[Coupling]]:
    """Couplings grouped by the partition of their row (or of another of their rows: `row`), at most
    100 per group (one transaction)."""
    by_partition: dict[str, list[Coupling]] = {}
    for c in couplings:
        by_partition.setdefault(row(c, scope)["PartitionKey"], []).append(c)
    return [
        group[i : i + MAX_TRANSACTION_ROWS]
        for group in by_partition.values()
        for i in range(0, len(group), MAX_TRANSACTION_ROWS)
    ]


class CouplingObserver(Protocol):
    """Told of each coupling this process stored or deleted, and of each BC write whose coupling is
    about to be stored (`shared.sync.echoes.EchoHorizons`)."""

    def stored(self, scope: str, coupling: Coupling) -> None: ...

    def deleted(self, scope: str, coupling: Coupling) -> None: ...

    def wrote(self, scope: str, mapping: str, bc_id: str, bc_modified: str) -> None: ...


class CouplingStore:
    def __init__(self, table: TableClient, scope: str = "", observer: CouplingObserver | None = None) -> None:
        self.table = table
        # What this company's partition keys (and the names its Dataverse ids derive from) start
        # with: "" for the home company, `<company id>:` for the others (`shared.companies`).
        self.scope = scope
        self.observer = observer

    def bc_written(self, mapping: str, bc_id: str, bc_modified: str | None) -> None:
        """A BC record of the mapping was just written by this process (its coupling is stored next):
        the observer learns it before the store's round trip."""
        if self.observer is not None and bc_modified:
            self.observer.wrote(self.scope, mapping, bc_id, bc_modified)

    def _stored(self, couplings: Sequence[Coupling]) -> None:
        if self.observer is not None:
            for c in couplings:
                self.observer.stored(self.scope, c)

    # ------------------------------------------------------------------------------------ read
    def get(self, mapping: str, side: Side, record_id: str) -> Coupling | None:
        """The coupling containing `record_id` on `side`: one point read (two for a BC id whose
        Dataverse counterpart was not created by the service)."""
        if side == "dv":
            row = self._row(mapping, _PREFIX["dv"] + record_id)
            return _from_row(row) if row is not None else None
        row = self._row(mapping, _PREFIX["dv"] + dataverse_id_for(mapping, record_id, self.scope))
        if row is None or row.get("BcId") != record_id:
            pointer = self._row(mapping, _PREFIX["bc"] + record_id)
            row = self._row(mapping, _PREFIX["dv"] + pointer["DvId"]) if pointer is not None else None
        return _from_row(row) if row is not None and row.get("BcId") == record_id else None

    def get_many(self, mapping: str, side: Side, record_ids: Sequence[str]) -> dict[str, Coupling]:
        """The couplings of many records of one side, by record id as given: where several fall in one
        partition, one query per `KEYS_PER_QUERY` of them instead of a point read each (100 ids in a
        mapping's 16 partitions cost about 16 queries); point reads elsewhere. A BC id is looked for
        as `get` does: under its derived Dataverse id, then through its pointer row."""
        if side == "dv":
            rows = self._rows_by_key(mapping, [_PREFIX["dv"] + i for i in record_ids])
            return {i: _from_row(row) for i in record_ids if (row := rows.get(_PREFIX["dv"] + i)) is not None}
        derived = {_PREFIX["dv"] + dataverse_id_for(mapping, i, self.scope): i for i in record_ids}
        rows = self._rows_by_key(mapping, list(derived))
        found = {
            i: _from_row(row) for key, i in derived.items() if (row := rows.get(key)) and row.get("BcId") == i
        }
        missing = [i for i in record_ids if i not in found]
        pointers = self._rows_by_key(mapping, [_PREFIX["bc"] + i for i in missing]) if missing else {}
        targets = {
            _PREFIX["dv"] + str(p["DvId"]): i for i in missing if (p := pointers.get(_PREFIX["bc"] + i))
        }
        rows = self._rows_by_key(mapping, list(targets)) if targets else {}
        found.update(
            {
                i: _from_row(row)
                for key, i in targets.items()
                if (row := rows.get(key)) and row.get("BcId") == i
            }
        )
        return found

    def _rows_by_key(self, mapping: str, row_keys: Sequence[str]) -> dict[str, Any]:
        by_partition: dict[str, list[str]] = {}
        for key in dict.fromkeys(row_keys):
            by_partition.setdefault(partition(self.scope + mapping, key), []).append(key)
        found: dict[str, Any] = {}
        for pk, keys in by_partition.items():
            if len(keys) < KEYS_FOR_A_QUERY:
                found.update((key, row) for key in keys if (row := self._point_read(pk, key)) is not None)
                continue
            for start in range(0, len(keys), KEYS_PER_QUERY):
                part = keys[start : start + KEYS_PER_QUERY]
                query = and_(eq("PartitionKey", pk), or_(*(eq("RowKey", k) for k in part)))
                found.update((row["RowKey"], row) for row in self.table.query_entities(query))
        return found

    def _row(self, mapping: str, row_key: str) -> Any | None:
        return self._point_read(partition(self.scope + mapping, row_key), row_key)

    def _point_read(self, partition_key: str, row_key: str) -> Any | None:
        try:
            return self.table.get_entity(partition_key, row_key)
        except ResourceNotFoundError:
            return None

    def _rows(self, mapping: str, *clauses: str, select: list[str] | None = None) -> Iterator[Any]:
        """Coupling rows (not pointers) of every partition of the mapping."""
        query = and_(
            ge("PartitionKey", f"{self.scope}{mapping}|"), lt("PartitionKey", f"{self.scope}{mapping}|~"),
            ge("RowKey", "dv:"), lt("RowKey", "dv;"), *clauses,
        )  # fmt: skip
        return iter(self.table.query_entities(query, select=select))

    def each(
        self,
        mapping: str,
        *,
        only: Literal["all", "failed", "skipped", "unsynced"] = "all",
        limit: int | None = None,
    ) -> Iterator[Coupling]:
        """`unsynced`: every pair not in sync (failed, conflict, retrying, or skipped)."""
        unsynced = or_(*(eq("LastResult", r) for r in UNSYNCED_RESULTS), eq("Skipped", True))
        clauses = {
            "all": [], "failed": [eq("LastResult", "failed")], "skipped": [eq("Skipped", True)],
            "unsynced": [unsynced],
        }[only]  # fmt: skip
        for count, entity in enumerate(self._rows(mapping, *clauses), start=1):
            yield _from_row(entity)
            if limit is not None and count >= limit:
                return

    def all_ids(self, mapping: str, side: Side) -> Iterator[tuple[str, str | None]]:
        """(id on `side`, id on the other side or None while pending), reading only ids."""
        for entity in self._rows(mapping, select=["RowKey", "BcId"]):
            dv_id, bc_id = entity["RowKey"][3:], entity.get("BcId") or None
            if side == "dv":
                yield dv_id, bc_id
            elif bc_id:
                yield bc_id, dv_id

    def bc_marks(self, mapping: str) -> Iterator[tuple[str, str]]:
        """(BC id, BC `lastModifiedDateTime` after the last sync, '' if unknown) of every settled or
        settling pair, reading only those columns (pending BC creates have no BC record to miss)."""
        for entity in self._rows(mapping, select=["BcId", "BcModified", "State"]):
            bc_id = entity.get("BcId") or ""
            if bc_id and (entity.get("State") or "coupled") != "pending_bc":
                yield bc_id, entity.get("BcModified") or ""

    # ---------------------------------------------------------------------------- the status column
    def shown_status(self, mapping: str, dv_id: str) -> ShownStatus:
        """What the mapping's status column of Dataverse record `dv_id` shows (one point read)."""
        row = self._row(mapping, _status_key(dv_id))
        if row is None:
            return ShownStatus(None)
        return ShownStatus(row.get("Status") or None, row.metadata["etag"])

    def claim_status(self, mapping: str, dv_id: str, text: str | None, etag: str | None) -> str:
        """Record that the status column is being set to `text`, conditional on the row being as read
        (`etag`, None: no row); `CouplingConflictError` if another instance changed it meanwhile.
        Returns the row's new ETag."""
        row = _status_row(self.scope, mapping, dv_id, text)
        try:
            if etag is None:
                return str(self.table.create_entity(row)["etag"])
            return str(
                self.table.update_entity(
                    row, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )["etag"]
            )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            landed = stored_if_same(self.table, row)
            if landed is None:
                raise CouplingConflictError(f"status of {mapping} dv={dv_id} changed meanwhile") from None
            return str(landed["etag"])  # a resent write met its own first attempt

    def put_status(self, mapping: str, dv_id: str, text: str | None) -> None:
        """Record the status column's new value whatever it was (an explicit write, e.g. on uncoupling)."""
        self.table.upsert_entity(_status_row(self.scope, mapping, dv_id, text), mode=UpdateMode.REPLACE)

    # ----------------------------------------------------------------------------------- write
    @_traced("create")
    def create(self, coupling: Coupling) -> Coupling:
        """Store a new coupling; `AlreadyCoupledError` if either record is coupled already."""
        stamped = replace(coupling, updated=now_iso())
        if stamped.needs_pointer(self.scope):
            self._claim_pointer(stamped)
        row = _full_row(stamped, self.scope)
        try:
            meta = self.table.create_entity(row)
        except ResourceExistsError:
            landed = stored_if_same(self.table, row)
            if landed is not None:  # a resent create met its own first attempt
                stamped.etag, stamped.stored_bc_id = landed["etag"], stamped.bc_id
                self._stored([stamped])
                return stamped
            if stamped.needs_pointer(self.scope):
                self._release_pointer(stamped, stamped.bc_id)
            raise AlreadyCoupledError(
                f"{coupling.mapping}: Dataverse {coupling.dv_id} is already coupled; uncouple it first"
            ) from None
        stamped.etag, stamped.stored_bc_id = meta["etag"], stamped.bc_id
        self._stored([stamped])
        return stamped

    @_traced("update")
    def save(self, coupling: Coupling) -> Coupling:
        """Update a stored coupling, conditional on the ETag it was read with."""
        if coupling.etag is None:
            raise ValueError("save() needs a coupling read from the store; use create() for a new one")
        stamped = replace(coupling, updated=now_iso())
        bc_id_changed = stamped.bc_id != coupling.stored_bc_id
        if bc_id_changed and stamped.needs_pointer(self.scope):
            self._claim_pointer(stamped)
        row = _full_row(stamped, self.scope)
        try:
            meta = self.table.update_entity(
                row, mode=UpdateMode.REPLACE, etag=coupling.etag,
                match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
        except (ResourceModifiedError, ResourceNotFoundError):
            landed = stored_if_same(self.table, row)
            if landed is None:
                if bc_id_changed and stamped.needs_pointer(self.scope):
                    self._release_pointer(stamped, stamped.bc_id)
                raise CouplingConflictError(
                    f"coupling {coupling.mapping} bc={coupling.bc_id} dv={coupling.dv_id} changed meanwhile"
                ) from None
            meta = landed  # a resent update met its own first attempt
        if bc_id_changed and coupling.stored_bc_id:
            self._release_pointer(coupling, coupling.stored_bc_id)
        stamped.etag, stamped.stored_bc_id = meta["etag"], stamped.bc_id
        self._stored([stamped])
        return stamped

    @_traced("delete")
    def delete(self, coupling: Coupling) -> None:
        """Remove the coupling, conditional on the ETag it was read with (then its pointer)."""
        row = _full_row(coupling, self.scope)
        try:
            self.table.delete_entity(
                row["PartitionKey"],
                row["RowKey"],
                etag=coupling.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise CouplingConflictError(
                f"coupling {coupling.mapping} dv={coupling.dv_id} changed meanwhile"
            ) from None
        if coupling.stored_bc_id:
            self._release_pointer(coupling, coupling.stored_bc_id)
        if self.observer is not None:
            self.observer.deleted(self.scope, coupling)

    def _claim_pointer(self, c: Coupling) -> None:
        """Write `bc:<id>` -> this coupling, unless it points at another live coupling."""
        pointer = _pointer_row(c, self.scope)
        try:
            self.table.create_entity(pointer)
            return
        except ResourceExistsError:
            existing = self.table.get_entity(pointer["PartitionKey"], pointer["RowKey"])
        target = self._row(c.mapping, _PREFIX["dv"] + existing["DvId"])
        if existing["DvId"] != c.dv_id and target is not None and target.get("BcId") == c.bc_id:
            raise AlreadyCoupledError(
                f"{c.mapping}: BC {c.bc_id} is already coupled to Dataverse {existing['DvId']}"
            )
        self.table.upsert_entity(pointer, mode=UpdateMode.REPLACE)  # stale (left by a crash) or ours

    def _release_pointer(self, c: Coupling, bc_id: str | None) -> None:
        if not bc_id or dataverse_id_for(c.mapping, bc_id, self.scope) == c.dv_id:
            return  # derived ids have no pointer
        pointer = _pointer_row(c, self.scope, bc_id)
        try:
            current = self.table.get_entity(pointer["PartitionKey"], pointer["RowKey"])
            if current.get("DvId") == c.dv_id:
                self.table.delete_entity(
                    pointer["PartitionKey"], pointer["RowKey"], etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )  # fmt: skip
        except (ResourceNotFoundError, ResourceModifiedError):
            pass  # gone already, or re-claimed by a newer coupling

    # ------------------------------------------------------------------------------------ bulk
    def create_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk create (full resync): one transaction per partition and 100 rows; a transaction
        that fails because one pair exists already is retried pair by pair, so one bad pair never
        fails its neighbours. Results are in the order given."""
        return self._grouped(self._create_group, couplings)

    def _create_group(self, group: list[Coupling]) -> list[Coupling | Exception]:
        # One row: a plain write is the same one request without a multipart body.
        if len(group) == 1 or any(c.needs_pointer(self.scope) for c in group):
            return self._one_by_one(self.create, group)
        stamped = [replace(c, updated=now_iso()) for c in group]
        try:
            answers = submit_transaction(self.table, [("create", _full_row(c, self.scope)) for c in stamped])
        except TableTransactionError:
            return self._one_by_one(self.create, group)
        for c, answer in zip(stamped, answers, strict=True):
            c.etag, c.stored_bc_id = answer["etag"], c.bc_id
        self._stored(stamped)
        return list(stamped)

    def update_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk conditional update; pair by pair where a transaction meets a conflict."""
        return self._grouped(self._update_group, couplings)

    def _update_group(self, group: list[Coupling]) -> list[Coupling | Exception]:
        if len(group) == 1 or any(c.etag is None or c.bc_id != c.stored_bc_id for c in group):
            return self._one_by_one(self.save, group)
        stamped = [replace(c, updated=now_iso()) for c in group]
        ops = [
            ("update", _full_row(c, self.scope), {"mode": UpdateMode.REPLACE, "etag": c.etag,
                                      "match_condition": MatchConditions.IfNotModified})
            for c in stamped
        ]  # fmt: skip
        try:
            answers = submit_transaction(self.table, ops)
        except TableTransactionError:
            return self._one_by_one(self.save, group)
        for c, answer in zip(stamped, answers, strict=True):
            c.etag = answer["etag"]
        self._stored(stamped)
        return list(stamped)

    def couple_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk conditional update of stored couplings that learn their first BC id (records just
        created in BC for Sales records): the `bc:` pointers created one transaction per partition,
        then the rows updated likewise, instead of two requests per pair. Pair by pair (`save`)
        wherever a transaction meets a conflict; results in the order given."""
        if not all(c.etag and not c.stored_bc_id and c.needs_pointer(self.scope) for c in couplings):
            return self._one_by_one(self.save, couplings)
        claimed = self._grouped(self._claim_pointer_group, couplings, _pointer_row)
        ready = [replace(c, stored_bc_id=c.bc_id) for c in claimed if isinstance(c, Coupling)]
        updated = iter(self.update_many(ready))
        out: list[Coupling | Exception] = []
        for c in claimed:
            result = next(updated) if isinstance(c, Coupling) else c
            if isinstance(result, CouplingConflictError) and isinstance(c, Coupling):
                self._release_pointer(c, c.bc_id)  # as `save` does when the row changed meanwhile
            out.append(result)
        return out

    def _claim_pointer_group(self, group: list[Coupling]) -> list[Coupling | Exception]:
        """The pointers of `group` in one transaction; one by one where it fails (one exists: a stale
        one, or another pair's) or where there is only one."""
        try:
            if len(group) > 1:
                submit_transaction(self.table, [("create", _pointer_row(c, self.scope)) for c in group])
                return list(group)
        except TableTransactionError:
            pass
        out: list[Coupling | Exception] = []
        for c in group:
            try:
                self._claim_pointer(c)
                out.append(c)
            except AlreadyCoupledError as exc:
                out.append(exc)
        return out

    @staticmethod
    def _grouped(
        work: Callable[[list[Coupling]], list[Coupling | Exception]],
        couplings: list[Coupling],
        row: Callable[[Coupling, str], dict[str, Any]] = _full_row,
    ) -> list[Coupling | Exception]:
        # Transactions of different partitions are independent; a few in flight keep Table
        # Storage busy while this process prepares the next ones.
        groups = _transaction_groups(couplings, "", row)  # one store, one scope: partitions differ alike
        with ThreadPoolExecutor(max_workers=PARALLEL_TRANSACTIONS) as pool:
            answers = list(pool.map(work, groups))
        by_identity = {id(c): r for group, results in zip(groups, answers, strict=True)
                       for c, r in zip(group, results, strict=True)}  # fmt: skip
        return [by_identity[id(c)] for c in couplings]

    @staticmethod
    def _one_by_one(action: Any, group: list[Coupling]) -> list[Coupling | Exception]:
        out: list[Coupling | Exception] = []
        for c in group:
            try:
                out.append(action(c))
            except (AlreadyCoupledError, CouplingConflictError) as exc:
                out.append(exc)
        return out
