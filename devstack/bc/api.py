"""The BC API v2.0 resource handlers, independent of the HTTP server so `$batch` can run them too.

`BcApi.handle(request)` serves companies, entity sets, single records and the navigation
properties we support (`salesOrders(id)/salesOrderLines`, `customers(id)/customerFinancialDetail`,
`customers(id)/contactsInformation`, `vendors(id)/contactsInformation`), the read-only computed set
`contactsInformation`, and `BcApi.batch(request)` the JSON `$batch`. Subscriptions need network I/O
(the handshake) and are served by the app directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from devstack.bc.config import BcSandboxConfig
from devstack.bc.entities import (
    BUSINESS_RELATIONS,
    COMPANIES,
    CONTACTS_INFORMATION,
    ENTITY_SETS,
    LINE_SETS,
    LINES_OF,
    READ_ONLY_SETS,
    WEBHOOK_SUPPORTED_RESOURCES,
    EntitySet,
)
from devstack.bc.errors import BcError, bad_request, record_not_found, resource_not_found
from devstack.bc.posting import run_action
from devstack.bc.queries import (
    QueryOptions,
    count_rows,
    page_size_from_prefer,
    parse_options,
    run_query,
    to_wire,
    to_wire_computed,
)
from devstack.bc.store import BcStore, normalize_guid

SEGMENT_RE = re.compile(r"^([A-Za-z$][A-Za-z$.]*)(?:\(([^()]*)\))?$")
JSON_TYPE = "application/json; odata.metadata=minimal"


# BC's line pages (page 30044 "APIV2 - Sales Order Lines", OnFindRecord) load lines only for an `id` or
# `documentId` filter (the navigation from the order sets the latter); without either they raise an Error().
_LINE_FILTER = re.compile(r"\b(?:id|documentId)\s+(?:eq|ne|gt|ge|lt|le)\s", re.IGNORECASE)


# The filter BC's "APIV2 - Contacts Information" page needs to load rows: relatedId and relatedType.
_RELATED_FILTER = re.compile(r"(?=.*\brelatedId\s+eq\s)(?=.*\brelatedType\s+eq\s)", re.IGNORECASE | re.DOTALL)


@dataclass
class ApiRequest:
    method: str
    path: str  # after `/api/v2.0/`, e.g. `companies(<id>)/customers`
    params: dict[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: Any
    user: str
    service_root: str  # absolute, ends with `/api/v2.0`
    url: str  # the full request URL (for `@odata.nextLink`)


@dataclass
class ApiResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Rollback(Exception):
    pass


def error_response(error: BcError) -> ApiResponse:
    return ApiResponse(error.status, error.body(), {"content-type": "application/json", **error.headers})


def parse_path(path: str) -> list[tuple[str, str | None]]:
    segments: list[tuple[str, str | None]] = []
    for raw in path.strip("/").split("/"):
        match = SEGMENT_RE.match(raw)
        if match is None:
            raise resource_not_found(raw)
        key = match.group(2)
        segments.append((match.group(1), key.strip("'") if key is not None else None))
    return segments


class BcApi:
    def __init__(self, store: BcStore, config: BcSandboxConfig) -> None:
        self.store = store
        self.config = config

    def handle(self, request: ApiRequest) -> ApiResponse:
        try:
            return self._route(request)
        except BcError as error:
            return error_response(error)

    def handle_runtime(self, request: ApiRequest) -> ApiResponse:
        """The runtime API (`/api/microsoft/runtime/v1.0`): only `companies(id)/webhookSupportedResources`."""
        try:
            segments = parse_path(request.path) if request.path else []
            if len(segments) != 2 or segments[0][0] != "companies" or segments[0][1] is None:
                raise resource_not_found(segments[-1][0] if segments else "(root)")
            company_id = self.store.company(segments[0][1]).id
            name, key = segments[1]
            if name != WEBHOOK_SUPPORTED_RESOURCES.name or key is not None:
                raise resource_not_found(name)
            self._only(request, "GET")
            return self._webhook_supported_resources(request, company_id)
        except BcError as error:
            return error_response(error)

    def _webhook_supported_resources(self, request: ApiRequest, company_id: str) -> ApiResponse:
        """BC's page 5460 lists every API page a subscription can name ("v2.0/customers"; the pages
        of other publishers as "<publisher>/<group>/<version>/<set>"): here the sandbox's v2.0 sets
        that `POST subscriptions` accepts, so a client can decide from it which sets to subscribe and
        which to poll. Rows have no `@odata.etag` (a temporary table; unverified)."""
        entity = WEBHOOK_SUPPORTED_RESOURCES
        rows = [{"resource": f"v2.0/{e.name}"} for e in ENTITY_SETS.values() if e.webhook_supported]
        context = f"{request.service_root}/$metadata#companies({company_id})/{entity.name}"
        return self._query(request, entity, rows, context)

    # --- routing ----------------------------------------------------------------------------------

    def _route(self, request: ApiRequest) -> ApiResponse:
        if request.method != "GET" and request.headers.get("data-access-intent", "").lower() == "readonly":
            raise bad_request(
                "The Data-Access-Intent header value ReadOnly can only be used with GET requests."
            )
        segments = parse_path(request.path)
        name, key = segments[0]
        if name != "companies":
            raise resource_not_found(name)
        if len(segments) == 1:
            self._only(request, "GET")
            return self._companies(request, key)
        if key is None:
            raise bad_request("A company id is required: companies(<id>)/<entity set>.")
        company_id = self.store.company(key).id
        set_name, record_key = segments[1]
        if set_name == CONTACTS_INFORMATION.name:
            if len(segments) != 2:
                raise resource_not_found(segments[2][0])
            return self._contacts_information(request, company_id, set_name, record_key)
        entity = ENTITY_SETS.get(set_name)
        if entity is None:
            raise resource_not_found(set_name)
        if len(segments) == 2:
            if record_key is None:
                return self._collection(request, company_id, entity)
            return self._item(request, company_id, entity, normalize_guid(record_key))
        if len(segments) == 3 and record_key is None and segments[2] == ("$count", None):
            return self._count(request, company_id, entity)
        if len(segments) == 3 and record_key is not None:
            return self._navigation(request, company_id, entity, normalize_guid(record_key), segments[2])
        raise resource_not_found(request.path)

    @staticmethod
    def _only(request: ApiRequest, *methods: str) -> None:
        if request.method not in methods:
            raise BcError(
                405,
                "BadRequest_MethodNotAllowed",
                f"The {request.method} method is not allowed on this resource.",
            )

    def _companies(self, request: ApiRequest, key: str | None) -> ApiResponse:
        """`companies` answers the query options as any set does (a lookup by `name` must find it)."""
        context = f"{request.service_root}/$metadata#companies"
        if key is None:
            with self.store.lock:
                rows = [c.to_json() for c in self.store.companies.values()]
            return self._query(request, COMPANIES, rows, context)
        options = parse_options(COMPANIES, {k: v for k, v in request.params.items() if k == "$select"})
        company = to_wire_computed(COMPANIES, self.store.company(key).to_json(), options.select)
        return ApiResponse(200, {"@odata.context": context + "/$entity", **company})

    def _navigation(
        self,
        request: ApiRequest,
        company_id: str,
        entity: EntitySet,
        record_id: str,
        segment: tuple[str, str | None],
    ) -> ApiResponse:
        name, key = segment
        parent = self.store.get(company_id, entity.name, record_id)
        if entity.name == "customers" and name == "customerFinancialDetail" and key is None:
            self._only(request, "GET")
            return ApiResponse(200, self.store.financial_details(company_id)[parent["id"]])
        if entity.name in BUSINESS_RELATIONS and name == CONTACTS_INFORMATION.name:
            path = f"{entity.name}({parent['id']})/{name}"
            return self._contacts_information(request, company_id, path, key, (entity.name, parent["id"]))
        if name.startswith("Microsoft.NAV.") and key is None:
            self._only(request, "POST")
            run_action(self.store, company_id, entity.name, parent["id"], name, request.user)
            return ApiResponse(204)
        if LINES_OF.get(entity.name) != name:
            raise resource_not_found(name)
        lines = ENTITY_SETS[name]
        if key is None:
            return self._collection(request, company_id, lines, parent_id=parent["id"])
        line = self.store.get(company_id, lines.name, normalize_guid(key))
        if line["documentId"] != parent["id"]:
            raise record_not_found(lines.caption, key)
        return self._item(request, company_id, lines, line["id"])

    # --- collections and items --------------------------------------------------------------------

    def _collection(
        self, request: ApiRequest, company_id: str, entity: EntitySet, parent_id: str | None = None
    ) -> ApiResponse:
        # Read-only pages (itemLedgerEntries) answer only GET (unverified: BC's exact refusal).
        self._only(request, "GET", *(() if entity.name in READ_ONLY_SETS else ("POST",)))
        context = f"{request.service_root}/$metadata#companies({company_id})/{entity.name}"
        if request.method == "POST":
            body = _body(request)
            deep = next(
                (n for n in entity.expands if n in LINE_SETS and isinstance(body, dict) and n in body), None
            )
            if deep is not None:
                record, _lines = self.store.create_document(
                    company_id, entity.name, body, request.user, lines_set=deep
                )
            else:
                record = self.store.create(company_id, entity.name, body, request.user, parent_id=parent_id)
            created = {"@odata.context": context + "/$entity", **to_wire(entity, record)}
            expand = parse_options(entity, {k: v for k, v in request.params.items() if k == "$expand"}).expand
            self._expand(company_id, entity, expand, [record], [created])
            location = f"{request.service_root}/companies({company_id})/{entity.name}({record['id']})"
            return ApiResponse(201, created, {"etag": record["_etag"], "location": location})
        self._require_document_filter(request, entity, parent_id)
        rows = self.store.rows(company_id, entity.name)
        if parent_id is not None:
            rows = [r for r in rows if r["documentId"] == parent_id]

        def write(options: QueryOptions, page: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
            value = [to_wire(entity, row, options.select) for row in page]
            self._expand(company_id, entity, options.expand, page, value)
            return value

        return self._query(request, entity, rows, context, write)

    @staticmethod
    def _require_document_filter(request: ApiRequest, entity: EntitySet, parent_id: str | None) -> None:
        """Reading a line set needs the document (BC's OnFindRecord: an `id` or `documentId` filter)."""
        if entity.name not in LINE_SETS or parent_id is not None:
            return
        if not _LINE_FILTER.search(request.params.get("$filter", "")):
            raise bad_request(
                "You must specify an Id or a Document Id to get the lines.", "Application_DialogException"
            )

    def _count(self, request: ApiRequest, company_id: str, entity: EntitySet) -> ApiResponse:
        """`<set>/$count` (OData v4): the number of rows `$filter` matches, as text/plain."""
        self._only(request, "GET")
        self._require_document_filter(request, entity, None)
        options = parse_options(entity, {k: v for k, v in request.params.items() if k == "$filter"})
        total = count_rows(self.store.rows(company_id, entity.name), options)
        return ApiResponse(200, str(total), {"content-type": "text/plain; charset=utf-8"})

    def _query(
        self,
        request: ApiRequest,
        entity: EntitySet,
        rows: Sequence[Mapping[str, Any]],
        context: str,
        write: Callable[[QueryOptions, list[Mapping[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> ApiResponse:
        """One page of a collection GET: query options, `Prefer: odata.maxpagesize`, nextLink. `write`
        turns the page into wire rows; by default each row as stored, computed fields included."""
        options = parse_options(entity, request.params)
        prefer = request.headers.get("prefer")
        page_size = page_size_from_prefer(prefer, self.config.max_page_size)
        page, token = run_query(entity, rows, options, page_size)
        body: dict[str, Any] = {"@odata.context": context}
        if options.count:
            body["@odata.count"] = count_rows(rows, options)
        body["value"] = (
            write(options, page) if write else [to_wire_computed(entity, row, options.select) for row in page]
        )
        if token is not None:
            body["@odata.nextLink"] = _next_link(request.url, token)
        headers = {}
        if prefer and "maxpagesize" in prefer.lower():
            headers["preference-applied"] = f"odata.maxpagesize={page_size}"
        return ApiResponse(200, body, headers)

    def _contacts_information(
        self,
        request: ApiRequest,
        company_id: str,
        path: str,
        key: str | None,
        parent: tuple[str, str] | None = None,
    ) -> ApiResponse:
        """`contactsInformation` (read-only, computed): the company contacts with a business relation
        and their persons; under `customers(id)`/`vendors(id)` only that record's. As in BC (page 30072
        loads its rows from the filters), the company-level set answers only a `$filter` on both
        `relatedId` and `relatedType`: one related record per request, never the whole relation table."""
        self._only(request, "GET")
        if parent is None and not _RELATED_FILTER.search(request.params.get("$filter", "")):
            raise bad_request("id type not specified.", "Application_DialogException")
        entity = CONTACTS_INFORMATION
        context = f"{request.service_root}/$metadata#companies({company_id})/{path}"
        rows = self.store.contacts_information(company_id, parent)
        if key is None:
            return self._query(request, entity, rows, context)
        contact_id = normalize_guid(key)
        row = next((r for r in rows if r["id"] == contact_id), None)
        if row is None:
            raise record_not_found(entity.caption, contact_id)
        options = parse_options(entity, {k: v for k, v in request.params.items() if k == "$select"})
        return ApiResponse(
            200, {"@odata.context": context + "/$entity", **to_wire_computed(entity, row, options.select)}
        )

    def _item(self, request: ApiRequest, company_id: str, entity: EntitySet, record_id: str) -> ApiResponse:
        self._only(request, "GET", *(() if entity.name in READ_ONLY_SETS else ("PATCH", "DELETE")))
        context = f"{request.service_root}/$metadata#companies({company_id})/{entity.name}/$entity"
        if request.method == "DELETE":
            self.store.delete(
                company_id, entity.name, record_id, request.user, if_match=request.headers.get("if-match")
            )
            return ApiResponse(204)
        if request.method == "PATCH":
            record = self.store.update(
                company_id,
                entity.name,
                record_id,
                _body(request),
                request.user,
                if_match=request.headers.get("if-match"),
            )
            return ApiResponse(
                200, {"@odata.context": context, **to_wire(entity, record)}, {"etag": record["_etag"]}
            )
        options = parse_options(
            entity, {k: v for k, v in request.params.items() if k in ("$select", "$expand")}
        )
        record = self.store.get(company_id, entity.name, record_id)
        wire = to_wire(entity, record, options.select)
        self._expand(company_id, entity, options.expand, [record], [wire])
        return ApiResponse(200, {"@odata.context": context, **wire}, {"etag": record["_etag"]})

    def _expand(
        self,
        company_id: str,
        entity: EntitySet,
        expand: list[str],
        records: list[Mapping[str, Any]],
        wires: list[dict[str, Any]],
    ) -> None:
        if "customerFinancialDetail" in expand:
            details = self.store.financial_details(company_id)
            for record, wire in zip(records, wires, strict=True):
                wire["customerFinancialDetail"] = details[record["id"]]
        if CONTACTS_INFORMATION.name in expand:
            # As `<set>(id)/contactsInformation`: that record's company contact and its persons.
            info = CONTACTS_INFORMATION
            for record, wire in zip(records, wires, strict=True):
                rows = self.store.contacts_information(company_id, (entity.name, record["id"]))
                wire[info.name] = [to_wire_computed(info, row) for row in rows]
        line_set = LINES_OF.get(entity.name)
        if line_set is not None and line_set in expand:
            lines = ENTITY_SETS[line_set]
            for record, wire in zip(records, wires, strict=True):
                wire[line_set] = [
                    to_wire(lines, line) for line in self.store.lines_of(company_id, record["id"], line_set)
                ]

    # --- $batch -----------------------------------------------------------------------------------

    def batch(self, request: ApiRequest) -> ApiResponse:
        """JSON `$batch` (docs/bc-sandbox.md#sources): at most `max_batch_operations`, each operation
        answered as it ran. With `Isolation: snapshot` the batch is one transaction: when an operation
        fails, every change of the batch is rolled back, yet the operations that had succeeded keep
        their 200/201/204 answers, as Microsoft's example shows (a client must look for the failed one).
        The operations after a failure still run, inside the transaction that is rolled back
        (unverified: whether BC runs them)."""
        try:
            operations = self._batch_operations(request)
        except BcError as error:
            return error_response(error)
        atomic = request.headers.get("isolation", "").strip().lower() == "snapshot"
        responses: list[dict[str, Any]] = []
        if not atomic:
            for op_id, sub in operations:
                responses.append(_batch_entry(op_id, self.handle(sub)))
            return ApiResponse(200, {"responses": responses})
        try:
            with self.store.transaction():
                for op_id, sub in operations:
                    responses.append(_batch_entry(op_id, self.handle(sub)))
                if any(entry["status"] >= 400 for entry in responses):
                    raise _Rollback
        except _Rollback:
            pass
        return ApiResponse(200, {"responses": responses})

    def _batch_operations(self, request: ApiRequest) -> list[tuple[str, ApiRequest]]:
        body = request.body
        items = body.get("requests") if isinstance(body, Mapping) else None
        if not isinstance(items, list):
            raise bad_request(
                'A JSON batch body is {"requests": [{"id", "method", "url", "headers", "body"}]}.'
            )
        if len(items) > self.config.max_batch_operations:
            # ODataLib's MaxPartsPerBatch refusal (BC's OData stack is built on it; BC's exact wording
            # is unverified), before any operation runs; then the sandbox's hint.
            limit = self.config.max_batch_operations
            raise bad_request(
                "The current batch message contains too many parts. A maximum number of "
                f"'{limit}' query operations and change sets are allowed in a batch message. "
                f"This batch has {len(items)}: split it into batches of at most {limit}."
            )
        operations: list[tuple[str, ApiRequest]] = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
                raise bad_request(f"Batch operation {index} needs at least 'method' and 'url'.")
            op_id = str(item.get("id", index + 1))
            method = str(item.get("method", "GET")).upper()
            parts = urlsplit(item["url"])
            path = parts.path.split("/api/v2.0/", 1)[-1].lstrip("/")
            if path.startswith(("$batch", "subscriptions")):
                raise bad_request(
                    f"Batch operation '{op_id}': {path.split('(')[0]} cannot be used inside $batch."
                )
            headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
            url = f"{request.service_root}/{path}" + (f"?{parts.query}" if parts.query else "")
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
            sub = ApiRequest(
                method, path, params, headers, item.get("body"), request.user, request.service_root, url
            )
            operations.append((op_id, sub))
        return operations


def _batch_entry(op_id: str, response: ApiResponse) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": op_id, "status": response.status, "headers": dict(response.headers)}
    if response.body is not None:
        entry["headers"].setdefault("content-type", JSON_TYPE)
        entry["body"] = response.body
    return entry


def _body(request: ApiRequest) -> Any:
    if request.body is None:
        raise bad_request("The request body is empty; send the record's fields as a JSON object.")
    return request.body


def _next_link(url: str, token: str) -> str:
    parts = urlsplit(url)
    params = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in ("$skiptoken", "$top", "$skip")
    ]
    params.append(("$skiptoken", token))
    query = urlencode(params, quote_via=quote, safe="$',()")
    return urlunsplit(parts._replace(query=query))
