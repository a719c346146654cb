"""The operator's web page under `/api/manage/ui` (issue 19, point 3): plain HTML, no JavaScript.

Served by the Function App itself, with the same Entra ID sign-in and app roles as the admin API
(`shared.ops.admin_api`): reading needs Integration User, retrying needs Integration Administrator.
The caller's access token comes, in this order, from

- `Authorization: Bearer ...` (a tool, or a browser extension that adds it);
- `X-MS-TOKEN-AAD-ACCESS-TOKEN`, which App Service Authentication (Easy Auth) adds when it is turned on
  for the Function App with the token store: then the browser signs in with Entra ID by itself;
- the `bcsync_token` cookie that the sign-in form sets from a pasted token (`az account
  get-access-token --resource <audience>`), HttpOnly and SameSite=Strict.

Whichever it is, the token is validated like the API's (signature, issuer, audience, expiry, role):
no new secret, no session store. A form post from another site is refused (SameSite cookie, and an
`Origin` that is not this host is answered 403).

Pages: `ui` (status per mapping, queue, running resyncs with progress, subscriptions and expiry),
`ui/errors` (records not in sync, their reason, a Retry button), `ui/history` (a record's timeline on
both systems). Every action is one call into `shared.ops.operations`, as for the CLI and the API.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from shared.auth import Principal, Role, authorize
from shared.errors import ServiceError
from shared.ops import operations as ops
from shared.ops.admin_api import ApiRequest, Authenticator, authenticator_from_settings
from shared.settings import Settings, get_settings
from shared.timestamps import parse_iso

log = logging.getLogger(__name__)

PREFIX = "manage/ui"
BASE = "/api/manage/ui"
COOKIE = "bcsync_token"
COOKIE_SECONDS = 3600  # an Entra access token lives about an hour
MAX_FORM_BYTES = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not `no-referrer`: with it a browser sends `Origin: null` even on our own forms (Fetch standard).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class PageResponse:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


def is_page(path: str) -> bool:
    """Whether `path` (below `/api/`) is the operator page's rather than the JSON API's."""
    path = path.strip("/")
    return path == PREFIX or path.startswith(PREFIX + "/")


class _BadForm(ServiceError):
    http_status = 400


# ------------------------------------------------------------------------------------------ entry
def handle_page(
    request: ApiRequest,
    *,
    runtime: Callable[[], Any] | None = None,
    settings: Callable[[], Settings] = get_settings,
    authenticator: Authenticator | None = None,
) -> PageResponse:
    """Authenticate, authorize, render; never raises."""
    page = request.path.strip("/")[len(PREFIX) :].strip("/")
    method = request.method.upper()
    if method == "POST" and not _same_origin(request.headers):
        return _page(403, "Refused", _p("This form was sent from another site, so it was not run."))
    try:
        auth = authenticator or authenticator_from_settings(settings())
        if page == "sign-in":
            return _sign_in(auth, request) if method == "POST" else _sign_in_form(200)
        if page == "sign-out" and method == "POST":
            return PageResponse(
                303, "", {"Location": f"{BASE}/sign-in", "Set-Cookie": _cookie(request, "", 0)}
            )
        found = _ROUTES.get((method, page))
        if found is None:
            return _page(404, "Not found", _p(f"There is no page {BASE}/{page}."), nav=True)
        role, render = found
        principal = auth.check(_token(request), role)
        admin = _holds(auth, principal, Role.INTEGRATION_ADMINISTRATOR)
        rt = (runtime or _default_runtime)()
        return render(rt, request, _Viewer(principal, admin))
    except ServiceError as exc:
        if exc.http_status == 401:
            return _sign_in_form(401, exc.public_message())
        if exc.http_status == 500:
            return _unexpected(request)
        body = _p(exc.public_message())
        return _page(
            exc.http_status, "Cannot do that" if exc.http_status < 500 else "Unavailable", body, nav=True
        )
    except Exception:
        return _unexpected(request)


@dataclass(frozen=True)
class _Viewer:
    principal: Principal
    admin: bool


def _holds(auth: Authenticator, principal: Principal, role: Role) -> bool:
    try:
        authorize(principal, role, auth.roles)
    except ServiceError:
        return False
    return True


def _default_runtime() -> Any:
    from shared.runtime import get_runtime

    return get_runtime()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _token(request: ApiRequest) -> str | None:
    """The `Authorization` header to validate: the caller's, Easy Auth's token, or the cookie's."""
    given = _header(request.headers, "authorization")
    if given:
        return given
    easy_auth = _header(request.headers, "x-ms-token-aad-access-token")
    if easy_auth:
        return f"Bearer {easy_auth}"
    cookie = _cookies(request.headers).get(COOKIE)
    return f"Bearer {cookie}" if cookie else None


