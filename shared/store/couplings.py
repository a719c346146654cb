"""Couplings: which BC record is paired with which Dataverse record, and the merge base.

One coupling is two rows in the `Couplings` table, PartitionKey = mapping name, RowKeys `bc:<id>`
and `dv:<id>`, plus `key:<bc key>` when other mappings look this one up by a BC field other
than the id (a salesperson's code, a currency's code). All rows carry the whole coupling, so
either side (or key) finds it with one point read;
both are written in one table transaction and every update is conditional on both rows' ETags, so
two workers can never both win. A coupling whose BC record is being created has only its `dv:` row
(state `pending_bc`) until the BC id is known.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared.connectors.odata import and_, eq, ge, lt

Side = Literal["bc", "dv"]
State = Literal["coupled", "pending_bc"]
_PREFIX: dict[Side, str] = {"bc": "bc:", "dv": "dv:"}
KEY_PREFIX = "key:"


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
    # Table ETags of the rows as read; empty for a coupling not stored yet.
    row_etags: dict[str, str] = field(default_factory=dict, repr=False)

    def row_keys(self) -> list[str]:
        keys = []
        if self.bc_id:
            keys.append(_PREFIX["bc"] + self.bc_id)
        if self.dv_id:
            keys.append(_PREFIX["dv"] + self.dv_id)
        if self.bc_key and self.bc_id and self.bc_key != self.bc_id:
            keys.append(KEY_PREFIX + self.bc_key)
        return keys

    def id_on(self, side: Side) -> str | None:
        return self.bc_id if side == "bc" else self.dv_id


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_entity(c: Coupling, row_key: str) -> dict[str, Any]:
    return {
        "PartitionKey": c.mapping,
        "RowKey": row_key,
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


def _from_entity(e: Any) -> Coupling:
    snapshot = e.get("Snapshot") or ""
    return Coupling(
        mapping=e["PartitionKey"],
        bc_id=e.get("BcId") or None,
        dv_id=e.get("DvId") or None,
        state=e.get("State") or "coupled",
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
    )


class CouplingStore:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    # ------------------------------------------------------------------------------------ read
    def get(self, mapping: str, side: Side, record_id: str) -> Coupling | None:
        """The coupling containing `record_id` on `side`, with the ETags of all its rows."""
        return self._get_row(mapping, _PREFIX[side] + record_id)

    def get_by_key(self, mapping: str, bc_key: str) -> Coupling | None:
        """The coupling whose BC record has `bc_key` in the mapping's key field (e.g. a code)."""
        return self._get_row(mapping, KEY_PREFIX + bc_key)

    def _get_row(self, mapping: str, row_key: str) -> Coupling | None:
        try:
            entity = self.table.get_entity(mapping, row_key)
        except ResourceNotFoundError:
            return None
        coupling = _from_entity(entity)
        coupling.row_etags[entity["RowKey"]] = entity.metadata["etag"]
        for key in coupling.row_keys():
            if key in coupling.row_etags:
                continue
            try:
                other = self.table.get_entity(mapping, key)
            except ResourceNotFoundError:
                continue  # half-written pair cannot happen (transactions); tolerate a manual edit
            coupling.row_etags[key] = other.metadata["etag"]
        return coupling

    def list(
        self,
        mapping: str,
        *,
        only: Literal["all", "failed", "skipped"] = "all",
        limit: int | None = None,
    ) -> Iterator[Coupling]:
        """Each coupling once (from its `bc:` row, or its `dv:` row while the BC side is pending)."""
        clauses = [eq("PartitionKey", mapping)]
        if only == "failed":
            clauses.append(eq("LastResult", "failed"))
        elif only == "skipped":
            clauses.append(eq("Skipped", True))
        count = 0
        for entity in self.table.query_entities(and_(*clauses)):
            key: str = entity["RowKey"]
            if key.startswith(KEY_PREFIX) or (key.startswith("dv:") and entity.get("BcId")):
                continue  # the bc: row represents this pair
            coupling = _from_entity(entity)
            coupling.row_etags[key] = entity.metadata["etag"]
            yield coupling
            count += 1
            if limit is not None and count >= limit:
                return

    def all_ids(self, mapping: str, side: Side) -> Iterator[tuple[str, str | None]]:
        """(id on `side`, id on the other side) for every coupled record, reading only keys."""
        prefix = _PREFIX[side]
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        query = and_(eq("PartitionKey", mapping), ge("RowKey", prefix), lt("RowKey", upper))
        for entity in self.table.query_entities(query, select=["RowKey", "BcId", "DvId"]):
            other = entity.get("DvId") if side == "bc" else entity.get("BcId")
            yield entity["RowKey"][len(prefix) :], other or None

    # ----------------------------------------------------------------------------------- write
    def create(self, coupling: Coupling) -> Coupling:
        """Store a new coupling; fails with `AlreadyCoupledError` if either record is coupled."""
        stamped = replace(coupling, updated=_now(), row_etags={})
        ops = [("create", _to_entity(stamped, key)) for key in stamped.row_keys()]
        try:
            results = self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            if "EntityAlreadyExists" in str(exc.error_code or exc):
                raise AlreadyCoupledError(
                    f"{coupling.mapping}: BC {coupling.bc_id} or Dataverse {coupling.dv_id} is already "
                    "coupled; uncouple it first"
                ) from None
            raise
        for key, result in zip(stamped.row_keys(), results, strict=True):
            stamped.row_etags[key] = result["etag"]
        return stamped

    def save(self, coupling: Coupling) -> Coupling:
        """Update a stored coupling, conditional on the ETags it was read with.

        Rows for ids that were not stored yet (a pending BC create that now has its id) are
        created in the same transaction.
        """
        stamped = replace(coupling, updated=_now(), row_etags=dict(coupling.row_etags))
        ops: list[tuple[Any, ...]] = []
        keys = stamped.row_keys()
        for key in keys:
            entity = _to_entity(stamped, key)
            etag = coupling.row_etags.get(key)
            if etag:
                ops.append(
                    ("update", entity, {"mode": UpdateMode.REPLACE, "etag": etag,
                                        "match_condition": MatchConditions.IfNotModified})
                )  # fmt: skip
            else:
                ops.append(("create", entity))
        # Rows of ids the coupling no longer has (an id was replaced) are removed atomically.
        for key, etag in coupling.row_etags.items():
            if key not in keys:
                ops.append(("delete", {"PartitionKey": coupling.mapping, "RowKey": key},
                            {"etag": etag, "match_condition": MatchConditions.IfNotModified}))  # fmt: skip
        try:
            results = self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            raise CouplingConflictError(
                f"coupling {coupling.mapping} bc={coupling.bc_id} dv={coupling.dv_id} changed concurrently "
                f"({exc.error_code})"
            ) from None
        stamped.row_etags = {}
        for op, result in zip(ops, results, strict=True):
            if op[0] != "delete":
                stamped.row_etags[op[1]["RowKey"]] = result["etag"]
        return stamped

    def delete(self, coupling: Coupling) -> None:
        """Remove the coupling (both rows), conditional on the ETags it was read with."""
        ops = [
            ("delete", {"PartitionKey": coupling.mapping, "RowKey": key},
             {"etag": etag, "match_condition": MatchConditions.IfNotModified})
            for key, etag in coupling.row_etags.items()
        ]  # fmt: skip
        if not ops:
            return
        try:
            self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            raise CouplingConflictError(f"coupling changed concurrently ({exc.error_code})") from None

    def create_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk create for full resync: transactions of up to 100 rows (50 pairs) per partition.

        A transaction that fails because one pair already exists is retried pair by pair, so one
        bad pair never fails its neighbours.
        """
        results: list[Coupling | Exception] = []
        for start in range(0, len(couplings), 50):
            chunk = [replace(c, updated=_now(), row_etags={}) for c in couplings[start : start + 50]]
            by_partition: dict[str, list[Coupling]] = {}
            for c in chunk:
                by_partition.setdefault(c.mapping, []).append(c)
            for group in by_partition.values():
                ops = [("create", _to_entity(c, key)) for c in group for key in c.row_keys()]
                try:
                    answers = iter(self.table.submit_transaction(ops))
                except TableTransactionError:
                    for c in group:
                        try:
                            results.append(self.create(c))
                        except (AlreadyCoupledError, TableTransactionError, ResourceExistsError) as exc:
                            results.append(exc)
                    continue
                for c in group:
                    for key in c.row_keys():
                        c.row_etags[key] = next(answers)["etag"]
                    results.append(c)
        return results

    def update_many(self, couplings: list[Coupling]) -> list[Coupling | Exception]:
        """Bulk conditional update (full resync); falls back to one by one on a conflict."""
        results: list[Coupling | Exception] = []
        for start in range(0, len(couplings), 50):
            group = couplings[start : start + 50]
            try:
                results.extend(self._save_group(group))
            except (CouplingConflictError, ResourceModifiedError):
                for c in group:
                    try:
                        results.append(self.save(c))
                    except CouplingConflictError as exc:
                        results.append(exc)
        return results

    def _save_group(self, group: list[Coupling]) -> list[Coupling]:
        if len({c.mapping for c in group}) != 1 or any(set(c.row_keys()) != set(c.row_etags) for c in group):
            return [self.save(c) for c in group]
        stamped = [replace(c, updated=_now(), row_etags=dict(c.row_etags)) for c in group]
        ops = [
            ("update", _to_entity(c, key), {"mode": UpdateMode.REPLACE, "etag": c.row_etags[key],
                                            "match_condition": MatchConditions.IfNotModified})
            for c in stamped for key in c.row_keys()
        ]  # fmt: skip
        try:
            answers = iter(self.table.submit_transaction(ops))
        except TableTransactionError as exc:
            raise CouplingConflictError(str(exc.error_code)) from None
        for c in stamped:
            for key in c.row_keys():
                c.row_etags[key] = next(answers)["etag"]
        return stamped
