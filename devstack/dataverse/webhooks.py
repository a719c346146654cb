"""Outgoing webhooks: registered steps, the `RemoteExecutionContext` body, asynchronous delivery.

A committed change event is matched against enabled `sdkmessageprocessingsteps` whose event handler
is a webhook `serviceendpoint` (contract 8); each match becomes one delivery, POSTed by a small pool
of worker threads so the write that caused it never waits (asynchronous steps, as in
https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks).

Fidelity notes:
- Body and headers follow the use-webhooks page (the documented sample's shape and key order, WCF
  dates, `\\/` escaping); payloads over 256 KB lose ParentContext, InputParameters and the images
  and get `x-ms-dynamics-msg-size-exceeded`.
- 502/503/504 get one more attempt; any other non-2xx, a timeout (60 s) or a connection error is a
  failure, recorded as an `asyncoperations` row with statuscode 31 (Failed).
- The real service only calls ports 80/443 on public hosts; this sandbox only calls loopback
  addresses, on any port, and refuses to register anything else.
- Synchronous steps (mode 0) are delivered like asynchronous ones: a failed delivery does not fail
  the triggering operation here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import queue
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from devstack.dataverse import errors
from devstack.dataverse.schema import Kind, Table
from devstack.dataverse.store import LOOKUP_TYPE, Caller, ChangeEvent, Store
from devstack.sandbox_common.counters import RequestCounters

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
WEBHOOK_CONTRACT = 8
AUTH_WEBHOOK_KEY, AUTH_HTTP_HEADER, AUTH_HTTP_QUERY = 4, 5, 6
RETRIED_STATUSES = frozenset({502, 503, 504})
LOOPBACK_NAMES = frozenset({"localhost"})


def check_loopback_url(url: Any) -> None:
    """Refuse a webhook URL the sandbox must not call: only loopback hosts, any port."""
    if url is None:
        return
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    loopback = host in LOOPBACK_NAMES
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if parts.scheme not in {"http", "https"} or not loopback:
        raise errors.bad_request(
            f"The sandbox only delivers webhooks to loopback addresses (http://127.0.0.1:<port>/..., "
            f"http://localhost:<port>/...); '{url}' is not one. (The real service calls public hosts on "
            "ports 80 and 443 only.)",
            code="0x80040216",
        )


def wcf_date(moment: dt.datetime, *, with_offset: bool = False) -> str:
    millis = int(moment.timestamp() * 1000)
    return f"/Date({millis}+0000)/" if with_offset else f"/Date({millis})/"


def parse_auth_settings(authvalue: str) -> list[tuple[str, str]]:
    """`<settings><setting name="X" value="Y" /></settings>` as (name, value) pairs."""
    try:
        root = ET.fromstring(authvalue)
    except ET.ParseError as exc:
        raise ValueError(
            f"authvalue is not <settings><setting name=.. value=.. /></settings> XML: {exc}"
        ) from exc
    return [(s.get("name", ""), s.get("value", "")) for s in root.iter("setting") if s.get("name")]


@dataclass
class Delivery:
    id: str
    step_id: str
    endpoint_id: str
    url: str  # without the auth query string
    message: str
    entity: str
    record_id: str
    correlation_id: str
    initiating_user_id: str
    payload: dict[str, Any]
    status: str = "pending"  # pending | delivered | failed
    http_status: int | None = None
    attempts: int = 0
    error: str | None = None
    size_exceeded: bool = False
    created: float = field(default_factory=time.time)
    completed: float | None = None
    # Not shown: the request as sent (URL with auth, headers, body).
    send_url: str = ""
    send_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def to_json(self, *, with_payload: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "step_id": self.step_id,
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "message": self.message,
            "entity": self.entity,
            "record_id": self.record_id,
            "correlation_id": self.correlation_id,
            "initiating_user_id": self.initiating_user_id,
            "status": self.status,
            "http_status": self.http_status,
            "attempts": self.attempts,
            "error": self.error,
            "size_exceeded": self.size_exceeded,
        }
        if with_payload:
            data["payload"] = self.payload
        return data


class WebhookDispatcher:
    def __init__(
        self,
        store: Store,
        counters: RequestCounters,
        *,
        org_name: str,
        domain: str,
        organization_id: str,
        timeout: float,
        max_payload_bytes: int,
        workers: int,
        business_unit_of: Callable[[str], str],
    ) -> None:
        self.store = store
        self.counters = counters
        self.org_name = org_name
        self.domain = domain
        self.organization_id = organization_id
        self.timeout = timeout
        self.max_payload_bytes = max_payload_bytes
        self.workers = workers
        self._business_unit_of = business_unit_of
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._deliveries: list[Delivery] = []
        self._pending = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._http: httpx.Client | None = None

    # --- matching ---------------------------------------------------------------------------------

    def on_commit(self, events: list[ChangeEvent]) -> None:
        for event in events:
            for step, endpoint in self._matching_steps(event):
                self._enqueue(self._build(event, step, endpoint))

    def _matching_steps(self, event: ChangeEvent) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        with self.store.lock:
            messages = {r["sdkmessageid"]: r["name"] for r in self.store.tables["sdkmessages"].rows.values()}
            filters = self.store.tables["sdkmessagefilters"].rows
            endpoints = self.store.tables["serviceendpoints"].rows
            steps = list(self.store.tables["sdkmessageprocessingsteps"].rows.values())
        changed = {_attribute_name(k) for k in event.target}
        result = []
        for step in steps:
            if (
                step.get("statecode", 0) != 0
                or messages.get(step.get("_sdkmessageid_value")) != event.message
            ):
                continue
            message_filter = filters.get(step.get("_sdkmessagefilterid_value") or "")
            if (
                message_filter is None
                or message_filter.get("primaryobjecttypecode") != event.table.logical_name
            ):
                continue
            endpoint = endpoints.get(step.get("_eventhandler_value") or "")
            if endpoint is None or endpoint.get("contract") != WEBHOOK_CONTRACT:
                continue
            wanted = {a.strip() for a in (step.get("filteringattributes") or "").split(",") if a.strip()}
            if event.message == "Update" and wanted and not wanted & changed:
                continue
            result.append((step, endpoint))
        return result

    # --- the request ------------------------------------------------------------------------------

    def _build(self, event: ChangeEvent, step: dict[str, Any], endpoint: dict[str, Any]) -> Delivery:
        operation_id = str(uuid.uuid4())
        correlation_id = event.caller.correlation_id or str(uuid.uuid4())
        context = self.context(event, step, operation_id, correlation_id)
        body = _wcf_json(context)
        size_exceeded = len(body) > self.max_payload_bytes
        if size_exceeded:
            for key in ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"):
                context.pop(key, None)
            body = _wcf_json(context)
        headers = {
            "Content-Type": "application/json",
            "x-ms-dynamics-organization": self.domain,
            "x-ms-dynamics-entity-name": event.table.logical_name,
            "x-ms-dynamics-request-name": event.message,
            "x-ms-correlation-request-id": correlation_id,
        }
        if size_exceeded:
            headers["x-ms-dynamics-msg-size-exceeded"] = "true"
        url = endpoint.get("url") or ""
        delivery = Delivery(
            id=operation_id,
            step_id=step["sdkmessageprocessingstepid"],
            endpoint_id=endpoint["serviceendpointid"],
            url=url,
            message=event.message,
            entity=event.table.logical_name,
            record_id=event.record_id,
            correlation_id=correlation_id,
            initiating_user_id=event.caller.user_id,
            payload=context,
            size_exceeded=size_exceeded,
            body=body,
            send_headers=headers,
        )
        try:
            delivery.send_url = _with_auth(url, endpoint.get("authtype"), endpoint.get("authvalue"), headers)
        except ValueError as exc:
            delivery.error = str(exc)
        return delivery

    def context(
        self, event: ChangeEvent, step: Mapping[str, Any], operation_id: str, correlation_id: str
    ) -> dict[str, Any]:
        """The `RemoteExecutionContext` for one event and step, keys in the documented order."""
        table = event.table
        mode = int(step["mode"]) if step.get("mode") is not None else 1
        stage = step.get("stage") or 40
        user_id = step.get("_impersonatinguserid_value") or event.caller.user_id
        if event.message == "Delete":
            target: dict[str, Any] = _entity_reference(table.logical_name, event.record_id, typed=True)
        else:
            target = self._entity(
                table, event.record_id, self._target_attributes(event), event.row, typed=True
            )
        output = [{"key": "id", "value": event.record_id}] if event.message == "Create" else []
        post_images, pre_images = self._images(event, step, mode)
        now = self.store.clock()
        base = {
            "BusinessUnitId": event.caller.business_unit_id or self._business_unit_of(user_id),
            "CorrelationId": correlation_id,
            "Depth": 1,
            "InitiatingUserId": event.caller.user_id,
            "InputParameters": [{"key": "Target", "value": target}],
            "IsExecutingOffline": False,
            "IsInTransaction": mode == 0,
            "IsOfflinePlayback": False,
            "IsolationMode": 1,
            "MessageName": event.message,
            "Mode": mode,
            "OperationCreatedOn": wcf_date(now, with_offset=True),
            "OperationId": operation_id,
            "OrganizationId": self.organization_id,
            "OrganizationName": self.org_name,
            "OutputParameters": output,
            "OwningExtension": {
                "Id": step["sdkmessageprocessingstepid"],
                "KeyAttributes": [],
                "LogicalName": "sdkmessageprocessingstep",
                "Name": None,
                "RowVersion": None,
            },
        }
        parent = {
            **base,
            "Mode": 0,
            "IsInTransaction": True,
            "OperationId": "00000000-0000-0000-0000-000000000000",
            "OutputParameters": [],
            "OwningExtension": _entity_reference("sdkmessageprocessingstep", None),
            "ParentContext": None,
            "PostEntityImages": [],
            "PreEntityImages": [],
            "PrimaryEntityId": event.record_id,
            "PrimaryEntityName": table.logical_name,
            "RequestId": None,
            "SecondaryEntityName": "none",
            "SharedVariables": [],
            "Stage": 30,
            "UserId": user_id,
        }
        return {
            **base,
            "ParentContext": parent,
            "PostEntityImages": post_images,
            "PreEntityImages": pre_images,
            "PrimaryEntityId": event.record_id,
            "PrimaryEntityName": table.logical_name,
            "RequestId": None,
            "SecondaryEntityName": "none",
            "SharedVariables": [],
            "Stage": stage,
            "UserId": user_id,
        }

    def _target_attributes(self, event: ChangeEvent) -> dict[str, Any]:
        table, row = event.table, event.row or {}
        if event.message == "Create":
            return {k: v for k, v in row.items() if v is not None}
        # An Update target holds the changed columns, the id and the system columns (use-webhooks page).
        attributes = dict(event.target)
        if table.logical_name == "contact" and {"firstname", "lastname"} & set(attributes):
            attributes["fullname"] = row.get("fullname")
        if "statecode" in attributes:
            attributes["statuscode"] = row.get("statuscode")
        attributes["modifiedon"] = row.get("modifiedon")
        attributes["_modifiedby_value"] = row.get("_modifiedby_value")
        attributes["_modifiedonbehalfby_value"] = None
        return attributes

    def _images(self, event: ChangeEvent, step: Mapping[str, Any], mode: int) -> tuple[list[Any], list[Any]]:
        table = event.table
        post: list[Any] = []
        pre: list[Any] = []
        if mode == 1 and event.row is not None:
            primary = {
                table.primary_name: event.row.get(table.primary_name),
                table.primary_key: event.record_id,
            }
            value = self._entity(table, event.record_id, primary, event.row)
            post.append({"key": "AsynchronousStepPrimaryName", "value": value})
        with self.store.lock:
            images = [
                r
                for r in self.store.tables["sdkmessageprocessingstepimages"].rows.values()
                if r.get("_sdkmessageprocessingstepid_value") == step["sdkmessageprocessingstepid"]
            ]
        for image in images:
            names = [a.strip() for a in (image.get("attributes") or "").split(",") if a.strip()]
            for wanted, source, into in ((1, event.row, post), (0, event.before, pre)):
                if source is None or image.get("imagetype") not in (wanted, 2):
                    continue
                selected = {
                    k: v
                    for k, v in source.items()
                    if "@" not in k and (not names or _attribute_name(k) in names) and v is not None
                }
                into.append(
                    {
                        "key": image.get("entityalias") or "Image",
                        "value": self._entity(table, event.record_id, selected, source),
                    }
                )
        return post, pre

    def _entity(
        self,
        table: Table,
        record_id: str,
        attributes: Mapping[str, Any],
        row: Mapping[str, Any] | None,
        *,
        typed: bool = False,
    ) -> dict[str, Any]:
        rendered = [
            {"key": _attribute_name(wire), "value": _value(table, wire, value, row or attributes)}
            for wire, value in attributes.items()
            if "@" not in wire
        ]
        entity: dict[str, Any] = {"__type": f"Entity:{CONTRACTS}"} if typed else {}
        entity.update(
            {
                "Attributes": rendered,
                "EntityState": None,
                "FormattedValues": [],
                "Id": record_id,
                "KeyAttributes": [],
                "LogicalName": table.logical_name,
                "RelatedEntities": [],
                "RowVersion": None,
            }
        )
        return entity

    # --- delivery ---------------------------------------------------------------------------------

    def _enqueue(self, delivery: Delivery) -> None:
        with self._cond:
            self._deliveries.append(delivery)
            self._pending += 1
            self._start_workers()
        self._queue.put(delivery)

    def _start_workers(self) -> None:
        if self._threads:
            return
        self._http = httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False)
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"dataverse-webhooks-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            try:
                self._deliver(delivery)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _deliver(self, delivery: Delivery) -> None:
        if delivery.error is None:
            try:
                check_loopback_url(delivery.url)
            except errors.DataverseError as exc:
                delivery.error = exc.message
        while delivery.error is None and delivery.attempts < 2:
            delivery.attempts += 1
            try:
                assert self._http is not None
                response = self._http.post(
                    delivery.send_url, content=delivery.body, headers=delivery.send_headers
                )
            except httpx.HTTPError as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"
                break
            delivery.http_status = response.status_code
            if 200 <= response.status_code < 300:
                break
            if response.status_code not in RETRIED_STATUSES or delivery.attempts >= 2:
                delivery.error = f"The webhook answered HTTP {response.status_code}."
                break
        delivery.completed = time.time()
        delivery.status = "failed" if delivery.error else "delivered"
        self.counters.record_webhook(delivery.status)
        if delivery.error:
            self._record_failure(delivery)

    def _record_failure(self, delivery: Delivery) -> None:
        step = self.store.get("sdkmessageprocessingsteps", delivery.step_id) or {}
        row = {
            "asyncoperationid": delivery.id,
            "name": step.get("name") or "Webhook delivery",
            "operationtype": 1,  # System Event
            "statecode": 3,
            "statuscode": 31,
            "message": f"Webhook delivery to {delivery.url} failed: {delivery.error}",
            "friendlymessage": f"Webhook delivery failed: {delivery.error}",
            "errorcode": -2147220970,
            "primaryentitytype": delivery.entity,
            "correlationid": delivery.correlation_id,
            "completedon": dt.datetime.now(dt.UTC).isoformat(),
            "_owningextensionid_value": delivery.step_id,
            "_regardingobjectid_value": delivery.record_id,
        }
        caller = Caller(delivery.initiating_user_id, self._business_unit_of(delivery.initiating_user_id))
        self.store.seed("asyncoperations", [row], caller)

    # --- test helpers -----------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery finished; False if some are still pending after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def deliveries(self) -> list[Delivery]:
        with self._cond:
            return list(self._deliveries)

    def clear(self) -> None:
        with self._cond:
            self._deliveries = [d for d in self._deliveries if d.status == "pending"]

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()
        if self._http is not None:
            self._http.close()
            self._http = None


def _value(table: Table, wire: str, value: Any, row: Mapping[str, Any]) -> Any:
    """A column value as the SDK's data contract serialises it."""
    column = table.columns.get(wire)
    if value is None or column is None:
        return value
    if column.kind is Kind.LOOKUP:
        logical = row.get(wire + LOOKUP_TYPE) or (column.targets[0] if column.targets else "")
        return _entity_reference(logical, value, typed=True)
    if column.kind is Kind.CHOICE:
        return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}
    if column.kind is Kind.MONEY:
        return {"__type": f"Money:{CONTRACTS}", "Value": value}
    if column.kind is Kind.DATETIME:
        return wcf_date(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    if column.kind is Kind.DATE:
        return wcf_date(dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC))
    return value


