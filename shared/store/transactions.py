"""Entity group transactions (up to 100 writes to one partition in one request), serialized here
rather than by the SDK.

`TableClient.submit_transaction` builds each operation as an HTTP request object and has the
`email` package write and parse the multipart body (plus a thread pool per call): under a burst that
was a third of the service's CPU, more than the writes themselves. The format is small and fixed
(https://learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions), so the
body is written as text and the answer read line by line, and sent through the table client's own
pipeline: the same credential, retries and transport as every other storage request.

What this serializer does not know (a typed `(value, EdmType)` tuple, an enum, …) goes through the SDK
unchanged. Errors are the SDK's: `TableTransactionError` with the failing operation's index, or the
`HttpResponseError` of a refused request.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.data.tables import RequestTooLargeError, TableClient, TableTransactionError, UpdateMode

from shared.errors import ServiceError

Operation = tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Mapping[str, Any]]

_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ETAG = re.compile(rb"^ETag: (.+?)\r?$", re.MULTILINE | re.IGNORECASE)
_CHANGESET_PART = re.compile(rb"^--changesetresponse_\S+\r?$", re.MULTILINE)
_INT32 = range(-(2**31), 2**31)


class _Unsupported(ServiceError):
    """A value or operation this serializer leaves to the SDK."""


def submit_transaction(table: TableClient, operations: Sequence[Operation]) -> list[dict[str, str]]:
    """As `TableClient.submit_transaction`: one `{"etag": …}` per operation, in order. A table that is
    not the SDK's client (the unit tests' in-memory table) is asked itself."""
    if not isinstance(table, TableClient):
        return list(table.submit_transaction(operations))
    try:
        parts = [_part(table, index, op) for index, op in enumerate(operations)]
    except _Unsupported:
        return list(table.submit_transaction(operations))  # type: ignore[arg-type]
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    body = "".join(
        [
            f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n",
            *(f"--{changeset}\r\n{part}" for part in parts),
            f"--{changeset}--\r\n\r\n--{batch}--\r\n",
        ]
    ).encode()
    request = HttpRequest(
        "POST",
        f"{_account(table)}/$batch",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch}",
            "Accept": "application/json",
        },
        content=body,
    )
    response = table._client.send_request(request, stream=True)  # read below: not decoded as JSON
    if response.status_code == 404:
        raise ResourceNotFoundError(response=response)
    if response.status_code == 413:
        raise RequestTooLargeError(message="The transaction request was too large", response=response)
    if response.status_code != 202:
        raise HttpResponseError(response=response)
    return _results(response.read(), len(operations))


def _part(table: TableClient, index: int, operation: Operation) -> str:
    kind, entity = operation[0], operation[1]
    options: Mapping[str, Any] = operation[2] if len(operation) > 2 else {}  # type: ignore[misc]
    if set(options) - {"mode", "etag", "match_condition"}:
        raise _Unsupported(options)
    mode = options.get("mode", UpdateMode.MERGE)
    collection = f"{_account(table)}/{table.table_name}"
    headers = ""
    if kind == "create":
        method, address, accept = "POST", collection, "application/json;odata=minimalmetadata"
    elif kind in ("upsert", "update"):
        method, accept = ("PUT" if mode == UpdateMode.REPLACE else "PATCH"), "application/json"
        address = (
            f"{collection}(PartitionKey='{_key(entity['PartitionKey'])}',RowKey='{_key(entity['RowKey'])}')"
        )
        if kind == "update":
            condition = options.get("match_condition", MatchConditions.Unconditionally)
            if condition == MatchConditions.IfNotModified:
                headers = f"If-Match: {options['etag']}\r\n"
            elif condition == MatchConditions.Unconditionally:
                headers = "If-Match: *\r\n"
            else:
                raise _Unsupported(condition)
    else:
        raise _Unsupported(kind)
    payload = json.dumps(_entity(entity), separators=(",", ":"), ensure_ascii=False)
    return (
        "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        f"Content-ID: {index}\r\n\r\n"
        f"{method} {address} HTTP/1.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload.encode())}\r\nx-ms-version: {table.api_version}\r\n"
        "DataServiceVersion: 3.0\r\n"
        f"Accept: {accept}\r\n{headers}\r\n"
        f"{payload}\r\n"
    )


def _account(table: TableClient) -> str:
    # As the SDK addresses its own transactions (the account's host, with Azurite's account path).
    return f"{table.scheme}://{table._primary_hostname}"


def _key(value: Any) -> str:
    # An OData key literal (a quote doubled), URL-encoded.
    return quote(str(value).replace("'", "''"), safe="")


def _entity(source: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body, with the `@odata.type` annotations the service needs for non-default types."""
    out: dict[str, Any] = {}
    for name, value in source.items():
        if value is None:
            continue
        if isinstance(value, (bool, str)):
            out[name] = value
        elif isinstance(value, int):
            if value in _INT32:
                out[name] = value
            else:
                out[name], out[f"{name}@odata.type"] = str(value), "Edm.Int64"
        elif isinstance(value, float):
            out[name], out[f"{name}@odata.type"] = value, "Edm.Double"
        elif isinstance(value, dt.datetime):
            out[name], out[f"{name}@odata.type"] = _datetime(value), "Edm.DateTime"
        elif isinstance(value, uuid.UUID):
            out[name], out[f"{name}@odata.type"] = str(value), "Edm.Guid"
        elif isinstance(value, bytes):
            out[name], out[f"{name}@odata.type"] = base64.b64encode(value).decode(), "Edm.Binary"
        else:
            raise _Unsupported(name)
    return out


def _datetime(value: dt.datetime) -> str:
    stored = getattr(value, "tables_service_value", None)  # a value read back keeps its 7 digits
    if stored:
        return str(stored)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _results(body: bytes, count: int) -> list[dict[str, str]]:
    """The ETags of a committed transaction, or its failure (one part: the refused operation)."""
    parts = [(p, int(status.group(1))) for p in _CHANGESET_PART.split(body) if (status := _STATUS.search(p))]
    if len(parts) == count and all(200 <= status < 300 for _, status in parts):
        tags = [_ETAG.search(p) for p, _ in parts]
        return [{"etag": tag.group(1).decode() if tag else ""} for tag in tags]
    failed = next((p for p, status in parts if not 200 <= status < 300), b"")
    error: Any = {}
    start = failed.find(b"{")
    if start >= 0:
        try:
            error = json.loads(failed[start : failed.rfind(b"}") + 1]).get("odata.error", {})
        except (ValueError, AttributeError):
            error = {}
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    text = error.get("message", {}).get("value", "") if isinstance(error, dict) else ""
    message = str(text) or f"the transaction was refused ({code or 'no error part in the answer'})"
    error_out = TableTransactionError(message=message)  # its `index`: the message's "<n>:" prefix
    error_out.error_code = code or None  # type: ignore[attr-defined]  # as the SDK's `_decode_error` sets it
    raise error_out
