"""Couplings: which BC record is paired with which Dataverse record, and the merge base.

One coupling is one row in the `Couplings` table, PartitionKey = mapping name, RowKey
`dv:<dataverse id>`, holding both ids, the snapshot, modified times, ETags, result and error.
Every update is conditional on the row's ETag, so two workers can never both win.

Finding a pair from the BC side needs no second row in the common case: a Dataverse record the
service created has the deterministic id `dataverse_id_for(mapping, bc_id)`, so the row key is
computed from the BC id. Only pairs whose Dataverse id is not derived from the BC id (coupled by
matching, or created in BC from Dataverse) also get a pointer row `bc:<bc id>` -> DvId, written
and deleted in the same transaction as the coupling.

Why (DESIGN.md first had two full rows per pair): a full resync of 100,000 pairs is bound by Table
Storage writes; one row per pair halves them, and updates need no transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared.connectors.odata import and_, eq, ge, lt
from shared.mapping.values import dataverse_id_for

Side = Literal["bc", "dv"]
State = Literal["coupled", "pending_bc"]
_PREFIX: dict[Side, str] = {"bc": "bc:", "dv": "dv:"}
MAX_TRANSACTION_ROWS = 100  # Azure's limit; Azurite breaks (rather than refuses) above it


class CouplingConflictError(Exception):
    """The coupling changed since it was read (another worker): re-read and decide again."""


class AlreadyCoupledError(Exception):
    """A record is already coupled to something else; uncouple it first."""


@dataclass
class Coupling:
    mapping: str
    bc_id: str | None
    dv_id: str | None
    state: State = "coupled"
    snapshot: dict[str, Any] | None = None
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
    # Table ETag of the coupling row as read; None = not stored yet.
    etag: str | None = None
    stored_bc_id: str | None = None  # the BC id as stored (a pending create learns it later)

    def id_on(self, side: Side) -> str | None:
        return self.bc_id if side == "bc" else self.dv_id

    def needs_pointer(self) -> bool:
        return bool(self.bc_id and self.dv_id != dataverse_id_for(self.mapping, self.bc_id))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _full_row(c: Coupling) -> dict[str, Any]:
    if not c.dv_id:
        raise ValueError("a coupling is stored under its Dataverse id, which must be known")
    return {
        "PartitionKey": c.mapping,
        "RowKey": _PREFIX["dv"] + c.dv_id,
        "BcId": c.bc_id or "",
        "DvId": c.dv_id or "",
        "State": c.state,
        "Snapshot": json.dumps(c.snapshot, separators=(",", ":")) if c.snapshot is not None else "",
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
    }


def _pointer_row(c: Coupling, bc_id: str | None = None) -> dict[str, Any]:
    """`bc:<bc id>` -> DvId, for a pair whose Dataverse id is not derived from the BC id."""
    key = bc_id or c.bc_id or ""
    return {
        "PartitionKey": c.mapping,
        "RowKey": _PREFIX["bc"] + key,
        "DvId": c.dv_id or "",
        "State": "pointer",
    }


def _from_row(e: Any) -> Coupling:
    snapshot = e.get("Snapshot") or ""
    state = e.get("State") or "coupled"
    return Coupling(
        mapping=e["PartitionKey"],
        bc_id=e.get("BcId") or None,
        dv_id=e.get("DvId") or None,
        state=state,
        snapshot=json.loads(snapshot) if snapshot else None,
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
        etag=e.metadata["etag"],
        stored_bc_id=e.get("BcId") or None,
    )


def _is_conflict(exc: TableTransactionError) -> bool:
    return "EntityAlreadyExists" in str(exc.error_code or exc)


def _transaction_groups(couplings: list[Coupling]) -> list[list[Coupling]]:
    """Consecutive couplings of one mapping whose rows (with pointers) fit in one transaction."""
    groups: list[list[Coupling]] = []
    rows = 0
    for c in couplings:
        needed = 2 if c.needs_pointer() else 1
        if not groups or rows + needed > MAX_TRANSACTION_ROWS or groups[-1][0].mapping != c.mapping:
            groups.append([])
            rows = 0
        groups[-1].append(c)
        rows += needed
    return groups


class CouplingStore:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    # ------------------------------------------------------------------------------------ read
    def get(self, mapping: str, side: Side, record_id: str) -> Coupling | None:
        """The coupling containing `record_id` on `side`: one point read (two for a BC id whose
        Dataverse counterpart was not created by the service)."""
        if side == "dv":
            row = self._row(mapping, _PREFIX["dv"] + record_id)
            return _from_row(row) if row is not None and row.get("State") != "pointer" else None
        row = self._row(mapping, _PREFIX["dv"] + dataverse_id_for(mapping, record_id))
        if row is None or row.get("BcId") != record_id:
            pointer = self._row(mapping, _PREFIX["bc"] + record_id)
            row = self._row(mapping, _PREFIX["dv"] + pointer["DvId"]) if pointer is not None else None
        return _from_row(row) if row is not None and row.get("BcId") == record_id else None

    def _row(self, mapping: str, row_key: str) -> Any | None:
        try:
            return self.table.get_entity(mapping, row_key)
        except ResourceNotFoundError:
            return None

    def list(
        self,
        mapping: str,
        *,
        only: Literal["all", "failed", "skipped"] = "all",
        limit: int | None = None,
    ) -> Iterator[Coupling]:
        """Each coupling once (pointer rows are skipped)."""
        clauses = [eq("PartitionKey", mapping)]
        if only == "failed":
            clauses.append(eq("LastResult", "failed"))
        elif only == "skipped":
            clauses.append(eq("Skipped", True))
        count = 0
        for entity in self.table.query_entities(and_(*clauses)):
            if entity.get("State") == "pointer":
                continue
            yield _from_row(entity)
            count += 1
            if limit is not None and count >= limit:
                return

    def all_ids(self, mapping: str, side: Side) -> Iterator[tuple[str, str | None]]:
        """(id on `side`, id on the other side or None while pending), reading only ids."""
        query = and_(eq("PartitionKey", mapping), ge("RowKey", "dv:"), lt("RowKey", "dv;"))
        for entity in self.table.query_entities(query, select=["RowKey", "BcId", "DvId"]):
            dv_id, bc_id = entity["RowKey"][3:], entity.get("BcId") or None
            if side == "dv":
                yield dv_id, bc_id
            elif bc_id:
                yield bc_id, dv_id

    # ----------------------------------------------------------------------------------- write
    def create(self, coupling: Coupling) -> Coupling:
        """Store a new coupling; `AlreadyCoupledError` if either record is coupled already."""
        stamped = replace(coupling, updated=_now())
        ops: list[tuple[Any, ...]] = [("create", _full_row(stamped))]
        if stamped.needs_pointer():
            ops.append(("create", _pointer_row(stamped)))
        try:
            results = self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            if _is_conflict(exc):
                raise AlreadyCoupledError(
                    f"{coupling.mapping}: BC {coupling.bc_id} or Dataverse {coupling.dv_id} is already "
                    "coupled; uncouple it first"
                ) from None
            raise
        stamped.etag, stamped.stored_bc_id = results[0]["etag"], stamped.bc_id
        return stamped

    def save(self, coupling: Coupling) -> Coupling:
        """Update a stored coupling, conditional on the ETag it was read with."""
        if coupling.etag is None:
            raise ValueError("save() needs a coupling read from the store; use create() for a new one")
        stamped = replace(coupling, updated=_now())
        condition = {"etag": coupling.etag, "match_condition": MatchConditions.IfNotModified}
        ops: list[tuple[Any, ...]] = [
            ("update", _full_row(stamped), {"mode": UpdateMode.REPLACE, **condition})
        ]
        if stamped.bc_id != coupling.stored_bc_id:
            # The BC id was learnt (pending create) or replaced: keep the pointer rows in step.
            if (
                coupling.stored_bc_id
                and dataverse_id_for(coupling.mapping, coupling.stored_bc_id) != coupling.dv_id
            ):
                ops.append(("delete", _pointer_row(stamped, coupling.stored_bc_id)))
            if stamped.needs_pointer():
                ops.append(("create", _pointer_row(stamped)))
        try:
            results = self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            if _is_conflict(exc):
                raise AlreadyCoupledError(
                    f"{coupling.mapping}: BC {stamped.bc_id} is already coupled"
                ) from None
            raise CouplingConflictError(
                f"coupling {coupling.mapping} bc={coupling.bc_id} dv={coupling.dv_id} changed meanwhile"
            ) from None
        stamped.etag, stamped.stored_bc_id = results[0]["etag"], stamped.bc_id
        return stamped

    def delete(self, coupling: Coupling) -> None:
        """Remove the coupling (both rows), conditional on the ETag it was read with."""
        condition = {"etag": coupling.etag, "match_condition": MatchConditions.IfNotModified}
        ops: list[tuple[Any, ...]] = [("delete", _full_row(coupling), condition)]
        stored = replace(coupling, bc_id=coupling.stored_bc_id)
        if stored.needs_pointer():
            ops.append(("delete", _pointer_row(stored)))
        try:
            self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            raise CouplingConflictError(f"coupling changed concurrently ({exc.error_code})") from None

    # ------------------------------------------------------------------------------------ bulk
    def create_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk create (full resync): 50 pairs per transaction; a transaction that fails because one
        pair exists already is retried pair by pair, so one bad pair never fails its neighbours."""
        results: list[Coupling | Exception] = []
        for group in _transaction_groups(couplings):
            stamped = [replace(c, updated=_now()) for c in group]
            ops = [("create", _full_row(c)) for c in stamped]
            ops += [("create", _pointer_row(c)) for c in stamped if c.needs_pointer()]
            try:
                answers = self.table.submit_transaction(ops)
            except TableTransactionError:
                results.extend(self._one_by_one(self.create, stamped))
                continue
            for c, answer in zip(stamped, answers, strict=False):
                c.etag, c.stored_bc_id = answer["etag"], c.bc_id
                results.append(c)
        return results

    def update_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk conditional update of coupled pairs: 100 per transaction, pair by pair on a conflict."""
        results: list[Coupling | Exception] = []
        for start in range(0, len(couplings), MAX_TRANSACTION_ROWS):
            group = [replace(c, updated=_now()) for c in couplings[start : start + MAX_TRANSACTION_ROWS]]
            plain = len({c.mapping for c in group}) == 1 and all(
                c.etag and c.bc_id == c.stored_bc_id for c in group
            )
            if not plain:
                results.extend(self._one_by_one(self.save, group))
                continue
            ops = [
                ("update", _full_row(c), {"mode": UpdateMode.REPLACE, "etag": c.etag,
                                          "match_condition": MatchConditions.IfNotModified})
                for c in group
            ]  # fmt: skip
            try:
                answers = self.table.submit_transaction(ops)
            except TableTransactionError:
                results.extend(self._one_by_one(self.save, group))
                continue
            for c, answer in zip(group, answers, strict=True):
                c.etag = answer["etag"]
                results.append(c)
        return results

    @staticmethod
    def _one_by_one(action: Any, group: list[Coupling]) -> list[Coupling | Exception]:
        out: list[Coupling | Exception] = []
        for c in group:
            try:
                out.append(action(c))
            except (AlreadyCoupledError, CouplingConflictError, TableTransactionError) as exc:
                out.append(exc)
        return out
