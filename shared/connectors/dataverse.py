"""The Dataverse Web API (v9.2) client the sync engine uses.

Everything goes through the shared `ApiTransport` (retry, `Retry-After`, request counting), with
`map_error` turning Dataverse's `{"error": {"code", "message"}}` into the typed errors of
`shared.connectors.errors`. Records are plain dicts in wire form: lookups are read as `_x_value`
and written as `x@odata.bind`; translating between the two is the mapping layer's job.

Request budget: reads page 5,000 rows per request (`query_pages`, `changes`); bulk writes send
1,000 rows per `CreateMultiple`/`UpsertMultiple`/`UpdateMultiple` request; `batch` sends up to
1,000 requests per `$batch`. Where the bulk messages do not exist (Dynamics 365 Sales / Customer
Engagement on-premises 9.1: they came to Dataverse online only, page `bulk-operations`), the first
bulk write learns it from the 404 "Resource not found for the segment" answer and from then on the
client sends each chunk as one `$batch` of single creates / upserts / updates: the same number of
requests, the same per-record results.

Microsoft's documentation of the Web API:
https://learn.microsoft.com/power-apps/developer/data-platform/webapi/overview
(pages named below are relative to https://learn.microsoft.com/power-apps/developer/data-platform/).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from azure.core.credentials import TokenCredential

from shared import odata
from shared.auth import build_authvalue
from shared.connectors.credentials import BearerTokenAuth
from shared.connectors.errors import (
    AlreadyExistsError,
    AmbiguousWriteError,
    ApiError,
    AuthenticationError,
    ConcurrencyError,
    FatalApiError,
    NotFoundError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.connectors.retry import ApiTransport, Budget, RequestStats, RetryPolicy, parse_retry_after
from shared.odata import Scalar

log = logging.getLogger(__name__)

SERVICE = "dataverse"
API_PATH = "/api/data/v9.2/"
MAX_PAGE_SIZE = 5000
BULK_CHUNK_SIZE = 1000
MAX_BATCH_REQUESTS = 1000
# Dataverse error codes. Codes are hints only: the Web API documentation's own error examples (404
# "Does Not Exist", 412 version mismatch, 412 "matching key values already exists") carry an empty
# `code`, so the client decides from the status and from what it sent (see `_error_for`).
DUPLICATE_RECORD = "0x80040237"  # create reused an existing primary key
EXPIRED_VERSION_STAMP = "0x80044352"  # change-tracking token expired: do a full sync
# ChangeTrackingNotEnabledForEntity, "Entity {0} isn't enabled for change tracking." (Web service error
# codes, learn.microsoft.com/power-apps/developer/data-platform/reference/web-service-error-codes).
CHANGE_TRACKING_NOT_ENABLED = "0x80072491"
# Table metadata the service relies on (ChangeTrackingEnabled) changes only when someone customizes the
# table: asked once per table every few hours, never per poll.
METADATA_TTL_SECONDS = 6 * 3600
# The attribute types whose values are options (`$expand=OptionSet` works on their casts).
OPTION_SET_CASTS = ("PicklistAttributeMetadata", "StateAttributeMetadata", "StatusAttributeMetadata")
WEBHOOK_CONTRACT = 8
AUTH_TYPES = {"WebhookKey": 4, "HttpHeader": 5, "HttpQueryString": 6}
# Enough ids per `In` filter to stay well inside URL limits (about 40 characters per GUID).
IDS_PER_LOOKUP_QUERY = 100

UpsertMode = Literal["upsert", "create_only", "update_only"]


# --- tables -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableInfo:
    entity_set: str
    logical_name: str
    primary_key: str
    # Whether the table offers CreateMultiple / UpdateMultiple / UpsertMultiple (its table reference's
    # messages); without them bulk writes go as one `$batch` of single requests per chunk.
    multiple: bool = True

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical_name}"


TABLES: dict[str, TableInfo] = {
    t.entity_set: t
    for t in (
        TableInfo("accounts", "account", "accountid"),
        TableInfo("contacts", "contact", "contactid"),
        TableInfo("products", "product", "productid"),
        TableInfo("systemusers", "systemuser", "systemuserid"),
        TableInfo("transactioncurrencies", "transactioncurrency", "transactioncurrencyid"),
        TableInfo("organizations", "organization", "organizationid"),
        TableInfo("uomschedules", "uomschedule", "uomscheduleid"),
        TableInfo("uoms", "uom", "uomid"),
        TableInfo("pricelevels", "pricelevel", "pricelevelid"),
        TableInfo("productpricelevels", "productpricelevel", "productpricelevelid", multiple=False),
        TableInfo("salesorders", "salesorder", "salesorderid"),
        TableInfo("salesorderdetails", "salesorderdetail", "salesorderdetailid"),
        TableInfo("invoices", "invoice", "invoiceid"),
        TableInfo("invoicedetails", "invoicedetail", "invoicedetailid"),
        TableInfo("quotes", "quote", "quoteid"),
        TableInfo("quotedetails", "quotedetail", "quotedetailid"),
        TableInfo("opportunities", "opportunity", "opportunityid"),
        TableInfo("bcs_customerstatistics", "bcs_customerstatistic", "bcs_customerstatisticid"),
        TableInfo("bcbi_companies", "bcbi_company", "bcbi_companyid"),
        TableInfo("serviceendpoints", "serviceendpoint", "serviceendpointid"),
        TableInfo("sdkmessages", "sdkmessage", "sdkmessageid"),
        TableInfo("sdkmessagefilters", "sdkmessagefilter", "sdkmessagefilterid"),
        TableInfo("sdkmessageprocessingsteps", "sdkmessageprocessingstep", "sdkmessageprocessingstepid"),
        TableInfo(
            "sdkmessageprocessingstepimages",
            "sdkmessageprocessingstepimage",
            "sdkmessageprocessingstepimageid",
        ),
        TableInfo("asyncoperations", "asyncoperation", "asyncoperationid"),
        TableInfo("solutions", "solution", "solutionid"),
        TableInfo("importjobs", "importjob", "importjobid"),
        TableInfo("roles", "role", "roleid"),
        TableInfo("systemuserrolescollection", "systemuserroles", "systemuserroleid"),
    )
}


def table_info(entity_set: str) -> TableInfo:
    info = TABLES.get(entity_set)
    if info is None:
        raise ValueError(f"unknown Dataverse entity set {entity_set!r}: add it to TABLES")
    return info


# --- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhoAmI:
    user_id: str
    business_unit_id: str
    organization_id: str


@dataclass
class ChangeBatch:
    upserted: list[dict[str, Any]]
    deleted: list[str]
    delta_link: str
    full_scan: bool


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one record of a bulk write; `id` is None when the server did not say."""

    id: str | None
    ok: bool
    error: ApiError | None = None


