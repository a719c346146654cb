"""Business Central API v2.0 client, on httpx.

Typed operations over `ApiTransport` (the one retry mechanism): reads with server-driven paging,
a modified-since iterator, conditional writes with the ETag that was read, JSON `$batch`, and
webhook subscriptions. `map_error` turns BC's `{"error": {"code", "message"}}` into the shared
typed errors. `parse_resource` validates a notification's `resource` so the service builds its
own URL from configuration and never fetches one taken from a request.

Microsoft's documentation: the API reference,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/, and the webhooks page,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import httpx
from azure.core.credentials import TokenCredential

from shared import odata
from shared.connectors.credentials import BearerTokenAuth
from shared.connectors.errors import (
    AlreadyExistsError,
    ApiError,
    AuthenticationError,
    ConcurrencyError,
    NotFoundError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.connectors.retry import ApiTransport, Budget, RequestStats, RetryPolicy, parse_retry_after
from shared.errors import ServiceError

SERVICE = "business_central"
DEFAULT_SCOPE = "https://api.businesscentral.dynamics.com/.default"
MAX_PAGE_SIZE = 20_000
MAX_BATCH_OPERATIONS = 100

# The v2.0 resources BC sends webhooks for, listed on the webhooks page (module docstring);
# contacts and salespeoplePurchasers are not among them and must be polled. The service asks BC itself
# (`webhook_supported_entity_sets`); this list is the fallback for a BC without that page.
WEBHOOK_SUPPORTED_ENTITY_SETS: frozenset[str] = frozenset(
    {
        "accounts", "companyInformation", "countriesRegions", "currencies", "customerPaymentJournals",
        "customers", "dimensions", "employees", "generalLedgerEntries", "itemCategories", "items",
        "journals", "paymentMethods", "paymentTerms", "purchaseInvoices", "salesCreditMemos",
        "salesInvoices", "salesOrders", "salesQuotes", "shipmentMethods", "unitsOfMeasure", "vendors",
    }
)  # fmt: skip

WEBHOOK_SETS_TTL_SECONDS = 12 * 3600

_NOT_FOUND_CODES = frozenset(
    {"BadRequest_NotFound", "BadRequest_ResourceNotFound", "Internal_RecordNotFound"}
)
_ENTITY_SET_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SUBSCRIPTION_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def map_error(response: httpx.Response) -> ApiError:
    """BC's error answer as a typed error carrying its code and message."""
    code, message = _error_fields(response)
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    kw: dict[str, Any] = {"status": status, "code": code, "service": SERVICE}
    if status == 429 or (status == 503 and retry_after is not None):
        # 503 with retry-after is BC's "queued too long" answer: the request never ran.
        return ThrottledError(message, retry_after=retry_after, **kw)
    if status in (408,) or status >= 500:
        return TransientError(message, retry_after=retry_after, **kw)
    if code == "Request_EntityChanged":
        return ConcurrencyError(message, **kw)
    if status in (401, 403) or code.startswith(("Authentication_", "Authorization_")):
        return AuthenticationError(message, **kw)
    if status == 404 or code in _NOT_FOUND_CODES:
        return NotFoundError(message, **kw)
    if code == "Internal_EntityWithSameKeyExists":
        return AlreadyExistsError(message, **kw)
    if 400 <= status < 500:
        return ValidationError(message, **kw)
    return ApiError(message, **kw)


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error", {})
        return str(error.get("code", "")), str(error.get("message", "")) or response.reason_phrase
    except (ValueError, AttributeError):
        return "", (response.text[:500] or response.reason_phrase)


@dataclass(frozen=True)
class BatchOperation:
    method: str
    entity_set: str
    record_id: str | None = None
    body: Mapping[str, Any] | None = None
    etag: str | None = None
    query: Mapping[str, str] | None = None  # a GET's query options (`$filter`, `$select`)


@dataclass(frozen=True)
class BatchResult:
    status: int
    body: dict[str, Any] | None
    error: ApiError | None

    @property
    def ok(self) -> bool:
        return self.error is None