def _attribute_name(wire: str) -> str:
    if wire.startswith("_") and wire.endswith("_value"):
        return wire[1:-6]
    return wire


def _entity_reference(logical_name: str, record_id: str | None, *, typed: bool = False) -> dict[str, Any]:
    reference: dict[str, Any] = {"__type": f"EntityReference:{CONTRACTS}"} if typed else {}
    reference.update(
        {
            "Id": record_id or "00000000-0000-0000-0000-000000000000",
            "KeyAttributes": [],
            "LogicalName": logical_name,
            "Name": None,
            "RowVersion": None,
        }
    )
    return reference


def _wcf_json(context: Mapping[str, Any]) -> bytes:
    # DataContractJsonSerializer escapes '/' as '\/'; in JSON text '/' only occurs inside strings.
    return json.dumps(context, separators=(",", ":"), default=str).replace("/", "\\/").encode()


def _with_auth(url: str, authtype: Any, authvalue: Any, headers: dict[str, str]) -> str:
    """The URL to call, adding the endpoint's auth value as register-web-hook describes (headers updated
    in place)."""
    if not authvalue:
        return url
    params: list[tuple[str, str]] = []
    if authtype == AUTH_WEBHOOK_KEY:
        params = [("code", str(authvalue))]
    elif authtype == AUTH_HTTP_HEADER:
        headers.update(dict(parse_auth_settings(str(authvalue))))
    elif authtype == AUTH_HTTP_QUERY:
        params = parse_auth_settings(str(authvalue))
    if not params:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))
