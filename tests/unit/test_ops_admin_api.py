"""The admin API's routing, auth and error mapping (pure: fake runtime, static JWKS)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.auth import RoleNames, StaticJwksSource, TokenValidator
from shared.connectors.errors import ThrottledError, ValidationError
from shared.ops import admin_api
from shared.ops.admin_api import ApiRequest, Authenticator, handle
from shared.ops.operations import OperationError
from tests.support.json_fuzz import mutated
from tests.support.jwt_keys import NOW, TEST_AUDIENCE, TEST_ISSUER, claims, jwks_document, key_pair, sign

PAIR = key_pair("unit-admin-api")
AUTH = Authenticator(
    TokenValidator(
        StaticJwksSource(jwks_document(PAIR)), issuer=TEST_ISSUER, audience=TEST_AUDIENCE, clock=lambda: NOW
    ),
    RoleNames(),
)


def call(
    method: str, path: str, role: str | None = "Integration.Administrator", body: Any = None, **kw: Any
) -> Any:
    headers = {"Authorization": f"Bearer {sign(PAIR, claims(roles=[role] if role else []))}"}
    raw = json.dumps(body).encode() if body is not None else b""
    return handle(
        ApiRequest(method, path, kw.get("query", {}), headers, raw), runtime=lambda: "rt", authenticator=AUTH
    )


def test_unknown_paths_and_methods() -> None:
    assert call("GET", "manage/nope").status == 404
    wrong = call("GET", "manage/couple")
    assert (wrong.status, wrong.headers["Allow"]) == (405, "POST")


@pytest.mark.parametrize(
    ("method", "path", "role", "status"),
    [
        ("GET", "manage/status", "Integration.User", 200),
        ("GET", "manage/status", "ProductAvailability.User", 403),
        ("POST", "manage/retry", "Integration.User", 403),
        ("GET", "products/I1/availability", "ProductAvailability.User", 200),
        ("GET", "products/I1/availability", "Integration.Administrator", 200),
        ("GET", "products/I1/availability", "Integration.User", 403),
        ("GET", "manage/status", None, 403),
    ],
)
def test_roles(
    monkeypatch: pytest.MonkeyPatch, method: str, path: str, role: str | None, status: int
) -> None:
    monkeypatch.setattr(admin_api.ops, "status", lambda rt: {"ok": True})
    monkeypatch.setattr(admin_api.ops, "retry_all", lambda rt, m: {"queued": 0})
    monkeypatch.setattr(
        admin_api, "availability_service", lambda rt: type("S", (), {"by_number": lambda self, n: {"n": n}})()
    )
    assert call(method, path, role, body={"mapping": "CUSTOMER", "all": True}).status == status


def test_bodies_are_checked_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[Any] = []
    monkeypatch.setattr(admin_api.ops, "match_couple", lambda *a, **k: ran.append(a))
    assert (
        "dry_run"
        in call("POST", "manage/match-coupling", body={"mapping": "C", "dry_run": "yes"}).body["error"]
    )
    assert call("POST", "manage/match-coupling", body=["not", "an", "object"]).status == 400
    assert (
        "unknown field" in call("POST", "manage/match-coupling", body={"mapping": "C", "x": 1}).body["error"]
    )
    assert ran == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OperationError("no such mapping", 404), 404),
        (ValidationError("bad value", status=400, service="business_central"), 502),
        (ThrottledError("slow down", retry_after=7, status=429, service="dataverse"), 503),
        (RuntimeError("boom"), 500),
    ],
)
def test_failures_map_to_status_codes(monkeypatch: pytest.MonkeyPatch, error: Exception, status: int) -> None:
    def fail(rt: Any) -> Any:
        raise error

    monkeypatch.setattr(admin_api.ops, "status", fail)
    answer = call("GET", "manage/status")
    assert answer.status == status
    if status == 503:
        assert answer.headers["Retry-After"] == "7"
    if status == 500:
        assert "boom" not in answer.body["error"]  # internals stay in the log


G = "6d81597f-0f9f-e711-8122-000d3aa2331c"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("manage/couple", {"mapping": "CUSTOMER", "bc_id": "http://evil.example/x", "dv_id": G}, "bc_id"),
        ("manage/couple", {"mapping": "CUSTOMER", "bc_id": G, "dv_id": "x" * 101}, "dv_id"),
        ("manage/sync", {"mapping": "CUSTOMER", "dv_id": "\ud800"}, "dv_id"),
        ("manage/sync", {"mapping": "CUSTOMER", "dv_id": "../../x"}, "dv_id"),
        ("manage/uncouple", {"mapping": "CUSTOMER", "bc_id": "{" + G + "}"}, "bc_id"),
        ("manage/retry", {"mapping": "CUSTOMER", "bc_id": " 10000"}, "bc_id"),
        ("manage/retry", {"mapping": "CUSTOMER", "bc_id": "C1\n"}, "bc_id"),
    ],
)
def test_bad_record_ids_are_400_naming_the_field(path: str, body: dict[str, Any], field: str) -> None:
    # A number or code (`10000`, `' or 1 eq 1`) is a valid reference, looked up with an escaped
    # OData literal (tests/integration/ops); what cannot be one is refused before any I/O.
    # The fake runtime ("rt") would fail with a 500 if anything ran past the id check.
    answer = call("POST", path, body=body)
    assert answer.status == 400, answer.body
    assert f"`{field}`" in answer.body["error"] and "GUID" in answer.body["error"]


def test_bad_record_id_in_the_query_is_400() -> None:
    answer = call("GET", "manage/history", query={"mapping": "CUSTOMER", "bc_id": "a/b"})
    assert answer.status == 400 and "`bc_id`" in answer.body["error"]


_FUZZ_ROUTES = [
    ("manage/couple", {"mapping": "CUSTOMER", "bc_id": G, "dv_id": G, "sync_from": "bc"}),
    ("manage/uncouple", {"mapping": "CUSTOMER", "bc_id": G}),
    ("manage/sync", {"mapping": "CUSTOMER", "dv_id": G, "prefer": "dv"}),
    ("manage/retry", {"mapping": "CUSTOMER", "bc_id": G}),
    ("manage/match-coupling", {"mapping": "CUSTOMER", "dry_run": True}),
    ("manage/poison/replay", {"dry_run": True}),
]


@settings(max_examples=300, deadline=None, derandomize=True)  # seeded: the same cases every run
@given(data=st.data())
def test_fuzz_admin_bodies_are_never_a_5xx(data: st.DataObject) -> None:
    """Mutated bodies (and raw bytes) on every POST route: 2xx or 4xx, and an operation that runs
    only ever gets GUIDs or numbers / codes without URL characters. The runtime is a string:
    anything reaching it unchecked would be a 500."""
    path, sample = data.draw(st.sampled_from(_FUZZ_ROUTES))
    hostile = st.sampled_from(
        ["http://evil.example/x", "' or 1 eq 1", "../../x", "\ud800", "10000", G.upper()]
    )
    sample = {
        k: data.draw(st.one_of(st.just(v), hostile)) if k.endswith("_id") else v for k, v in sample.items()
    }
    raw = data.draw(
        st.one_of(
            st.just(json.dumps(sample).encode()),  # well formed but for the hostile ids
            mutated(sample, max_mutations=1).map(lambda d: json.dumps(d).encode()),
            st.binary(max_size=80),
            st.text(max_size=80).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
        )
    )
    headers = {"Authorization": f"Bearer {sign(PAIR, claims(roles=['Integration.Administrator']))}"}
    answer = handle(
        ApiRequest("POST", path, {}, headers, raw), runtime=lambda: _GuardedRuntime(), authenticator=AUTH
    )
    assert answer.status < 500, answer.body
    if answer.status == 409 and raw.strip():  # reached the runtime: every id had been checked
        body = json.loads(raw)
        for key in ("bc_id", "dv_id"):
            if body.get(key):  # a GUID, or a number / code without URL characters (an OData literal)
                value = body[key]
                assert _GUID.fullmatch(value) or (len(value) <= 100 and not set(value) & set("/\\?#{}"))


_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


class _GuardedRuntime:
    """Stands for the runtime: an operation may look up mappings, nothing else."""

    def __getattr__(self, name: str) -> Any:
        raise OperationError(f"stop: the operation ran past validation ({name})", 409)