@dataclass(frozen=True)
class BatchRequest:
    """One request in a `$batch`; `url` is relative to the API root (`accounts(<id>)`) or `$<n>`."""

    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str | None = None


@dataclass(frozen=True)
class BatchResponse:
    status: int
    headers: dict[str, str]
    body: Any
    content_id: str | None = None
    # Whether the request of this part carried `If-Match` (None: unknown), see `_error_for`.
    version_checked: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status < 400

    def error(self) -> ApiError | None:
        if self.ok:
            return None
        code, message = _error_fields(self.body, "")
        return _error_for(
            self.status, code, message, None, in_batch=True, version_checked=self.version_checked
        )

    @property
    def entity_id(self) -> str | None:
        """The id in the `OData-EntityId` header of a create/upsert answer."""
        return _id_from_entity_url(self.headers.get("odata-entityid", ""))


# --- errors -----------------------------------------------------------------------------------------


def map_error(response: httpx.Response) -> ApiError:
    """Dataverse's error answer as a typed error (a failed `$batch`: its failing part's error)."""
    content_type = response.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/"):
        failing = next((p for p in parse_batch_response(response) if not p.ok), None)
        if failing is not None:
            error = failing.error()
            assert error is not None
            return error
    try:
        payload: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    code, message = _error_fields(payload, response.text[:500] or response.reason_phrase)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return _error_for(
        response.status_code, code, message, retry_after, version_checked=_version_checked(response)
    )


def _version_checked(response: httpx.Response) -> bool | None:
    """Whether the request that got `response` carried `If-Match` (None when it is not known)."""
    try:
        request = response.request
    except RuntimeError:  # a response built without its request (tests, replays)
        return None
    return "if-match" in request.headers


def _error_fields(payload: Any, fallback: str) -> tuple[str, str]:
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        error = payload["error"]
        return str(error.get("code") or ""), str(error.get("message") or fallback)
    return "", fallback


