"""The operator page's sign-in, roles, form protection and escaping (pure: static JWKS, a runtime that
must not be reached where the request is refused). The page against the local stack in a real
browser: tests/e2e/test_operator_page_e2e.py."""

from __future__ import annotations

from typing import Any

import pytest

from shared.auth import RoleNames, StaticJwksSource, TokenValidator
from shared.ops import operations, operator_page
from shared.ops.admin_api import ApiRequest, Authenticator
from shared.ops.operator_page import handle_page, is_page
from shared.settings import Settings
from tests.support.jwt_keys import NOW, TEST_AUDIENCE, TEST_ISSUER, claims, jwks_document, key_pair, sign

PAIR = key_pair("unit-operator-page")
AUTH = Authenticator(
    TokenValidator(
        StaticJwksSource(jwks_document(PAIR)), issuer=TEST_ISSUER, audience=TEST_AUDIENCE, clock=lambda: NOW
    ),
    RoleNames(),
)
HOST = {"Host": "func-bcsync.azurewebsites.net"}
BC_ID = "b5d58873-2824-4733-8063-586dfa9fedbb"


def token(role: str = "Integration.Administrator") -> str:
    return sign(PAIR, claims(roles=[role]))


def unreachable() -> Any:
    raise AssertionError("the runtime was reached: the request should have been refused before")