class BusinessCentralClient:
    """One BC environment's API (`base_url` ends with `/api/v2.0`)."""

    def __init__(
        self,
        base_url: str,
        credential: TokenCredential | httpx.Auth,
        *,
        scope: str = DEFAULT_SCOPE,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        budget: Budget | None = None,
        max_concurrent: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout)
        # httpx.Auth: BC on-premises' basic authentication with a web service access key.
        self._auth = credential if isinstance(credential, httpx.Auth) else BearerTokenAuth(credential, scope)
        self._transport = ApiTransport(
            self._http,
            service=SERVICE,
            map_error=map_error,
            policy=policy,
            sleep=sleep,
            budget=budget,
            max_concurrent=max_concurrent,
        )
        self._clock = time.monotonic
        self._webhook_sets: dict[str, tuple[float, frozenset[str]]] = {}

    @property
    def stats(self) -> RequestStats:
        return self._transport.stats

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> BusinessCentralClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ------------------------------------------------------------------------------------

    def companies(self) -> list[dict[str, Any]]:
        response = self._send("GET", f"{self.base_url}/companies", kind="companies")
        return list(response.json()["value"])

    def get(
        self,
        company_id: str,
        entity_set: str,
        record_id: str,
        *,
        select: Sequence[str] | None = None,
        expand: Sequence[str] | None = None,
    ) -> dict[str, Any] | None:
        """The record, or None when it does not exist (404)."""
        params = _query_params(select=select, expand=expand)
        try:
            response = self._send(
                "GET", self._url(company_id, entity_set, record_id), kind=entity_set, params=params
            )
        except NotFoundError:
            return None
        return dict(response.json())

    def related_contacts(
        self, company_id: str, entity_set: str, record_id: str, *, filter: str | None = None
    ) -> list[dict[str, Any]]:
        """`<entity_set>(<id>)/contactsInformation` (BC 18.0+): the company contact BC relates to a
        customer or vendor, and its persons. The company-level `contactsInformation` set cannot list
        relations: BC's page answers only with a `relatedId` and `relatedType` filter, one record at
        a time (API reference in the module docstring, page api/dynamics_contactinformation_get)."""
        url = f"{self._url(company_id, entity_set, record_id)}/contactsInformation"
        params = _query_params(select=["contactNumber", "contactType", "relatedId"], filter=filter)
        try:
            response = self._send("GET", url, kind="contactsInformation", params=params)
        except NotFoundError:
            return []
        return [dict(row) for row in response.json().get("value", [])]

    def query_pages(
        self,
        company_id: str,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | Sequence[str] | None = None,
        expand: Sequence[str] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of matching records, following `@odata.nextLink` (one request per page)."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE} (BC's maximum page size)")
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        params = _query_params(select=select, filter=filter, orderby=orderby, expand=expand)
        yield from self._pages(
            self._url(company_id, entity_set), kind=entity_set, params=params, headers=headers
        )

    def _pages(
        self,
        url: str | None,
        *,
        kind: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """The pages from `url` on, following `@odata.nextLink` (which carries the query itself)."""
        while url is not None:
            data = self._send("GET", url, kind=kind, params=params, headers=headers).json()
            yield list(data.get("value", []))
            url, params = self._checked_next_link(data.get("@odata.nextLink")), None

    def query(
        self,
        company_id: str,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | Sequence[str] | None = None,
        expand: Sequence[str] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        for page in self.query_pages(
            company_id,
            entity_set,
            select=select,
            filter=filter,
            orderby=orderby,
            expand=expand,
            page_size=page_size,
        ):
            yield from page

    def query_many(
        self,
        company_id: str,
        entity_set: str,
        filters: Sequence[str],
        *,
        select: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The records matching any of `filters`, each filter one GET of a `$batch` (100 per
        request, which BC counts as one): reading 1,000 records by id costs 1-2 requests, not 30.
        A filter whose answer has more pages follows them one request each; a refused GET raises its
        error, as `query` would."""
        operations = [
            BatchOperation("GET", entity_set, query=_query_params(select=select, filter=f)) for f in filters
        ]
        rows: list[dict[str, Any]] = []
        for result in self.batch(company_id, operations):
            if result.error is not None:
                raise result.error
            body = result.body or {}
            rows.extend(body.get("value", []))
            more = self._checked_next_link(body.get("@odata.nextLink"))
            rows.extend(row for page in self._pages(more, kind=entity_set) for row in page)
        return rows

    def modified_since(
        self,
        company_id: str,
        entity_set: str,
        since: dt.datetime | None,
        *,
        overlap: dt.timedelta = dt.timedelta(seconds=5),
        select: Sequence[str] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Records modified after `since - overlap`, oldest first (all records when `since` is None).

        The overlap re-reads a few seconds already seen, so a record stamped by a server whose clock
        is slightly behind ours is not missed; callers drop what they already processed.
        """
        filter_ = odata.gt("lastModifiedDateTime", since - overlap) if since is not None else None
        if select is not None:
            select = list(dict.fromkeys([*select, "id", "lastModifiedDateTime"]))
        yield from self.query(
            company_id,
            entity_set,
            select=select,
            filter=filter_,
            orderby="lastModifiedDateTime asc",
            page_size=page_size,
        )

    # --- writes -----------------------------------------------------------------------------------

    def create(
        self,
        company_id: str,
        entity_set: str,
        record: Mapping[str, Any],
        *,
        expand: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """POST; 201 with the created record. Not re-sent after an ambiguous failure. A document POSTed
        with its lines (`salesOrderLines: [...]`, a deep insert) is created with them in one request;
        `expand` returns them, with the ids BC gave them."""
        response = self._send(
            "POST",
            self._url(company_id, entity_set),
            kind=entity_set,
            json=dict(record),
            params=_query_params(expand=expand) or None,
        )
        return dict(response.json())

    def update(
        self, company_id: str, entity_set: str, record_id: str, changes: Mapping[str, Any], *, etag: str
    ) -> dict[str, Any]:
        """PATCH with `If-Match: etag`; the full updated record. Stale ETag -> `ConcurrencyError`."""
        response = self._send(
            "PATCH",
            self._url(company_id, entity_set, record_id),
            kind=entity_set,
            json=dict(changes),
            headers={"If-Match": _required_etag(etag)},
            idempotent=etag != "*",  # a repeat after commit fails with 409: re-read, never a lost update
        )
        return dict(response.json())

    def delete(
        self, company_id: str, entity_set: str, record_id: str, *, etag: str, missing_ok: bool = True
    ) -> None:
        """DELETE with `If-Match: etag`. A record already gone is success unless `missing_ok` is False."""
        try:
            self._send(
                "DELETE",
                self._url(company_id, entity_set, record_id),
                kind=entity_set,
                headers={"If-Match": _required_etag(etag)},
            )
        except NotFoundError:
            if not missing_ok:
                raise

    def action(self, company_id: str, entity_set: str, record_id: str, name: str) -> None:
        """A bound action (`POST .../salesQuotes(<id>)/Microsoft.NAV.makeOrder`), answered 204 without the
        record it made. Not re-sent after an ambiguous failure: the caller finds out what happened."""
        if not _ENTITY_SET_RE.match(name):
            raise ValueError(f"not an action name: {name!r}")
        url = f"{self._url(company_id, entity_set, record_id)}/Microsoft.NAV.{name}"
        self._transport.send("POST", url, kind=f"{entity_set} {name}", auth=self._auth, idempotent=False)

    def batch(
        self, company_id: str, operations: Sequence[BatchOperation], *, atomic: bool = False
    ) -> list[BatchResult]:
        """JSON `$batch`, one result per operation in order.

        Not atomic: split into requests of 100 operations; each operation succeeds or fails alone.
        Atomic (`Isolation: snapshot`): one transaction, so at most 100 operations.
        """
        if atomic and len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"an atomic batch holds at most {MAX_BATCH_OPERATIONS} operations")
        results: list[BatchResult] = []
        for start in range(0, len(operations), MAX_BATCH_OPERATIONS):
            results.extend(
                self._batch_chunk(company_id, operations[start : start + MAX_BATCH_OPERATIONS], atomic)
            )
        return results

    def _batch_chunk(
        self, company_id: str, operations: Sequence[BatchOperation], atomic: bool
    ) -> list[BatchResult]:
        requests = []
        for index, op in enumerate(operations):
            headers = {"Content-Type": "application/json"}
            if op.etag:
                headers["If-Match"] = op.etag
            url = self._url(company_id, op.entity_set, op.record_id).removeprefix(self.base_url + "/")
            if op.query:
                url += "?" + urlencode(op.query, quote_via=quote, safe="$',()")
            entry: dict[str, Any] = {
                "id": str(index),
                "method": op.method.upper(),
                "url": url,
                "headers": headers,
            }
            if op.body is not None:
                entry["body"] = dict(op.body)
            requests.append(entry)
        safe = all(
            op.method.upper() in ("GET", "DELETE") or (op.etag is not None and op.etag != "*")
            for op in operations
        )
        response = self._send(
            "POST",
            f"{self.base_url}/$batch",
            kind="$batch",
            json={"requests": requests},
            headers={"Isolation": "snapshot"} if atomic else None,
            idempotent=safe,
        )
        by_id = {str(r.get("id")): r for r in response.json().get("responses", [])}
        results = [self._batch_result(by_id.get(str(index))) for index in range(len(operations))]
        failed = next((index for index, result in enumerate(results) if not result.ok), None)
        if not atomic or failed is None:
            return results
        # BC rolls the whole transaction back yet answers the operations that had succeeded with their
        # 200/201/204 (Microsoft's use-odata-batch example): none of them took effect.
        rolled_back = ApiError(
            f"rolled back: operation {failed} of the transactional $batch failed, so none was applied",
            status=424,
            code="TransactionRolledBack",
            service=SERVICE,
        )
        return [
            result if not result.ok else BatchResult(result.status, None, rolled_back) for result in results
        ]

    def _batch_result(self, entry: Mapping[str, Any] | None) -> BatchResult:
        if entry is None:
            error = ApiError("the $batch answer has no response for this operation", service=SERVICE)
            return BatchResult(0, None, error)
        status = int(entry.get("status", 0))
        body = entry.get("body")
        if status < 400:
            return BatchResult(status, body if isinstance(body, dict) else None, None)
        # Reuse the one error mapping by presenting the entry as a response.
        fake = httpx.Response(status, json=body or {}, headers=entry.get("headers") or {})
        return BatchResult(status, body if isinstance(body, dict) else None, map_error(fake))

    # --- webhook subscriptions --------------------------------------------------------------------

    def create_subscription(self, notification_url: str, resource: str, client_state: str) -> dict[str, Any]:
        """POST /subscriptions. BC validates `notification_url` (handshake) before answering 201."""
        body = {"notificationUrl": notification_url, "resource": resource, "clientState": client_state}
        response = self._send("POST", f"{self.base_url}/subscriptions", kind="subscriptions", json=body)
        return dict(response.json())

    def renew_subscription(
        self,
        subscription_id: str,
        etag: str,
        *,
        notification_url: str | None = None,
        client_state: str | None = None,
    ) -> dict[str, Any]:
        """PATCH with `If-Match`: BC repeats the handshake and extends the expiry by 3 days."""
        body: dict[str, Any] = {}
        if notification_url is not None:
            body["notificationUrl"] = notification_url
        if client_state is not None:
            body["clientState"] = client_state
        response = self._send(
            "PATCH",
            self._subscription_url(subscription_id),
            kind="subscriptions",
            json=body,
            headers={"If-Match": _required_etag(etag)},
            idempotent=True,
        )
        return dict(response.json())

    def delete_subscription(self, subscription_id: str, etag: str = "*") -> None:
        # Already gone (deleted, expired, or removed by BC after a refused delivery) is fine.
        with contextlib.suppress(NotFoundError):
            self._send(
                "DELETE",
                self._subscription_url(subscription_id),
                kind="subscriptions",
                headers={"If-Match": _required_etag(etag)},
            )

    def webhook_supported_entity_sets(self, company_id: str) -> frozenset[str]:
        """The v2.0 entity sets BC accepts subscriptions for in this company: the runtime API's
        `webhookSupportedResources` (BC's page 5460 "Webhook Supported Resources", rows such as
        `v2.0/customers`; other publishers' pages are `<publisher>/<group>/<version>/<set>` and left
        out). Asked once per company every WEBHOOK_SETS_TTL_SECONDS (the list changes only when BC's
        apps do); a BC without the page (404) gets the documented list."""
        cached = self._webhook_sets.get(company_id)
        if cached is not None and self._clock() - cached[0] < WEBHOOK_SETS_TTL_SECONDS:
            return cached[1]
        url = f"{self._runtime_url()}/companies({odata.guid(company_id)})/webhookSupportedResources"
        try:
            rows = self._send("GET", url, kind="webhookSupportedResources").json().get("value", [])
            prefix = "v2.0/"
            sets = frozenset(
                resource.removeprefix(prefix)
                for resource in (str(row.get("resource", "")) for row in rows if isinstance(row, Mapping))
                if resource.startswith(prefix) and _ENTITY_SET_RE.match(resource.removeprefix(prefix))
            )
        except NotFoundError:
            sets = WEBHOOK_SUPPORTED_ENTITY_SETS
        self._webhook_sets[company_id] = (self._clock(), sets)
        return sets

    def _runtime_url(self) -> str:
        """`.../api/microsoft/runtime/v1.0` next to the standard API's `.../api/v2.0`."""
        root = self.base_url.removesuffix("/v2.0").removesuffix("/api")
        return f"{root}/api/microsoft/runtime/v1.0"

    def list_subscriptions(self) -> list[dict[str, Any]]:
        response = self._send("GET", f"{self.base_url}/subscriptions", kind="subscriptions")
        return list(response.json().get("value", []))

    # --- plumbing ---------------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, kind: str, **kwargs: Any) -> httpx.Response:
        for name in ("headers", "params"):
            if kwargs.get(name) is None:
                kwargs.pop(name, None)
        return self._transport.send(method, url, kind=kind, auth=self._auth, **kwargs)

    def _url(self, company_id: str, entity_set: str, record_id: str | None = None) -> str:
        if not _ENTITY_SET_RE.match(entity_set):
            raise ValueError(f"not an entity set name: {entity_set!r}")
        url = f"{self.base_url}/companies({odata.guid(company_id)})/{entity_set}"
        return url if record_id is None else f"{url}({odata.guid(record_id)})"

    def _subscription_url(self, subscription_id: str) -> str:
        if not _SUBSCRIPTION_ID_RE.match(subscription_id):
            raise ValueError(f"not a subscription id: {subscription_id!r}")
        return f"{self.base_url}/subscriptions('{subscription_id}')"

    def _checked_next_link(self, link: Any) -> str | None:
        if not link:
            return None
        if not isinstance(link, str) or _origin(link) != self._origin:
            raise ApiError(
                f"refusing to follow an @odata.nextLink to another host: {link!r}", service=SERVICE
            )
        return link


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _required_etag(etag: str) -> str:
    if not etag:
        raise ValueError("an ETag is required (the @odata.etag that was read, or '*')")
    return etag


def _query_params(
    *,
    select: Sequence[str] | None = None,
    filter: str | None = None,
    orderby: str | Sequence[str] | None = None,
    expand: Sequence[str] | None = None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    if select:
        params["$select"] = ",".join(select)
    if filter:
        params["$filter"] = filter
    if orderby:
        params["$orderby"] = orderby if isinstance(orderby, str) else ",".join(orderby)
    if expand:
        params["$expand"] = ",".join(expand)
    return params


# --- notification resources ---------------------------------------------------------------------


class ResourceRejected(ServiceError, ValueError):
    """A notification `resource` that does not point at a configured company and entity set."""


@dataclass(frozen=True)
class ResourceRef:
    """Where a notification points. For a `collection`, `filter` is rebuilt by us from the
    timestamp in the notification (never passed through) and `modified_after` holds it."""

    company_id: str
    entity_set: str
    record_id: str | None
    filter: str | None
    modified_after: dt.datetime | None = None


_RESOURCE_RE = re.compile(
    r"^api/v2\.0/companies\((?P<company>[0-9A-Fa-f-]{36})\)/(?P<set>[A-Za-z]+)(?:\((?P<id>[0-9A-Fa-f-]{36})\))?$"
)
# BC's sample filters on `lastDateTimeModified` although the property is `lastModifiedDateTime`
# (webhooks page, module docstring); accept both, always rebuild with the real property name.
_COLLECTION_FILTER_RE = re.compile(
    r"^\$filter=(?:lastModifiedDateTime|lastDateTimeModified) (?P<op>gt|ge) "
    r"(?P<when>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?Z)$"
)
MAX_RESOURCE_LENGTH = 2048


def parse_resource(
    resource: str, *, company_ids: Collection[str], entity_sets: Collection[str]
) -> ResourceRef:
    """Validate a notification's `resource` (with or without the leading slash: BC sends both).

    Only `api/v2.0/companies(<configured company>)/<configured set>(<guid>)` and, for a
    `collection`, `api/v2.0/companies(...)/<set>?$filter=lastModifiedDateTime gt <datetime>` or the
    bare `api/v2.0/companies(...)/<set>` pass. BC sends the bare collection when any change in it is
    a delete (it clears the first-modified time: `APIWebhookNotificationSend.Codeunit.al`).
    Anything else (absolute URLs, other hosts, encoded or dotted paths, other companies or sets,
    other filters) raises `ResourceRejected`.
    """
    if not isinstance(resource, str) or not resource or len(resource) > MAX_RESOURCE_LENGTH:
        raise ResourceRejected("resource is empty, not a string, or too long")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in resource):
        raise ResourceRejected("resource contains control characters")
    if "://" in resource or resource.startswith("//") or "\\" in resource:
        raise ResourceRejected("resource must be a path relative to the API, not a URL")
    path, _, query = resource.partition("?")
    if any(ch.isspace() for ch in path):
        raise ResourceRejected("resource path contains whitespace")
    path = path.removeprefix("/")
    if "%" in path or "/." in path or path.startswith("."):
        raise ResourceRejected("resource path contains encoded characters or dot segments")
    match = _RESOURCE_RE.match(path)
    if match is None:
        raise ResourceRejected("resource is not api/v2.0/companies(<id>)/<entity set>[(<id>)]")
    company_id = str(uuid.UUID(match.group("company")))
    if company_id not in {str(uuid.UUID(c)) for c in company_ids}:
        raise ResourceRejected(f"company {company_id} is not configured")
    entity_set = match.group("set")
    if entity_set not in entity_sets:
        raise ResourceRejected(f"entity set '{entity_set}' is not configured")
    if match.group("id"):
        if query:
            raise ResourceRejected("a record resource has no query")
        return ResourceRef(company_id, entity_set, str(uuid.UUID(match.group("id"))), None)
    if not query:
        return ResourceRef(company_id, entity_set, None, None)
    filter_match = _COLLECTION_FILTER_RE.match(unquote(query))
    if filter_match is None:
        raise ResourceRejected("a collection resource needs $filter=lastModifiedDateTime gt <UTC datetime>")
    when = _parse_utc(filter_match.group("when"))
    rebuilt = (odata.ge if filter_match.group("op") == "ge" else odata.gt)("lastModifiedDateTime", when)
    return ResourceRef(company_id, entity_set, None, rebuilt, when)


def _parse_utc(text: str) -> dt.datetime:
    base, _, fraction = text.removesuffix("Z").partition(".")
    moment = dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    if fraction:
        moment += dt.timedelta(microseconds=int(fraction[:6].ljust(6, "0")))
    return moment
