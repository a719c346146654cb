"""`POST /api/data/v9.2/$batch`: multipart/mixed in and out, change sets atomic.

Documented at
https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api

Each part runs through `WebApi.handle`, as a top-level request would. A change set runs in one store
transaction and is rolled back (its events never fire) when any of its requests fails. Without
`Prefer: odata.continue-on-error` processing stops at the first failure and the batch answers 400
with the responses so far, the failing one last; with it the batch answers 200 and every part
carries its own status.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack.dataverse import errors
from devstack.dataverse.api import API_PREFIX, ApiRequest, ApiResponse, WebApi, parse_prefer
from devstack.dataverse.errors import DataverseError

_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_REFERENCE_RE = re.compile(r"^\$(\d+)$")


@dataclass
class _Part:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


@dataclass
class _ChangeSet:
    parts: list[_Part] = field(default_factory=list)


class _Rollback(Exception):
    """Raised inside a change set's transaction to undo it after a failed request."""


def boundary_of(content_type: str) -> str | None:
    match = _BOUNDARY_RE.search(content_type or "")
    return match.group(1) if match else None


def split_multipart(text: str, boundary: str) -> list[str]:
    """The bodies between `--boundary` delimiter lines (CRLF or LF line endings)."""
    delimiter = f"--{boundary}"
    parts: list[str] = []
    current: list[str] | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        stripped = line.rstrip()
        if stripped == delimiter:
            if current is not None:
                parts.append("\n".join(current))
            current = []
        elif stripped == delimiter + "--":
            if current is not None:
                parts.append("\n".join(current))
            current = None
            break
        elif current is not None:
            current.append(line)
    if current is not None:
        raise errors.bad_request(f"The batch body does not end with the closing delimiter '--{boundary}--'.")
    return parts


def _headers_and_body(text: str) -> tuple[dict[str, str], str]:
    head, _, body = text.partition("\n\n")
    headers: dict[str, str] = {}
    for line in head.split("\n"):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers, body


def parse_batch(body: bytes, content_type: str) -> list[_Part | _ChangeSet]:
    boundary = boundary_of(content_type)
    if not content_type.lower().startswith("multipart/mixed") or not boundary:
        raise errors.bad_request(
            "A $batch request needs 'Content-Type: multipart/mixed; boundary=batch_<id>'."
        )
    items: list[_Part | _ChangeSet] = []
    for raw in split_multipart(body.decode("utf-8"), boundary):
        headers, content = _headers_and_body(raw.lstrip("\n"))
        part_type = headers.get("content-type", "")
        if part_type.lower().startswith("multipart/mixed"):
            inner = boundary_of(part_type)
            if not inner:
                raise errors.bad_request("A change set part needs a boundary in its Content-Type.")
            change_set = _ChangeSet()
            for raw_inner in split_multipart(content, inner):
                inner_headers, inner_content = _headers_and_body(raw_inner.lstrip("\n"))
                if inner_headers.get("content-type", "").lower().startswith("multipart/"):
                    raise errors.bad_request("Nested change sets are not allowed in a batch.")
                change_set.parts.append(_request(inner_headers, inner_content))
            items.append(change_set)
        else:
            items.append(_request(headers, content))
    return items


def _request(part_headers: dict[str, str], content: str) -> _Part:
    head, _, body = content.lstrip("\n").partition("\n\n")
    lines = head.split("\n")
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise errors.bad_request(f"The batch part has no request line: '{lines[0]}'.")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return _Part(
        method=request_line[0].upper(),
        url=request_line[1],
        headers=headers,
        body=body.strip("\n").encode("utf-8"),
        content_id=part_headers.get("content-id") or headers.get("content-id"),
    )


def execute_batch(api: WebApi, outer: ApiRequest, *, max_requests: int) -> ApiResponse:
    items = parse_batch(outer.body, outer.headers.get("content-type", ""))
    total = sum(len(i.parts) if isinstance(i, _ChangeSet) else 1 for i in items)
    if total > max_requests:
        raise errors.bad_request(
            f"Number of requests in a batch exceeded the limit of {max_requests}: "
            "split it into several batches."
        )
    continue_on_error = "odata.continue-on-error" in parse_prefer(outer.headers.get("prefer"))
    rendered: list[str] = []
    failed = False
    # The batch is one request for the request count, but its execution time is its parts' time.
    modelled = [0.0]
    for item in items:
        if isinstance(item, _ChangeSet):
            text, ok = _run_change_set(api, outer, item, modelled)
        else:
            response = _run(api, outer, item, {})
            modelled[0] += response.execution_ms
            text, ok = _render_response(response, None), response.status < 400
        rendered.append(text)
        if not ok:
            failed = True
            if not continue_on_error:
                break
    boundary = f"batchresponse_{uuid.uuid4()}"
    body = _join(rendered, boundary)
    headers = {"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"}
    if continue_on_error:
        headers["Preference-Applied"] = "odata.continue-on-error"
    status = 400 if failed and not continue_on_error else 200
    return ApiResponse(status, headers, body.encode("utf-8"), execution_ms=modelled[0])