def page(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", **kw: Any) -> Any:
    request = ApiRequest(method, path, kw.pop("query", {}), {**HOST, **(headers or {})}, body)
    return handle_page(request, runtime=kw.pop("runtime", unreachable), authenticator=AUTH)


def test_the_page_paths_are_told_apart_from_the_api() -> None:
    assert is_page("manage/ui") and is_page("manage/ui/errors") and is_page("/manage/ui/")
    assert not is_page("manage/uix") and not is_page("manage/status")


def test_without_a_token_the_page_asks_to_sign_in() -> None:
    answer = page("GET", "manage/ui")
    assert answer.status == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert '<label for="token">Access token</label>' in answer.body
    assert '<textarea id="token"' in answer.body
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert "<script" not in answer.body  # no JavaScript


def test_closed_until_auth_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AUTH_ISSUER",
        "AUTH_AUDIENCE",
        "AUTH_JWKS_URL",
        "DATAVERSE_STATIC_TOKEN",
        "BC_STATIC_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)  # a stack of an earlier test may have left them set
    settings = Settings.model_validate(
        {"DATAVERSE_URL": "https://contoso.crm.dynamics.com",
         "BC_API_URL": "https://api.businesscentral.dynamics.com/v2.0/t/production/api/v2.0",
         "BC_COMPANY_IDS": "f64eba74-dacd-4854-a584-1834f68cfc3a", "DATAVERSE_WEBHOOK_SECRET": "x" * 20,
         "BC_WEBHOOK_CLIENT_STATE": "y" * 20, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    )  # fmt: skip
    request = ApiRequest("GET", "manage/ui", {}, {"Authorization": f"Bearer {token()}"})
    answer = handle_page(request, runtime=unreachable, settings=lambda: settings)
    assert answer.status == 503 and "AUTH_ISSUER" in answer.body


def test_signing_in_sets_an_httponly_samesite_cookie_and_only_for_a_valid_token() -> None:
    answer = page("POST", "manage/ui/sign-in", body=f"token={token('Integration.User')}".encode())
    assert answer.status == 303 and answer.headers["Location"] == "/api/manage/ui"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("bcsync_token=ey") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" in cookie and "Path=/api/manage/ui" in cookie
    local = page("POST", "manage/ui/sign-in", {"Host": "127.0.0.1:7071"}, f"token={token()}".encode())
    assert "Secure" not in local.headers["Set-Cookie"]  # the local stack speaks plain HTTP

    bad = page("POST", "manage/ui/sign-in", body=b"token=not-a-jwt")
    assert bad.status == 401 and "Set-Cookie" not in bad.headers and 'role="alert"' in bad.body
    no_role = page("POST", "manage/ui/sign-in", body=f"token={token('ProductAvailability.User')}".encode())
    assert no_role.status == 403 and "Set-Cookie" not in no_role.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Cookie": "other=1; bcsync_token=TOKEN"},
        {"X-MS-TOKEN-AAD-ACCESS-TOKEN": "TOKEN"},  # App Service Authentication's token store
        {"Authorization": "Bearer TOKEN"},
    ],
)
def test_the_token_comes_from_the_cookie_easy_auth_or_the_header(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> None:
    monkeypatch.setattr(operations, "list_errors", lambda rt, mapping: [])
    filled = {k: v.replace("TOKEN", token("Integration.User")) for k, v in headers.items()}
    answer = page("GET", "manage/ui/errors", filled, runtime=lambda: "rt")
    assert answer.status == 200 and "Every record is in sync." in answer.body


def test_a_read_only_user_cannot_retry_and_sees_no_retry_button(monkeypatch: pytest.MonkeyPatch) -> None:
    item = operations.ErrorItem(
        "CUSTOMER", BC_ID, None, "failed", "refused <b>", 1, "2026-12-01T18:00:00Z", True, bc_number="C00010"
    )
    monkeypatch.setattr(operations, "list_errors", lambda rt, mapping: [item])
    reader = {"Authorization": f"Bearer {token('Integration.User')}"}
    listed = page("GET", "manage/ui/errors", reader, runtime=lambda: "rt")
    assert (
        listed.status == 200
        and "CUSTOMER C00010" in listed.body
        and '<form method="post" action' in listed.body
    )
    assert "/retry" not in listed.body  # only the sign-out form
    assert "refused &lt;b&gt;" in listed.body  # the service's message, escaped
    admin = page("GET", "manage/ui/errors", {"Authorization": f"Bearer {token()}"}, runtime=lambda: "rt")
    assert 'action="/api/manage/ui/retry"' in admin.body and "Retry CUSTOMER C00010</button>" in admin.body

    refused = page("POST", "manage/ui/retry", reader, f"mapping=CUSTOMER&bc_id={BC_ID}".encode())
    assert refused.status == 403 and "Integration.Administrator" in refused.body


def test_a_form_posted_from_another_site_is_refused_before_anything_runs() -> None:
    admin = {"Authorization": f"Bearer {token()}"}
    body = f"mapping=CUSTOMER&bc_id={BC_ID}".encode()
    for origin in ("https://evil.example", "null"):
        answer = page("POST", "manage/ui/retry", {**admin, "Origin": origin}, body)
        assert answer.status == 403 and "another site" in answer.body


def test_retry_redirects_to_the_list_with_what_happened(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def retry(rt: Any, mapping: str, side: str, record_id: str) -> Any:
        calls.append((mapping, side, record_id))
        done = operations.SyncNowResult(mapping, side, record_id, None, "modified", "", record_id, "d", [])  # type: ignore[arg-type]
        return operations.RetryResult(mapping, retried=[done])

    monkeypatch.setattr(operations, "retry", retry)
    admin = {"Authorization": f"Bearer {token()}", "Origin": "https://func-bcsync.azurewebsites.net"}
    bc_id = "b5d58873-2824-4733-8063-586dfa9fedbb"
    answer = page(
        "POST", "manage/ui/retry", admin, f"mapping=CUSTOMER&bc_id={bc_id}".encode(), runtime=lambda: "rt"
    )
    assert calls == [("CUSTOMER", "bc", bc_id)]
    assert answer.status == 303 and answer.headers["Location"].startswith(
        "/api/manage/ui/errors?mapping=CUSTOMER"
    )
    assert "outcome=modified" in answer.headers["Location"]

    missing = page("POST", "manage/ui/retry", admin, b"bc_id=x", runtime=lambda: "rt")
    assert missing.status == 400 and "no mapping" in missing.body


def test_what_a_request_says_is_escaped_on_the_page() -> None:
    admin = {"Authorization": f"Bearer {token()}"}
    answer = page("GET", "manage/ui/<script>alert(1)</script>", admin)
    assert answer.status == 404 and "<script>" not in answer.body and "&lt;script&gt;" in answer.body
    notice = operator_page._notice({"outcome": "<i>x</i>", "record": "r", "mapping": "M"})
    assert "<i>" not in notice and "&lt;i&gt;" in notice


def test_the_status_page_shows_running_resyncs_with_progress_and_subscription_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datetime as dt
    from types import SimpleNamespace

    from shared.store.journal import RunSummary
    from shared.store.subscriptions import BcSubscription

    status = operations.ServiceStatus(
        [operations.MappingStatus("CUSTOMER", 40, 1, 0, None, "2026-12-01T18:00:00Z", {}, None, 0)], 3, 0
    )
    run = RunSummary("run-1", "CUSTOMER", "full_resync", "2026-12-01T18:00:00Z", status="running", total=400,
                     done=100)  # fmt: skip
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=5)).isoformat()
    subscription = BcSubscription("s1", "company", "customers", "companies(x)/customers", soon, soon)
    monkeypatch.setattr(operations, "status", lambda rt: status)
    monkeypatch.setattr(operations, "list_runs", lambda rt, mapping, limit: [run])
    rt = SimpleNamespace(subscriptions=SimpleNamespace(bc_subscriptions=lambda: [subscription]))
    answer = page(
        "GET", "manage/ui", {"Authorization": f"Bearer {token('Integration.User')}"}, runtime=lambda: rt
    )
    assert answer.status == 200
    assert '<progress id="run-run-1" max="400" value="100">25 %</progress>' in answer.body
    assert '<label for="run-run-1">CUSTOMER full_resync running: 100 of 400 (25 %)' in answer.body
    assert "<td>customers</td>" not in answer.body and '<th scope="row">customers</th>' in answer.body
    assert "in 5 h" in answer.body
    assert 'href="/api/manage/ui/errors?mapping=CUSTOMER">CUSTOMER: records not in sync</a>' in answer.body
    assert "<strong>3</strong> waiting" in answer.body
