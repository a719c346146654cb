"""Quotes won in Sales made into BC orders, and BC's shipment closing the Sales order: the pure decisions.

BC's own connector ("Auto Process Sales Quotes", codeunit "CRM Quote to Sales Quote", `ProcessWonQuote`
in microsoft/BCApps) handles a won quote through the Sales order created from it (the order's `quoteid`):
once that order is submitted it becomes the BC order, linked to the BC quote, and the BC quote is done
with. Through API v2.0 the link is made by BC's own `salesQuotes(<id>)/Microsoft.NAV.makeOrder`: the new
order takes the quote's lines and its link, and BC deletes the quote. That order is then coupled to the
submitted Sales order, line by line, instead of a second BC order being created for it.

BC's "CRM Order Status Update Job" posts "A shipment has been created for the order." on the Sales
order's timeline; here the shipped quantities come back on the lines and, once BC has shipped the
whole order, the Sales order is closed as Fulfilled (`FulfillSalesOrder`, see `should_fulfil`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.mapping.queries import clause_holds
from shared.mapping.schema import EntityMapping, FromQuoteSection, FulfilSection

# The values that find the BC order made from a quote: BC copies them from the quote to the order.
MADE_ORDER_KEYS = ("customerNumber", "externalDocumentNumber")
DV_OPEN_ORDER_STATES = (0, 1)  # Active, Submitted: the states FulfillSalesOrder accepts


def quote_of(from_quote: FromQuoteSection, order: Mapping[str, Any]) -> str | None:
    """The Dataverse quote a Sales order was created from, if any."""
    value = order.get(f"_{from_quote.quote_column}_value")
    return str(value) if value else None


def is_won(from_quote: FromQuoteSection, quote: Mapping[str, Any]) -> bool:
    return clause_holds(from_quote.won, quote)


def made_order_marker(quote_snapshot: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the BC order made from the quote will carry (from the quote's last synced BC values)."""
    bc = dict((quote_snapshot or {}).get("bc") or {})
    return {k: bc.get(k) for k in MADE_ORDER_KEYS if bc.get(k) not in (None, "")}


def is_made_order(marker: Mapping[str, Any], order: Mapping[str, Any]) -> bool:
    return bool(marker) and all(order.get(k) == v for k, v in marker.items())


def pick_made_order(
    marker: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]], coupled: set[str]
) -> Mapping[str, Any] | None:
    """The BC order made from the quote among `candidates` (newest number first), skipping orders
    already coupled to another Sales order."""
    found = [c for c in candidates if is_made_order(marker, c) and str(c.get("id")) not in coupled]
    return max(found, key=lambda c: str(c.get("number") or "")) if found else None


def pair_lines(
    bc_lines: Sequence[Mapping[str, Any]],
    dv_lines: Sequence[Mapping[str, Any]],
    *,
    bc_number: str = "sequence",
    dv_number: str = "lineitemnumber",
) -> list[tuple[int, Mapping[str, Any]]]:
    """(index of a Dataverse line, the BC line it pairs with). A Dataverse line whose line item number is
    a BC line's number pairs with it (the quote's lines got BC's numbers and the order copied them); the
    others pair with the BC lines left, in order. Lines left unpaired on either side are new lines."""
    by_number = {line.get(bc_number): line for line in bc_lines if line.get(bc_number) is not None}
    pairs: dict[int, Mapping[str, Any]] = {}
    taken: set[int] = set()
    for index, dv in enumerate(dv_lines):
        match = by_number.get(dv.get(dv_number)) if dv.get(dv_number) is not None else None
        if match is not None and id(match) not in taken:
            taken.add(id(match))
            pairs[index] = match
    rest = [line for line in bc_lines if id(line) not in taken]
    for index in range(len(dv_lines)):
        if index not in pairs and rest:
            pairs[index] = rest.pop(0)
    return sorted(pairs.items(), key=lambda pair: pair[0])


def should_fulfil(fulfil: FulfilSection, bc: Mapping[str, Any] | None, dv: Mapping[str, Any] | None) -> bool:
    """BC has shipped the whole order and the Sales order is still open."""
    if bc is None or dv is None:
        return False
    return bc.get(fulfil.bc_field) is True and dv.get("statecode") in DV_OPEN_ORDER_STATES


def fulfil_request(
    mapping: EntityMapping, fulfil: FulfilSection, dv_id: str, number: str | None
) -> dict[str, Any]:
    """The body of Dataverse's `FulfillSalesOrder` for a Sales order BC has shipped."""
    subject = f"Shipped in Business Central (order {number})" if number else "Shipped in Business Central"
    close = {f"{mapping.dataverse.primary_key}@odata.bind": f"/{mapping.dataverse.entity_set}({dv_id})"}
    return {"OrderClose": {**close, "subject": subject}, "Status": fulfil.status}


def item_lookup_field(mapping: EntityMapping, ms_items: set[str]) -> str | None:
    """The Dataverse lookup column of a line's product (the line field looked up through an item mapping,
    one of `ms_items`), as the Web API returns it (`_productid_value`)."""
    if mapping.lines is None:
        return None
    for f in mapping.lines.fields:
        if f.lookup in ms_items and f.dv:
            return f"_{f.dv}_value"
    return None


def availability_updates(
    lines: Sequence[Mapping[str, Any]],
    *,
    line_key: str,
    product_column: str,
    column: str,
    item_of_product: Mapping[str, str],
    inventory: Mapping[str, float],
) -> list[tuple[str, float | None]]:
    """(line id, value to show) for each line whose shown availability differs from BC's quantity on hand
    of its item; None for a line whose product is not coupled to an item BC answered for (nothing to
    show rather than a stale figure)."""
    updates: list[tuple[str, float | None]] = []
    for line in lines:
        product = line.get(product_column)
        item = item_of_product.get(str(product)) if product else None
        value = inventory.get(item) if item else None
        shown = line.get(column)
        if value != shown and not (value is None and shown is None):
            updates.append((str(line[line_key]), value))
    return updates
