"""In-memory stand-ins for the engine's unit tests (in the spirit of dramatiq's StubBroker).

`MemoryBc` and `MemoryDataverse` implement the gateways of `shared.sync.gateways` over dicts with
the rules the engine relies on: every write changes the record's ETag; a write with a stale ETag is
refused (`ConcurrencyError`, as BC's 409 and Dataverse's 412), a write to a missing record is
`NotFoundError`; BC assigns ids, Dataverse takes the caller's. Every call counts as one request, as
it would on the wire, so tests assert what a change costs.

`MemoryTable` is the part of Azure's `TableClient` that the coupling store and journal use for one
record (point reads and conditional writes with ETags). Integration tests run the same stores on
Azurite.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError

from shared.connectors.dataverse import ItemResult
from shared.connectors.errors import ConcurrencyError, NotFoundError, ValidationError
from shared.mapping.schema import EntityMapping, Side
from shared.sync.gateways import LineWrite, Record, WriteResult, read_many_by_filter
from shared.timestamps import iso_ms

# The key under which a memory line row names its document (not part of what the API answers).
PARENT = "@parent"

_last_stamp = [dt.datetime.min.replace(tzinfo=dt.UTC)]


def _stamp() -> str:
    """Now, as the services stamp a write, and strictly later than the previous stamp."""
    stamp = max(dt.datetime.now(dt.UTC), _last_stamp[0] + dt.timedelta(milliseconds=1))
    _last_stamp[0] = stamp
    return iso_ms(stamp)


class _MemorySide:
    side: Side

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Record]] = {}
        self.requests: Counter[str] = Counter()  # "GET customers", "PATCH accounts", ...
        self._etags = itertools.count(1)
        # Ids someone else changes just before our next write of them: that write gets a 412.
        self.race: set[str] = set()

    # ------------------------------------------------------------------ what subclasses define
    def table(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    def _pk(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    def _modified_field(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------------ test conveniences
    def rows(self, entity_set: str) -> dict[str, Record]:
        return self.tables.setdefault(entity_set, {})

    def seed(self, mapping: EntityMapping, record: Mapping[str, Any]) -> Record:
        """Put a record in place without counting a request (the state before the test)."""
        return self._store(mapping, dict(record), record_id=record.get(self._pk(mapping)))

    def edit(self, mapping: EntityMapping, record_id: str, **changes: Any) -> Record:
        """A person's edit: changes the record and its ETag, counts no request of the service."""
        row = self.rows(self.entity_set(mapping))[record_id]
        row.update(changes)
        self._touch(mapping, row)
        return dict(row)

    def remove(self, mapping: EntityMapping, record_id: str) -> None:
        del self.rows(self.entity_set(mapping))[record_id]

    def entity_set(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    def total(self) -> int:
        return sum(self.requests.values())

    # ------------------------------------------------------------------------------- gateway
    def get(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        self._count("GET", mapping)
        row = self.rows(self.entity_set(mapping)).get(record_id)
        return self._view(row, select) if row is not None else None

    def query_many(
        self, mapping: EntityMapping, filters: Sequence[str], *, select: Sequence[str]
    ) -> list[Record]:
        """As the real gateways: the filters in one `$batch` per 100 (BC) or 1,000 (Dataverse)."""
        per_batch = 100 if self.side == "bc" else 1000
        for _ in range(0, len(filters), per_batch):
            self._count("$batch GET" if self.side == "bc" else "$batch", mapping)  # BC: apart from writes
        rows = self.rows(self.entity_set(mapping)).values()
        return [self._view(r, select) for r in rows if any(_matches(r, f) for f in filters)]

    def query_pages(
        self,
        mapping: EntityMapping,
        *,
        select: Sequence[str],
        filter: str | None,
        page_size: int | None = None,
    ) -> Iterator[list[Record]]:
        """Only the filters the engine's match queries build: `field eq 'value'` joined by `and`."""
        self._count("GET", mapping)
        rows = [r for r in self.rows(self.entity_set(mapping)).values() if _matches(r, filter)]
        yield [self._view(r, select) for r in rows[: page_size or len(rows)]]

    def create(
        self, mapping: EntityMapping, body: Mapping[str, Any], *, select: Sequence[str], record_id: str | None
    ) -> Record:
        self._count("POST", mapping)
        return self._view(self._store(mapping, dict(body), record_id=record_id), select)

    def update(
        self, mapping: EntityMapping, current: Record, body: Mapping[str, Any], *, select: Sequence[str]
    ) -> Record:
        self._count("PATCH", mapping)
        row = self._checked(mapping, current)
        row.update(body)
        self._touch(mapping, row)
        return self._view(row, select)

    def delete(self, mapping: EntityMapping, current: Record) -> None:
        self._count("DELETE", mapping)
        row = self._checked(mapping, current)
        del self.rows(self.entity_set(mapping))[str(row[self._pk(mapping)])]

    def update_many(
        self,
        mapping: EntityMapping,
        changes: Sequence[tuple[Record, Mapping[str, Any]]],
        *,
        select: Sequence[str],
    ) -> list[WriteResult]:
        self._count("$batch", mapping)
        results = []
        for current, body in changes:
            try:
                row = self._checked(mapping, current)
            except (ConcurrencyError, NotFoundError) as exc:
                results.append(WriteResult(None, exc))
                continue
            row.update(body)
            self._touch(mapping, row)
            results.append(WriteResult(self._view(row, select)))
        return results

    def requests_in_this_thread(self) -> int:
        return self.total()

    # ------------------------------------------------------------------------------- documents
    # A document's lines are rows of their own entity set that name their header (`_parent_of`);
    # reading a document expands them into the header's navigation property, in one request.
    def get_document(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        self._count("GET", mapping)
        row = self.rows(self.entity_set(mapping)).get(record_id)
        return self._with_lines(mapping, self._view(row, select)) if row is not None else None

    def create_document(
        self,
        mapping: EntityMapping,
        body: Mapping[str, Any],
        lines: Sequence[Mapping[str, Any]],
        *,
        select: Sequence[str],
        record_id: str | None,
    ) -> Record:
        """Deep insert: the header and its lines in one request, all or nothing."""
        self._count("POST", mapping)
        header = self._store(mapping, self._new_header(mapping, body), record_id=record_id)
        for line in lines:
            self._store_line(mapping, dict(line), str(header[self._pk(mapping)]))
        return self._with_lines(mapping, self._view(header, select))

    def write_lines(self, mapping: EntityMapping, operations: Sequence[LineWrite]) -> list[WriteResult]:
        """One atomic batch: a refused operation fails, the others are rolled back and say so."""
        self._count("$batch", self._lines_set(mapping))
        before = {k: dict(v) for k, v in self.rows(self._lines_set(mapping)).items()}
        results: list[WriteResult] = []
        for op in operations:
            try:
                results.append(WriteResult(self._write_line(mapping, op)))
            except (ConcurrencyError, NotFoundError) as exc:
                self.tables[self._lines_set(mapping)] = before
                rolled = ConcurrencyError("rolled back", status=424, code="TransactionRolledBack")
                return [WriteResult(None, exc if o is op else rolled) for o in operations]
        return results

    def _write_line(self, mapping: EntityMapping, op: LineWrite) -> Record | None:
        assert mapping.lines is not None
        lines = self.rows(self._lines_set(mapping))
        if op.kind == "create":
            assert op.parent_id is not None, "a new line names its document"
            body = dict(op.body)
            if op.record_id:
                body[self._line_pk(mapping)] = op.record_id
            return dict(self._store_line(mapping, body, op.parent_id))
        assert op.current is not None
        line_id = str(op.current[self._line_pk(mapping)])
        row = lines.get(line_id)
        url = f"{self._lines_set(mapping)}({line_id})"
        if row is None:
            raise NotFoundError(f"{line_id} does not exist", status=404, url=url)
        if row["@odata.etag"] != op.current["@odata.etag"]:
            raise ConcurrencyError("the line changed since it was read", status=412, url=url)
        if op.kind == "delete":
            del lines[line_id]
            return None
        row.update(op.body)
        row["@odata.etag"] = f'W/"{next(self._etags)}"'
        return dict(row)

    def _store_line(self, mapping: EntityMapping, body: Record, parent_id: str) -> Record:
        pk, lines = self._line_pk(mapping), self.rows(self._lines_set(mapping))
        body[pk] = str(body.get(pk) or uuid.uuid4())
        if body[pk] in lines:
            raise ConcurrencyError(
                f"{body[pk]} exists", status=412, url=f"{self._lines_set(mapping)}({body[pk]})"
            )
        body[PARENT] = parent_id
        body["@odata.etag"] = f'W/"{next(self._etags)}"'
        lines[body[pk]] = body
        return body

    def _with_lines(self, mapping: EntityMapping, header: Record) -> Record:
        parent = str(header[self._pk(mapping)])
        found = [
            {k: v for k, v in line.items() if k != PARENT}
            for line in self.rows(self._lines_set(mapping)).values()
            if line[PARENT] == parent
        ]
        return {**header, self._navigation(mapping): found}

    def _new_header(self, mapping: EntityMapping, body: Mapping[str, Any]) -> Record:
        return dict(body)

    def _lines_set(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    def _line_pk(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    def _navigation(self, mapping: EntityMapping) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- helpers
    def _count(self, method: str, mapping: EntityMapping | str) -> None:
        name = mapping if isinstance(mapping, str) else self.entity_set(mapping)
        self.requests[f"{method} {name}"] += 1

    def _store(self, mapping: EntityMapping, row: Record, *, record_id: Any) -> Record:
        pk = self._pk(mapping)
        row[pk] = str(record_id or uuid.uuid4())
        rows = self.rows(self.entity_set(mapping))
        if row[pk] in rows:
            raise ConcurrencyError(
                f"{row[pk]} exists", status=412, url=f"{self.entity_set(mapping)}({row[pk]})"
            )
        rows[row[pk]] = row
        self._touch(mapping, row)
        return row

    def _touch(self, mapping: EntityMapping, row: Record) -> None:
        row["@odata.etag"] = f'W/"{next(self._etags)}"'
        row[self._modified_field(mapping)] = _stamp()

    def _checked(self, mapping: EntityMapping, current: Record) -> Record:
        record_id = str(current[self._pk(mapping)])
        if record_id in self.race and record_id in self.rows(self.entity_set(mapping)):
            self.race.discard(record_id)
            self._touch(mapping, self.rows(self.entity_set(mapping))[record_id])
        url = f"{self.entity_set(mapping)}({record_id})"
        row = self.rows(self.entity_set(mapping)).get(record_id)
        if row is None:
            raise NotFoundError(f"{record_id} does not exist", status=404, url=url)
        if current["@odata.etag"] != "*" and row["@odata.etag"] != current["@odata.etag"]:  # `If-Match: *`
            raise ConcurrencyError("the record changed since it was read", status=412, url=url)
        return row

    def _view(self, row: Record, select: Sequence[str]) -> Record:
        """The record as the API answers a `$select`: every selected column, null when empty."""
        if not select:
            return dict(row)
        return {**{k: row.get(k) for k in select}, "@odata.etag": row["@odata.etag"], **self._always(row)}

    def _always(self, row: Record) -> Record:
        return {"id": row["id"]}  # BC answers every record with its id


class MemoryBc(_MemorySide):
    side: Side = "bc"
    refuse: frozenset[str] = frozenset()  # displayNames `create_many` refuses (a validation error)

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[tuple[str, str, str]] = []  # (entity set, id, action) as `run_action` ran them

    def entity_set(self, mapping: EntityMapping) -> str:
        return mapping.bc.entity_set

    def table(self, mapping: EntityMapping) -> str:
        return mapping.bc.entity_set

    def _pk(self, mapping: EntityMapping) -> str:
        return "id"

    def _modified_field(self, mapping: EntityMapping) -> str:
        return "lastModifiedDateTime"

    def create(
        self, mapping: EntityMapping, body: Mapping[str, Any], *, select: Sequence[str], record_id: str | None
    ) -> Record:
        assert record_id is None, "BC assigns ids"
        if str(body.get("displayName")) in self.refuse:
            self._count("POST", mapping)
            raise ValidationError(f"{body.get('displayName')} is refused", status=400)
        # BC also gives a new record the next number of its number series when none is sent.
        numbered = {"number": f"C{len(self.rows(mapping.bc.entity_set)) + 10001:05d}", **body}
        return super().create(mapping, numbered, select=select, record_id=None)

    # Documents: BC assigns the header's and the lines' ids, numbers the document, and puts each line
    # under its header (the parent field) and in order (the order field).
    def _new_header(self, mapping: EntityMapping, body: Mapping[str, Any]) -> Record:
        return {"number": f"D{len(self.rows(mapping.bc.entity_set)) + 1001:04d}", **body}

    def _store_line(self, mapping: EntityMapping, body: Record, parent_id: str) -> Record:
        assert mapping.lines is not None
        body[mapping.lines.bc.parent_field] = parent_id
        order = mapping.lines.bc.order_field
        if order:
            siblings = [r for r in self.rows(self._lines_set(mapping)).values() if r[PARENT] == parent_id]
            body[order] = 10000 * (len(siblings) + 1)
        return super()._store_line(mapping, body, parent_id)

    def _lines_set(self, mapping: EntityMapping) -> str:
        assert mapping.lines is not None
        return mapping.lines.bc.entity_set

    def _line_pk(self, mapping: EntityMapping) -> str:
        return "id"

    def _navigation(self, mapping: EntityMapping) -> str:
        return self._lines_set(mapping)

    def query_document_pages(
        self, mapping: EntityMapping, *, select: Sequence[str], filter: str | None, page_size: int
    ) -> Iterator[list[Record]]:
        self._count("GET", mapping)
        rows = [r for r in self.rows(mapping.bc.entity_set).values() if _matches(r, filter)]
        yield [self._with_lines(mapping, self._view(r, select)) for r in rows[:page_size]]

    def run_action(self, mapping: EntityMapping, record_id: str, name: str) -> None:
        self._count("POST", f"{mapping.bc.entity_set}/{name}")
        self.actions.append((mapping.bc.entity_set, record_id, name))

    def create_many(
        self, mapping: EntityMapping, bodies: Sequence[Mapping[str, Any]], *, select: Sequence[str]
    ) -> list[WriteResult]:
        """One JSON `$batch` per 100 creates; `refuse` names bodies (by displayName) BC refuses."""
        for _ in range(0, len(bodies), 100):
            self._count("$batch", mapping)
        results = []
        for body in bodies:
            if str(body.get("displayName")) in self.refuse:
                error = ValidationError(f"{body.get('displayName')} is refused", status=400)
                results.append(WriteResult(None, error))
                continue
            numbered = {"number": f"C{len(self.rows(mapping.bc.entity_set)) + 10001:05d}", **body}
            results.append(WriteResult(self._view(self._store(mapping, numbered, record_id=None), select)))
        return results

    def read_many(self, mapping: EntityMapping, ids: Sequence[str], *, select: Sequence[str]) -> list[Record]:
        """As the real gateway: `id eq ... or ...` queries in URL-sized chunks, 100 per `$batch`."""
        return read_many_by_filter(self, mapping, ids, select=select)  # type: ignore[arg-type]

    def modified_since(
        self, mapping: EntityMapping, since: dt.datetime, *, select: Sequence[str]
    ) -> Iterator[Record]:
        self._count("GET", mapping)
        # The client asks with a few seconds of overlap, as the real one does.
        mark = iso_ms(since - dt.timedelta(seconds=5))
        rows = [r for r in self.rows(mapping.bc.entity_set).values() if r["lastModifiedDateTime"] >= mark]
        return iter([self._view(r, select) for r in rows])

    def query_set(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None,
        filter: str | None = None,
        page_size: int | None = None,
        expand: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        self._count("GET", entity_set)
        rows = [dict(r) for r in self.rows(entity_set).values() if _matches(r, filter)]
        if expand and "contactsInformation" in expand:
            info = list(self.rows("contactsInformation").values())
            for row in rows:
                row["contactsInformation"] = [dict(i) for i in info if i.get("relatedId") == row["id"]]
        return iter(rows[: page_size or len(rows)])

    def related_contacts(self, mapping: EntityMapping, bc_id: str, *, filter: str) -> list[Record]:
        self._count("GET", f"{mapping.bc.entity_set}/contactsInformation")
        return [r for r in self.rows("contactsInformation").values() if r.get("relatedId") == bc_id]

    # The web client of an online environment's company (one `companies` read, as the real gateway).
    web_client_url: str | None = (
        "https://businesscentral.dynamics.com/contoso/production/?company=CRONUS%20USA"
    )

    def web_client(self) -> str | None:
        self._count("GET", "companies")
        return self.web_client_url


class MemoryDataverse(_MemorySide):
    side: Side = "dv"

    def entity_set(self, mapping: EntityMapping) -> str:
        return mapping.dataverse.entity_set

    def table(self, mapping: EntityMapping) -> str:
        return mapping.dataverse.table

    def _pk(self, mapping: EntityMapping) -> str:
        return mapping.dataverse.primary_key

    def _modified_field(self, mapping: EntityMapping) -> str:
        return mapping.dataverse.modified_field

    def _always(self, row: Record) -> Record:
        return {}  # Dataverse answers only what `$select` names (the engine selects the key)

    # Documents: the caller chooses the ids (deterministic, so a retried create finds them); a new line
    # names its header with `<parent>@odata.bind`, which Dataverse answers as `_<parent>_value`.
    def _store_line(self, mapping: EntityMapping, body: Record, parent_id: str) -> Record:
        assert mapping.lines is not None
        parent = mapping.lines.dataverse.parent
        bind = body.pop(f"{parent}@odata.bind", None)
        assert bind in (None, f"/{mapping.dataverse.entity_set}({parent_id})"), bind
        body[f"_{parent}_value"] = parent_id
        return super()._store_line(mapping, body, parent_id)

    def _lines_set(self, mapping: EntityMapping) -> str:
        assert mapping.lines is not None
        return mapping.lines.dataverse.entity_set

    def _line_pk(self, mapping: EntityMapping) -> str:
        assert mapping.lines is not None
        return mapping.lines.dataverse.primary_key

    def _navigation(self, mapping: EntityMapping) -> str:
        assert mapping.lines is not None
        return mapping.lines.dataverse.navigation

    def run_action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        self._count("POST", name)
        return None

    def read_many(self, mapping: EntityMapping, ids: Sequence[str], *, select: Sequence[str]) -> list[Record]:
        self._count("$batch", mapping)
        rows = self.rows(mapping.dataverse.entity_set)
        return [self._view(rows[i], select) for i in ids if i in rows]

    def upsert_many(self, mapping: EntityMapping, bodies: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        self._count("UpsertMultiple", mapping)
        pk, rows = mapping.dataverse.primary_key, self.rows(mapping.dataverse.entity_set)
        for body in bodies:
            row = rows.setdefault(str(body[pk]), {})
            row.update(body)
            self._touch(mapping, row)
        return [ItemResult(str(b[pk]), True) for b in bodies]


def _matches(row: Record, filter_: str | None) -> bool:
    """`field eq 'value'` clauses joined by `and`; a clause may be `(a eq 1) or (a eq 2)` (one field)."""
    if not filter_:
        return True
    return all(
        any(_clause_matches(row, part) for part in clause.split(" or ")) for clause in filter_.split(" and ")
    )


_ORDER = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def _clause_matches(row: Record, clause: str) -> bool:
    """`eq` (case-insensitive, as Dataverse compares); `ge`/`gt`/`le`/`lt` on text (a table's key
    ranges, compared ordinally as Table Storage does)."""
    field, op, value = clause.strip("() ").split(" ", 2)
    assert op == "eq" or op in _ORDER, f"the memory gateway does not evaluate {clause!r}"
    expected: Any = value.strip("'").replace("''", "'") if value.startswith("'") else value
    if op in _ORDER:
        return field in row and bool(_ORDER[op](str(row[field]), str(expected)))
    return str(row.get(field)).casefold() == str(expected).casefold()


# ---------------------------------------------------------------------------------- storage
class _Entity(dict[str, Any]):
    def __init__(self, data: Mapping[str, Any], etag: str) -> None:
        super().__init__(data)
        self.metadata = {"etag": etag}


class MemoryTable:
    """Point operations of `azure.data.tables.TableClient`, with its ETag conditions and errors."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._etags = itertools.count(1)

    def get_entity(self, partition_key: str, row_key: str, **_: Any) -> _Entity:
        found = self.rows.get((partition_key, row_key))
        if found is None:
            raise ResourceNotFoundError("not found")
        return _Entity(*found)

    def query_entities(self, query_filter: str, **_: Any) -> list[_Entity]:
        """`eq` clauses joined by `and`, each possibly an `or` of one field's values (`_matches`)."""
        return [_Entity(row, etag) for row, etag in self.rows.values() if _matches(row, query_filter)]

    def create_entity(self, entity: Mapping[str, Any], **_: Any) -> dict[str, str]:
        key = (entity["PartitionKey"], entity["RowKey"])
        if key in self.rows:
            raise ResourceExistsError("exists")
        return self._put(key, entity)

    def upsert_entity(self, entity: Mapping[str, Any], **_: Any) -> dict[str, str]:
        return self._put((entity["PartitionKey"], entity["RowKey"]), entity)

    def update_entity(
        self, entity: Mapping[str, Any], *, etag: str | None = None, match_condition: Any = None, **_: Any
    ) -> dict[str, str]:
        key = (entity["PartitionKey"], entity["RowKey"])
        self._check(key, etag, match_condition)
        return self._put(key, entity)

    def delete_entity(
        self, partition_key: str, row_key: str, *, etag: str | None = None, match_condition: Any = None
    ) -> None:
        key = (partition_key, row_key)
        if key not in self.rows:
            return  # deleting a missing entity succeeds, as in the SDK
        self._check(key, etag, match_condition)
        del self.rows[key]

    def submit_transaction(self, operations: Sequence[tuple[Any, ...]]) -> list[dict[str, str]]:
        """All or nothing, as a Table Storage entity group transaction: a create of a row that exists
        (or an update of a changed one) fails the whole transaction with `TableTransactionError`."""
        for kind, entity, *options in operations:
            key = (entity["PartitionKey"], entity["RowKey"])
            assert kind in ("upsert", "create", "update"), f"{kind} transactions are not modelled"
            try:
                if kind == "create" and key in self.rows:
                    raise ResourceExistsError("exists")
                if kind == "update":
                    extra = options[0] if options else {}
                    self._check(key, extra.get("etag"), extra.get("match_condition"))
            except (ResourceExistsError, ResourceNotFoundError, ResourceModifiedError) as exc:
                raise TableTransactionError(str(exc)) from exc
        return [self._put((e["PartitionKey"], e["RowKey"]), e) for _, e, *_ in operations]

    def _check(self, key: tuple[str, str], etag: str | None, condition: Any) -> None:
        if key not in self.rows:
            raise ResourceNotFoundError("not found")
        if condition == MatchConditions.IfNotModified and self.rows[key][1] != etag:
            raise ResourceModifiedError("modified")

    def _put(self, key: tuple[str, str], entity: Mapping[str, Any]) -> dict[str, str]:
        etag = f'W/"{next(self._etags)}"'
        self.rows[key] = (dict(entity), etag)
        return {"etag": etag}
