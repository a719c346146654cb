"""The Sales messages that close quotes and orders, as unbound Web API actions (the sandbox's subset).

Dynamics 365 Sales does not let a quote be won or an order be fulfilled by setting its state: those
state changes go through their own messages, which also create the closing activity.

- `WinQuote` (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/winquote):
  `{"QuoteClose": {"quoteid@odata.bind": "/quotes(<id>)", "subject": ...}, "Status": 4}`; the quote
  must be Active; it becomes Won (statecode 2) with the status given (-1: the default, Won 4). 204.
- `ConvertQuoteToSalesOrder`
  (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/convertquotetosalesorder):
  `{"QuoteId": "<id>", "ColumnSet": {...}}`; an Active quote is won first (as the Sales app's
  "Create Order" does); a new Active order refers to the quote (`quoteid`) and copies its customer,
  currency, price list, opportunity, addresses and every detail (product, unit, quantity, price,
  manual discount, line item number). 200 with the order.
- `FulfillSalesOrder`
  (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/fulfillsalesorder):
  `{"OrderClose": {"salesorderid@odata.bind": "/salesorders(<id>)", ...}, "Status": 100001}`; an
  Active or Submitted order becomes Fulfilled (statecode 3) with Complete (100001) or Partial (100002).
  204.

The closing activities (`quoteclose`, `orderclose`) are not kept: the sandbox has no activity tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from devstack.dataverse import errors
from devstack.dataverse.store import Store, parse_guid

ACTIONS = ("WinQuote", "ConvertQuoteToSalesOrder", "FulfillSalesOrder")

QUOTE_ACTIVE, QUOTE_WON = 1, 2
QUOTE_STATUS_WON = 4
ORDER_ACTIVE, ORDER_SUBMITTED, ORDER_FULFILLED = 0, 1, 3
FULFILLED_STATUSES = (100001, 100002)  # Complete, Partial

# What an order takes over from its quote (header columns, then the details' columns).
_HEADER_COPIED = (
    "name", "discountamount", "discountpercentage", "paymenttermscode", "shippingmethodcode",
    "freighttermscode", "requestdeliveryby", "description", "shipto_name", "billto_name",
    *(f"{prefix}_{part}" for prefix in ("shipto", "billto")
      for part in ("line1", "line2", "line3", "city", "stateorprovince", "postalcode", "country")),
)  # fmt: skip
_HEADER_LOOKUPS = ("customerid", "transactioncurrencyid", "pricelevelid", "opportunityid")
_DETAIL_COPIED = (
    "productdescription", "quantity", "priceperunit", "manualdiscountamount", "tax", "ispriceoverridden",
    "isproductoverridden", "lineitemnumber", "requestdeliveryby", "producttypecode",
)  # fmt: skip
_DETAIL_LOOKUPS = ("productid", "uomid", "transactioncurrencyid")
_BIND_RE = re.compile(r"^/?(\w+)\(([^)]+)\)$")


def run(store: Store, action: str, body: Mapping[str, Any], caller: Any) -> dict[str, Any] | None:
    """Run one of `ACTIONS`; the order for ConvertQuoteToSalesOrder, else None (answered 204)."""
    with store.transaction():
        if action == "WinQuote":
            quote_id = _bound(body, "QuoteClose", "quoteid", "quotes")
            _win(store, quote_id, _status(body, QUOTE_STATUS_WON), caller)
            return None
        if action == "ConvertQuoteToSalesOrder":
            return _convert(store, body, caller)
        order_id = _bound(body, "OrderClose", "salesorderid", "salesorders")
        _fulfill(store, order_id, _status(body, FULFILLED_STATUSES[0]), caller)
        return None


def refuse_state_change(logical_name: str, values: Mapping[str, Any]) -> None:
    """Setting these states directly is refused, as Sales refuses it: they have their own messages."""
    state = values.get("statecode")
    if logical_name == "quote" and state == QUOTE_WON:
        raise errors.bad_request(
            "This message can not be used to set the state of quote to Won. In order to set state of "
            "quote to Won, use the WinQuote message instead.",
            "0x80040203",
        )
    if logical_name == "salesorder" and state == ORDER_FULFILLED:
        raise errors.bad_request(
            "This message can not be used to set the state of salesorder to Fulfilled. In order to set "
            "state of salesorder to Fulfilled, use the FulfillSalesOrder message instead.",
            "0x80040203",
        )


def _win(store: Store, quote_id: str, status: int, caller: Any) -> None:
    quote = store.require("quotes", quote_id)
    if quote.get("statecode") != QUOTE_ACTIVE:
        raise errors.bad_request(
            f"The quote cannot be won because it is not active (statecode {quote.get('statecode')}); "
            "activate it first.",
            "0x80040203",
        )
    _set_state(store, "quotes", quote_id, QUOTE_WON, status, caller)


def _convert(store: Store, body: Mapping[str, Any], caller: Any) -> dict[str, Any]:
    raw = body.get("QuoteId")
    if not isinstance(raw, str):
        raise errors.bad_request("ConvertQuoteToSalesOrder needs 'QuoteId', the id of the quote to convert.")
    quote_id = parse_guid(raw, "QuoteId")
    quote = store.require("quotes", quote_id)
    if quote.get("statecode") == QUOTE_ACTIVE:
        _win(store, quote_id, QUOTE_STATUS_WON, caller)
    elif quote.get("statecode") != QUOTE_WON:
        raise errors.bad_request(
            "Only an active or won quote can be converted to an order; this quote is "
            f"{'a draft' if quote.get('statecode') == 0 else 'closed'}.",
            "0x80040203",
        )
    order: dict[str, Any] = {k: quote[k] for k in _HEADER_COPIED if quote.get(k) is not None}
    order.update(_binds(quote, _HEADER_LOOKUPS))
    order["quoteid@odata.bind"] = f"/quotes({quote_id})"
    details = [
        row for row in store.table("quotedetails").rows.values() if row.get("_quoteid_value") == quote_id
    ]
    details.sort(
        key=lambda d: (d.get("lineitemnumber") is None, d.get("lineitemnumber") or 0, d["createdon"])
    )
    order["order_details"] = [
        {**{k: d[k] for k in _DETAIL_COPIED if d.get(k) is not None}, **_binds(d, _DETAIL_LOOKUPS)}
        for d in details
    ]
    return store.create("salesorders", order, caller)


def _fulfill(store: Store, order_id: str, status: int, caller: Any) -> None:
    order = store.require("salesorders", order_id)
    if order.get("statecode") not in (ORDER_ACTIVE, ORDER_SUBMITTED):
        raise errors.bad_request(
            f"The order cannot be fulfilled because it is closed (statecode {order.get('statecode')}).",
            "0x80040203",
        )
    if status not in FULFILLED_STATUSES:
        raise errors.bad_request(
            f"{status} is not a valid status for a fulfilled order: use 100001 (Complete) or "
            "100002 (Partial)."
        )
    _set_state(store, "salesorders", order_id, ORDER_FULFILLED, status, caller)


def _set_state(store: Store, entity_set: str, record_id: str, state: int, status: int, caller: Any) -> None:
    store.update(entity_set, record_id, {"statecode": state, "statuscode": status}, caller)


def _bound(body: Mapping[str, Any], activity: str, column: str, entity_set: str) -> str:
    close = body.get(activity)
    ref = close.get(f"{column}@odata.bind") if isinstance(close, Mapping) else None
    match = _BIND_RE.match(ref.strip()) if isinstance(ref, str) else None
    if match is None or match.group(1) != entity_set:
        raise errors.bad_request(
            f"'{activity}' needs '{column}@odata.bind': '/{entity_set}(<id>)', the record to close."
        )
    return parse_guid(match.group(2), column)


def _status(body: Mapping[str, Any], default: int) -> int:
    status = body.get("Status", -1)
    if not isinstance(status, int) or isinstance(status, bool):
        raise errors.bad_request("'Status' must be an integer status reason (-1 for the default).")
    return default if status == -1 else status


def _binds(row: Mapping[str, Any], lookups: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in lookups:
        value = row.get(f"_{name}_value")
        target = row.get(f"_{name}_value@Microsoft.Dynamics.CRM.lookuplogicalname")
        if value and target:
            # The customer lookup is polymorphic: bound through its per-target navigation property.
            bind = f"{name}_{target}" if name == "customerid" else name
            out[f"{bind}@odata.bind"] = f"/{_entity_set_of(str(target))}({value})"
    return out


def _entity_set_of(logical_name: str) -> str:
    return {"account": "accounts", "contact": "contacts", "transactioncurrency": "transactioncurrencies",
            "pricelevel": "pricelevels", "opportunity": "opportunities", "product": "products",
            "uom": "uoms"}.get(logical_name, logical_name + "s")  # fmt: skip
