"""The sandbox's in-memory tables: rows in wire form, alternate keys, row versions, change log.

Rows are dicts exactly as the Web API returns them (lookups as `_x_value`), never mutated in place:
a write builds a new dict, so a transaction can undo by putting the old dict back. One re-entrant
lock guards everything; a `transaction()` is what a single request, a change set or a bulk action
runs in, and its change events reach `on_commit` only when it succeeds.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from devstack.dataverse import errors
from devstack.dataverse.errors import DataverseError
from devstack.dataverse.schema import (
    DOCUMENT_DETAILS,
    DOCUMENT_TABLES,
    OPPORTUNITY_STATUS_STATE,
    TABLES_BY_LOGICAL_NAME,
    Column,
    Kind,
    Table,
    build_tables,
    collection_navigation,
)
from devstack.sandbox_common.odata_query import Predicate, sort_rows

LOOKUP_TYPE = "@Microsoft.Dynamics.CRM.lookuplogicalname"
UpsertMode = Literal["upsert", "create_only", "update_only"]

_REFERENCE_RE = re.compile(r"^(?:.*/)?([A-Za-z_][A-Za-z0-9_]*)\((.+)\)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Caller:
    """Who makes a change: becomes createdby/modifiedby/ownerid and the webhook's user ids."""

    user_id: str
    business_unit_id: str
    correlation_id: str = ""


@dataclass(frozen=True)
class ChangeEvent:
    message: Literal["Create", "Update", "Delete"]
    table: Table
    record_id: str
    target: dict[str, Any]  # wire columns the request set (Update: only those), after normalisation
    row: dict[str, Any] | None  # the row after the change (None for Delete)
    before: dict[str, Any] | None  # the row before the change (None for Create)
    caller: Caller


@dataclass
class TableData:
    table: Table
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[tuple[str, ...], dict[tuple[Any, ...], str]] = field(default_factory=dict)
    log_versions: list[int] = field(default_factory=list)
    log_ids: list[str] = field(default_factory=list)
    sorted_ids: list[str] | None = None  # rebuilt lazily after inserts and deletes


@dataclass
class _Transaction:
    undo: list[tuple[TableData, str, dict[str, Any] | None]] = field(default_factory=list)
    log_marks: dict[str, int] = field(default_factory=dict)
    events: list[ChangeEvent] = field(default_factory=list)


def utc_iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_guid(text: str, what: str = "id") -> str:
    try:
        return str(uuid.UUID(str(text)))
    except (ValueError, AttributeError, TypeError):
        raise errors.bad_request(f"'{text}' is not a valid GUID for {what}.") from None


