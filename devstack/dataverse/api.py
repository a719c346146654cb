"""The Dataverse Web API v9.2 over the in-memory store: one request in, one response out.

Plain data in and out (no ASGI) so `$batch` can run its parts through the same code as top-level
requests. Behaviour follows Microsoft's documentation (docs/dataverse-sandbox.md#sources) of CRUD,
upsert, ETags, paging, change tracking and CreateMultiple / UpdateMultiple / UpsertMultiple.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

from devstack.dataverse import errors, metadata, metadata_api, sales_actions
from devstack.dataverse.bulk_delete import BulkDeleteJobs
from devstack.dataverse.customization import Customizer
from devstack.dataverse.errors import DataverseError
from devstack.dataverse.expand import Expansion, parse_expand
from devstack.dataverse.query_functions import build_query_functions
from devstack.dataverse.schema import Kind, Table
from devstack.dataverse.store import LOOKUP_TYPE, Caller, Store, UpsertMode, etag, parse_key
from devstack.sandbox_common.odata_query import (
    Predicate,
    QueryError,
    UnknownPropertyError,
    compile_filter,
    parse_orderby,
    parse_select,
)

API_PREFIX = "/api/data/v9.2/"
ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
# Tables whose reference lists no CreateMultiple / UpdateMultiple / UpsertMultiple message.
NO_MULTIPLE = frozenset({"productpricelevel"})
_PATH_RE = re.compile(r"^(?P<set>[A-Za-z_$][A-Za-z0-9_]*)(?:\((?P<key>.*)\))?(?:/(?P<rest>.+))?$")
_COOKIE_RE = re.compile(r'(\w+)="([^"]*)"')
TRACKED_FORBIDDEN = ("$filter", "$orderby", "$expand", "$top")
# Query options each kind of GET implements; anything else named here or starting with `$` is refused
# with a 400 naming it, never ignored (an ignored `fetchXml` or `$apply` would answer every row).
COLLECTION_OPTIONS = frozenset(
    {"$select", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$deltatoken"}
)
RECORD_OPTIONS = frozenset({"$select"})
COUNT_OPTIONS = frozenset({"$filter"})
# Dataverse's own (non-`$`) query options: real ones the sandbox does not implement.
DATAVERSE_OPTIONS = ("fetchXml", "savedQuery", "userQuery")


@dataclass
class ApiRequest:
    method: str
    path: str  # after /api/data/v9.2/, percent-decoded
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    caller: Caller
    base_url: str  # ends with /api/data/v9.2/


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Modelled server time beyond the handler's CPU time (a bulk action's per-record cost), which
    # the service-protection layer adds to the caller's execution-time account.
    execution_ms: float = 0.0

    @staticmethod
    def json(status: int, payload: Any, headers: dict[str, str] | None = None) -> ApiResponse:
        merged = {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0"}
        merged.update(headers or {})
        return ApiResponse(status, merged, dump_json(payload))

    @staticmethod
    def error(exc: DataverseError) -> ApiResponse:
        return ApiResponse.json(exc.status, exc.body(), exc.headers)


def dump_json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def parse_prefer(header: str | None) -> dict[str, str]:
    """`Prefer: odata.maxpagesize=10, return=representation` as {name: value}."""
    result: dict[str, str] = {}
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name:
            result[name.strip().lower()] = value.strip().strip('"')
    return result


class WebApi:
    def __init__(
        self,
        store: Store,
        *,
        max_page_size: int,
        token_expiry: Callable[[], dt.timedelta],
        whoami: Callable[[Caller], dict[str, Any]],
        bulk_delete_delay: Callable[[], float] = lambda: 5.0,
        solution_import_delay: Callable[[], float] = lambda: 5.0,
        bulk_ms_per_record: Callable[[str], float] = lambda action: 0.0,
        bulk_messages: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.bulk_ms_per_record = bulk_ms_per_record
        self._bulk_messages = bulk_messages
        self.bulk_delete = BulkDeleteJobs(store, bulk_delete_delay)
        self.customizer = Customizer(store, solution_import_delay)
        self.max_page_size = max_page_size
        self._token_expiry = token_expiry
        self._whoami = whoami

    def handle(self, request: ApiRequest) -> ApiResponse:
        try:
            # Asynchronous jobs run between requests, on the sandbox clock.
            self.bulk_delete.run_due()
            self.customizer.run_due()
            return self._dispatch(request)
        except DataverseError as exc:
            return ApiResponse.error(exc)
        except UnknownPropertyError as exc:
            return ApiResponse.error(errors.bad_request(str(exc)))
        except QueryError as exc:
            return ApiResponse.error(errors.bad_request(str(exc)))

    # --- routing ----------------------------------------------------------------------------------

    def _dispatch(self, request: ApiRequest) -> ApiResponse:
        path = request.path.strip("/")
        tables = [data.table for data in self.store.tables.values()]
        if path == "" and request.method == "GET":
            return ApiResponse.json(200, metadata_api.service_document(tables, request.base_url))
        if path == "$metadata" and request.method == "GET":
            headers = {"Content-Type": "application/xml", "OData-Version": "4.0"}
            return ApiResponse(200, headers, metadata.csdl(tables).encode())
        if path.startswith("EntityDefinitions"):
            if request.method == "POST":
                return self._define(request, path, tables)
            if request.method in ("PUT", "PATCH"):
                return self._update_definition(request, path, tables)
            body = metadata_api.handle(request.method, path, request.query, tables, request.base_url)
            return ApiResponse.json(200, body)
        if path.startswith("RelationshipDefinitions"):
            if request.method != "GET":
                raise _method_not_allowed(request.method, "RelationshipDefinitions")
            body = metadata_api.handle_relationships(path, request.query, tables, request.base_url)
            return ApiResponse.json(200, body)
        action = path.removeprefix("Microsoft.Dynamics.CRM.")
        if action == "CreateEntities":
            if request.method != "POST":
                raise _method_not_allowed(request.method, path)
            body = _json_body(request)
            solution = request.query.get("SolutionUniqueName") or body.get("SolutionUniqueName")
            created = self.customizer.create_entities(body, solution, request.caller)
            context = f"{request.base_url}$metadata#Microsoft.Dynamics.CRM.CreateEntitiesResponse"
            ids = [metadata.metadata_id(t.logical_name) for t in created]
            return ApiResponse.json(200, {"@odata.context": context, "EntityIds": ids})
        if action in ("ImportSolutionAsync", "ImportSolution"):
            if request.method != "POST":
                raise _method_not_allowed(request.method, path)
            if action == "ImportSolution":
                self.customizer.import_now(_json_body(request), request.caller)
                return ApiResponse(204, {"OData-Version": "4.0"})
            async_id, job_key = self.customizer.import_async(_json_body(request), request.caller)
            context = f"{request.base_url}$metadata#Microsoft.Dynamics.CRM.ImportSolutionAsyncResponse"
            return ApiResponse.json(
                200, {"@odata.context": context, "AsyncOperationId": async_id, "ImportJobKey": job_key}
            )
        if action == "PublishXml":
            if request.method != "POST":
                raise _method_not_allowed(request.method, path)
            # Definitions take effect when changed; publishing is checked for its caller only.
            self.customizer.require_administrator(request.caller, "Publishing customizations")
            if "ParameterXml" not in _json_body(request):
                raise errors.bad_request("PublishXml needs the parameter ParameterXml.")
            return ApiResponse(204, {"OData-Version": "4.0"})
        if action in sales_actions.ACTIONS:
            if request.method != "POST":
                raise _method_not_allowed(request.method, path)
            self.customizer.authorize(request.caller, self.store.table("quotes").table, ("write",))
            order = sales_actions.run(self.store, action, _json_body(request), request.caller)
            if order is None:
                return ApiResponse(204, {"OData-Version": "4.0"})
            table = self.store.table("salesorders").table
            body = {"@odata.context": f"{request.base_url}$metadata#salesorders/$entity"}
            body.update(self.project(table, order, None))
            return ApiResponse.json(200, body)
        if path in ("WhoAmI", "WhoAmI()"):
            if request.method != "GET":
                raise _method_not_allowed(request.method, path)
            body = self._whoami(request.caller)
            # Absolute, as every @odata.context the service sends.
            body["@odata.context"] = f"{request.base_url}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"
            return ApiResponse.json(200, body)
        if action in ("WinOpportunity", "LoseOpportunity"):
            if request.method != "POST":
                raise _method_not_allowed(request.method, path)
            self.store.close_opportunity(
                _json_body(request), won=action == "WinOpportunity", caller=request.caller
            )
            return ApiResponse(204, {"OData-Version": "4.0"})
        if path in ("BulkDelete", "Microsoft.Dynamics.CRM.BulkDelete"):
            if request.method != "POST":
                raise _method_not_allowed(request.method, path)
            job_id = self.bulk_delete.submit(_json_body(request), request.caller)
            context = f"{request.base_url}$metadata#Microsoft.Dynamics.CRM.BulkDeleteResponse"
            return ApiResponse.json(200, {"@odata.context": context, "JobId": job_id})
        match = _PATH_RE.match(path)
        if not match:
            raise errors.segment_not_found(path)
        entity_set, key_text, rest = match.group("set"), match.group("key"), match.group("rest")
        data = self.store.table(entity_set)
        table = data.table
        method = request.method
        bulk = rest is not None and rest.removeprefix("Microsoft.Dynamics.CRM.") in ACTIONS
        if bulk and not self._bulk_messages():
            # On-premises 9.1 has no such message: the route is unknown before any privilege check.
            raise errors.segment_not_found(str(rest))
        self.customizer.authorize(request.caller, table, _operations(method, rest, key_text))
        if rest is not None:
            if (
                entity_set == "systemusers"
                and key_text is not None
                and rest == "systemuserroles_association/$ref"
            ):
                return self._assign_role(request, table, key_text)
            if key_text is None and rest == "$count" and method == "GET":
                return self._count(request, table)
            action = rest.removeprefix("Microsoft.Dynamics.CRM.")
            if key_text is None and action in ACTIONS and method == "POST":
                return self._bulk(request, table, action)
            raise errors.segment_not_found(
                rest, f" The sandbox supports $count and {', '.join(ACTIONS)} here."
            )
        if key_text is None:
            if method == "GET":
                return self._query(request, table)
            if method == "POST":
                return self._create(request, table)
            raise _method_not_allowed(method, entity_set)
        key = parse_key(unquote(key_text), table)
        if method == "GET":
            return self._retrieve(request, table, key)
        if method == "PATCH":
            return self._upsert(request, table, key)
        if method == "DELETE":
            return self._delete(request, table, key)
        raise _method_not_allowed(method, f"{entity_set}({key_text})")

    # --- customization ----------------------------------------------------------------------------

    def _define(self, request: ApiRequest, path: str, tables: list[Table]) -> ApiResponse:
        """POST EntityDefinitions (a table), .../Attributes (a column), .../Keys (an alternate key)."""
        match = metadata_api.PATH.match(path)
        if not match or match.group("akey") or match.group("cast"):
            raise errors.bad_request(f"The sandbox does not implement POST on {path}.")
        solution = request.headers.get("mscrm.solutionuniquename")
        body = _json_body(request)
        base = f"{request.base_url}EntityDefinitions"
        if match.group("key") is None:
            if match.group("nav"):
                raise errors.segment_not_found(match.group("nav"))
            table = self.customizer.create_table_from_api(body, solution, request.caller)
            location = f"{base}({metadata.metadata_id(table.logical_name)})"
        else:
            table = metadata_api.find_table(match.group("key"), tables)
            table_id = metadata.metadata_id(table.logical_name)
            if match.group("nav") == "Attributes":
                column = self.customizer.create_attribute_from_api(table, body, solution, request.caller)
                location = (
                    f"{base}({table_id})/Attributes({metadata.metadata_id(table.logical_name, column.name)})"
                )
            elif match.group("nav") == "Keys":
                key = self.customizer.create_key_from_api(table, body, solution, request.caller)
                location = f"{base}({table_id})/Keys({metadata.metadata_id(table.logical_name, 'key', *key)})"
            else:
                raise errors.bad_request(
                    "An existing table is changed with PUT, which the sandbox does not implement; "
                    "POST creates its columns (.../Attributes) and keys (.../Keys)."
                )
        return ApiResponse(204, {"OData-Version": "4.0", "OData-EntityId": location})

    def _update_definition(self, request: ApiRequest, path: str, tables: list[Table]) -> ApiResponse:
        """`PUT EntityDefinitions(<MetadataId>)` with the whole definition, as Dataverse updates a table
        (`PATCH` is refused there too). The sandbox applies `ChangeTrackingEnabled`; every other property
        must be sent back as read."""
        match = metadata_api.PATH.match(path)
        if request.method == "PATCH":
            raise errors.bad_request(
                "EntityDefinitions are updated with PUT of the whole definition, not PATCH "
                "(learn.microsoft.com/power-apps/developer/data-platform/webapi/"
                "create-update-entity-definitions-using-web-api)."
            )
        if not match or match.group("key") is None or match.group("nav"):
            raise errors.bad_request(
                f"The sandbox implements PUT only on EntityDefinitions(<id>), not {path}."
            )
        table = metadata_api.find_table(match.group("key"), tables)
        self.customizer.require_administrator(request.caller, "Updating a table definition")
        self.customizer.update_table_from_api(table, _json_body(request))
        return ApiResponse(204, {"OData-Version": "4.0"})

    def _assign_role(self, request: ApiRequest, table: Table, key_text: str) -> ApiResponse:
        """`POST systemusers(<id>)/systemuserroles_association/$ref` `{"@odata.id": ".../roles(<id>)"}`."""
        if request.method != "POST":
            raise _method_not_allowed(request.method, "systemuserroles_association/$ref")
        self.customizer.require_administrator(request.caller, "Assigning a security role")
        reference = str(_json_body(request).get("@odata.id") or "")
        found = re.search(r"roles\(([0-9a-fA-F-]{36})\)$", reference)
        if not found:
            raise errors.bad_request('The body must be {"@odata.id": "<url>/roles(<roleid>)"}.')
        user_id = str(parse_key(unquote(key_text), table).get(table.primary_key))
        self.customizer.assign_role(user_id, found.group(1), request.caller)
        return ApiResponse(204, {"OData-Version": "4.0"})

    # --- reads ------------------------------------------------------------------------------------

    def _retrieve(self, request: ApiRequest, table: Table, key: Mapping[str, Any]) -> ApiResponse:
        _check_options(request, RECORD_OPTIONS)
        expansions = self._prepare(request, table)
        select = _select(request, table)
        record_id = self.store.resolve_key(table.entity_set, key)
        row = self.store.get(table.entity_set, record_id) if record_id else None
        if row is None:
            raise errors.not_found(table.logical_name, str(key.get(table.primary_key) or _key_text(key)))
        annotations = _wants_annotations(request)
        if_none_match = request.headers.get("if-none-match")
        if if_none_match and if_none_match != "null" and if_none_match == etag(row) and not annotations:
            return ApiResponse(304, {"ETag": etag(row), "OData-Version": "4.0"})
        body = {"@odata.context": _context(request, table, select, "/$entity")}
        body.update(self.project(table, row, select, annotations))
        self._expand(table, row, body, expansions, annotations)
        return ApiResponse.json(200, body)

    def _query(self, request: ApiRequest, table: Table) -> ApiResponse:
        _check_options(request, COLLECTION_OPTIONS)
        query = request.query
        prefer = parse_prefer(request.headers.get("prefer"))
        cookie = _parse_skiptoken(query.get("$skiptoken"))
        tracking = (
            "odata.track-changes" in prefer or "$deltatoken" in query or cookie.get("istracking") == "True"
        )
        if tracking:
            return self._delta(request, table, prefer, cookie)
        expansions = self._prepare(request, table)
        select = _select(request, table)
        predicate = self._filter(request, query.get("$filter"), table)
        orderby = _orderby(query.get("$orderby"), table)
        annotations = _wants_annotations(request)
        applied: list[str] = []
        if "$top" in query:
            # $top wins over paging: at most that many rows and no nextLink.
            top = _positive_int(query["$top"], "$top")
            rows, _ = self.store.page(table.entity_set, predicate, orderby, top)
            more = False
        else:
            size = self._page_size(prefer, applied)
            after_id = cookie.get("last")
            page_number = int(cookie.get("pagenumber", "1"))
            rows, more = self.store.page(
                table.entity_set, predicate, orderby, size, after_id=after_id, offset=(page_number - 1) * size
            )
        body: dict[str, Any] = {"@odata.context": _context(request, table, select, "")}
        if query.get("$count", "").lower() == "true":
            body["@odata.count"] = min(self.store.count(table.entity_set, predicate), 5000)
        body["value"] = []
        for row in rows:
            out = self.project(table, row, select, annotations)
            self._expand(table, row, out, expansions, annotations)
            body["value"].append(out)
        if more:
            next_cookie = {
                "pagenumber": str(int(cookie.get("pagenumber", "1")) + 1),
                "last": rows[-1][table.primary_key],
                "istracking": "False",
            }
            body["@odata.nextLink"] = _next_link(request, table, next_cookie)
        headers = {"Preference-Applied": ",".join(applied)} if applied else {}
        return ApiResponse.json(200, body, headers)

    def _delta(
        self, request: ApiRequest, table: Table, prefer: dict[str, str], cookie: dict[str, str]
    ) -> ApiResponse:
        if not table.change_tracking:
            # ChangeTrackingNotEnabledForEntity (Web service error codes).
            raise errors.bad_request(
                f"Entity {table.logical_name} isn't enabled for change tracking.",
                code=errors.CHANGE_TRACKING_NOT_ENABLED,
            )
        for option in TRACKED_FORBIDDEN:
            if option in request.query:
                raise errors.bad_request(
                    f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.'
                )
        select = _select(request, table)
        annotations = _wants_annotations(request)
        applied = ["odata.track-changes"]
        size = self._page_size(prefer, applied)
        page_number = int(cookie.get("pagenumber", "1"))
        base = f"{request.base_url}$metadata#{table.entity_set}{_select_suffix(select)}"
        if "$deltatoken" in request.query or "deltafrom" in cookie:
            since = (
                int(cookie["deltafrom"])
                if "deltafrom" in cookie
                else self._token_version(request.query["$deltatoken"])
            )
            until = int(cookie.get("deltato") or self.store.current_version())
            upserted, deleted = self.store.changes(table.entity_set, since, until)
            offset = (page_number - 1) * size
            # New and updated rows first, then deletes (docs/dataverse-sandbox.md#sources); only this page's
            # rows are rendered.
            page: list[dict[str, Any]] = [
                self.project(table, r, select, annotations) for r in upserted[offset : offset + size]
            ]
            deleted_context = f"{request.base_url}$metadata#{table.entity_set}/$deletedEntity"
            first_deleted = max(0, offset - len(upserted))
            page += [
                {"@odata.context": deleted_context, "id": i, "reason": "deleted"}
                for i in deleted[first_deleted : first_deleted + size - len(page)]
            ]
            body: dict[str, Any] = {"@odata.context": base + "/$delta", "value": page}
            if len(upserted) + len(deleted) > offset + size:
                next_cookie = {
                    "pagenumber": str(page_number + 1),
                    "istracking": "True",
                    "deltafrom": str(since),
                    "deltato": str(until),
                }
                body["@odata.nextLink"] = _next_link(request, table, next_cookie, drop=("$deltatoken",))
            else:
                body["@odata.deltaLink"] = self._delta_link(request, table, until)
            return ApiResponse.json(200, body, {"Preference-Applied": ",".join(applied)})
        # Initial load: every row now, paged by primary key; the deltaLink marks where it started.
        start_version = int(cookie.get("deltaversion") or self.store.current_version())
        rows, more = self.store.page(table.entity_set, None, [], size, after_id=cookie.get("last"))
        body = {"@odata.context": base, "value": [self.project(table, r, select, annotations) for r in rows]}
        if more:
            next_cookie = {
                "pagenumber": str(page_number + 1),
                "last": rows[-1][table.primary_key],
                "istracking": "True",
                "deltaversion": str(start_version),
            }
            body["@odata.nextLink"] = _next_link(request, table, next_cookie)
        else:
            body["@odata.deltaLink"] = self._delta_link(request, table, start_version)
        return ApiResponse.json(200, body, {"Preference-Applied": ",".join(applied)})

    def _delta_link(self, request: ApiRequest, table: Table, version: int) -> str:
        stamp = self.store.clock().astimezone(dt.UTC).strftime("%m/%d/%Y %H:%M:%S")
        token = quote(f"{version}!{stamp}", safe="")
        select = request.query.get("$select")
        query = f"$select={quote(select, safe=',')}&" if select else ""
        return f"{request.base_url}{table.entity_set}?{query}$deltatoken={token}"

    def _token_version(self, token: str) -> int:
        version_text, _, stamp = unquote(token).partition("!")
        try:
            version = int(version_text)
            issued = dt.datetime.strptime(stamp, "%m/%d/%Y %H:%M:%S").replace(tzinfo=dt.UTC)
        except ValueError:
            raise errors.bad_request(
                f"The $deltatoken '{token}' is not valid: use the @odata.deltaLink exactly as returned."
            ) from None
        if self.store.clock() - issued > self._token_expiry():
            raise errors.expired_token()
        return version

    def _count(self, request: ApiRequest, table: Table) -> ApiResponse:
        _check_options(request, COUNT_OPTIONS)
        predicate = self._filter(request, request.query.get("$filter"), table)
        count = self.store.count(table.entity_set, predicate)
        return ApiResponse(200, {"Content-Type": "text/plain", "OData-Version": "4.0"}, str(count).encode())

    def _prepare(self, request: ApiRequest, table: Table) -> list[_Prepared]:
        """`$expand` parsed and its nested options compiled once (a bad one is a 400 even with no rows)."""
        prepared: list[_Prepared] = []
        for item in _expansions(request, table, self.store.table_by_logical_name):
            nested = _options_request(request, item.options)
            if not item.collection:
                fixed = self.store.table_by_logical_name(item.target or item.column.targets[0])
                select = _select(nested, fixed) if fixed is not None else None
                prepared.append(_Prepared(item, select, None, [], 0))
                continue
            related = item.related
            assert related is not None
            top = item.options.get("$top")
            prepared.append(
                _Prepared(
                    item,
                    _select(nested, related),
                    self._filter(nested, item.options.get("$filter"), related),
                    _orderby(item.options.get("$orderby"), related),
                    _positive_int(top, "$top") if top is not None else self.max_page_size,
                )
            )
        return prepared

    def _expand(
        self,
        table: Table,
        row: Mapping[str, Any],
        out: dict[str, Any],
        prepared: list[_Prepared],
        annotations: bool,
    ) -> None:
        """Related rows inline: a lookup's target (or null), a relationship's rows (a list)."""
        for p in prepared:
            item = p.item
            if not item.collection:
                out[item.name] = self._expand_single(item, row, p.select, annotations)
                continue
            related = item.related
            assert related is not None
            matches = _related_to(
                row[table.primary_key], item.column.wire_name, table.logical_name, p.predicate
            )
            rows, _ = self.store.page(related.entity_set, matches, p.orderby, p.limit)
            out[item.name] = [self.project(related, r, p.select, annotations) for r in rows]

    def _expand_single(
        self, item: Expansion, row: Mapping[str, Any], select: list[str] | None, annotations: bool
    ) -> dict[str, Any] | None:
        wire = item.column.wire_name
        value = row.get(wire)
        actual = row.get(wire + LOOKUP_TYPE) or item.column.targets[0]
        if not value or (item.target is not None and actual != item.target):
            return None  # `parentcustomerid_account` of a row whose customer is a contact: null
        target_table = self.store.table_by_logical_name(str(actual))
        target = self.store.get(target_table.entity_set, value) if target_table else None
        if target is None or target_table is None:
            return None
        if select is not None and any(name not in target_table.columns for name in select):
            raise errors.unknown_property(
                target_table.logical_name, next(n for n in select if n not in target_table.columns)
            )
        return self.project(target_table, target, select, annotations)

    def _filter(self, request: ApiRequest, text: str | None, table: Table) -> Predicate | None:
        if text is None or not text.strip():
            return None
        aliases = {k: v for k, v in request.query.items() if k.startswith("@")}
        functions = build_query_functions(self.store.clock, request.caller.user_id)
        try:
            return compile_filter(text, fields=table.columns, functions=functions, aliases=aliases)
        except UnknownPropertyError as exc:
            raise errors.unknown_property(table.logical_name, exc.name) from None

    def _page_size(self, prefer: Mapping[str, str], applied: list[str]) -> int:
        if "odata.maxpagesize" not in prefer:
            return self.max_page_size
        size = min(_positive_int(prefer["odata.maxpagesize"], "odata.maxpagesize"), self.max_page_size)
        applied.append(f"odata.maxpagesize={size}")
        return size

    def project(
        self, table: Table, row: Mapping[str, Any], select: list[str] | None, annotations: bool = False
    ) -> dict[str, Any]:
        """A row as the Web API returns it: `@odata.etag`, the selected columns, always the key."""
        out: dict[str, Any] = {"@odata.etag": etag(row)}
        columns = select if select is not None else list(table.columns)
        for name in columns:
            value = row.get(name)
            out[name] = value
            if annotations and value is not None:
                self._annotate(table, name, value, row, out)
        out[table.primary_key] = row[table.primary_key]
        return out

    def _annotate(
        self, table: Table, name: str, value: Any, row: Mapping[str, Any], out: dict[str, Any]
    ) -> None:
        column = table.columns[name]
        if column.kind is Kind.LOOKUP:
            logical = row.get(name + LOOKUP_TYPE) or column.targets[0]
            out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = logical
            target_table = next(
                (t.table for t in self.store.tables.values() if t.table.logical_name == logical), None
            )
            if target_table is not None:
                target = self.store.get(target_table.entity_set, value)
                if target is not None:
                    out[f"{name}@OData.Community.Display.V1.FormattedValue"] = target.get(
                        target_table.primary_name
                    )
        elif column.kind is Kind.CHOICE and column.choices and value in column.choices:
            out[f"{name}@OData.Community.Display.V1.FormattedValue"] = column.choices[value]

    # --- writes -----------------------------------------------------------------------------------

    def _create(self, request: ApiRequest, table: Table) -> ApiResponse:
        body = _json_body(request)
        row = self.store.create(table.entity_set, body, request.caller)
        return self._written(request, table, row, 201)

    def _upsert(self, request: ApiRequest, table: Table, key: Mapping[str, Any]) -> ApiResponse:
        body = _json_body(request)
        sales_actions.refuse_state_change(table.logical_name, body)
        if_match = request.headers.get("if-match")
        if_none_match = request.headers.get("if-none-match")
        mode: UpsertMode = "upsert"
        if if_none_match == "*":
            mode = "create_only"
        elif if_match == "*":
            mode = "update_only"
        row, created = self.store.upsert(
            table.entity_set,
            key,
            body,
            request.caller,
            mode=mode,
            if_match=if_match if if_match not in (None, "*") else None,
        )
        return self._written(request, table, row, 201 if created else 200, key=key)

    def _written(
        self,
        request: ApiRequest,
        table: Table,
        row: Mapping[str, Any],
        status: int,
        *,
        key: Mapping[str, Any] | None = None,
    ) -> ApiResponse:
        prefer = parse_prefer(request.headers.get("prefer"))
        if prefer.get("return") == "representation":
            select = _select(request, table)
            body = {"@odata.context": _context(request, table, select, "/$entity")}
            body.update(self.project(table, row, select, _wants_annotations(request)))
            headers = {"Preference-Applied": "return=representation", "ETag": etag(row)}
            return ApiResponse.json(status, body, headers)
        locator = _key_text(key) if key and table.primary_key not in key else row[table.primary_key]
        entity_id = f"{request.base_url}{table.entity_set}({locator})"
        return ApiResponse(204, {"OData-EntityId": entity_id, "OData-Version": "4.0"})

    def _delete(self, request: ApiRequest, table: Table, key: Mapping[str, Any]) -> ApiResponse:
        record_id = self.store.resolve_key(table.entity_set, key)
        if record_id is None:
            raise errors.not_found(table.logical_name, str(key.get(table.primary_key) or _key_text(key)))
        self.store.delete(
            table.entity_set, record_id, request.caller, if_match=request.headers.get("if-match")
        )
        return ApiResponse(204, {"OData-Version": "4.0"})

    def _bulk(self, request: ApiRequest, table: Table, action: str) -> ApiResponse:
        if table.logical_name in NO_MULTIPLE:
            raise errors.bad_request(
                f"The '{action}' method does not support entities of type '{table.logical_name}'.", ""
            )
        body = _json_body(request)
        targets = body.get("Targets")
        if not isinstance(targets, list) or not targets:
            raise errors.bad_request(
                f"{action} needs a non-empty 'Targets' array of {table.logical_name} records."
            )
        for index, target in enumerate(targets):
            if not isinstance(target, dict) or target.get("@odata.type") != table.type_name:
                raise errors.bad_request(
                    f'Targets[{index}] must carry "@odata.type": "{table.type_name}" (every item needs it).'
                )
        ids: list[str] = []
        with self.store.transaction():  # standard tables: all or nothing
            for target in targets:
                if action == "CreateMultiple":
                    ids.append(self.store.create(table.entity_set, target, request.caller)[table.primary_key])
                    continue
                key = self._target_key(table, target)
                if action == "UpdateMultiple":
                    if key is None:
                        raise errors.bad_request(
                            f"UpdateMultiple targets need '{table.primary_key}' or '@odata.id'."
                        )
                    record_id = self.store.resolve_key(table.entity_set, key)
                    if record_id is None:
                        raise errors.not_found(
                            table.logical_name, str(key.get(table.primary_key) or _key_text(key))
                        )
                    self.store.update(table.entity_set, record_id, target, request.caller)
                elif key is None:
                    self.store.create(table.entity_set, target, request.caller)
                else:
                    self.store.upsert(table.entity_set, key, target, request.caller)
        if action == "CreateMultiple":
            context = f"{request.base_url}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
            response = ApiResponse.json(200, {"@odata.context": context, "Ids": ids})
        else:
            response = ApiResponse(204, {"OData-Version": "4.0"})
        # One request however many records (docs/limits.md), but its time grows with them.
        response.execution_ms = len(targets) * self.bulk_ms_per_record(action)
        return response

    def _target_key(self, table: Table, target: Mapping[str, Any]) -> dict[str, Any] | None:
        odata_id = target.get("@odata.id")
        if odata_id:
            match = _PATH_RE.match(str(odata_id).rsplit("/", 1)[-1])
            if not match or match.group("set") != table.entity_set or not match.group("key"):
                raise errors.bad_request(
                    f"'@odata.id' must look like '{table.entity_set}(<key>)', got '{odata_id}'."
                )
            return parse_key(match.group("key"), table)
        if target.get(table.primary_key):
            return {table.primary_key: target[table.primary_key]}
        return None


@dataclass(frozen=True)
class _Prepared:
    item: Expansion
    select: list[str] | None
    predicate: Predicate | None
    orderby: list[tuple[str, bool]]
    limit: int


# --- helpers --------------------------------------------------------------------------------------


def _operations(method: str, rest: str | None, key_text: str | None) -> tuple[str, ...]:
    """The privileges a request needs on its table (Append/AppendTo are not checked: difference)."""
    if method == "GET":
        return ("Read",)
    if method == "DELETE":
        return ("Delete",)
    if method == "PATCH":
        return ("Write", "Create")  # an upsert may create
    action = (rest or "").removeprefix("Microsoft.Dynamics.CRM.")
    if action == "UpdateMultiple":
        return ("Write",)
    if action == "UpsertMultiple":
        return ("Create", "Write")
    return ("Create",)


def _method_not_allowed(method: str, path: str) -> DataverseError:
    return DataverseError(405, f"The HTTP method '{method}' is not allowed on '{path}'.", "0x80060888")


def _check_options(request: ApiRequest, allowed: frozenset[str]) -> None:
    """400 for a query option this request kind does not implement (docs/dataverse-sandbox.md#queries)."""
    for name in request.query:
        if name in allowed or name == "$expand" or name.startswith("@"):
            continue  # `$expand` has its own check; `@p1` are parameter aliases
        if name == "$skip":
            # As Dataverse: it pages with @odata.nextLink only (webapi/query/page-results).
            raise errors.bad_request("The query parameter $skip is not supported")
        if name.startswith("$") or name.lower() in {o.lower() for o in DATAVERSE_OPTIONS}:
            raise errors.bad_request(
                f"The query option '{name}' is not supported by the Dataverse sandbox here "
                f"(supported: {', '.join(sorted(allowed | {'$expand'}))}): rewrite the query with "
                "those, or use a real environment for it."
            )


def _related_to(own_id: str, wire: str, logical_name: str, extra: Predicate | None) -> Predicate:
    """Rows whose lookup `wire` points at `own_id` of `logical_name` (customer lookups name the table)."""

    def matches(candidate: Mapping[str, Any]) -> bool:
        if candidate.get(wire) != own_id:
            return False
        kind = candidate.get(wire + LOOKUP_TYPE)
        if kind is not None and kind != logical_name:
            return False
        return extra is None or extra(candidate)

    return matches


def _expansions(request: ApiRequest, table: Table, resolve: Callable[[str], Table | None]) -> list[Expansion]:
    text = request.query.get("$expand")
    return parse_expand(text, table, resolve) if text and text.strip() else []


def _options_request(request: ApiRequest, options: Mapping[str, str]) -> ApiRequest:
    """The request as seen by a nested `$expand=nav(...)`: its options, the same caller and aliases."""
    query = {k: v for k, v in request.query.items() if k.startswith("@")} | dict(options)
    return replace(request, query=query)


def _wants_annotations(request: ApiRequest) -> bool:
    prefer = parse_prefer(request.headers.get("prefer"))
    return "odata.include-annotations" in prefer


def _select(request: ApiRequest, table: Table) -> list[str] | None:
    try:
        return parse_select(request.query.get("$select"), table.columns)
    except UnknownPropertyError as exc:
        raise errors.unknown_property(table.logical_name, exc.name) from None


def _orderby(text: str | None, table: Table) -> list[tuple[str, bool]]:
    try:
        return parse_orderby(text, table.columns)
    except UnknownPropertyError as exc:
        raise errors.unknown_property(table.logical_name, exc.name) from None


def _json_body(request: ApiRequest) -> dict[str, Any]:
    if not request.body:
        raise errors.bad_request("The request body is empty: send a JSON object.")
    try:
        body = json.loads(request.body)
    except json.JSONDecodeError as exc:
        raise errors.bad_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    return body


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise errors.bad_request(f"{what} must be a positive integer, got '{text}'.") from None
    if value <= 0:
        raise errors.bad_request(f"{what} must be a positive integer, got '{text}'.")
    return value


def _select_suffix(select: list[str] | None) -> str:
    return f"({','.join(select)})" if select else ""


def _context(request: ApiRequest, table: Table, select: list[str] | None, suffix: str) -> str:
    return f"{request.base_url}$metadata#{table.entity_set}{_select_suffix(select)}{suffix}"


def _key_text(key: Mapping[str, Any]) -> str:
    parts = []
    for name, value in key.items():
        rendered = "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)
        parts.append(f"{name}={rendered}")
    return ",".join(parts)


def _parse_skiptoken(token: str | None) -> dict[str, str]:
    """The sandbox's paging cookie: `<cookie pagenumber="2" last="{id}" istracking="False" ... />`."""
    if not token:
        return {}
    fields = dict(_COOKIE_RE.findall(unquote(token)))
    if "pagenumber" not in fields or not fields["pagenumber"].isdigit():
        raise errors.bad_request("The $skiptoken is not valid: use the @odata.nextLink exactly as returned.")
    if "last" in fields:
        fields["last"] = fields["last"].strip("{}").lower()
    return fields


def _next_link(
    request: ApiRequest, table: Table, cookie: Mapping[str, str], drop: tuple[str, ...] = ()
) -> str:
    """The nextLink: the same query options plus a `$skiptoken` paging cookie."""
    attrs = " ".join(f'{k}="{{{v}}}"' if k == "last" else f'{k}="{v}"' for k, v in cookie.items())
    token = quote(f"<cookie {attrs} />", safe="")
    options = [
        f"{name}={quote(value, safe=',')}"
        for name, value in request.query.items()
        if name not in ("$skiptoken", *drop)
    ]
    options.append(f"$skiptoken={token}")
    return f"{request.base_url}{table.entity_set}?{'&'.join(options)}"
