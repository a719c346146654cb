"""The operator's web page in a real headless Chromium (issue 19, point 3), against the local stack:
sign in with an Entra-style token (validated like the admin API's, against a local JWKS), see a record
that failed to sync with Dataverse's reason, retry it from the page, and find it in sync. Also what a
person on a phone or with only a keyboard needs: labels, no sideways page scroll, focus reaching
the Retry button."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.serve import ServerHandle, serve_in_thread
from tests.e2e.harness import E2EStack, wait_for
from tests.support.jwt_keys import TEST_AUDIENCE, TEST_ISSUER, claims, jwks_document, key_pair, sign
from tests.support.webdriver import Browser, chromium

pytestmark = pytest.mark.e2e

KEY = key_pair("operator-page-key")

# WCAG 2.1 contrast (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio), computed in the page from the
# colours the browser applies: `COLOURS` defines the helpers, `TEXT_CONTRAST` lists every visible text
# below 4.5:1 (3:1 when large) against its background, `FOCUS_RING` measures the focused element's
# outline against what surrounds it (non-text contrast, 3:1).
COLOURS = """
function rgba(text) {
  const v = text.match(/[\\d.]+/g).map(Number);
  return {r: v[0], g: v[1], b: v[2], a: v.length > 3 ? v[3] : 1};
}
function lum(c) {
  const f = x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
}
function ratio(a, b) {
  const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c.a > 0) return c;
  }
  return {r: 255, g: 255, b: 255, a: 1};
}
"""
TEXT_CONTRAST = (
    COLOURS
    + """
const problems = [];
for (const el of document.querySelectorAll('body *')) {
  const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  const box = el.getBoundingClientRect();
  if (!own || box.width === 0 || box.height === 0 || box.right < 0) continue;
  const style = getComputedStyle(el);
  const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
  const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  const got = ratio(rgba(style.color), background(el));
  if (got < needed) problems.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}": ${got.toFixed(2)}`);
}
return problems;
"""
)
FOCUS_RING = (
    COLOURS
    + """
const el = document.activeElement, style = getComputedStyle(el);
const around = background(el.parentElement || el);
return [el.tagName + ' ' + (el.textContent || '').trim().slice(0, 30), style.outlineStyle,
        parseFloat(style.outlineWidth), ratio(rgba(style.outlineColor), around)];