class Store:
    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.tables: dict[str, TableData] = {s: TableData(t) for s, t in build_tables().items()}
        self.on_commit: Callable[[list[ChangeEvent]], None] | None = None
        # Extra checks on rows of one table (logical name), run before a row is written.
        self.validators: dict[str, Callable[[Mapping[str, Any]], None]] = {}
        self._version = 1_000_000
        self._tx: _Transaction | None = None
        # Document id -> the last detail sequence number given in it (gaps after a rollback are fine).
        self._detail_sequence: dict[str, int] = {}

    # --- lookups ----------------------------------------------------------------------------------

    def table(self, entity_set: str) -> TableData:
        data = self.tables.get(entity_set)
        if data is None:
            raise errors.segment_not_found(entity_set)
        return data

    def table_by_logical_name(self, logical_name: str) -> Table | None:
        with self.lock:
            return next((d.table for d in self.tables.values() if d.table.logical_name == logical_name), None)

    def define_table(self, table: Table) -> None:
        """Add a table, or replace the definition of one (new columns, keys); rows are kept and the
        alternate keys re-indexed (a duplicate under a new key refuses the change)."""
        with self.lock:
            data = self.tables.get(table.entity_set)
            if data is None:
                self.tables[table.entity_set] = TableData(table)
                return
            old_table, old_keys = data.table, data.keys
            data.table, data.keys = table, {}
            try:
                for record_id, row in data.rows.items():
                    self._check_keys(data, record_id, row)
                    self._index(data, record_id, row)
            except DataverseError:
                data.table, data.keys = old_table, old_keys
                raise

    def current_version(self) -> int:
        with self.lock:
            return self._version

    def get(self, entity_set: str, record_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.table(entity_set).rows.get(record_id.lower())

    def require(self, entity_set: str, record_id: str) -> dict[str, Any]:
        row = self.get(entity_set, record_id)
        if row is None:
            raise errors.not_found(self.table(entity_set).table.logical_name, record_id)
        return row

    def resolve_key(self, entity_set: str, key: Mapping[str, Any]) -> str | None:
        """The id of the row with these alternate-key values (or primary key), if any."""
        data = self.table(entity_set)
        table = data.table
        if set(key) == {table.primary_key}:
            record_id = parse_guid(str(key[table.primary_key]))
            return record_id if record_id in data.rows else None
        columns = _matching_key(table, key)
        with self.lock:
            return data.keys.get(columns, {}).get(tuple(_key_value(key[c]) for c in columns))

    # --- transactions -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside succeed together or are undone together; events fire after commit."""
        with self.lock:
            outer = self._tx is None
            if outer:
                self._tx = _Transaction()
            try:
                yield
            except BaseException:
                if outer:
                    self._rollback()
                raise
            finally:
                tx, self._tx = (self._tx, None) if outer else (None, self._tx)
        if outer and tx is not None and tx.events and self.on_commit is not None:
            self.on_commit(tx.events)

    def _rollback(self) -> None:
        tx = self._tx
        assert tx is not None
        for data, record_id, old in reversed(tx.undo):
            self._put_raw(data, record_id, old)
        for entity_set, mark in tx.log_marks.items():
            data = self.tables[entity_set]
            del data.log_versions[mark:]
            del data.log_ids[mark:]

    def _put(self, data: TableData, record_id: str, row: dict[str, Any] | None) -> None:
        if row is not None:
            self._check_keys(data, record_id, row)
            if data.table.logical_name == "productpricelevel":
                self._check_price_list_item(data, record_id, row)
            validator = self.validators.get(data.table.logical_name)
            if validator is not None:
                validator(row)
        tx = self._tx
        if tx is not None:
            tx.undo.append((data, record_id, data.rows.get(record_id)))
            tx.log_marks.setdefault(data.table.entity_set, len(data.log_versions))
        self._put_raw(data, record_id, row)
        if data.table.change_tracking:
            data.log_versions.append(self._version)
            data.log_ids.append(record_id)

    def _check_price_list_item(self, data: TableData, record_id: str, row: dict[str, Any]) -> None:
        """A price list item (`productpricelevel`) needs its price list, product and unit; a product and
        unit have one price per price list (Dataverse's DuplicateProductPriceLevel); its currency is its
        price list's and its unit group the product's (both set by Dataverse, not by the caller)."""
        for column, what in (("_pricelevelid_value", "price level"), ("_productid_value", "product"),
                             ("_uomid_value", "unit")):  # fmt: skip
            if not row.get(column):
                raise errors.bad_request(f"The {what} id is missing.", "0x80040203")
        same = (row["_pricelevelid_value"], row["_productid_value"], row["_uomid_value"])
        for other_id, other in data.rows.items():
            if (
                other_id != record_id
                and (
                    other.get("_pricelevelid_value"),
                    other.get("_productid_value"),
                    other.get("_uomid_value"),
                )
                == same
            ):
                raise errors.DataverseError(
                    400, "This product and unit combination has a price for this price list.", ""
                )
        price_list = self.tables["pricelevels"].rows.get(row["_pricelevelid_value"]) or {}
        product = self.tables["products"].rows.get(row["_productid_value"]) or {}
        for column, value, target in (
            (
                "_transactioncurrencyid_value",
                price_list.get("_transactioncurrencyid_value"),
                "transactioncurrency",
            ),
            ("_uomscheduleid_value", product.get("_defaultuomscheduleid_value"), "uomschedule"),
        ):
            row[column] = value
            row[column + LOOKUP_TYPE] = target if value else None

    def _put_raw(self, data: TableData, record_id: str, row: dict[str, Any] | None) -> None:
        old = data.rows.get(record_id)
        if old is not None:
            self._unindex(data, old)
        if row is None:
            data.rows.pop(record_id, None)
        else:
            data.rows[record_id] = row
            self._index(data, record_id, row)
        if (old is None) != (row is None):
            data.sorted_ids = None

    def _check_keys(self, data: TableData, record_id: str, row: dict[str, Any]) -> None:
        for columns in data.table.alternate_keys:
            values = tuple(row.get(c) for c in columns)
            if any(v is None for v in values):
                continue
            holder = data.keys.get(columns, {}).get(tuple(_key_value(v) for v in values))
            if holder is not None and holder != record_id:
                raise errors.duplicate_key(data.table.logical_name, columns)

    def _index(self, data: TableData, record_id: str, row: dict[str, Any]) -> None:
        for columns in data.table.alternate_keys:
            values = tuple(row.get(c) for c in columns)
            if any(v is None for v in values):
                continue
            data.keys.setdefault(columns, {})[tuple(_key_value(v) for v in values)] = record_id

    def _unindex(self, data: TableData, row: dict[str, Any]) -> None:
        for columns in data.table.alternate_keys:
            values = tuple(row.get(c) for c in columns)
            if any(v is None for v in values):
                continue
            index = data.keys.get(columns, {})
            index.pop(tuple(_key_value(v) for v in values), None)

    def _emit(self, event: ChangeEvent) -> None:
        if self._tx is not None:
            self._tx.events.append(event)

    # --- writes -----------------------------------------------------------------------------------

    def create(
        self,
        entity_set: str,
        body: Mapping[str, Any],
        caller: Caller,
        *,
        record_id: str | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = self.table(entity_set)
        table = data.table
        related = collection_navigation(table)
        children = {k: v for k, v in body.items() if k in related} if isinstance(body, Mapping) else {}
        with self.transaction():
            values = self.translate(
                table, {k: v for k, v in body.items() if k not in children}, creating=True
            )
            pk_value = values.pop(table.primary_key, None) or record_id
            new_id = parse_guid(pk_value) if pk_value else str(uuid.uuid4())
            if new_id in data.rows:
                raise errors.duplicate_id(table.logical_name, new_id)
            row = self._new_row(table, new_id, caller)
            row.update(defaults or {})
            row.update(values)
            self._sequence_detail(table, row)
            self._derive(table, row, values)
            self._stamp(row, caller)
            self._put(data, new_id, row)
            target = {table.primary_key: new_id, **values}
            self._emit(ChangeEvent("Create", table, new_id, target, row, None, caller))
            for name, rows in children.items():
                self._deep_insert(table, new_id, name, rows, related[name], caller)
            if table.logical_name == "uomschedule" and row.get("baseuomname"):
                # A unit group is created with its base unit, named by `baseuomname` (quantity 1).
                base = {
                    "name": row["baseuomname"],
                    "quantity": 1.0,
                    "isschedulebaseuom": True,
                    "uomscheduleid@odata.bind": f"/uomschedules({new_id})",
                }
                self.create("uoms", base, caller)
            self._recalculate(table, row, caller)
            return self.tables[entity_set].rows[new_id]

    def _sequence_detail(self, table: Table, row: dict[str, Any]) -> None:
        """A new document detail without a sequence number goes after its document's others."""
        parent = DOCUMENT_DETAILS.get(table.logical_name)
        document_id = row.get(f"_{parent}id_value") if parent else None
        if not document_id:
            return
        last = self._detail_sequence.get(document_id, 0)
        given = row.get("sequencenumber")
        if given is None:
            row["sequencenumber"] = given = last + 1
        self._detail_sequence[document_id] = max(last, int(given))

    def _deep_insert(
        self,
        table: Table,
        parent_id: str,
        name: str,
        rows: Any,
        relation: tuple[Table, Column],
        caller: Caller,
    ) -> None:
        """Deep insert (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-entity-web-api
        #create-related-table-rows-in-one-operation): each related row is created with its lookup
        to the new row set, in the same transaction."""
        child, column = relation
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise errors.bad_request(
                f"The collection-valued navigation property '{name}' needs an array of objects."
            )
        bind = f"{column.name}@odata.bind"
        for row in rows:
            self.create(child.entity_set, {**row, bind: f"/{table.entity_set}({parent_id})"}, caller)

    def _recalculate(
        self,
        table: Table,
        row: Mapping[str, Any] | None,
        caller: Caller,
        old: Mapping[str, Any] | None = None,
    ) -> None:
        """Dataverse's system pricing: a detail's `baseamount` (quantity x price per unit) and
        `extendedamount` (less the manual discount, plus tax), and its document's totals (sum of the
        details' extended amounts, less the document discount). A detail written (`row`; None when
        deleted) moves its document's totals by the difference to `old`, so a write costs the same
        for a document of 100,000 lines. The document is updated as a system recalculation does it:
        a new version and an Update event by the same caller."""
        parent = DOCUMENT_DETAILS.get(table.logical_name)
        if parent is not None:
            column = f"_{parent}id_value"
            for detail, sign in ((old, -1.0), (row, 1.0)):
                document_id = (detail or {}).get(column)
                if not document_id:
                    continue
                data = self.tables[_set_of(parent)]
                document = data.rows.get(document_id)
                if document is not None:
                    items = float(document.get("totallineitemamount") or 0)
                    tax = float(document.get("totaltax") or 0)
                    items += sign * float(detail.get("extendedamount") or 0)  # type: ignore[union-attr]
                    tax += sign * float(detail.get("tax") or 0)  # type: ignore[union-attr]
                    self._set_totals(data, document, items, tax, caller)
            return
        if row is not None and table.logical_name in DOCUMENT_TABLES:
            data = self.tables[table.entity_set]
            document = data.rows.get(row[table.primary_key])
            if document is not None:
                items, tax = (
                    float(document.get("totallineitemamount") or 0),
                    float(document.get("totaltax") or 0),
                )
                self._set_totals(data, document, items, tax, caller)

    def _set_totals(
        self, data: TableData, document: dict[str, Any], items: float, tax: float, caller: Caller
    ) -> None:
        table = data.table
        totals = {
            "totallineitemamount": round(items, 2),
            "totalamountlessfreight": round(items - tax - float(document.get("discountamount") or 0), 2),
            "totaltax": round(tax, 2),
        }
        totals["totalamount"] = round(totals["totalamountlessfreight"] + tax, 2)
        if all(document.get(k) == v for k, v in totals.items()):
            return
        updated = {**document, **totals}
        self._stamp(updated, caller, creating=False)
        self._put(data, document[table.primary_key], updated)
        target = {table.primary_key: document[table.primary_key], **totals}
        self._emit(
            ChangeEvent("Update", table, document[table.primary_key], target, updated, document, caller)
        )

    def update(
        self,
        entity_set: str,
        record_id: str,
        body: Mapping[str, Any],
        caller: Caller,
        *,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        data = self.table(entity_set)
        table = data.table
        with self.transaction():
            old = self.require(entity_set, record_id)
            _check_etag(old, if_match)
            values = self.translate(table, body, creating=False)
            values.pop(table.primary_key, None)
            return self._apply_update(data, old, values, caller)

    def close_opportunity(self, body: Mapping[str, Any], *, won: bool, caller: Caller) -> dict[str, Any]:
        """`WinOpportunity` / `LoseOpportunity` (unbound actions: `Status` and an `OpportunityClose`
        naming the opportunity): the only way to close an open opportunity; Won takes the estimated
        value as the actual value. The close activity itself is not kept (no `opportunityclose` table)."""
        action = "WinOpportunity" if won else "LoseOpportunity"
        close = body.get("OpportunityClose")
        status = body.get("Status")
        reference = close.get("opportunityid@odata.bind") if isinstance(close, Mapping) else None
        if not isinstance(reference, str) or not isinstance(status, int) or isinstance(status, bool):
            raise errors.bad_request(
                f'{action} needs "Status" (an integer) and "OpportunityClose" with '
                '"opportunityid@odata.bind": "/opportunities(<id>)".'
            )
        table = self.table("opportunities").table
        match = _REFERENCE_RE.match(reference.strip())
        if not match or match.group(1) != "opportunities":
            raise errors.bad_request(f"'{reference}' is not a valid reference to an opportunity.")
        state = 1 if won else 2
        allowed = {s for s, st in OPPORTUNITY_STATUS_STATE.items() if st == state}
        if status not in allowed:
            raise errors.bad_request(
                f"{status} is not a valid status code for state code OpportunityState."
                f"{'Won' if won else 'Lost'} on opportunity.",
                "0x80040203",
            )
        with self.transaction():
            record_id = self.resolve_key("opportunities", parse_key(match.group(2), table))
            if record_id is None:
                raise errors.not_found("opportunity", match.group(2))
            old = self.tables["opportunities"].rows[record_id]
            if old.get("statecode") != 0:
                raise errors.bad_request("The opportunity is already closed.", "0x80040203")
            values: dict[str, Any] = {"statecode": state, "statuscode": status,
                                      "actualclosedate": utc_iso(self.clock())[:10]}  # fmt: skip
            if won:
                values["actualvalue"] = old.get("estimatedvalue")
            return self._apply_update(self.tables["opportunities"], old, values, caller, closing=True)

    def _apply_update(
        self,
        data: TableData,
        old: dict[str, Any],
        values: dict[str, Any],
        caller: Caller,
        *,
        closing: bool = False,
    ) -> dict[str, Any]:
        table = data.table
        if table.logical_name == "opportunity" and not closing and values.get("statecode") in (1, 2):
            # Dataverse closes an opportunity only through its actions, never through Update.
            raise errors.bad_request(
                "An opportunity is closed with the WinOpportunity or LoseOpportunity action, not by "
                "setting statecode.",
                "0x80040203",
            )
        row = dict(old)
        row.update(values)
        self._derive(table, row, values)
        self._stamp(row, caller, creating=False)
        record_id = row[table.primary_key]
        self._put(data, record_id, row)
        target = {table.primary_key: record_id, **values}
        self._emit(ChangeEvent("Update", table, record_id, target, row, old, caller))
        if table.logical_name in DOCUMENT_DETAILS or "discountamount" in values:
            self._recalculate(table, row, caller, old=old)
            return data.rows[record_id]
        return row

    def upsert(
        self,
        entity_set: str,
        key: Mapping[str, Any],
        body: Mapping[str, Any],
        caller: Caller,
        *,
        mode: UpsertMode = "upsert",
        if_match: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create or update the row `key` names (primary key or an alternate key). Returns (row, created)."""
        data = self.table(entity_set)
        table = data.table
        with self.transaction():
            existing_id = self.resolve_key(entity_set, key)
            if existing_id is not None:
                if mode == "create_only":
                    raise errors.key_exists()
                old = data.rows[existing_id]
                _check_etag(old, if_match)
                values = self.translate(table, body, creating=False)
                # Key columns in the body are ignored: a key cannot change through its own URL.
                for column in (table.primary_key, *key):
                    values.pop(column, None)
                return self._apply_update(data, old, values, caller), False
            if mode == "update_only" or if_match:
                shown = key.get(table.primary_key) or _describe_key(key)
                raise errors.not_found(table.logical_name, str(shown))
            merged = dict(body)
            for column, value in key.items():
                # Key values in the body win; otherwise the URL's are copied in.
                merged.setdefault(column, value)
            return self.create(entity_set, merged, caller), True

    def delete(self, entity_set: str, record_id: str, caller: Caller, *, if_match: str | None = None) -> None:
        data = self.table(entity_set)
        table = data.table
        with self.transaction():
            old = self.require(entity_set, record_id)
            _check_etag(old, if_match)
            self._version += 1
            self._put(data, old[table.primary_key], None)
            self._emit(ChangeEvent("Delete", table, old[table.primary_key], {}, None, old, caller))
            detail = DOCUMENT_TABLES.get(table.logical_name)
            if detail is not None:
                # A document's details go with it (the relationship's cascade delete).
                column = f"_{table.logical_name}id_value"
                for line in [
                    r for r in self.tables[_set_of(detail)].rows.values() if r.get(column) == record_id
                ]:
                    self.delete(_set_of(detail), line[f"{detail}id"], caller)
            if table.logical_name in DOCUMENT_DETAILS:
                self._recalculate(table, None, caller, old=old)

    def seed(self, entity_set: str, records: list[Mapping[str, Any]], caller: Caller) -> list[str]:
        """Bulk insert for tests and benchmarks: validated like a create, but no webhooks fire.

        Lookups may be given in wire form (`_x_value`) as well as with `@odata.bind`; wire-form
        lookups are not checked for existence, so seeding 100,000 rows stays fast.
        """
        data = self.table(entity_set)
        table = data.table
        lookups = {c.wire_name: c for c in table.columns.values() if c.kind is Kind.LOOKUP}
        ids: list[str] = []
        with self.transaction():
            for record in records:
                direct = {k: v for k, v in record.items() if k in lookups}
                rest = {k: v for k, v in record.items() if k not in lookups}
                values = self.translate(table, rest, creating=True)
                for wire, value in direct.items():
                    values[wire] = parse_guid(value, wire) if value else None
                    if value and len(lookups[wire].targets) == 1:
                        values[wire + LOOKUP_TYPE] = lookups[wire].targets[0]
                pk_value = values.pop(table.primary_key, None)
                new_id = parse_guid(pk_value) if pk_value else str(uuid.uuid4())
                if new_id in data.rows:
                    raise errors.duplicate_id(table.logical_name, new_id)
                row = self._new_row(table, new_id, caller)
                row.update(values)
                self._derive(table, row, values)
                self._stamp(row, caller)
                self._put(data, new_id, row)
                ids.append(new_id)
            assert self._tx is not None
            self._tx.events.clear()  # seeding is silent
        return ids

    # --- row building -----------------------------------------------------------------------------

    def _new_row(self, table: Table, record_id: str, caller: Caller) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(table.columns)
        row[table.primary_key] = record_id
        now = utc_iso(self.clock())
        row["createdon"] = now
        row["_createdby_value"] = caller.user_id
        row["_owningbusinessunit_value"] = caller.business_unit_id
        if "_ownerid_value" in table.columns:
            row["_ownerid_value"] = caller.user_id
            row["_ownerid_value" + LOOKUP_TYPE] = "systemuser"
        if "statecode" in table.columns:
            initial = 2 if table.logical_name == "product" else 0  # products start as Draft (statecode 2)
            row["statecode"] = initial
            row["statuscode"] = table.default_status.get(initial)
        return row

    def _stamp(self, row: dict[str, Any], caller: Caller, *, creating: bool = True) -> None:
        self._version += 1
        row["versionnumber"] = self._version
        row["modifiedon"] = utc_iso(self.clock())
        row["_modifiedby_value"] = caller.user_id

    def _derive(self, table: Table, row: dict[str, Any], values: Mapping[str, Any]) -> None:
        if table.logical_name in DOCUMENT_DETAILS:
            base = round(float(row.get("quantity") or 0) * float(row.get("priceperunit") or 0), 2)
            row["baseamount"] = base
            row["extendedamount"] = round(
                base - float(row.get("manualdiscountamount") or 0) + float(row.get("tax") or 0), 2
            )
        if "statecode" in values and "statuscode" not in values:
            row["statuscode"] = table.default_status.get(values["statecode"], row.get("statuscode"))
        if table.logical_name in {"contact", "systemuser"} and ({"firstname", "lastname"} & set(values)):
            row["fullname"] = " ".join(p for p in (row.get("firstname"), row.get("lastname")) if p) or None

    def translate(self, table: Table, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        """A request body as wire columns: values validated, `@odata.bind` resolved to `_x_value`."""
        if not isinstance(body, Mapping):
            raise errors.bad_request("The request body must be a JSON object.")
        navigation = table.navigation()
        lookups = table.lookup_by_name()
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key.startswith("@"):
                continue
            if key.endswith("@odata.bind"):
                nav = key[: -len("@odata.bind")]
                if nav not in navigation:
                    raise errors.bad_request(
                        f"An undeclared property '{nav}' which only has property annotations in the payload "
                        "but no property value was found in the payload. In OData, only declared navigation "
                        "properties and declared named streams can be represented as properties without "
                        "values."
                    )
                lookup, target = navigation[nav]
                values.update(self._bind(table, lookup, target, value))
                continue
            if "@" in key:
                continue  # other instance annotations (formatted values) are ignored on write
            column = table.columns.get(key)
            if column is None:
                if key in lookups:
                    raise errors.bad_request(
                        f"'{key}' is a lookup: set it with '{key}@odata.bind' "
                        f'(e.g. "{key}@odata.bind": "/{_set_of(lookups[key].targets[0])}(<id>)").'
                    )
                raise errors.unknown_property(table.logical_name, key)
            if column.kind is Kind.LOOKUP:
                raise errors.DataverseError(
                    400,
                    "CRM do not support direct update of Entity Reference properties, Use Navigation "
                    "properties instead.",
                    "0x80048d19",
                )
            if column.read_only:
                continue
            values[key] = _coerce(table, column, value)
        return values

    def _bind(self, table: Table, column: Column, target: str | None, value: Any) -> dict[str, Any]:
        wire = column.wire_name
        if value is None:
            return {wire: None, wire + LOOKUP_TYPE: None}
        if not isinstance(value, str):
            raise errors.bad_request(f"'{column.name}@odata.bind' must be a string like '/accounts(<id>)'.")
        match = _REFERENCE_RE.match(value.strip())
        if not match:
            raise errors.bad_request(
                f"'{value}' is not a valid entity reference for '{column.name}': use '/<entityset>(<id>)'."
            )
        entity_set, key_text = match.groups()
        target_data = self.tables.get(entity_set)
        allowed = (target,) if target else column.targets
        if target_data is None or target_data.table.logical_name not in allowed:
            expected = " or ".join(f"/{_set_of(t)}(<id>)" for t in allowed)
            raise errors.bad_request(
                f"'{value}' is not a valid reference for '{column.name}' on {table.logical_name}: "
                f"expected {expected}."
            )
        target_table = target_data.table
        key = parse_key(key_text, target_table)
        record_id = self.resolve_key(entity_set, key)
        if record_id is None:
            shown = (
                str(key[target_table.primary_key]) if target_table.primary_key in key else _describe_key(key)
            )
            raise errors.not_found(target_table.logical_name, shown)
        return {wire: record_id, wire + LOOKUP_TYPE: target_table.logical_name}

    # --- reads ------------------------------------------------------------------------------------

    def page(
        self,
        entity_set: str,
        predicate: Predicate | None,
        orderby: list[tuple[str, bool]],
        size: int,
        *,
        after_id: str | None = None,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of matching rows and whether more follow.

        Without `$orderby` rows come in primary-key order and the next page starts after `after_id`
        (as Dataverse's paging cookie does), so paging through a table is linear, not quadratic.
        With `$orderby` the page is `offset` rows into the sorted result.
        """
        data = self.table(entity_set)
        with self.lock:
            if orderby:
                rows = [r for r in data.rows.values() if predicate is None or predicate(r)]
                ordered = sort_rows(rows, [*orderby, (data.table.primary_key, False)])
                return ordered[offset : offset + size], len(ordered) > offset + size
            if data.sorted_ids is None:
                data.sorted_ids = sorted(data.rows)
            ids = data.sorted_ids
            start = bisect.bisect_right(ids, after_id) if after_id else 0
            result: list[dict[str, Any]] = []
            for index in range(start, len(ids)):
                row = data.rows[ids[index]]
                if predicate is None or predicate(row):
                    if len(result) == size:
                        return result, True
                    result.append(row)
            return result, False

    def count(self, entity_set: str, predicate: Predicate | None) -> int:
        data = self.table(entity_set)
        with self.lock:
            return sum(1 for r in data.rows.values() if predicate is None or predicate(r))

    def changes(self, entity_set: str, since: int, until: int) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows changed in (since, until]: current rows first (in change order), then deleted ids."""
        data = self.table(entity_set)
        with self.lock:
            start = bisect.bisect_right(data.log_versions, since)
            end = bisect.bisect_right(data.log_versions, until)
            last_change: dict[str, None] = {}
            for record_id in data.log_ids[start:end]:
                last_change.pop(record_id, None)
                last_change[record_id] = None
            upserted = [data.rows[i] for i in last_change if i in data.rows]
            deleted = [i for i in last_change if i not in data.rows]
            return upserted, deleted


# --- helpers --------------------------------------------------------------------------------------


def etag(row: Mapping[str, Any]) -> str:
    return f'W/"{row["versionnumber"]}"'


def _check_etag(row: Mapping[str, Any], if_match: str | None) -> None:
    if if_match and if_match.strip() != "*" and if_match.strip() != etag(row):
        raise errors.version_mismatch()


def _set_of(logical_name: str) -> str:
    table = TABLES_BY_LOGICAL_NAME.get(logical_name)
    return table.entity_set if table else logical_name


def _key_value(value: Any) -> Any:
    # Key lookups use the database collation: case-insensitive strings.
    return value.casefold() if isinstance(value, str) else value


def _describe_key(key: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in key.items())


def _matching_key(table: Table, key: Mapping[str, Any]) -> tuple[str, ...]:
    for columns in table.alternate_keys:
        if set(columns) == set(key):
            return columns
    defined = "; ".join(",".join(k) for k in table.alternate_keys) or "none"
    raise errors.bad_request(
        f"The key ({','.join(key)}) is not an alternate key of {table.logical_name} "
        f"(alternate keys defined: {defined})."
    )


_KEY_PART_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^']|'')*'|[^,]+)\s*(?:,|$)")


def parse_key(text: str, table: Table) -> dict[str, Any]:
    """The inside of `accounts(...)`: a bare GUID (primary key) or `name='v',other=2`."""
    text = text.strip()
    if "=" not in text:
        return {table.primary_key: parse_guid(text.strip("'"), table.primary_key)}
    key: dict[str, Any] = {}
    position = 0
    while position < len(text):
        match = _KEY_PART_RE.match(text, position)
        if not match:
            raise errors.bad_request(
                f"Bad key segment '({text})': use name='value' pairs separated by commas."
            )
        name, raw = match.group(1), match.group(2).strip()
        if name not in table.columns:
            raise errors.unknown_property(table.logical_name, name)
        if raw.startswith("'"):
            key[name] = raw[1:-1].replace("''", "'")
        elif re.fullmatch(r"-?\d+", raw):
            key[name] = int(raw)
        else:
            key[name] = raw
        position = match.end()
    return key


def _coerce(table: Table, column: Column, value: Any) -> Any:
    """Validate a written value for its column type and return the stored wire value."""
    if value is None:
        return None
    name, kind = column.name, column.kind
    if kind is Kind.STRING:
        if not isinstance(value, str):
            raise _type_error(name, value, "Edm.String")
        if column.max_length is not None and len(value) > column.max_length:
            raise errors.validation(
                f"The length of the '{name}' attribute of the '{table.logical_name}' entity exceeded the "
                f"maximum allowed length of '{column.max_length}'."
            )
        return value
    if kind in (Kind.INT, Kind.BIGINT, Kind.CHOICE):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(name, value, "Edm.Int32")
        if kind is Kind.CHOICE and column.choices is not None and value not in column.choices:
            accepted = ",".join(str(v) for v in column.choices)
            raise errors.validation(
                f"The value {value} of '{name}' on record of type '{table.logical_name}' is outside "
                f"the valid range. Accepted Values: {accepted}"
            )
        return value
    if kind in (Kind.DECIMAL, Kind.MONEY):
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise _type_error(name, value, "Edm.Decimal")
        return value
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise _type_error(name, value, "Edm.Boolean")
        return value
    if kind is Kind.GUID:
        return parse_guid(value, name)
    if kind is Kind.DATETIME:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise _type_error(name, value, "Edm.DateTimeOffset") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return utc_iso(moment)
    if kind is Kind.DATE:
        if not isinstance(value, str) or not _DATE_RE.match(value):
            raise _type_error(name, value, "Edm.Date")
        return value
    raise errors.bad_request(f"'{name}' cannot be written.")


def _type_error(name: str, value: Any, expected: str) -> DataverseError:
    return errors.bad_request(
        f"Cannot convert the literal '{value}' to the expected type '{expected}' for property '{name}'."
    )