def _cookies(headers: Mapping[str, str]) -> dict[str, str]:
    jar: dict[str, str] = {}
    for part in (_header(headers, "cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            jar[name] = value
    return jar


def _same_origin(headers: Mapping[str, str]) -> bool:
    origin = _header(headers, "origin")
    if not origin or origin == "null":
        # Browsers send Origin with every cross-site form post; none: not a browser's cross-site post.
        return origin is None
    return urlsplit(origin).netloc.lower() == (_header(headers, "host") or "").lower()


def _cookie(request: ApiRequest, value: str, max_age: int) -> str:
    host = (_header(request.headers, "host") or "").split(":")[0].strip("[]")
    # `Secure` everywhere but on a loopback host (the local stack speaks plain HTTP).
    secure = "" if host in ("127.0.0.1", "localhost", "::1") else "; Secure"
    return f"{COOKIE}={value}; Path={BASE}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"


def _form(request: ApiRequest) -> dict[str, str]:
    if len(request.body) > MAX_FORM_BYTES:
        raise _BadForm(f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _BadForm("the form is not UTF-8") from None
    return {k: v[-1].strip() for k, v in parsed.items()}


def _unexpected(request: ApiRequest) -> PageResponse:
    log.exception("%s %s failed", request.method, request.path)
    return _page(500, "Something went wrong", _p("The page failed unexpectedly; the service log says why."))


# ---------------------------------------------------------------------------------------- sign-in
def _sign_in_form(status: int, problem: str = "") -> PageResponse:
    error = f'<p class="problem" role="alert">{_e(problem)}</p>' if problem else ""
    body = f"""{error}
<p>Sign in with an access token for this service's API. Where App Service Authentication is turned on
for the Function App, the browser signs in with Microsoft Entra ID by itself and this form is not
needed.</p>
<form method="post" action="{BASE}/sign-in">
  <label for="token">Access token</label>
  <p class="hint" id="token-hint">For example the output of
  <code>az account get-access-token --resource api://bc-dataverse-sync --query accessToken -o tsv</code></p>
  <textarea id="token" name="token" rows="6" required autocomplete="off" spellcheck="false"
    aria-describedby="token-hint"></textarea>
  <button type="submit">Sign in</button>
</form>"""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return _page(status, "Sign in", body, headers=headers)


def _sign_in(auth: Authenticator, request: ApiRequest) -> PageResponse:
    token = _form(request).get("token", "").removeprefix("Bearer ").strip()
    if not token:
        return _sign_in_form(400, "Paste an access token.")
    if any(c in token for c in ";, \t\r\n"):
        return _sign_in_form(400, "That is not an access token.")
    try:
        auth.check(f"Bearer {token}", Role.INTEGRATION_USER)
    except ServiceError as exc:
        return _sign_in_form(401 if exc.http_status == 401 else exc.http_status, exc.public_message())
    return PageResponse(303, "", {"Location": BASE, "Set-Cookie": _cookie(request, token, COOKIE_SECONDS)})


# ------------------------------------------------------------------------------------------ pages
def _overview(rt: Any, request: ApiRequest, viewer: _Viewer) -> PageResponse:
    status = ops.status(rt)
    rows = []
    for m in status.mappings:
        errors = f"{BASE}/errors?{urlencode({'mapping': m.mapping})}"
        unsynced = m.failed or m.conflicts or m.retrying or m.skipped or m.oldest_unsynced_change
        link = f'<a href="{_e(errors)}">{_e(m.mapping)}: records not in sync</a>' if unsynced else "in sync"
        last = m.last_run
        last_text = f"{last.kind} {last.status} {_when(last.started)}" if last else "–"
        rows.append(
            [m.mapping, str(m.coupled), link, str(m.failed), str(m.conflicts), str(m.retrying),
             str(m.skipped), _age(m.oldest_unsynced_seconds), str(m.poison_messages), _e(last_text)]
        )  # fmt: skip
    mapping_table = _table(
        "Status per mapping",
        ["Mapping", "Coupled", "Not in sync", "Failed", "Conflicts", "Retrying", "Skipped", "Oldest unsynced",
         "Poison", "Last run"],
        rows, escape_cells=(0, 1, 3, 4, 5, 6, 7, 8),
    )  # fmt: skip
    queue = (
        f"<p>Sync queue: <strong>{status.queue_depth}</strong> waiting. "
        f"Poison queue: <strong>{status.poison_queue_depth}</strong>"
        f"{' (<code>bcsync poison</code> lists them)' if status.poison_queue_depth else ''}.</p>"
    )
    body = "\n".join(
        [
            '<section aria-labelledby="h-status"><h2 id="h-status">Status</h2>',
            queue,
            mapping_table,
            f'<p><a href="{BASE}/errors">Every record not in sync</a></p></section>',
            _runs_section(rt, status),
            _subscriptions_section(rt),
        ]
    )
    return _page(200, "Operations", body, nav=True, viewer=viewer)


def _runs_section(rt: Any, status: ops.ServiceStatus) -> str:
    running = []
    for m in status.mappings:
        for run in ops.list_runs(rt, m.mapping, limit=5):
            if run.in_progress:
                running.append(run)
    if not running:
        return (
            '<section aria-labelledby="h-runs"><h2 id="h-runs">Running resyncs</h2>'
            "<p>None running.</p></section>"
        )
    items = []
    for run in running:
        total = max(run.total, run.done, 1)
        percent = int(100 * run.done / total)
        label = f"{run.mapping} {run.kind} {run.status}: {run.done} of {run.total or '?'} ({percent} %)"
        run_id = _e(f"run-{run.run_id}")
        items.append(
            f'<li><label for="{run_id}">{_e(label)}, started {_e(_when(run.started))}</label>'
            f'<progress id="{run_id}" max="{total}" value="{run.done}">{percent} %</progress></li>'
        )
    return (
        '<section aria-labelledby="h-runs"><h2 id="h-runs">Running resyncs</h2>'
        f'<ul class="runs">{"".join(items)}</ul><p><a href="{BASE}">Refresh</a></p></section>'
    )


def _subscriptions_section(rt: Any) -> str:
    now = dt.datetime.now(dt.UTC)
    rows = []
    for sub in sorted(rt.subscriptions.bc_subscriptions(), key=lambda s: s.expires or ""):
        left = ""
        if sub.expires:
            hours = (parse_iso(sub.expires) - now).total_seconds() / 3600
            left = (
                "expired"
                if hours <= 0
                else f"in {hours:.0f} h"
                if hours < 48
                else f"in {hours / 24:.1f} days"
            )
        rows.append([sub.entity_set, _when(sub.expires) or "–", left, _when(sub.checked_at) or "–"])
    table = (
        _table("Business Central webhook subscriptions", ["Entity set", "Expires", "", "Last checked"], rows)
        if rows
        else "<p>No BC subscription is registered: <code>bcsync setup</code> registers them.</p>"
    )
    return (
        '<section aria-labelledby="h-subs"><h2 id="h-subs">Subscriptions</h2>'
        f"{table}<p>BC subscriptions expire after three days; the subscription upkeep timer renews them. "
        "Dataverse webhook steps do not expire.</p></section>"
    )


def _errors(rt: Any, request: ApiRequest, viewer: _Viewer) -> PageResponse:
    mapping = request.query.get("mapping") or None
    items = ops.list_errors(rt, mapping)
    notice = _notice(request.query)
    cards = [_error_card(item, viewer) for item in items]
    title = f"Not in sync: {mapping}" if mapping else "Not in sync"
    listing = f'<ul class="cards">{"".join(cards)}</ul>' if cards else "<p>Every record is in sync.</p>"
    count = f"<p>{len(items)} record(s) not in sync.</p>" if items else ""
    return _page(200, title, f"{notice}{count}{listing}", nav=True, viewer=viewer)


def _error_card(item: ops.ErrorItem, viewer: _Viewer) -> str:
    name = item.bc_number or item.bc_id or item.dv_id or "?"
    side, record_id = ("bc", item.bc_id) if item.bc_id else ("dv", item.dv_id)
    state = item.state + (" (skipped until retried)" if item.skipped and item.state != "skipped" else "")
    if item.state == "retrying" and item.next_attempt:
        state += f", attempt {item.attempts} of {item.max_attempts}, next {_when(item.next_attempt)}"
    facts = [
        ("State", state),
        ("BC id", item.bc_id or "–"),
        ("Dataverse id", item.dv_id or "–"),
        ("Not in sync since", _when(item.since) or "–"),
        ("Reason", item.message or "–"),
    ]
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    history = f"{BASE}/history?{urlencode({'mapping': item.mapping, f'{side}_id': record_id or ''})}"
    action = ""
    if viewer.admin and record_id:
        action = (
            f'<form method="post" action="{BASE}/retry" class="inline">'
            f'<input type="hidden" name="mapping" value="{_e(item.mapping)}">'
            f'<input type="hidden" name="{side}_id" value="{_e(record_id)}">'
            f'<button type="submit">Retry {_e(item.mapping)} {_e(name)}</button></form>'
        )
    return (
        f'<li><article aria-label="{_e(item.mapping)} {_e(name)}" class="card state-{_e(item.state)}">'
        f"<h2>{_e(item.mapping)} {_e(name)}</h2><dl>{details}</dl>"
        f'<p class="actions">{action}<a href="{_e(history)}">History of {_e(name)}</a></p></article></li>'
    )


def _retry(rt: Any, request: ApiRequest, viewer: _Viewer) -> PageResponse:
    form = _form(request)
    mapping = form.get("mapping", "")
    if not mapping:
        raise _BadForm("the form names no mapping")
    side, record_id = ops.record_ref(form.get("bc_id") or None, form.get("dv_id") or None)
    result = ops.retry(rt, mapping, side, record_id)
    outcome = result.retried[0] if result.retried else None
    log.info("page: retry %s %s:%s by %s", mapping, side, record_id, viewer.principal.name)
    said = {
        "mapping": mapping,
        "record": record_id,
        "outcome": outcome.outcome if outcome else "queued",
        "error": (outcome.error if outcome else "")[:500],
    }
    return PageResponse(303, "", {"Location": f"{BASE}/errors?{urlencode({'mapping': mapping, **said})}"})


def _notice(query: Mapping[str, str]) -> str:
    outcome, record = query.get("outcome"), query.get("record")
    if not outcome or not record:
        return ""
    error = query.get("error", "")
    text = f"Retried {query.get('mapping', '')} {record}: {outcome}" + (f": {error}" if error else "")
    kind = "problem" if error or outcome in ("failed", "conflict", "retrying", "error") else "done"
    return f'<p class="{kind}" role="status">{_e(text)}</p>'


def _history(rt: Any, request: ApiRequest, viewer: _Viewer) -> PageResponse:
    mapping = request.query.get("mapping") or ""
    side, record_id = ops.record_ref(request.query.get("bc_id") or None, request.query.get("dv_id") or None)
    entries = ops.history(rt, mapping, side, record_id)
    rows = []
    for entry in entries:
        changes = "; ".join(
            f"{c.get('field')}: {c.get('old')!r} → {c.get('new')!r} ({c.get('direction', '')})"
            for c in entry.changes
        )
        what = changes or ", ".join(entry.fields)
        rows.append(
            [_when(entry.at.isoformat()), entry.outcome, _SIDE_NAMES.get(entry.source, "–"),
             entry.direction or "–", what or "–", entry.error or entry.reason or "–"]
        )  # fmt: skip
    table = (
        _table(f"History of {mapping} {record_id}, newest first",
               ["When", "Outcome", "Changed in", "Direction", "Fields", "Reason"], rows)
        if rows else "<p>No history for this record in the journal.</p>"
    )  # fmt: skip
    errors = f"{BASE}/errors?{urlencode({'mapping': mapping})}"
    back = f'<p><a href="{_e(errors)}">Records of {_e(mapping)} not in sync</a></p>'
    return _page(200, f"History: {mapping} {record_id}", table + back, nav=True, viewer=viewer)


_SIDE_NAMES = {"bc": "BC", "dv": "Dataverse"}
_ROUTES: dict[tuple[str, str], tuple[Role, Callable[[Any, ApiRequest, _Viewer], PageResponse]]] = {
    ("GET", ""): (Role.INTEGRATION_USER, _overview),
    ("GET", "errors"): (Role.INTEGRATION_USER, _errors),
    ("GET", "history"): (Role.INTEGRATION_USER, _history),
    ("POST", "retry"): (Role.INTEGRATION_ADMINISTRATOR, _retry),
}


# ----------------------------------------------------------------------------------------- markup
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _p(text: str) -> str:
    return f"<p>{_e(text)}</p>"


def _when(value: str | None) -> str:
    if not value:
        return ""
    try:
        return parse_iso(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _table(
    caption: str, headings: list[str], rows: Iterable[list[str]], escape_cells: Iterable[int] | None = None
) -> str:
    """A table in a scrolling box (narrow screens scroll it sideways, not the page). Cells are escaped
    unless `escape_cells` names the ones to escape (the others are markup built here)."""
    escaped = set(escape_cells) if escape_cells is not None else None
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headings)

    def cell(i: int, text: str) -> str:
        inner = text if escaped is not None and i not in escaped else _e(text)
        return f'<th scope="row">{inner}</th>' if i == 0 else f"<td>{inner}</td>"

    body = "".join("<tr>" + "".join(cell(i, text) for i, text in enumerate(row)) + "</tr>" for row in rows)
    return (
        f'<div class="scroll" role="region" aria-label="{_e(caption)}" tabindex="0"><table>'
        f"<caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


_STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1b1b1b; background: #fff; }
header { background: #14325c; color: #fff; padding: .75rem 1rem; display: flex; flex-wrap: wrap;
         gap: .5rem 1.5rem; align-items: center; }
header a, header a:visited { color: #fff; }
header .who { margin-left: auto; }
main { padding: 1rem; max-width: 72rem; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
a { color: #0a4fa3; }
a:visited { color: #5a2d91; }
/* Focus rings of 3:1 or more against what surrounds them (WCAG 1.4.11): blue on the white page,
   white in the dark header, dark inside the white skip link (which shows over the header). */
:focus-visible { outline: 3px solid #0a4fa3; outline-offset: 2px; }
header :focus-visible { outline-color: #fff; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; color: #0a4fa3; padding: .5rem; z-index: 1; }
.skip:focus-visible { outline: 3px solid #1b1b1b; outline-offset: -5px; }
.scroll { overflow-x: auto; margin: .5rem 0; }
table { border-collapse: collapse; min-width: 100%; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #c4c4c4; vertical-align: top; }
thead th { background: #eef2f7; }
button { font: inherit; min-height: 44px; padding: .4rem 1rem; border-radius: 4px; cursor: pointer;
         background: #0a4fa3; color: #fff; border: 2px solid #0a4fa3; }
button.secondary { background: #fff; color: #0a4fa3; }
textarea { font: 14px/1.4 ui-monospace, monospace; width: 100%; padding: .5rem; border: 2px solid #595959;
           border-radius: 4px; }
label { display: block; font-weight: 600; margin-top: 1rem; }
.hint { color: #4a4a4a; margin: .25rem 0; }
.cards { list-style: none; padding: 0; margin: 0; display: grid; gap: 1rem; }
.card { border: 1px solid #c4c4c4; border-left: 6px solid #8a1c1c; border-radius: 4px; padding: .5rem 1rem; }
.card.state-retrying { border-left-color: #8a5a00; }
.card h2 { margin: .25rem 0; font-size: 1.1rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: .5rem 0; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
.actions { display: flex; flex-wrap: wrap; gap: .75rem 1.5rem; align-items: center; }
form.inline { display: inline; margin-right: 1.5rem; }
.problem { background: #fdeaea; color: #7a1414; border: 1px solid #7a1414; padding: .5rem 1rem; }
.done { background: #e7f4ea; color: #14532d; border: 1px solid #14532d; padding: .5rem 1rem; }
.runs { padding-left: 1.2rem; }
progress { width: 100%; max-width: 30rem; height: 1.2rem; }
@media (max-width: 40rem) { dl { grid-template-columns: 1fr; } dt { margin-top: .25rem; } }
"""


def _page(
    status: int,
    title: str,
    body: str,
    *,
    nav: bool = False,
    viewer: _Viewer | None = None,
    headers: Mapping[str, str] | None = None,
) -> PageResponse:
    who = ""
    if viewer is not None:
        role = "administrator" if viewer.admin else "read only"
        who = (
            f'<span class="who">{_e(viewer.principal.name)} ({role})</span>'
            f'<form method="post" action="{BASE}/sign-out" class="inline">'
            '<button type="submit" class="secondary">Sign out</button></form>'
        )
    links = (
        f'<nav aria-label="Pages"><a href="{BASE}">Status</a> · <a href="{BASE}/errors">Not in sync</a></nav>'
    )
    document = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · bc-dataverse-sync</title>
<style>{_STYLE}</style>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><strong>bc-dataverse-sync</strong>{links if nav else ""}{who}</header>
<main id="main">
<h1>{_e(title)}</h1>
{body}
</main>
</body>
</html>
"""
    return PageResponse(status, document, {**SECURITY_HEADERS, **(headers or {})})
