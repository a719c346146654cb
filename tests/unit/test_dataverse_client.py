"""The Dataverse client's pure parts: error mapping, key URLs, `$batch` bodies and answers."""

from __future__ import annotations

import httpx
import pytest

from shared.connectors.dataverse import (
    BatchRequest,
    build_batch_body,
    key_segment,
    map_error,
    parse_batch_response,
)
from shared.connectors.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConcurrencyError,
    NotFoundError,
    ThrottledError,
    TransientError,
    ValidationError,
)

BASE = "https://org.crm.dynamics.com/api/data/v9.2/"


def error_response(
    status: int, code: str = "", message: str = "m", headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "", AuthenticationError),
        (403, "", AuthenticationError),
        (404, "0x80040217", NotFoundError),
        (412, "0x80060882", ConcurrencyError),
        (412, "0x80060892", ConcurrencyError),
        (412, "0x80040237", AlreadyExistsError),
        (404, "", NotFoundError),
        (412, "", ConcurrencyError),  # request unknown, no code: read again and decide again
        (400, "0x80044331", ValidationError),
        (405, "", ValidationError),
        (500, "", TransientError),
        (503, "", TransientError),
    ],
)
def test_map_error_types(status: int, code: str, expected: type) -> None:
    error = map_error(error_response(status, code, "boom"))
    assert type(error) is expected
    assert (error.status, error.code, error.message) == (status, code, "boom")


def test_429_carries_retry_after() -> None:
    error = map_error(error_response(429, "0x80072322", "slow down", {"Retry-After": "12"}))
    assert isinstance(error, ThrottledError)
    assert error.retry_after == 12


def test_non_json_error_keeps_the_text() -> None:
    error = map_error(httpx.Response(502, text="Bad Gateway from proxy"))
    assert isinstance(error, TransientError)
    assert "Bad Gateway" in error.message


def test_key_segment() -> None:
    assert key_segment("accounts", {"accountid": "6D81597F-0F9F-E711-8122-000D3AA2331C"}) == (
        "6d81597f-0f9f-e711-8122-000d3aa2331c"
    )
    assert key_segment("accounts", {"accountnumber": "O'Brien & Co"}) == "accountnumber='O''Brien%20%26%20Co'"
    assert key_segment("contacts", {"firstname": "Joe", "age": 3}) == "firstname='Joe',age=3"


def test_batch_body_holds_each_request() -> None:
    body = build_batch_body(
        BASE,
        [BatchRequest("GET", "accounts(1)"), BatchRequest("POST", "accounts", {"name": "n"})],
        "batch_1",
        change_set=False,
    ).decode()
    assert body.startswith("--batch_1\r\nContent-Type: application/http\r\n")
    assert f"GET {BASE}accounts(1) HTTP/1.1" in body
    assert 'Content-Type: application/json; type=entry\r\n\r\n{"name":"n"}' in body
    assert body.endswith("--batch_1--\r\n")
    change_set = build_batch_body(
        BASE, [BatchRequest("PATCH", "$1", {})], "batch_2", change_set=True
    ).decode()
    assert "multipart/mixed; boundary=changeset_" in change_set and "Content-ID: 1" in change_set
    assert "PATCH $1 HTTP/1.1" in change_set


def test_parse_batch_response_flattens_change_sets() -> None:
    text = (
        "--batchresponse_a\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"name":"x"}\r\n'
        "--batchresponse_a\r\nContent-Type: multipart/mixed; boundary=changesetresponse_b\r\n\r\n"
        "--changesetresponse_b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        "Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\n"
        f"OData-EntityId: {BASE}accounts(6d81597f-0f9f-e711-8122-000d3aa2331c)\r\n\r\n\r\n"
        "--changesetresponse_b--\r\n--batchresponse_a--\r\n"
    )
    response = httpx.Response(
        200, text=text, headers={"Content-Type": "multipart/mixed; boundary=batchresponse_a"}
    )
    first, second = parse_batch_response(response)
    assert (first.status, first.body) == (200, {"name": "x"})
    assert (second.status, second.content_id, second.entity_id) == (
        204,
        "1",
        "6d81597f-0f9f-e711-8122-000d3aa2331c",
    )


def test_failed_batch_maps_to_its_failing_part() -> None:
    text = (
        "--batchresponse_a\r\nContent-Type: application/http\r\n\r\n"
        "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\n\r\n"
        '{"error":{"code":"0x80060882","message":"stale"}}\r\n--batchresponse_a--\r\n'
    )
    response = httpx.Response(
        400, text=text, headers={"Content-Type": "multipart/mixed; boundary=batchresponse_a"}
    )
    error = map_error(response)
    assert isinstance(error, ConcurrencyError) and error.message == "stale"


@pytest.mark.parametrize(
    ("headers", "code", "expected"),
    [
        ({"If-Match": 'W/"1"'}, "", ConcurrencyError),
        ({"If-Match": 'W/"1"'}, "0x80040237", ConcurrencyError),
        ({}, "", AlreadyExistsError),  # a create: only "it exists" can fail its precondition
        ({"If-None-Match": "*"}, "", AlreadyExistsError),
        ({}, "0x80060892", AlreadyExistsError),
    ],
)
def test_a_412_is_decided_by_what_was_sent_not_by_the_code(
    headers: dict[str, str], code: str, expected: type
) -> None:
    request = httpx.Request("POST" if not headers else "PATCH", BASE + "accounts", headers=headers)
    response = httpx.Response(412, json={"error": {"code": code, "message": "m"}}, request=request)
    assert type(map_error(response)) is expected


def test_batch_parts_know_whether_they_were_version_checked() -> None:
    from dataclasses import replace

    part = parse_batch_response(
        httpx.Response(
            200,
            text=(
                "--b\r\nContent-Type: application/http\r\n\r\n"
                "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\n\r\n"
                '{"error":{"code":"","message":"exists"}}\r\n--b--\r\n'
            ),
            headers={"Content-Type": "multipart/mixed; boundary=b"},
        )
    )[0]
    assert isinstance(replace(part, version_checked=False).error(), AlreadyExistsError)
    assert isinstance(replace(part, version_checked=True).error(), ConcurrencyError)