"""
)


@pytest.fixture(scope="module")
def jwks() -> Iterator[ServerHandle]:
    document = jwks_document(KEY)

    async def keys(request: Any) -> JSONResponse:
        return JSONResponse(document)

    server = serve_in_thread(Starlette(routes=[Route("/discovery/v2.0/keys", keys)]))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def e2e_environment(jwks: ServerHandle) -> dict[str, str]:
    return {
        "AUTH_ISSUER": TEST_ISSUER,
        "AUTH_AUDIENCE": TEST_AUDIENCE,
        "AUTH_JWKS_URL": f"{jwks.url}/discovery/v2.0/keys",
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as session:
        yield session


def _token(*roles: str) -> str:
    now = int(time.time())  # `claims` defaults to times fixed at import
    return sign(
        KEY, claims(roles=list(roles), name="Olivia Operator", iat=now - 60, nbf=now - 60, exp=now + 3600)
    )


def _page(e2e: E2EStack, path: str = "") -> str:
    assert e2e.stack.host_server is not None
    return f"{e2e.stack.host_server.url}/api/manage/ui{path}"


def _sign_in(browser: Browser, e2e: E2EStack, token: str) -> None:
    browser.get(_page(e2e, "/sign-in"))
    assert "Sign in" in browser.title
    field = browser.find("textarea#token")
    label = browser.find("label[for=token]")
    assert browser.text(label) == "Access token"
    browser.type(field, token)
    browser.click(browser.find("form[action$='/sign-in'] button[type=submit]"))
    wait_for(lambda: "Operations" in browser.title, "the status page after signing in")


def _failing_customer(e2e: E2EStack) -> tuple[dict[str, Any], str, str]:
    """A coupled customer whose next change Dataverse refuses once (400): a failed record."""
    tag = uuid.uuid4().hex[:6]
    customer = e2e.bc_create("customers", {"displayName": f"Page {tag}", "phoneNumber": "555-0200"})
    coupling = e2e.wait_coupled("CUSTOMER", "bc", customer["id"])
    e2e.settle()
    e2e.dv.injector.add({"action": "status", "status": 400, "method": "PATCH", "path_contains": "/accounts"})
    phone = f"555-{uuid.uuid4().int % 10_000:04d}"
    e2e.bc_update("customers", customer["id"], {"phoneNumber": phone})

    def failed() -> Any:
        c = e2e.coupling("CUSTOMER", "bc", customer["id"])
        return c if c is not None and c.last_result == "failed" else None

    wait_for(failed, "the refused write to fail the record")
    e2e.settle()
    assert not e2e.dv.injector.rules(), "the fault was never hit: the test proves nothing"
    assert e2e.dv.get("accounts", coupling.dv_id)["telephone1"] != phone
    return customer, str(coupling.dv_id), phone


def test_the_page_shows_a_failing_record_and_retrying_it_makes_it_sync(
    e2e: E2EStack, browser: Browser, tmp_path: Path
) -> None:
    customer, dv_id, phone = _failing_customer(e2e)
    number = customer["number"]

    _sign_in(browser, e2e, _token("Integration.Administrator"))
    overview = browser.body_text()
    assert "Status per mapping" in overview and "Running resyncs" in overview and "Subscriptions" in overview
    assert "customers" in overview  # the BC subscription of customers, with its expiry
    browser.screenshot(tmp_path / "overview.png")
    link = browser.find("a[href*='errors?mapping=CUSTOMER']")
    assert browser.text(link) == "CUSTOMER: records not in sync"
    browser.click(link)

    card = browser.find(f"article[aria-label='CUSTOMER {number}']")
    text = browser.text(card)
    assert "failed" in text and "400" in text, text  # Dataverse's refusal, as the service recorded it
    browser.screenshot(tmp_path / "errors.png")

    browser.click(browser.find(f"article[aria-label='CUSTOMER {number}'] form button"))
    wait_for(lambda: "Retried CUSTOMER" in browser.body_text(), "the retry's answer")
    notice = browser.text(browser.find("[role=status]"))
    assert notice == f"Retried CUSTOMER {customer['id']}: modified", notice
    assert not browser.find_all(f"article[aria-label='CUSTOMER {number}']"), "still listed as not in sync"

    assert e2e.dv.get("accounts", dv_id)["telephone1"] == phone
    coupling = e2e.coupling("CUSTOMER", "bc", customer["id"])
    assert coupling is not None and coupling.last_result == "modified" and not coupling.last_error

    # Its history across both systems: the failure, then the retry that wrote it.
    browser.get(_page(e2e, f"/history?mapping=CUSTOMER&bc_id={customer['id']}"))
    rows = [browser.text(r) for r in browser.find_all("tbody tr")]
    assert rows[0].split()[3] == "modified" and any(" failed " in f" {r} " for r in rows), rows


def test_the_page_is_usable_with_a_keyboard_and_on_a_phone(
    e2e: E2EStack, browser: Browser, tmp_path: Path
) -> None:
    customer, _, _ = _failing_customer(e2e)
    _sign_in(browser, e2e, _token("Integration.Administrator"))
    browser.set_window_size(390, 844)  # a phone
    browser.get(_page(e2e, "/errors?mapping=CUSTOMER"))
    assert browser.script("return document.documentElement.lang") == "en"
    width = browser.script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
    browser.screenshot(tmp_path / "phone.png")

    # Tab from the top reaches this record's Retry button; Enter on it retries.
    wanted = f"Retry CUSTOMER {customer['number']}"
    for _ in range(60):
        browser.press("tab")
        if browser.text(browser.active()) == wanted:
            break
    else:
        raise AssertionError(f"Tab never reached {wanted!r}")
    browser.press("enter")
    wait_for(lambda: "Retried CUSTOMER" in browser.body_text(), "the retry by keyboard")
    assert browser.text(browser.find("[role=status]")).endswith(": modified")

    # Every form control has a label; every button says what it does.
    browser.get(_page(e2e))
    for button in browser.find_all("button"):
        assert browser.text(button).strip(), "a button without a name"
    browser.set_window_size(1280, 900)


def test_a_read_only_user_sees_no_retry_and_no_token_gets_the_sign_in(
    e2e: E2EStack, browser: Browser
) -> None:
    _failing_customer(e2e)
    _sign_in(browser, e2e, _token("Integration.User"))
    browser.get(_page(e2e, "/errors?mapping=CUSTOMER"))
    assert browser.find_all("article"), "the read-only user sees the records not in sync"
    assert not browser.find_all("article form"), "but no Retry button"
    browser.click(browser.find("form[action$='/sign-out'] button"))
    wait_for(lambda: "Sign in" in browser.title, "the sign-in page after signing out")
    browser.get(_page(e2e, "/errors"))
    assert "Sign in" in browser.title  # the cookie is gone: nothing is shown without a token


def test_text_and_the_focus_ring_contrast_with_their_background_on_every_page(
    e2e: E2EStack, browser: Browser
) -> None:
    customer, _, _ = _failing_customer(e2e)
    _sign_in(browser, e2e, _token("Integration.Administrator"))
    pages = [
        "",
        "/errors?mapping=CUSTOMER",
        "/errors?mapping=CUSTOMER&record=r&outcome=failed&error=refused",  # the problem notice
        "/errors?mapping=CUSTOMER&record=r&outcome=modified",  # the done notice
        f"/history?mapping=CUSTOMER&bc_id={customer['id']}",
        "/sign-in",
    ]
    for path in pages:
        browser.get(_page(e2e, path))
        assert browser.find_all("main *"), path
        problems = browser.script(TEXT_CONTRAST)
        assert not problems, f"text below WCAG AA contrast on {path or '/'}: {problems}"

    # Every control Tab reaches shows a focus ring of 3:1 or more against what surrounds it (WCAG
    # 1.4.11), in the header's dark band as on the white page.
    browser.get(_page(e2e, "/errors?mapping=CUSTOMER"))
    seen: list[list[Any]] = []
    for _ in range(40):
        browser.press("tab")
        ring = browser.script(FOCUS_RING)
        if ring[0].startswith("BODY") or (seen and ring[0] == seen[0][0]):
            break  # round the page once
        seen.append(ring)
    assert len(seen) >= 4, seen  # skip link, navigation, sign-out, a Retry button at least
    weak = [ring for ring in seen if ring[1] == "none" or ring[2] < 2 or ring[3] < 3]
    assert not weak, f"focus rings too faint (element, style, width px, contrast): {weak}"