def _error_for(
    status: int,
    code: str,
    message: str,
    retry_after: float | None,
    *,
    in_batch: bool = False,
    version_checked: bool | None = None,
) -> ApiError:
    """The typed error for an answer. The status decides, never the code alone: a 412 to a request
    that carried `If-Match` is a stale version (`ConcurrencyError`); a 412 to one without it (a POST
    create, a PATCH with `If-None-Match: *`) can only mean the record or its key already exists
    (`AlreadyExistsError`), whether or not the body says `0x80040237`."""
    kw: dict[str, Any] = {"status": status, "code": code, "service": SERVICE}
    if status == 429:
        if in_batch:
            # Parts before it were processed: never let the transport re-send the whole batch.
            return TransientError(message, retry_after=retry_after, **kw)
        return ThrottledError(message, retry_after=retry_after, **kw)
    if status in (401, 403):
        return AuthenticationError(message, **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if status == 412:
        if version_checked is False or (version_checked is None and code == DUPLICATE_RECORD):
            return AlreadyExistsError(message, **kw)
        return ConcurrencyError(message, **kw)
    if status == 408 or status >= 500:
        return TransientError(message, retry_after=retry_after, **kw)
    return ValidationError(message, **kw)


# A column or table of the service's Sales solution (prefix `bcs_`) that Dataverse does not know: "Could not
# find a property named 'bcs_bcnumber' on type ..." (400), "Resource not found for the segment
# 'bcs_customerstatistics'" (404), "An undeclared property 'bcs_...'" or "The property 'bcs_...' does not
# exist on type ..." (400).
_UNKNOWN_CUSTOMIZATION = re.compile(
    r"(?:property named|segment|undeclared property|property) '(bcs_\w+)", re.IGNORECASE
)


def missing_customization(exc: ApiError) -> str | None:
    """The `bcs_` column or table an answer says does not exist (the Sales solution is not installed,
    or older than this service needs); None for any other error."""
    if exc.service != SERVICE or exc.status not in (400, 404):
        return None
    found = _UNKNOWN_CUSTOMIZATION.search(str(exc.message))
    return found.group(1) if found else None


def setup_hint(missing: str) -> str:
    """What to do when Dataverse does not know `missing`, a column or table of the Sales solution."""
    return (
        f"The Sales solution BusinessCentralSync, which adds {missing}, is not installed or is older than "
        "this service needs: run `bcsync setup` with a Dataverse administrator (--admin-device-code), or "
        "import the solution by hand (docs/sales-solution.md)"
    )


def with_setup_hint(exc: ApiError) -> ApiError:
    """`exc` itself, or (when it names a `bcs_` column or table Dataverse does not know) the same error
    saying to run set-up."""
    missing = missing_customization(exc)
    if missing is None:
        return exc
    return FatalApiError(
        f"{exc.message} {setup_hint(missing)}.",
        status=exc.status, code=exc.code, service=exc.service, method=exc.method, url=exc.url,
    )  # fmt: skip


def missing_message(exc: ApiError, action: str) -> bool:
    """Whether a 404 says this server has no operation `action` (a bulk message on-premises), not
    that a record or a table does not exist (a missing table's set is a segment not found too, so the
    segment must name the action). The text decides: the documented code is `0x8006088a`
    (troubleshoot page `web-api-client-errors`), but live answers also carry `0x80060888`."""
    text = str(exc.message).lower()
    return exc.status == 404 and "resource not found for the segment" in text and action.lower() in text


# --- the client -------------------------------------------------------------------------------------


class DataverseClient:
    def __init__(
        self,
        base_url: str,
        credential: TokenCredential | httpx.Auth,
        *,
        scope: str | None = None,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        budget: Budget | None = None,
        max_concurrent: int | None = None,
        bulk_chunk_size: int = BULK_CHUNK_SIZE,
        bulk_messages: bool | None = None,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        parts = urlsplit(base_url)
        if not parts.scheme or not parts.netloc or not parts.path.endswith(API_PATH):
            raise ValueError(
                f"base_url must look like https://<org>.crm.dynamics.com{API_PATH}, got {base_url!r}"
            )
        self.base_url = base_url
        self.policy = policy or RetryPolicy()
        self.bulk_chunk_size = bulk_chunk_size
        # Whether the server has CreateMultiple/UpdateMultiple/UpsertMultiple: None until a bulk write
        # (or `probe_bulk_messages`) finds out; False once it answered that they do not exist.
        self.bulk_messages = bulk_messages
        self._auth = (
            credential
            if isinstance(credential, httpx.Auth)
            else BearerTokenAuth(credential, scope or f"{parts.scheme}://{parts.netloc}/.default")
        )
        self._http = http or httpx.Client(timeout=timeout)
        self._transport = ApiTransport(
            self._http,
            service=SERVICE,
            map_error=map_error,
            policy=self.policy,
            sleep=sleep,
            budget=budget,
            max_concurrent=max_concurrent,
        )
        self._clock = time.monotonic
        self._change_tracking: dict[str, tuple[float, bool]] = {}

    @property
    def stats(self) -> RequestStats:
        return self._transport.stats

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        kind: str,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        merged = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
        if method == "GET":
            # No cached 304s (page webapi/compose-http-requests-handle-errors, see the module docstring).
            merged["If-None-Match"] = "null"
        kwargs: dict[str, Any] = {"auth": self._auth}
        if json_body is not None:
            merged["Content-Type"] = "application/json; charset=utf-8"
            kwargs["content"] = json.dumps(json_body, separators=(",", ":")).encode()
        elif content is not None:
            kwargs["content"] = content
        merged.update(headers or {})
        url = url if url.startswith(("http://", "https://")) else self.base_url + url
        return self._transport.send(method, url, kind=kind, idempotent=idempotent, headers=merged, **kwargs)

    def _own_link(self, link: str) -> str:
        # Links come from the server (or from our stored watermark): follow only our own API.
        if not link.startswith(self.base_url):
            raise ValueError(f"refusing to follow a link outside {self.base_url}: {link[:200]!r}")
        return link

    # --- reads ------------------------------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        data = self._send("GET", "WhoAmI", kind="WhoAmI").json()
        return WhoAmI(data["UserId"], data["BusinessUnitId"], data["OrganizationId"])

    def get(
        self,
        entity_set: str,
        record_id: str,
        select: Sequence[str] | None = None,
        *,
        expand: str | None = None,
    ) -> dict[str, Any] | None:
        """One record with its `@odata.etag`; None when it does not exist. `expand`: a `$expand`
        value such as `order_details($select=quantity)` (a document with its lines in one request)."""
        url = f"{entity_set}({odata.guid(record_id)}){_options(select=select, expand=expand)}"
        try:
            return dict(self._send("GET", url, kind=entity_set).json())
        except NotFoundError:
            return None

    def query_pages(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: Sequence[str] | str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        expand: str | None = None,
        kind: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of matching records (one request each), following `@odata.nextLink` verbatim.
        `entity_set` may be any collection path (`EntityDefinitions(LogicalName='account')/Attributes`);
        `kind` names it in the request counts when it is not an entity set."""
        headers = {"Prefer": f"odata.maxpagesize={min(page_size, MAX_PAGE_SIZE)}"}
        url: str | None = entity_set + _options(select=select, filter=filter, orderby=orderby, expand=expand)
        while url is not None:
            data = self._send("GET", url, kind=kind or entity_set, headers=headers).json()
            yield list(data.get("value", []))
            link = data.get("@odata.nextLink")
            url = self._own_link(link) if link else None

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: Sequence[str] | str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        for page in self.query_pages(
            entity_set, select=select, filter=filter, orderby=orderby, page_size=page_size
        ):
            yield from page

    # --- table metadata -----------------------------------------------------------------------------

    def change_tracking_enabled(self, logical_name: str, *, refresh: bool = False) -> bool:
        """Whether the table has change tracking ("Track changes"), which delta links need:
        `EntityDefinitions(LogicalName='x')?$select=ChangeTrackingEnabled` (page
        use-change-tracking-synchronize-data-external-systems). Asked once per table every
        METADATA_TTL_SECONDS; once on, Dataverse never turns it off, so only a "no" is asked again."""
        cached = self._change_tracking.get(logical_name)
        if (
            not refresh
            and cached is not None
            and (cached[1] or self._clock() - cached[0] < METADATA_TTL_SECONDS)
        ):
            return cached[1]
        url = f"{_entity_definition(logical_name)}?$select=ChangeTrackingEnabled"
        enabled = bool(self._send("GET", url, kind="EntityDefinitions").json().get("ChangeTrackingEnabled"))
        self._change_tracking[logical_name] = (self._clock(), enabled)
        return enabled

    def enable_change_tracking(self, logical_name: str) -> None:
        """Turn on "Track changes" (needs a customizer: System Administrator or System Customizer).
        Table definitions are updated with a PUT of the whole definition, never PATCH, with
        `MSCRM.MergeLabels: true` so that labels in other languages are kept, then published (page
        webapi/create-update-entity-definitions-using-web-api)."""
        path = _entity_definition(logical_name)
        definition = dict(self._send("GET", path, kind="EntityDefinitions").json())
        definition = {
            k: v for k, v in definition.items() if not k.startswith("@odata.") or k == "@odata.type"
        }
        definition["ChangeTrackingEnabled"] = True
        self._send(
            "PUT",
            f"EntityDefinitions({odata.guid(str(definition['MetadataId']))})",
            kind="EntityDefinitions",
            json_body=definition,
            headers={"MSCRM.MergeLabels": "true"},
            idempotent=True,
        )
        parameter = f"<importexportxml><entities><entity>{logical_name}</entity></entities></importexportxml>"
        self._send(
            "POST", "PublishXml", kind="PublishXml", json_body={"ParameterXml": parameter}, idempotent=True
        )
        self._change_tracking[logical_name] = (self._clock(), True)

    def option_sets(
        self, logical_name: str, casts: Sequence[str] = OPTION_SET_CASTS
    ) -> dict[str, dict[int, str]]:
        """Choice column -> {option value: label} of a table: one request per attribute type
        (`.../Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=
        OptionSet($select=Options)`, page webapi/query-metadata-web-api). A choice column bound to a
        global choice carries its options in `GlobalOptionSet` instead."""
        result: dict[str, dict[int, str]] = {}
        for cast in casts:
            path = f"{_entity_definition(logical_name)}/Attributes/Microsoft.Dynamics.CRM.{cast}"
            pages = self.query_pages(
                path, select=["LogicalName"], expand="OptionSet($select=Options)", kind="EntityDefinitions"
            )
            for page in pages:
                for row in page:
                    source = row.get("OptionSet") or row.get("GlobalOptionSet") or {}
                    result[str(row["LogicalName"])] = {
                        int(o["Value"]): _label_text(o.get("Label")) for o in source.get("Options") or []
                    }
        return result

    # --- change tracking ----------------------------------------------------------------------------

    def changes(self, entity_set: str, *, select: Sequence[str], delta_link: str | None) -> ChangeBatch:
        """Everything changed since `delta_link` (all pages); a full scan when it is None or expired.

        Keep the returned `delta_link` as the next watermark. Deleted rows come back as ids only;
        a row created and deleted between two polls is reported as deleted. A table without change
        tracking is refused with `CHANGE_TRACKING_NOT_ENABLED` (a `ValidationError`): check
        `change_tracking_enabled` first.
        """
        try:
            if delta_link:
                try:
                    return self._collect_changes(self._own_link(delta_link), entity_set, full_scan=False)
                except ValidationError as exc:
                    if exc.code == CHANGE_TRACKING_NOT_ENABLED or (
                        exc.code != EXPIRED_VERSION_STAMP and "expired" not in exc.message.lower()
                    ):
                        raise
            return self._collect_changes(entity_set + _options(select=select), entity_set, full_scan=True)
        except ValidationError as exc:
            info = TABLES.get(entity_set)
            if exc.code == CHANGE_TRACKING_NOT_ENABLED and info is not None:
                self._change_tracking[info.logical_name] = (self._clock(), False)
            raise

    def _collect_changes(self, url: str, entity_set: str, *, full_scan: bool) -> ChangeBatch:
        headers = {"Prefer": f"odata.track-changes,odata.maxpagesize={MAX_PAGE_SIZE}"}
        upserted: list[dict[str, Any]] = []
        deleted: list[str] = []
        next_url: str | None = url
        while next_url is not None:
            data = self._send("GET", next_url, kind=entity_set, headers=headers).json()
            for item in data.get("value", []):
                if str(item.get("@odata.context", "")).endswith("$deletedEntity"):
                    deleted.append(str(item["id"]))
                else:
                    upserted.append(item)
            if data.get("@odata.nextLink"):
                next_url = self._own_link(data["@odata.nextLink"])
            elif data.get("@odata.deltaLink"):
                return ChangeBatch(upserted, deleted, data["@odata.deltaLink"], full_scan)
            else:
                raise TransientError(
                    "change-tracking response had neither @odata.nextLink nor @odata.deltaLink",
                    service=SERVICE,
                    url=next_url,
                )
        raise AssertionError("unreachable")

    # --- single-record writes ---------------------------------------------------------------------

    def create(
        self,
        entity_set: str,
        record: Mapping[str, Any],
        *,
        record_id: str | None = None,
        select: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create a record and return it (with `@odata.etag`).

        With a client-chosen `record_id` the create is safe to repeat: when an attempt ends without
        a clear answer (`AmbiguousWriteError`, or a 5xx that may have committed), the client GETs
        the id; if the record is there it is returned (that attempt did commit), otherwise the
        create is sent again, at most `policy.max_attempts` times. A 412 (the record exists, with or
        without Dataverse's `0x80040237` code) after such an ambiguous attempt is resolved the same
        way; if the id is still not readable then, another key of the record is taken and the
        `AlreadyExistsError` is raised. A 412 on the *first* attempt (no ambiguity) raises
        `AlreadyExistsError`: the id or a key was taken before this call.
        """
        info = table_info(entity_set)
        body = dict(record)
        if record_id is not None:
            body[info.primary_key] = odata.guid(record_id)
        url = entity_set + _options(select=select)
        headers = {"Prefer": "return=representation"}
        if record_id is None:
            return dict(self._send("POST", url, kind=entity_set, json_body=body, headers=headers).json())
        ambiguous: ApiError | None = None
        for _ in range(self.policy.max_attempts):
            try:
                response = self._send(
                    "POST", url, kind=entity_set, json_body=body, headers=headers, idempotent=False
                )
                return dict(response.json())
            except AlreadyExistsError:
                if ambiguous is None:
                    raise
                existing = self.get(entity_set, record_id, select)
                if existing is not None:
                    return existing
                raise
            except (AmbiguousWriteError, TransientError) as exc:
                ambiguous = exc
            existing = self.get(entity_set, record_id, select)
            if existing is not None:
                return existing
        assert ambiguous is not None
        raise ambiguous

    def update(
        self,
        entity_set: str,
        record_id: str,
        changes: Mapping[str, Any],
        *,
        etag: str,
        select: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Conditional update (`If-Match: etag`); a stale etag raises `ConcurrencyError`."""
        url = f"{entity_set}({odata.guid(record_id)}){_options(select=select)}"
        headers = {"If-Match": etag, "Prefer": "return=representation"}
        # Safe to repeat: after a commit the etag no longer matches and the retry gets a 412.
        response = self._send(
            "PATCH", url, kind=entity_set, json_body=dict(changes), headers=headers, idempotent=True
        )
        return dict(response.json())

    def upsert_by_key(
        self,
        entity_set: str,
        key: Mapping[str, Scalar],
        record: Mapping[str, Any],
        *,
        mode: UpsertMode = "upsert",
    ) -> dict[str, Any]:
        """PATCH on a key URL: create or update (`upsert`), only create (412 -> `AlreadyExistsError`
        when it exists) or only update (404 -> `NotFoundError` when it does not)."""
        url = f"{entity_set}({key_segment(entity_set, key)})"
        headers = {"Prefer": "return=representation"}
        if mode == "create_only":
            headers["If-None-Match"] = "*"
        elif mode == "update_only":
            headers["If-Match"] = "*"
        response = self._send(
            "PATCH",
            url,
            kind=entity_set,
            json_body=dict(record),
            headers=headers,
            idempotent=mode != "create_only",
        )
        return dict(response.json())

    def delete(self, entity_set: str, record_id: str, *, etag: str | None = None) -> None:
        headers = {"If-Match": etag} if etag else {}
        self._send("DELETE", f"{entity_set}({odata.guid(record_id)})", kind=entity_set, headers=headers)

    # --- bulk writes ------------------------------------------------------------------------------

    def create_multiple(self, entity_set: str, records: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """`CreateMultiple` in chunks. Records with their primary key set are safe to repeat: after an
        ambiguous attempt the client reads which ids exist and creates only the others."""
        return self._bulk("CreateMultiple", entity_set, records)

    def upsert_multiple(self, entity_set: str, records: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """`UpsertMultiple` in chunks. Each record names its row by primary key or by an
        `"@odata.id": "accounts(accountnumber='A1')"` alternate key; neither means create."""
        return self._bulk("UpsertMultiple", entity_set, records)

    def update_multiple(self, entity_set: str, records: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """`UpdateMultiple` in chunks; every record carries its primary key (or `@odata.id`)."""
        return self._bulk("UpdateMultiple", entity_set, records)

    def _bulk(self, action: str, entity_set: str, records: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """One request per chunk. A chunk is all-or-nothing on standard tables, so when one fails
        for a reason in the data, its records are re-sent one by one in a `$batch` with
        continue-on-error to learn which record failed and to write the others. Without the bulk
        messages (on-premises 9.1) every chunk goes that way at once."""
        info = table_info(entity_set)
        results: list[ItemResult] = []
        for start in range(0, len(records), self.bulk_chunk_size):
            chunk = [
                {"@odata.type": info.type_name, **r} for r in records[start : start + self.bulk_chunk_size]
            ]
            if self.bulk_messages is False or not info.multiple:
                results.extend(self._one_by_one(action, info, chunk))
                continue
            try:
                ids = self._bulk_chunk(action, info, chunk)
            except AuthenticationError:
                raise
            except NotFoundError as exc:
                if missing_message(exc, action):
                    self._without_bulk_messages(action, exc)
                results.extend(self._one_by_one(action, info, chunk))
                continue
            except FatalApiError:
                results.extend(self._one_by_one(action, info, chunk))
                continue
            results.extend(ItemResult(i, True) for i in ids)
        return results

    def _without_bulk_messages(self, action: str, exc: ApiError) -> None:
        if self.bulk_messages is not False:
            log.warning(
                "Dataverse at %s has no %s (%s %s): as Dynamics 365 Sales on-premises 9.1; bulk writes go "
                "as $batch of single writes from now on (the same number of requests)",
                self.base_url, action, exc.status, exc.code or "",
            )  # fmt: skip
        self.bulk_messages = False

    def probe_bulk_messages(self, entity_set: str) -> bool:
        """Whether the server has the bulk messages, asked with an `UpsertMultiple` of no records
        (1 request, writes nothing): a server without them answers 404 "Resource not found for the
        segment"; one with them refuses the empty `Targets` (or accepts it). Remembered."""
        info = table_info(entity_set)
        try:
            self._send(
                "POST", f"{info.entity_set}/Microsoft.Dynamics.CRM.UpsertMultiple",
                kind=f"{info.entity_set} UpsertMultiple", json_body={"Targets": []}, idempotent=True,
            )  # fmt: skip
        except NotFoundError as exc:
            if not missing_message(exc, "UpsertMultiple"):
                raise
            self._without_bulk_messages("UpsertMultiple", exc)
            return False
        except ValidationError:
            pass  # the message exists and refuses an empty list
        self.bulk_messages = True
        return True

    def _bulk_chunk(self, action: str, info: TableInfo, chunk: list[dict[str, Any]]) -> list[str | None]:
        url = f"{info.entity_set}/Microsoft.Dynamics.CRM.{action}"
        known_ids = [r.get(info.primary_key) for r in chunk]
        if action != "CreateMultiple":
            # Upserts and updates leave the same state when repeated.
            self._send(
                "POST", url, kind=f"{info.entity_set} {action}", json_body={"Targets": chunk}, idempotent=True
            )
            return [str(i) if i else None for i in known_ids]
        pending = chunk
        for _ in range(self.policy.max_attempts):
            try:
                response = self._send(
                    "POST",
                    url,
                    kind=f"{info.entity_set} {action}",
                    json_body={"Targets": pending},
                    idempotent=False,
                )
            except (AmbiguousWriteError, TransientError):
                if not all(known_ids):
                    raise
                existing = self._existing_ids(info, [str(r[info.primary_key]) for r in pending])
                pending = [r for r in pending if str(r[info.primary_key]).lower() not in existing]
                if not pending:
                    break
                continue
            if pending is chunk:
                return [str(i) for i in response.json().get("Ids", [])]
            break
        else:
            raise AmbiguousWriteError(
                f"CreateMultiple on {info.entity_set} did not complete", service=SERVICE
            )
        return [str(i) for i in known_ids]

    def _existing_ids(self, info: TableInfo, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), IDS_PER_LOOKUP_QUERY):
            part = ids[start : start + IDS_PER_LOOKUP_QUERY]
            rows = self.query(
                info.entity_set, select=[info.primary_key], filter=odata.dataverse_in(info.primary_key, part)
            )
            found.update(str(r[info.primary_key]).lower() for r in rows)
        return found

    def _one_by_one(self, action: str, info: TableInfo, chunk: list[dict[str, Any]]) -> list[ItemResult]:
        requests = [self._single_request(action, info, record) for record in chunk]
        # Upserts and updates by key leave the same state when repeated; creates do not.
        idempotent = action != "CreateMultiple" and all(r.method == "PATCH" for r in requests)
        responses = self.batch(requests, continue_on_error=True, idempotent=idempotent)
        results = []
        for record, response in zip(chunk, responses, strict=True):
            record_id = record.get(info.primary_key) or response.entity_id
            results.append(ItemResult(str(record_id) if record_id else None, response.ok, response.error()))
        return results

    def _single_request(self, action: str, info: TableInfo, record: Mapping[str, Any]) -> BatchRequest:
        body = {k: v for k, v in record.items() if not k.startswith("@odata.")}
        locator = record.get("@odata.id")
        if record.get(info.primary_key):
            url = f"{info.entity_set}({odata.guid(str(record[info.primary_key]))})"
        elif locator:
            url = str(locator).rsplit("/", 1)[-1]
        else:
            url = ""
        if action == "CreateMultiple" or not url:
            return BatchRequest("POST", info.entity_set, body)
        headers = {"If-Match": "*"} if action == "UpdateMultiple" else {}
        return BatchRequest("PATCH", url, body, headers)

    # --- $batch -----------------------------------------------------------------------------------

    def batch(
        self,
        requests: Sequence[BatchRequest],
        *,
        continue_on_error: bool = True,
        change_set: bool = False,
        idempotent: bool = False,
    ) -> list[BatchResponse]:
        """Send requests in `$batch` bodies of up to 1,000; one response per request, in order.

        `change_set=True` makes them one atomic change set (no GETs, at most 1,000; `$<n>`
        references to earlier Content-IDs allowed). When a request fails and `continue_on_error`
        is False, or any request of a change set fails, the failing request's typed error is raised
        (a change set then committed nothing). `idempotent`: the writes leave the same state when
        repeated, so a batch whose answer was lost may be sent again (a batch of reads always may).
        """
        if change_set:
            if len(requests) > MAX_BATCH_REQUESTS:
                raise ValueError(f"a change set holds at most {MAX_BATCH_REQUESTS} requests")
            if any(r.method.upper() == "GET" for r in requests):
                raise ValueError("GET requests are not allowed in a change set")
            return self._send_batch(list(requests), continue_on_error=False, change_set=True)
        responses: list[BatchResponse] = []
        for start in range(0, len(requests), MAX_BATCH_REQUESTS):
            chunk = list(requests[start : start + MAX_BATCH_REQUESTS])
            responses.extend(
                self._send_batch(
                    chunk, continue_on_error=continue_on_error, change_set=False, idempotent=idempotent
                )
            )
        return responses

    def _send_batch(
        self,
        requests: list[BatchRequest],
        *,
        continue_on_error: bool,
        change_set: bool,
        idempotent: bool = False,
    ) -> list[BatchResponse]:
        boundary = f"batch_{uuid.uuid4()}"
        body = build_batch_body(self.base_url, requests, boundary, change_set=change_set)
        headers = {"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        repeatable = idempotent or all(r.method.upper() == "GET" for r in requests)
        response = self._send(
            "POST", "$batch", kind="$batch", content=body, headers=headers, idempotent=repeatable
        )
        parts = parse_batch_response(response)
        if change_set and len(parts) == 1 and len(requests) > 1 and not parts[0].ok:
            raise parts[0].error() or TransientError("change set failed", service=SERVICE)
        if len(parts) != len(requests):
            raise TransientError(
                f"$batch answered {len(parts)} parts for {len(requests)} requests",
                service=SERVICE,
                status=200,
            )
        return [
            replace(part, version_checked=any(k.lower() == "if-match" for k in request.headers))
            for part, request in zip(parts, requests, strict=True)
        ]

    # --- solutions and security roles -------------------------------------------------------------

    def action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """An unbound action (`WinQuote`, `FulfillSalesOrder`...): its answer, None for 204. Not re-sent
        after an ambiguous failure (closing a record twice is refused): the caller reads the record."""
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise ValueError(f"not an action name: {name!r}")
        answer = self._send("POST", name, kind=name, json_body=dict(body), idempotent=False)
        return dict(answer.json()) if answer.status_code == 200 and answer.content else None

    def installed_solution(self, unique_name: str) -> dict[str, Any] | None:
        """The `solutions` row of `unique_name` (id, version), or None when it is not installed."""
        rows = list(
            self.query(
                "solutions",
                select=["solutionid", "uniquename", "version", "ismanaged"],
                filter=odata.eq("uniquename", unique_name),
            )
        )
        return rows[0] if rows else None

    def import_solution_async(self, data: bytes, import_job_id: str, *, overwrite: bool = True) -> str:
        """`ImportSolutionAsync` (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/importsolutionasync);
        returns the id of the asynchronous operation. The import job's result is in `importjobs(<id>)`."""
        body = {
            "OverwriteUnmanagedCustomizations": overwrite,
            "PublishWorkflows": True,
            "CustomizationFile": base64.b64encode(data).decode(),
            "ImportJobId": odata.guid(import_job_id),
        }
        # Not retried blindly: a second POST with the same ImportJobId is refused; the caller reads the job.
        answer = self._send("POST", "ImportSolutionAsync", kind="ImportSolutionAsync", json_body=body)
        return str(answer.json()["AsyncOperationId"])

    def async_operation(self, operation_id: str) -> dict[str, Any]:
        url = f"asyncoperations({odata.guid(operation_id)})?$select=statecode,statuscode,message,completedon"
        return dict(self._send("GET", url, kind="asyncoperations").json())

    def import_job(self, job_id: str) -> dict[str, Any] | None:
        return self.get("importjobs", job_id, select=["progress", "data", "completedon", "solutionname"])

    def roles_named(self, names: Sequence[str]) -> dict[str, str]:
        """Security role name -> role id, for the names that exist (root business unit's copies)."""
        rows = self.query("roles", select=["roleid", "name"], filter=odata.dataverse_in("name", names))
        return {str(r["name"]): str(r["roleid"]).lower() for r in rows}

    def role_holders(self, role_ids: Sequence[str]) -> dict[str, set[str]]:
        """Role id -> ids of the users holding it (`systemuserroles`, one query)."""
        result: dict[str, set[str]] = {r: set() for r in role_ids}
        if not role_ids:
            return result
        rows = self.query(
            "systemuserrolescollection",
            select=["systemuserid", "roleid"],
            filter=odata.dataverse_in("roleid", list(role_ids)),
        )
        for row in rows:
            result.setdefault(str(row["roleid"]).lower(), set()).add(str(row["systemuserid"]).lower())
        return result

    def assign_role(self, user_id: str, role_id: str) -> None:
        """Associate a security role with a user (idempotent in Dataverse)."""
        reference = {"@odata.id": f"{self.base_url}roles({odata.guid(role_id)})"}
        self._send(
            "POST",
            f"systemusers({odata.guid(user_id)})/systemuserroles_association/$ref",
            kind="systemuserroles",
            json_body=reference,
            idempotent=True,
        )

    # --- webhook registration ---------------------------------------------------------------------

    def list_webhook_endpoints(self) -> list[dict[str, Any]]:
        select = ["serviceendpointid", "name", "url", "authtype", "contract"]
        return list(
            self.query("serviceendpoints", select=select, filter=odata.eq("contract", WEBHOOK_CONTRACT))
        )

    def ensure_webhook_endpoint(
        self, name: str, url: str, auth_type: int | str, auth_value: str | Mapping[str, str]
    ) -> str:
        """Create or update the webhook endpoint called `name`; returns its id.

        `auth_type` is 4/"WebhookKey" (value: the key, sent as `?code=`), 5/"HttpHeader" or
        6/"HttpQueryString" (value: a {name: value} mapping, stored as `<settings>` XML).
        The auth value cannot be read back, so an existing endpoint is always updated.
        """
        code = AUTH_TYPES.get(auth_type, auth_type) if isinstance(auth_type, str) else auth_type
        if code not in AUTH_TYPES.values():
            raise ValueError(f"auth_type must be one of {AUTH_TYPES} (name or number), got {auth_type!r}")
        value = auth_value if isinstance(auth_value, str) else build_authvalue(auth_value)
        record = {
            "name": name,
            "url": url,
            "contract": WEBHOOK_CONTRACT,
            "authtype": code,
            "authvalue": value,
            "messageformat": 2,
        }
        found = list(
            self.query(
                "serviceendpoints",
                select=["serviceendpointid"],
                filter=odata.and_(odata.eq("contract", WEBHOOK_CONTRACT), odata.eq("name", name)),
            )
        )
        if found:
            endpoint_id = str(found[0]["serviceendpointid"])
            self._send(
                "PATCH",
                f"serviceendpoints({endpoint_id})",
                kind="serviceendpoints",
                json_body=record,
                headers={"If-Match": "*"},
                idempotent=True,
            )
            return endpoint_id
        created = self._send(
            "POST",
            "serviceendpoints",
            kind="serviceendpoints",
            json_body=record,
            headers={"Prefer": "return=representation"},
        )
        return str(created.json()["serviceendpointid"])

    def list_steps(self, endpoint_id: str) -> list[dict[str, Any]]:
        return list(
            self.query(
                "sdkmessageprocessingsteps",
                select=[
                    "sdkmessageprocessingstepid",
                    "name",
                    "stage",
                    "mode",
                    "filteringattributes",
                    "_sdkmessageid_value",
                    "_sdkmessagefilterid_value",
                    "_eventhandler_value",
                    "statecode",
                ],
                filter=odata.eq("_eventhandler_value", uuid.UUID(odata.guid(endpoint_id))),
            )
        )

    def ensure_step(
        self,
        endpoint_id: str,
        message: str,
        entity_logical_name: str,
        filtering_attributes: Sequence[str] | None,
        post_image_attributes: Sequence[str] | None = None,
    ) -> str:
        """Create or update the asynchronous post-operation step sending `message` on
        `entity_logical_name` to the endpoint; returns its id. An image with `post_image_attributes` is
        kept in line when given: a post-image `PostImage`, or for Delete (which has none) a pre-image
        `PreImage`."""
        message_id = self._single_id("sdkmessages", "sdkmessageid", odata.eq("name", message))
        filter_id = self._single_id(
            "sdkmessagefilters",
            "sdkmessagefilterid",
            odata.and_(
                odata.eq("primaryobjecttypecode", entity_logical_name),
                odata.eq("_sdkmessageid_value", uuid.UUID(message_id)),
            ),
        )
        attributes = ",".join(sorted(filtering_attributes or []))
        existing = [
            s
            for s in self.list_steps(endpoint_id)
            if s.get("_sdkmessageid_value") == message_id and s.get("_sdkmessagefilterid_value") == filter_id
        ]
        if existing:
            step_id = str(existing[0]["sdkmessageprocessingstepid"])
            if (existing[0].get("filteringattributes") or "") != attributes or existing[0].get(
                "statecode"
            ) != 0:
                self._send(
                    "PATCH",
                    f"sdkmessageprocessingsteps({step_id})",
                    kind="sdkmessageprocessingsteps",
                    json_body={"filteringattributes": attributes or None, "statecode": 0},
                    headers={"If-Match": "*"},
                    idempotent=True,
                )
        else:
            step = {
                "name": f"bc-dataverse-sync: {message} of {entity_logical_name}",
                "stage": 40,
                "mode": 1,
                "rank": 1,
                "supporteddeployment": 0,
                "asyncautodelete": True,
                "filteringattributes": attributes or None,
                "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
                "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id})",
                "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({odata.guid(endpoint_id)})",
            }
            created = self._send(
                "POST",
                "sdkmessageprocessingsteps",
                kind="sdkmessageprocessingsteps",
                json_body=step,
                headers={"Prefer": "return=representation"},
            )
            step_id = str(created.json()["sdkmessageprocessingstepid"])
        if post_image_attributes is not None:
            self._ensure_post_image(step_id, message, post_image_attributes)
        return step_id

    def _ensure_post_image(self, step_id: str, message: str, attributes: Sequence[str]) -> None:
        alias = "PreImage" if message == "Delete" else "PostImage"
        wanted = ",".join(sorted(attributes))
        images = list(
            self.query(
                "sdkmessageprocessingstepimages",
                select=["sdkmessageprocessingstepimageid", "attributes"],
                filter=odata.and_(
                    odata.eq("_sdkmessageprocessingstepid_value", uuid.UUID(step_id)),
                    odata.eq("entityalias", alias),
                ),
            )
        )
        if images:
            if images[0].get("attributes") != wanted:
                image_id = images[0]["sdkmessageprocessingstepimageid"]
                self._send(
                    "PATCH",
                    f"sdkmessageprocessingstepimages({image_id})",
                    kind="sdkmessageprocessingstepimages",
                    json_body={"attributes": wanted},
                    headers={"If-Match": "*"},
                    idempotent=True,
                )
            return
        image = {
            "name": alias,
            "entityalias": alias,
            "imagetype": 0 if message == "Delete" else 1,
            "attributes": wanted,
            "messagepropertyname": "Id" if message == "Create" else "Target",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({step_id})",
        }
        self._send(
            "POST", "sdkmessageprocessingstepimages", kind="sdkmessageprocessingstepimages", json_body=image
        )

    def _single_id(self, entity_set: str, primary_key: str, filter: str) -> str:
        rows = list(self.query(entity_set, select=[primary_key], filter=filter))
        if not rows:
            raise NotFoundError(f"no {entity_set} row matches {filter}", status=404, service=SERVICE)
        return str(rows[0][primary_key])


# --- URLs and $batch bodies ------------------------------------------------------------------------


def _entity_definition(logical_name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", logical_name):
        raise ValueError(f"not a Dataverse logical name: {logical_name!r}")
    return f"EntityDefinitions(LogicalName='{logical_name}')"


def _label_text(label: Any) -> str:
    """The user's label of a Label complex type (`UserLocalizedLabel.Label`), else the first one."""
    if not isinstance(label, Mapping):
        return ""
    user = label.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and user.get("Label"):
        return str(user["Label"])
    labels = label.get("LocalizedLabels") or []
    return str(labels[0].get("Label") or "") if labels and isinstance(labels[0], Mapping) else ""


def _options(
    *,
    select: Sequence[str] | None = None,
    filter: str | None = None,
    orderby: Sequence[str] | str | None = None,
    expand: str | None = None,
) -> str:
    options = []
    if select:
        options.append("$select=" + ",".join(select))
    if expand:
        options.append("$expand=" + quote(expand, safe="(),=$;"))
    if filter:
        options.append("$filter=" + quote(filter, safe="(),='"))
    if orderby:
        text = orderby if isinstance(orderby, str) else ",".join(orderby)
        options.append("$orderby=" + quote(text, safe=","))
    return "?" + "&".join(options) if options else ""


def key_segment(entity_set: str, key: Mapping[str, Scalar]) -> str:
    """The inside of `accounts(...)`: a bare GUID for the primary key, else `name='value',...`."""
    info = TABLES.get(entity_set)
    if info is not None and set(key) == {info.primary_key}:
        return odata.guid(str(key[info.primary_key]))
    if not key:
        raise ValueError("an alternate key needs at least one column")
    return ",".join(f"{name}={quote(odata.literal(value), safe=chr(39))}" for name, value in key.items())


def build_batch_body(
    base_url: str, requests: Sequence[BatchRequest], boundary: str, *, change_set: bool
) -> bytes:
    def part(request: BatchRequest, content_id: str | None) -> str:
        url = request.url if request.url.startswith("$") else base_url + request.url
        lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if content_id:
            lines.append(f"Content-ID: {content_id}")
        lines += ["", f"{request.method.upper()} {url} HTTP/1.1", "Accept: application/json"]
        lines += [f"{k}: {v}" for k, v in request.headers.items()]
        if request.body is not None:
            lines += [
                "Content-Type: application/json; type=entry",
                "",
                json.dumps(request.body, separators=(",", ":")),
            ]
        else:
            lines.append("")
        return "\r\n".join(lines)

    if change_set:
        inner = f"changeset_{uuid.uuid4()}"
        parts = [
            f"--{inner}\r\n{part(r, r.content_id or str(i))}\r\n" for i, r in enumerate(requests, start=1)
        ]
        content = f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n" + "".join(parts) + f"--{inner}--"
        text = f"--{boundary}\r\n{content}\r\n--{boundary}--\r\n"
    else:
        text = (
            "".join(f"--{boundary}\r\n{part(r, r.content_id)}\r\n" for r in requests) + f"--{boundary}--\r\n"
        )
    return text.encode("utf-8")


_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def parse_batch_response(response: httpx.Response) -> list[BatchResponse]:
    """The parts of a `$batch` answer (change-set parts flattened, in order)."""
    match = _BOUNDARY_RE.search(response.headers.get("content-type", ""))
    if not match:
        raise TransientError(
            "$batch answer without a multipart boundary", service=SERVICE, status=response.status_code
        )
    return _parse_parts(response.text, match.group(1))


def _parse_parts(text: str, boundary: str) -> list[BatchResponse]:
    results: list[BatchResponse] = []
    for raw in _split_multipart(text, boundary):
        head, _, content = raw.lstrip("\n").partition("\n\n")
        headers = _header_lines(head.split("\n"))
        inner = _BOUNDARY_RE.search(headers.get("content-type", ""))
        if headers.get("content-type", "").lower().startswith("multipart/") and inner:
            results.extend(_parse_parts(content, inner.group(1)))
            continue
        status_head, _, body = content.lstrip("\n").partition("\n\n")
        lines = status_head.split("\n")
        status = int(lines[0].split()[1])
        response_headers = _header_lines(lines[1:])
        body = body.strip()
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except json.JSONDecodeError:
                parsed = body
        results.append(BatchResponse(status, response_headers, parsed, headers.get("content-id")))
    return results


def _split_multipart(text: str, boundary: str) -> list[str]:
    delimiter = f"--{boundary}"
    parts: list[str] = []
    current: list[str] | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        stripped = line.rstrip()
        if stripped in (delimiter, delimiter + "--"):
            if current is not None:
                parts.append("\n".join(current))
            current = [] if stripped == delimiter else None
            if current is None:
                break
        elif current is not None:
            current.append(line)
    return parts


def _header_lines(lines: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


_ENTITY_ID_RE = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")


def _id_from_entity_url(url: str) -> str | None:
    match = _ENTITY_ID_RE.search(url)
    return match.group(1).lower() if match else None
