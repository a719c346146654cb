"""A stand-in for the BC web client's deep links, so "Open in Business Central" links can be followed
in the local stack: `GET /<tenant>/<environment>/?company=<name>&page=<card>&filter='No.' IS '<number>'`
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/developer/devenv-web-client-urls)
answers a small HTML page with the record the card would show, or 404 saying what was not found.

Difference: the real web client is an interactive application that signs the user in; this page only
proves that the link names an existing company, card page and record.
"""

from __future__ import annotations

import html
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

# Pages the service links to -> the API entity set holding their records: the cards, and the document
# pages Sales Quote (41), Sales Order (42) and Posted Sales Invoice (132).
CARD_PAGES = {21: "customers", 26: "vendors", 5050: "contacts", 30: "items", 41: "salesQuotes",
              42: "salesOrders", 132: "salesInvoices"}  # fmt: skip
_FILTER = re.compile(r"^\s*'No\.'\s+IS\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)


def web_client_routes(sandbox: Any) -> list[Route]:
    async def card(request: Request) -> HTMLResponse:
        params = request.query_params
        company_name = params.get("company", "")
        company = next((c for c in sandbox.store.companies.values() if c.name == company_name), None)
        if company is None:
            return _page(404, "Company not found", f"There is no company named '{company_name}'.")
        try:
            page = int(params.get("page", ""))
        except ValueError:
            return _page(400, "Bad link", "The link names no page (page=<id>).")
        entity_set = CARD_PAGES.get(page)
        if entity_set is None:
            return _page(
                404, "Page not found", f"The sandbox shows the card pages {sorted(CARD_PAGES)} only."
            )
        match = _FILTER.match(params.get("filter", ""))
        if match is None:
            return _page(400, "Bad link", "The link's filter must be 'No.' IS '<number>'.")
        number = match.group(1).replace("''", "'")
        rows = [r for r in sandbox.store.rows(company.id, entity_set) if str(r.get("number")) == number]
        if not rows:
            return _page(404, "Record not found", f"{entity_set} {number} does not exist in {company.name}.")
        record = rows[0]
        fields = "".join(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
            for k, v in record.items()
            if not k.startswith("@") and not isinstance(v, dict | list)
        )
        title = f"{number} · {record.get('displayName', '')}"
        return _page(
            200, title, f"<p>{html.escape(company.name)}, page {page}</p><dl>{fields}</dl>", raw=True
        )

    return [Route("/{tenant}/{environment}/", card, methods=["GET"])]


def _page(status: int, title: str, body: str, *, raw: bool = False) -> HTMLResponse:
    content = body if raw else f"<p>{html.escape(body)}</p>"
    return HTMLResponse(
        f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{content}",
        status_code=status,
    )
