"""The engine's typed view of the two APIs: one gateway per side.

The engine and the bulk path speak in mappings and records; a gateway turns that into requests on
its own API. `BusinessCentralGateway` holds the BC company; `DataverseGateway` owns the Dataverse
`$batch` wire format. Both count the requests sent by the calling thread, so a journal entry says
what one change cost. Tests swap in the in-memory gateways of `tests/support/memory.py`.

Records are plain dicts as the API returns them, with `@odata.etag`; a write always names the
record it changes (`current`), so the gateway sends its ETag as `If-Match`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from shared import odata
from shared.companies import COMPANY_BIND, COMPANY_ENTITY_SET, COMPANY_TABLES, company_filter
from shared.connectors import business_central, dataverse
from shared.connectors.business_central import BatchOperation, BusinessCentralClient
from shared.connectors.dataverse import BatchRequest, DataverseClient, ItemResult
from shared.connectors.errors import ApiError
from shared.mapping.schema import EntityMapping, Side
from shared.odata import dataverse_in

Record = dict[str, Any]

READBACK = 500  # ids per Dataverse `In` query (the URL inside `$batch` stays well under 64 KB)


@dataclass(frozen=True)
class WriteResult:
    """One record of a bulk write: the record as written, or the API's refusal."""

    record: Record | None
    error: ApiError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Gateway(Protocol):
    """What the engine needs from either side."""

    side: Side

    def table(self, mapping: EntityMapping) -> str:
        """The entity set `mapping` synchronizes on this side."""
        ...

    def get(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None: ...

    def query_pages(
        self,
        mapping: EntityMapping,
        *,
        select: Sequence[str],
        filter: str | None,
        page_size: int | None = None,
    ) -> Iterator[list[Record]]: ...

    def query_many(
        self, mapping: EntityMapping, filters: Sequence[str], *, select: Sequence[str]
    ) -> list[Record]:
        """The records matching any of `filters` (each within the URL budget), the filters sent
        together in one `$batch` per 100 (BC) or 1,000 (Dataverse) instead of a request each."""
        ...

    def create(
        self, mapping: EntityMapping, body: Mapping[str, Any], *, select: Sequence[str], record_id: str | None
    ) -> Record: ...

    def update(
        self, mapping: EntityMapping, current: Record, body: Mapping[str, Any], *, select: Sequence[str]
    ) -> Record: ...

    def delete(self, mapping: EntityMapping, current: Record) -> None: ...

    def update_many(
        self,
        mapping: EntityMapping,
        changes: Sequence[tuple[Record, Mapping[str, Any]]],
        *,
        select: Sequence[str],
    ) -> list[WriteResult]:
        """Conditional updates in bulk; each succeeds or fails alone, results in order."""
        ...

    def requests_in_this_thread(self) -> int: ...

    def read_many(self, mapping: EntityMapping, ids: Sequence[str], *, select: Sequence[str]) -> list[Record]:
        """The records of `ids` that exist, in as few requests as the side's URL limits allow."""
        ...

    # Documents (a mapping with `lines`): the header with its lines, in one request each way.
    def get_document(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        """The header with its lines under the lines' navigation property."""
        ...

    def create_document(
        self,
        mapping: EntityMapping,
        body: Mapping[str, Any],
        lines: Sequence[Mapping[str, Any]],
        *,
        select: Sequence[str],
        record_id: str | None,
    ) -> Record:
        """Deep insert: the header and its lines in one request; the answer holds the lines."""
        ...

    def write_lines(self, mapping: EntityMapping, operations: Sequence[LineWrite]) -> list[WriteResult]:
        """Line creates, updates and deletes of one document, all or nothing, in one request."""
        ...


@dataclass(frozen=True)
class LineWrite:
    """One line write of a document: `current` (as read) for an update or delete, None for a create."""

    kind: str  # create, update, delete
    current: Record | None
    body: Mapping[str, Any]
    record_id: str | None = None  # Dataverse create: the deterministic id
    # A create: the document's id on the gateway's side; the gateway attaches the line to it in its own
    # wire format (BC: the lines' parent field; Dataverse: an `@odata.bind` to the header).
    parent_id: str | None = None


def dataverse_parent_bind(mapping: EntityMapping, parent_id: str) -> dict[str, str]:
    """What attaches a new Dataverse line to its document: `<parent>@odata.bind` to the header."""
    assert mapping.lines is not None
    return {f"{mapping.lines.dataverse.parent}@odata.bind": f"/{mapping.dataverse.entity_set}({parent_id})"}


class BcGateway(Gateway, Protocol):
    """Business Central besides the common operations: what its lookups and change scans need."""

    def modified_since(
        self, mapping: EntityMapping, since: dt.datetime, *, select: Sequence[str]
    ) -> Iterator[Record]: ...

    def query_set(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None,
        filter: str | None = None,
        page_size: int | None = None,
        expand: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        """Any entity set of the company (code tables, company contacts), not only mapped ones;
        `expand` names navigation properties read in the same request (`contactsInformation`)."""
        ...

    def related_contacts(self, mapping: EntityMapping, bc_id: str, *, filter: str) -> list[Record]: ...

    def create_many(
        self, mapping: EntityMapping, bodies: Sequence[Mapping[str, Any]], *, select: Sequence[str]
    ) -> list[WriteResult]:
        """Creates in bulk (JSON `$batch` of POSTs, 100 per request, not atomic): each succeeds or fails
        alone. Never resent once sent (BC assigns ids): a lost answer raises `AmbiguousWriteError`,
        and the caller's pending couplings tell what may have been created."""
        ...

    def query_document_pages(
        self, mapping: EntityMapping, *, select: Sequence[str], filter: str | None, page_size: int
    ) -> Iterator[list[Record]]:
        """Pages of documents, each with its lines (`$expand`)."""
        ...

    def web_client(self) -> str | None:
        """The BC web client URL with this company (`...?company=<name>`), for links; None if unknown."""
        ...

    def run_action(self, mapping: EntityMapping, record_id: str, name: str) -> None:
        """A bound action on one of the mapping's records (`makeOrder` on a sales quote)."""
        ...


class DvGateway(Gateway, Protocol):
    """Dataverse besides the common operations: idempotent bulk creates."""

    def upsert_many(
        self, mapping: EntityMapping, bodies: Sequence[Mapping[str, Any]]
    ) -> list[ItemResult]: ...

    def run_action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """An unbound Dataverse action (`FulfillSalesOrder`); its answer, None for 204."""
        ...


def web_client_base(api_url: str) -> str | None:
    """The web client of an online API URL: `https://api.businesscentral.dynamics.com/v2.0/<tenant>/<env>
    /api/v2.0` -> `https://businesscentral.dynamics.com/<tenant>/<env>/` (the sandbox: same host). None
    for an on-premises URL without `/v2.0/<tenant>/<env>/` (set BC_WEB_CLIENT_URL)."""
    parts = urlsplit(api_url)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 3 or segments[0] != "v2.0":
        return None
    host = (
        parts.netloc.removeprefix("api.") if parts.netloc.startswith("api.businesscentral.") else parts.netloc
    )
    return f"{parts.scheme}://{host}/{segments[1]}/{segments[2]}/"


def read_many_by_filter(
    gateway: Gateway, mapping: EntityMapping, ids: Sequence[str], *, select: Sequence[str]
) -> list[Record]:
    """Records by BC id through `query_many`, with the ids joined by `or` in URL-sized chunks."""
    filters = [odata.or_(*part) for part in odata.or_chunks([odata.eq("id", uuid.UUID(i)) for i in ids])]
    return gateway.query_many(mapping, filters, select=select) if filters else []


# A `$batch` part's URL is its request line: the filter percent-encoded (spaces, `&`, `#`, `%`, `+`),
# keeping the characters OData literals are written with.
_QUERY_SAFE = "'(),=[]$:."


# ------------------------------------------------------------------------------------- adapters
class BusinessCentralGateway:
    side: Side = "bc"

    def __init__(
        self, client: BusinessCentralClient, company_id: str, web_client_url: str | None = None
    ) -> None:
        self.client = client
        self.company_id = company_id
        # The web client's base URL (BC_WEB_CLIENT_URL, on-premises); derived from the API URL if None.
        self.web_client_url = web_client_url

    def web_client(self) -> str | None:
        base = self.web_client_url or web_client_base(self.client.base_url)
        if base is None:
            return None
        names = {str(c.get("id", "")).lower(): str(c.get("name") or "") for c in self.client.companies()}
        name = names.get(self.company_id.lower())
        return f"{base.rstrip('/')}/?company={quote(name, safe='')}" if name else None

    def table(self, mapping: EntityMapping) -> str:
        return mapping.bc.entity_set

    def get(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        found = self.client.get(self.company_id, mapping.bc.entity_set, record_id, select=select)
        return dict(found) if found is not None else None

    def read_many(self, mapping: EntityMapping, ids: Sequence[str], *, select: Sequence[str]) -> list[Record]:
        """`id eq ... or ...` filters within `odata.URL_FILTER_CHARS` (30 or so ids each), 100 of
        them in one `$batch`."""
        return read_many_by_filter(self, mapping, ids, select=select)

    def query_many(
        self, mapping: EntityMapping, filters: Sequence[str], *, select: Sequence[str]
    ) -> list[Record]:
        return self.client.query_many(self.company_id, mapping.bc.entity_set, filters, select=select)

    def query_pages(
        self,
        mapping: EntityMapping,
        *,
        select: Sequence[str],
        filter: str | None,
        page_size: int | None = None,
    ) -> Iterator[list[Record]]:
        return self.client.query_pages(
            self.company_id,
            mapping.bc.entity_set,
            select=select,
            filter=filter,
            page_size=page_size or business_central.MAX_PAGE_SIZE,
        )

    def query_set(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None,
        filter: str | None = None,
        page_size: int | None = None,
        expand: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        return self.client.query(
            self.company_id,
            entity_set,
            select=select,
            filter=filter,
            page_size=page_size or business_central.MAX_PAGE_SIZE,
            expand=expand,
        )

    def modified_since(
        self, mapping: EntityMapping, since: dt.datetime, *, select: Sequence[str]
    ) -> Iterator[Record]:
        return self.client.modified_since(self.company_id, mapping.bc.entity_set, since, select=select)

    def related_contacts(self, mapping: EntityMapping, bc_id: str, *, filter: str) -> list[Record]:
        return self.client.related_contacts(self.company_id, mapping.bc.entity_set, bc_id, filter=filter)

    def create(
        self, mapping: EntityMapping, body: Mapping[str, Any], *, select: Sequence[str], record_id: str | None
    ) -> Record:
        # BC assigns ids (the engine keeps a pending coupling instead); it answers with the whole record.
        if record_id is not None:
            raise ValueError("Business Central assigns record ids; a create cannot choose one")
        return dict(self.client.create(self.company_id, mapping.bc.entity_set, body))

    def update(
        self, mapping: EntityMapping, current: Record, body: Mapping[str, Any], *, select: Sequence[str]
    ) -> Record:
        return dict(
            self.client.update(
                self.company_id, mapping.bc.entity_set, str(current["id"]), body, etag=current["@odata.etag"]
            )
        )

    def delete(self, mapping: EntityMapping, current: Record) -> None:
        self.client.delete(
            self.company_id, mapping.bc.entity_set, str(current["id"]), etag=current["@odata.etag"]
        )

    def update_many(
        self,
        mapping: EntityMapping,
        changes: Sequence[tuple[Record, Mapping[str, Any]]],
        *,
        select: Sequence[str],
    ) -> list[WriteResult]:
        """JSON `$batch` of conditional PATCHes (the client splits it into requests of 100)."""
        operations = [
            BatchOperation("PATCH", mapping.bc.entity_set, str(current["id"]), body, current["@odata.etag"])
            for current, body in changes
        ]
        return [
            WriteResult(answer.body if answer.ok else None, answer.error)
            for answer in self.client.batch(self.company_id, operations)
        ]

    def create_many(
        self, mapping: EntityMapping, bodies: Sequence[Mapping[str, Any]], *, select: Sequence[str]
    ) -> list[WriteResult]:
        # No ETag on a POST: the client marks the `$batch` not idempotent, so it is never resent.
        entity_set = mapping.bc.entity_set
        operations = [BatchOperation("POST", entity_set, None, dict(body), None) for body in bodies]
        return [
            WriteResult(dict(answer.body) if answer.ok and answer.body is not None else None, answer.error)
            for answer in self.client.batch(self.company_id, operations)
        ]

    def requests_in_this_thread(self) -> int:
        return int(self.client.stats.in_this_thread)

    def get_document(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        assert mapping.lines is not None
        found = self.client.get(
            self.company_id,
            mapping.bc.entity_set,
            record_id,
            select=select,
            expand=[mapping.lines.bc.entity_set],
        )
        return dict(found) if found is not None else None

    def run_action(self, mapping: EntityMapping, record_id: str, name: str) -> None:
        self.client.action(self.company_id, mapping.bc.entity_set, record_id, name)

    def query_document_pages(
        self, mapping: EntityMapping, *, select: Sequence[str], filter: str | None, page_size: int
    ) -> Iterator[list[Record]]:
        assert mapping.lines is not None
        return self.client.query_pages(
            self.company_id, mapping.bc.entity_set, select=select, filter=filter,
            expand=[mapping.lines.bc.entity_set], page_size=page_size,
        )  # fmt: skip

    def create_document(
        self,
        mapping: EntityMapping,
        body: Mapping[str, Any],
        lines: Sequence[Mapping[str, Any]],
        *,
        select: Sequence[str],
        record_id: str | None,
    ) -> Record:
        assert mapping.lines is not None
        if record_id is not None:
            raise ValueError("Business Central assigns record ids; a create cannot choose one")
        nav = mapping.lines.bc.entity_set
        created = self.client.create(
            self.company_id,
            mapping.bc.entity_set,
            {**body, nav: [dict(line) for line in lines]},
            expand=[nav],
        )
        return dict(created)

    def write_lines(self, mapping: EntityMapping, operations: Sequence[LineWrite]) -> list[WriteResult]:
        """One atomic JSON `$batch` (`Isolation: snapshot`): a refused line changes nothing."""
        assert mapping.lines is not None
        entity_set = mapping.lines.bc.entity_set
        parent_field = mapping.lines.bc.parent_field
        batch = [
            BatchOperation(
                {"create": "POST", "update": "PATCH", "delete": "DELETE"}[op.kind],
                entity_set,
                None if op.current is None else str(op.current["id"]),
                None if op.kind == "delete" else _with_parent(op, parent_field),
                None if op.current is None else op.current["@odata.etag"],
            )
            for op in operations
        ]
        results: list[WriteResult] = []
        for start in range(0, len(batch), business_central.MAX_BATCH_OPERATIONS):
            answers = self.client.batch(
                self.company_id, batch[start : start + business_central.MAX_BATCH_OPERATIONS], atomic=True
            )
            results += [WriteResult(answer.body if answer.ok else None, answer.error) for answer in answers]
        return results


def _with_parent(op: LineWrite, parent_field: str) -> dict[str, Any]:
    body = dict(op.body)
    if op.kind == "create" and op.parent_id is not None:
        body[parent_field] = op.parent_id
    return body


@dataclass(frozen=True)
class CompanyTag:
    """One BC company's rows in a Dataverse shared by several (`shared.companies`): `row_id()` is
    its `bcbi_company` row (asked once, when first needed); `home` also takes untagged rows."""

    row_id: Callable[[], str]
    home: bool


class DataverseGateway:
    side: Side = "dv"

    def __init__(self, client: DataverseClient, company: CompanyTag | None = None) -> None:
        self.client = client
        # None: one company, nothing tagged or filtered (as before there were several).
        self.company = company

    def table(self, mapping: EntityMapping) -> str:
        return mapping.dataverse.table

    def _tagged(self, mapping: EntityMapping) -> CompanyTag | None:
        return self.company if mapping.dataverse.table in COMPANY_TABLES else None

    def _scoped_filter(self, mapping: EntityMapping, filter: str | None) -> str | None:
        tag = self._tagged(mapping)
        if tag is None:
            return filter
        own = company_filter(tag.row_id(), include_untagged=tag.home)
        return f"{own} and ({filter})" if filter else own

    def _stamped(self, mapping: EntityMapping, body: Mapping[str, Any]) -> Mapping[str, Any]:
        tag = self._tagged(mapping)
        if tag is None or COMPANY_BIND in body:
            return body
        return {**body, COMPANY_BIND: f"/{COMPANY_ENTITY_SET}({tag.row_id()})"}

    def get(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        found = self.client.get(mapping.dataverse.entity_set, record_id, select=select)
        return dict(found) if found is not None else None

    def run_action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.client.action(name, body)

    def query_pages(
        self,
        mapping: EntityMapping,
        *,
        select: Sequence[str],
        filter: str | None,
        page_size: int | None = None,
    ) -> Iterator[list[Record]]:
        return self.client.query_pages(
            mapping.dataverse.entity_set,
            select=select,
            filter=self._scoped_filter(mapping, filter),
            page_size=page_size or dataverse.MAX_PAGE_SIZE,
        )

    def create(
        self, mapping: EntityMapping, body: Mapping[str, Any], *, select: Sequence[str], record_id: str | None
    ) -> Record:
        return dict(
            self.client.create(
                mapping.dataverse.entity_set, self._stamped(mapping, body), record_id=record_id, select=select
            )
        )

    def update(
        self, mapping: EntityMapping, current: Record, body: Mapping[str, Any], *, select: Sequence[str]
    ) -> Record:
        record_id = str(current[mapping.dataverse.primary_key])
        return dict(
            self.client.update(
                mapping.dataverse.entity_set, record_id, body, etag=current["@odata.etag"], select=select
            )
        )

    def delete(self, mapping: EntityMapping, current: Record) -> None:
        record_id = str(current[mapping.dataverse.primary_key])
        self.client.delete(mapping.dataverse.entity_set, record_id, etag=current["@odata.etag"])

    def update_many(
        self,
        mapping: EntityMapping,
        changes: Sequence[tuple[Record, Mapping[str, Any]]],
        *,
        select: Sequence[str],
    ) -> list[WriteResult]:
        """One `$batch` of conditional PATCHes that continues on error, each answering with the
        record as written."""
        pk, entity_set, columns = (
            mapping.dataverse.primary_key,
            mapping.dataverse.entity_set,
            ",".join(select),
        )
        requests = [
            BatchRequest(
                "PATCH",
                f"{entity_set}({current[pk]})?$select={columns}",
                body,
                {"If-Match": current["@odata.etag"], "Prefer": "return=representation"},
            )
            for current, body in changes
        ]
        return [
            WriteResult(dict(response.body) if response.ok else None, response.error())
            for response in self.client.batch(requests, continue_on_error=True)
        ]

    def read_many(self, mapping: EntityMapping, ids: Sequence[str], *, select: Sequence[str]) -> list[Record]:
        """Records by id with one `$batch` of `In` queries (the URL would be too long outside it)."""
        pk = mapping.dataverse.primary_key
        filters = [dataverse_in(pk, list(ids[i : i + READBACK])) for i in range(0, len(ids), READBACK)]
        return self._batched_queries(mapping, filters, select)

    def query_many(
        self, mapping: EntityMapping, filters: Sequence[str], *, select: Sequence[str]
    ) -> list[Record]:
        return self._batched_queries(mapping, [self._scoped_filter(mapping, f) or f for f in filters], select)

    def _batched_queries(
        self, mapping: EntityMapping, filters: Sequence[str], select: Sequence[str]
    ) -> list[Record]:
        if not filters:
            return []
        entity_set, columns = mapping.dataverse.entity_set, ",".join(select)
        requests = [
            BatchRequest(
                "GET",
                f"{entity_set}?$select={columns}&$filter={quote(f, safe=_QUERY_SAFE)}",
                headers={"Prefer": "odata.maxpagesize=5000"},
            )
            for f in filters
        ]
        records: list[Record] = []
        for f, response in zip(filters, self.client.batch(requests, continue_on_error=True), strict=True):
            error = response.error()
            if error is not None:
                raise error
            if response.body.get("@odata.nextLink"):  # more than a page: read that query's pages
                records.extend(
                    r for page in self.client.query_pages(entity_set, select=select, filter=f) for r in page
                )
            else:
                records.extend(response.body.get("value", []))
        return records

    def upsert_many(self, mapping: EntityMapping, bodies: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        return self.client.upsert_multiple(
            mapping.dataverse.entity_set, [self._stamped(mapping, b) for b in bodies]
        )

    def get_document(self, mapping: EntityMapping, record_id: str, *, select: Sequence[str]) -> Record | None:
        assert mapping.lines is not None
        found = self.client.get(
            mapping.dataverse.entity_set, record_id, select=select, expand=mapping.lines.dataverse.navigation
        )
        return dict(found) if found is not None else None

    def create_document(
        self,
        mapping: EntityMapping,
        body: Mapping[str, Any],
        lines: Sequence[Mapping[str, Any]],
        *,
        select: Sequence[str],
        record_id: str | None,
    ) -> Record:
        """Deep insert: the lines go in the header's collection-valued navigation property."""
        assert mapping.lines is not None
        nav = mapping.lines.dataverse.navigation
        return dict(
            self.client.create(
                mapping.dataverse.entity_set,
                {**body, nav: [dict(line) for line in lines]},
                record_id=record_id,
                select=select,
            )
        )

    def write_lines(self, mapping: EntityMapping, operations: Sequence[LineWrite]) -> list[WriteResult]:
        """One `$batch` change set (atomic): a refused line changes nothing."""
        assert mapping.lines is not None
        entity_set = mapping.lines.dataverse.entity_set
        pk = mapping.lines.dataverse.primary_key
        requests = []
        for op in operations:
            if op.kind == "create":
                body = {k: v for k, v in op.body.items() if k != pk}
                if op.parent_id is not None:
                    body.update(dataverse_parent_bind(mapping, op.parent_id))
                if op.record_id:
                    body = {pk: op.record_id, **body}
                requests.append(BatchRequest("POST", entity_set, body))
            elif op.kind == "update":
                assert op.current is not None
                url = f"{entity_set}({op.current[pk]})"
                requests.append(
                    BatchRequest("PATCH", url, dict(op.body), {"If-Match": op.current["@odata.etag"]})
                )
            else:
                assert op.current is not None
                url = f"{entity_set}({op.current[pk]})"
                requests.append(BatchRequest("DELETE", url, None, {"If-Match": op.current["@odata.etag"]}))
        if not requests:
            return []
        responses = self.client.batch(requests, continue_on_error=False, change_set=True)
        return [
            WriteResult(dict(r.body) if r.ok and isinstance(r.body, dict) else None, r.error())
            for r in responses
        ]

    def requests_in_this_thread(self) -> int:
        return int(self.client.stats.in_this_thread)
