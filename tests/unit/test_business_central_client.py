"""`map_error` and the client's request shapes, with httpx's MockTransport (no server)."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.connectors.business_central import BatchOperation, BusinessCentralClient, map_error
from shared.connectors.credentials import StaticTokenCredential
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
from shared.connectors.retry import RetryPolicy

BASE = "http://bc.test/v2.0/contoso/production/api/v2.0"
COMPANY = "5c7f2c4e-8d1a-4b6e-9f3a-2d4c6e8a0b1c"
RECORD = "26814998-936a-401c-81c1-0e848a64971d"


def bc_error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"msg  CorrelationId:  {RECORD}."}}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (bc_error(409, "Request_EntityChanged"), ConcurrencyError),
        (bc_error(404, "Internal_RecordNotFound"), NotFoundError),
        (bc_error(400, "Internal_RecordNotFound"), NotFoundError),
        (bc_error(400, "Internal_EntityWithSameKeyExists"), AlreadyExistsError),
        (bc_error(400, "Application_StringExceededLength"), ValidationError),
        (bc_error(400, "BadRequest_InvalidToken"), ValidationError),
        (bc_error(401, "Authentication_InvalidCredentials"), AuthenticationError),
        (bc_error(429, "Application_TooManyRequests"), ThrottledError),
        (bc_error(503, "Internal_ServiceUnavailable", {"retry-after": "30"}), ThrottledError),
        (bc_error(503, "Internal_ServiceUnavailable"), TransientError),
        (bc_error(500, "Internal_ServerError"), TransientError),
        (bc_error(408, "Internal_RequestTimeout"), TransientError),
        (httpx.Response(502, text="<html>bad gateway</html>"), TransientError),
    ],
)
def test_map_error(response: httpx.Response, kind: type[ApiError]) -> None:
    error = map_error(response)
    assert type(error) is kind
    assert error.status == response.status_code


def test_map_error_keeps_code_message_and_retry_after() -> None:
    error = map_error(bc_error(429, "Application_TooManyRequests", {"retry-after": "12"}))
    assert isinstance(error, ThrottledError)
    assert error.code == "Application_TooManyRequests" and error.message.startswith("msg")
    assert error.retry_after == 12


def client_with(handler) -> tuple[BusinessCentralClient, list[httpx.Request]]:  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.Client(transport=httpx.MockTransport(record))
    client = BusinessCentralClient(
        BASE, StaticTokenCredential("tok"), http=http, policy=RetryPolicy(base_delay=0), sleep=lambda s: None
    )
    return client, seen


def test_update_sends_if_match_and_the_bearer_token() -> None:
    client, seen = client_with(lambda r: httpx.Response(200, json={"id": RECORD}))
    client.update(COMPANY, "customers", RECORD, {"city": "Oslo"}, etag='W/"abc"')
    request = seen[0]
    assert request.method == "PATCH"
    assert str(request.url) == f"{BASE}/companies({COMPANY})/customers({RECORD})"
    assert request.headers["if-match"] == 'W/"abc"' and request.headers["authorization"] == "Bearer tok"
    with pytest.raises(ValueError):
        client.update(COMPANY, "customers", RECORD, {}, etag="")
    with pytest.raises(ValueError):
        client.get(COMPANY, "customers", "1) or (1")


def test_non_atomic_batch_is_split_into_requests_of_100() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        ops = json.loads(request.content)["requests"]
        return httpx.Response(200, json={"responses": [{"id": o["id"], "status": 204} for o in ops]})

    client, seen = client_with(answer)
    ops = [BatchOperation("DELETE", "customers", RECORD, etag="*") for _ in range(250)]
    results = client.batch(COMPANY, ops)
    assert [len(json.loads(r.content)["requests"]) for r in seen] == [100, 100, 50]
    assert len(results) == 250 and all(r.ok for r in results)
    assert "isolation" not in seen[0].headers
    assert json.loads(seen[0].content)["requests"][0]["url"] == f"companies({COMPANY})/customers({RECORD})"
    with pytest.raises(ValueError):
        client.batch(COMPANY, ops, atomic=True)


def test_next_link_to_another_host_is_refused() -> None:
    client, _ = client_with(
        lambda r: httpx.Response(200, json={"value": [{"id": 1}], "@odata.nextLink": "http://evil.test/x"})
    )
    pages = client.query_pages(COMPANY, "customers")
    assert next(pages) == [{"id": 1}]
    with pytest.raises(ApiError, match="another host"):
        next(pages)