def _run_change_set(
    api: WebApi, outer: ApiRequest, change_set: _ChangeSet, modelled: list[float]
) -> tuple[str, bool]:
    results: list[tuple[ApiResponse, str | None]] = []
    references: dict[str, str] = {}
    failure: tuple[ApiResponse, str | None] | None = None
    try:
        with api.store.transaction():
            for part in change_set.parts:
                if part.method == "GET":
                    response = ApiResponse.error(
                        errors.bad_request("GET requests are not allowed in a change set.")
                    )
                else:
                    response = _run(api, outer, part, references)
                    modelled[0] += response.execution_ms  # spent even when the set rolls back
                if response.status >= 400:
                    failure = (response, part.content_id)
                    raise _Rollback
                results.append((response, part.content_id))
                if part.content_id and "OData-EntityId" in response.headers:
                    references[part.content_id] = response.headers["OData-EntityId"]
                elif part.content_id and response.status in (200, 201):
                    references[part.content_id] = _entity_url(api, response, outer)
    except _Rollback:
        pass
    boundary = f"changesetresponse_{uuid.uuid4()}"
    shown = [failure] if failure else results
    inner = _join([_render_response(r, cid) for r, cid in shown], boundary)
    text = f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}"
    return text, failure is None


def _entity_url(api: WebApi, response: ApiResponse, outer: ApiRequest) -> str:
    """The entity URL of a `return=representation` answer (which has no OData-EntityId header)."""
    body = json.loads(response.body or b"{}")
    context = str(body.get("@odata.context", ""))
    entity_set = context.split("#", 1)[-1].split("(", 1)[0].split("/", 1)[0]
    primary_key = api.store.table(entity_set).table.primary_key
    return f"{outer.base_url}{entity_set}({body.get(primary_key)})"


def _run(api: WebApi, outer: ApiRequest, part: _Part, references: dict[str, str]) -> ApiResponse:
    try:
        url = _resolve_url(part.url, references)
        path, query = _split_url(url)
        body = _resolve_body(part.body, references)
    except DataverseError as exc:
        return ApiResponse.error(exc)
    if path.strip("/") == "$batch":
        return ApiResponse.error(errors.bad_request("Nested batches are not allowed."))
    request = ApiRequest(
        method=part.method,
        path=path,
        query=query,
        headers=part.headers,
        body=body,
        caller=outer.caller,
        base_url=outer.base_url,
    )
    return api.handle(request)


def _resolve_url(url: str, references: dict[str, str]) -> str:
    match = re.match(r"^\$(\d+)(.*)$", url)
    if not match:
        return url
    content_id, rest = match.groups()
    if content_id not in references:
        raise errors.bad_request(
            f"Content-ID Reference: '${content_id}' does not exist in the batch context."
        )
    return references[content_id] + rest


def _resolve_body(body: bytes, references: dict[str, str]) -> bytes:
    if not references or b"$" not in body:
        return body
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError:
        return body
    if isinstance(data, dict):
        for key, value in list(data.items()):
            if key.endswith("@odata.bind") and isinstance(value, str):
                match = _REFERENCE_RE.match(value)
                if match:
                    if match.group(1) not in references:
                        raise errors.bad_request(
                            f"Content-ID Reference: '{value}' does not exist in the batch context."
                        )
                    data[key] = references[match.group(1)]
    return json.dumps(data).encode()


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    path = parts.path
    if API_PREFIX in path:
        path = path.split(API_PREFIX, 1)[1]
    elif path.startswith("/"):
        raise errors.bad_request(f"The batch part URL '{url}' is not under {API_PREFIX}.")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return unquote(path), query


def _render_response(response: ApiResponse, content_id: str | None) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines.append("")
    lines.append(f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}")
    headers = dict(response.headers)
    if "OData-EntityId" in headers:
        headers.setdefault("Location", headers["OData-EntityId"])
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    lines.append("")
    lines.append(response.body.decode("utf-8") if response.body else "")
    return "\r\n".join(lines)


def _join(parts: list[str], boundary: str) -> str:
    chunks = [f"--{boundary}\r\n{part}\r\n" for part in parts]
    return "".join(chunks) + f"--{boundary}--\r\n"
