"""Document flows end to end through the dev host (issue 17): a quote won in Sales becomes a BC order
made from its BC quote ("Auto Process Sales Quotes"), coupled to the Sales order created from the quote;
a quote whose BC quote is gone says so; shipping a coupled order in BC closes the Sales order as
Fulfilled."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import E2EStack, diff, sales_lines, wait_for

pytestmark = pytest.mark.e2e

ORDER, QUOTE = "SALES ORDER", "SALES QUOTE"


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _setup(e2e: E2EStack, price: float = 20) -> tuple[dict[str, Any], str, dict[str, Any], str, str]:
    customer = e2e.bc_create("customers", {"displayName": f"Quotes {_tag()}", "city": "Oslo"})
    account = str(e2e.wait_coupled("CUSTOMER", "bc", customer["id"]).dv_id)
    item = e2e.bc_create(
        "items", {"displayName": f"Chair {_tag()}", "unitPrice": price, "baseUnitOfMeasureCode": "PCS"}
    )
    product = str(e2e.wait_coupled("ITEM-PRODUCT", "bc", item["id"]).dv_id)
    [unit] = e2e.bc_find("unitsOfMeasure", "code eq 'PCS'")
    if e2e.coupling("UNIT", "bc", unit["id"]) is None:
        e2e.sync("UNIT", "bc", unit["id"])
    uom = str(e2e.wait_coupled("UNIT", "bc", unit["id"]).dv_id)
    e2e.settle()
    return customer, account, item, product, uom


def _active_quote(
    e2e: E2EStack, account: str, product: str, uom: str, quantities: list[float]
) -> tuple[str, str]:
    quote = e2e.dv_create(
        "quotes",
        {
            "name": f"Quote {_tag()}",
            "customerid_account@odata.bind": f"/accounts({account})",
            "quote_details": sales_lines(product, uom, quantities),
        },
    )  # fmt: skip
    e2e.settle()
    e2e.dv_update("quotes", quote["quoteid"], {"statecode": 1, "statuscode": 3})  # activate
    coupling = e2e.wait_coupled(QUOTE, "dv", quote["quoteid"])
    e2e.settle()
    return str(quote["quoteid"]), str(coupling.bc_id)


def _convert(e2e: E2EStack, quote_id: str) -> dict[str, Any]:
    """The salesperson's "Create Order" on the quote: Sales wins the quote and creates the order."""
    response = e2e.dv_http.post(
        "ConvertQuoteToSalesOrder", json={"QuoteId": quote_id, "ColumnSet": {"AllColumns": True}}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _dv_order(e2e: E2EStack, order_id: str) -> dict[str, Any]:
    response = e2e.dv_http.get(f"salesorders({order_id})", params={"$expand": "order_details"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_quote_won_in_sales_becomes_the_bc_order_made_from_its_bc_quote(e2e: E2EStack) -> None:
    customer, account, item, product, uom = _setup(e2e)
    quote_id, bc_quote_id = _active_quote(e2e, account, product, uom, [1, 2, 3])
    bc_quote_lines = e2e.bc_http.get(f"salesQuotes({bc_quote_id})/salesQuoteLines").json()["value"]
    assert sorted(li["quantity"] for li in bc_quote_lines) == [1, 2, 3]
    # BC's quote number and a working link to it (page 41, Sales Quote) on the Sales quote.
    bc_quote = e2e.bc_get("salesQuotes", bc_quote_id)
    sales_quote = e2e.dv_get("quotes", quote_id)
    assert bc_quote is not None and sales_quote is not None
    assert sales_quote["bcs_bcnumber"] == bc_quote["number"] and "&page=41&" in sales_quote["bcs_bcurl"]
    card = httpx.get(sales_quote["bcs_bcurl"], timeout=10)
    assert card.status_code == 200 and bc_quote["number"] in card.text

    before = e2e.service_requests()
    order = _convert(e2e, quote_id)
    assert (order["_quoteid_value"], order["statecode"]) == (quote_id, 0)
    e2e.settle()
    # Won, but the order is not submitted yet: BC's quote waits (BC only takes submitted orders).
    assert e2e.dv_get("quotes", quote_id)["statecode"] == 2  # type: ignore[index]
    assert e2e.bc_get("salesQuotes", bc_quote_id) is not None
    assert e2e.coupling(ORDER, "dv", order["salesorderid"]) is None
    [won] = e2e.rt.journal.history(QUOTE, "dv", quote_id)[:1]
    assert "won in Sales" in won.reason and "submitted" in won.reason, won.reason

    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})  # submit
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    cost = diff(e2e.service_requests(), before)

    # BC made the quote into the order: the quote is gone, the order has its lines; no second order.
    assert e2e.bc_get("salesQuotes", bc_quote_id) is None
    assert e2e.coupling(QUOTE, "dv", quote_id) is None
    orders = e2e.bc_find("salesOrders", f"customerNumber eq '{customer['number']}'")
    assert [o["id"] for o in orders] == [coupling.bc_id]
    bc_order = e2e.bc_http.get(f"salesOrders({coupling.bc_id})", params={"$expand": "salesOrderLines"}).json()
    shown = sorted((li["lineObjectNumber"], li["quantity"]) for li in bc_order["salesOrderLines"])
    assert shown == [(item["number"], q) for q in (1, 2, 3)]
    assert cost.get("BC POST salesQuotes makeOrder") == 1, cost
    assert not cost.get("BC POST salesOrders"), cost  # never a second order by deep insert

    # Each Sales order line is coupled to the BC line made from its quote line; BC's numbers come back.
    sales = _dv_order(e2e, order["salesorderid"])
    assert sales["bcs_bcnumber"] == bc_order["number"] and "&page=42&" in sales["bcs_bcurl"]
    details = sorted(sales["order_details"], key=lambda d: d["quantity"])
    by_quantity = {li["quantity"]: li["sequence"] for li in bc_order["salesOrderLines"]}
    assert [d["bcs_bclinenumber"] for d in details] == [by_quantity[q] for q in (1, 2, 3)]
    stored = e2e.coupling(ORDER, "dv", order["salesorderid"])
    assert stored is not None and len((stored.snapshot or {}).get("lines") or {}) == 3
    # The submit's own sync: read the Sales order (1), makeOrder (1), find the made order with its lines
    # (1), BC's number and line numbers back (header 1, lines batch 1).
    [made] = [
        h for h in e2e.rt.journal.history(ORDER, "dv", order["salesorderid"]) if "made from" in h.reason
    ]
    assert made.outcome == "inserted" and made.api_requests == 5, (
        made.outcome,
        made.api_requests,
        made.reason,
    )

    # Redelivered: nothing more happens (no second makeOrder, no second order).
    again_before = e2e.service_requests()
    result = e2e.sync(ORDER, "dv", order["salesorderid"])
    assert result.outcome == "unchanged", result
    again = diff(e2e.service_requests(), again_before)
    assert not any(k.startswith("BC POST") for k in again), again

    # A line changed in Sales after all that reaches the BC order.
    first = details[0]
    e2e.dv_update("salesorderdetails", first["salesorderdetailid"], {"quantity": 5})
    wait_for(
        lambda: (
            sorted(
                li["quantity"]
                for li in e2e.bc_http.get(f"salesOrders({coupling.bc_id})/salesOrderLines").json()["value"]
            )
            == [2, 3, 5]
        ),
        "the Sales line change in the BC order",
    )
    e2e.settle()
    assert e2e.failures() == []
    print(f"\nwon quote -> BC order, requests from 'Create Order' to settled: {sorted(cost.items())}")


def test_an_order_from_a_quote_whose_bc_quote_is_gone_is_created_and_says_so(e2e: E2EStack) -> None:
    _customer, account, item, product, uom = _setup(e2e)
    quote_id, bc_quote_id = _active_quote(e2e, account, product, uom, [4])
    e2e.bc_delete("salesQuotes", bc_quote_id)  # someone deleted the BC quote
    wait_for(lambda: e2e.coupling(QUOTE, "dv", quote_id) is None, "the quote's coupling removed")
    order = _convert(e2e, quote_id)
    e2e.settle()
    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    bc_order = e2e.bc_http.get(f"salesOrders({coupling.bc_id})", params={"$expand": "salesOrderLines"}).json()
    assert [(li["lineObjectNumber"], li["quantity"]) for li in bc_order["salesOrderLines"]] == [
        (item["number"], 4)
    ]
    history = e2e.rt.journal.history(ORDER, "dv", order["salesorderid"])
    said = [h.reason for h in history if "has no BC quote" in h.reason]
    assert said and quote_id in said[0], [h.reason for h in history]
    assert e2e.failures() == []


def test_shipping_an_order_in_bc_closes_the_sales_order_as_fulfilled(e2e: E2EStack) -> None:
    _customer, account, _item, product, uom = _setup(e2e)
    order = e2e.dv_create(
        "salesorders",
        {
            "name": f"Order {_tag()}",
            "customerid_account@odata.bind": f"/accounts({account})",
            "order_details": sales_lines(product, uom, (1, 2)),
        },
    )  # fmt: skip
    e2e.settle()
    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    # Released in BC (not shipped yet): the Sales order stays submitted.
    released = e2e.bc_http.post(f"salesOrders({coupling.bc_id})/Microsoft.NAV.release")
    assert released.status_code == 204, released.text
    e2e.settle()
    assert e2e.dv_get("salesorders", order["salesorderid"])["statecode"] == 1  # type: ignore[index]

    before = e2e.service_requests()
    shipped = e2e.control.post(f"{e2e.bc_url}/_sandbox/salesOrders/{coupling.bc_id}/ship")
    assert shipped.status_code == 204, shipped.text
    closed = wait_for(
        lambda: (o := e2e.dv_get("salesorders", order["salesorderid"])) and o["statecode"] == 3 and o,
        "the Sales order fulfilled",
    )
    assert closed["statuscode"] == 100001  # Complete
    e2e.settle()
    cost = diff(e2e.service_requests(), before)
    assert cost.get("DV POST FulfillSalesOrder") == 1, cost
    # The shipment's sync: BC order (1) and Sales order (1) read, the lines' shipped quantities (1 batch),
    # the close (1).
    [ship] = [h for h in e2e.rt.journal.history(ORDER, "bc", str(coupling.bc_id)) if h.outcome == "modified"][
        :1
    ]
    assert ship.api_requests == 4, (ship.api_requests, ship.reason)
    details = _dv_order(e2e, order["salesorderid"])["order_details"]
    assert sorted(d["quantityshipped"] for d in details) == [1, 2]  # the lines came back before it closed
    # Invoicing in BC afterwards: BC deletes the fully posted order, the fulfilled Sales order stays.
    invoiced = e2e.bc_http.post(f"salesOrders({coupling.bc_id})/Microsoft.NAV.shipAndInvoice")
    assert invoiced.status_code == 204, invoiced.text
    wait_for(lambda: e2e.coupling(ORDER, "dv", order["salesorderid"]) is None, "the order's coupling removed")
    assert e2e.dv_get("salesorders", order["salesorderid"])["statecode"] == 3  # type: ignore[index]
    e2e.settle()
    assert e2e.failures() == []
    print(f"\nBC shipment -> Sales order fulfilled, requests: {sorted(cost.items())}")


def _stock(e2e: E2EStack, item_number: str, quantity: float) -> None:
    entry = {"itemNumber": item_number, "quantity": quantity, "entryType": "Positive Adjmt."}
    response = e2e.control.post(f"{e2e.bc_url}/_sandbox/itemLedgerEntries/post", json={"entries": [entry]})
    assert response.status_code == 201, response.text


def _shown(e2e: E2EStack, quote_id: str) -> dict[str, Any]:
    return {
        d["quotedetailid"]: d["bcs_availablequantity"]
        for d in e2e.dv.rows("quotedetails")
        if d["_quoteid_value"] == quote_id
    }


def test_a_quote_being_prepared_shows_bcs_quantity_on_hand_on_each_line_with_one_bc_read(
    e2e: E2EStack,
) -> None:
    _customer, account, item, product, uom = _setup(e2e)
    other = e2e.bc_create(
        "items", {"displayName": f"Lamp {_tag()}", "unitPrice": 5, "baseUnitOfMeasureCode": "PCS"}
    )
    other_product = str(e2e.wait_coupled("ITEM-PRODUCT", "bc", other["id"]).dv_id)
    _stock(e2e, item["number"], 12)
    _stock(e2e, other["number"], 3)
    e2e.settle()
    before = e2e.service_requests()
    # A draft quote with three lines: two of the first item, one of the other.
    lines = [(product, 1), (product, 20), (other_product, 2)]
    quote = e2e.dv_create(
        "quotes",
        {
            "name": f"Prepared {_tag()}",
            "customerid_account@odata.bind": f"/accounts({account})",
            "quote_details": [
                {
                    "productid@odata.bind": f"/products({p})",
                    "uomid@odata.bind": f"/uoms({uom})",
                    "quantity": q,
                }
                for p, q in lines
            ],
        },
    )
    quote_id = quote["quoteid"]
    wait_for(lambda: None not in _shown(e2e, quote_id).values() or None, "availability on the quote lines")
    e2e.settle()
    shown = sorted(_shown(e2e, quote_id).values())
    assert shown == [3, 12, 12]
    assert e2e.coupling(QUOTE, "dv", quote_id) is None  # a draft stays in Sales; it only shows availability
    cost = diff(e2e.service_requests(), before)
    # Each notification of the quote (its create, its totals) reads it with its lines once, BC once for
    # all the quote's items and writes the lines whose figure changed in one batch: never per line. (Two
    # notifications handled at once may both write the same figures.)
    reads = cost.get("DV GET quotes", 0)
    assert 1 <= reads <= 3 and cost.get("BC GET items") == reads, cost
    assert 1 <= cost.get("DV POST $batch", 0) <= reads, cost
    # A line added later gets its figure too; the others are not rewritten.
    e2e.dv_create(
        "quotedetails",
        {"quoteid@odata.bind": f"/quotes({quote_id})", "productid@odata.bind": f"/products({other_product})",
         "uomid@odata.bind": f"/uoms({uom})", "quantity": 1, "priceperunit": 5.0},
    )  # fmt: skip
    wait_for(
        lambda: sorted(v or 0 for v in _shown(e2e, quote_id).values()) == [3, 3, 12, 12] or None,
        "the new line",
    )
    e2e.settle()
    assert e2e.failures() == []
    print(f"\navailability on a 3-line draft quote, requests: {sorted(cost.items())}")


def _bc_lines(e2e: E2EStack, order_id: str) -> list[dict[str, Any]]:
    response = e2e.bc_http.get(f"salesOrders({order_id})/salesOrderLines")
    assert response.status_code == 200, response.text
    return sorted(response.json()["value"], key=lambda li: li["sequence"])


def test_line_only_changes_in_sales_reach_bc_and_lines_keep_their_order(e2e: E2EStack) -> None:
    _customer, account, _item, product, uom = _setup(e2e)
    other = e2e.bc_create(
        "items", {"displayName": f"Sofa {_tag()}", "unitPrice": 20, "baseUnitOfMeasureCode": "PCS"}
    )
    other_product = str(e2e.wait_coupled("ITEM-PRODUCT", "bc", other["id"]).dv_id)
    order = e2e.dv_create(
        "salesorders",
        {
            "name": f"Order {_tag()}",
            "customerid_account@odata.bind": f"/accounts({account})",
            "order_details": sales_lines(product, uom, (5, 1, 3)),
        },
    )  # fmt: skip
    e2e.settle()
    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    # The lines keep Sales's order in BC, and BC's line numbers come back in that order.
    bc_lines = _bc_lines(e2e, str(coupling.bc_id))
    assert [li["quantity"] for li in bc_lines] == [5, 1, 3]
    details = _dv_order(e2e, order["salesorderid"])["order_details"]
    numbered = sorted(details, key=lambda d: d["bcs_bclinenumber"])
    assert [d["quantity"] for d in numbered] == [5, 1, 3]
    first = numbered[0]

    # The product swapped at the same price: the order's totals do not move, so the order itself is
    # not updated in Sales; the line's own notification brings it to BC.
    total = _dv_order(e2e, order["salesorderid"])["totalamount"]
    e2e.dv_update(
        "salesorderdetails",
        first["salesorderdetailid"],
        {"productid@odata.bind": f"/products({other_product})"},
    )
    assert _dv_order(e2e, order["salesorderid"])["totalamount"] == total
    wait_for(
        lambda: _bc_lines(e2e, str(coupling.bc_id))[0]["lineObjectNumber"] == other["number"] or None,
        "the swapped product in the BC line",
    )
    # A line given away (its price set to 0 moves the totals), then its quantity changed (moves nothing).
    second = numbered[1]
    e2e.dv_update("salesorderdetails", second["salesorderdetailid"], {"priceperunit": 0.0})
    wait_for(lambda: _bc_lines(e2e, str(coupling.bc_id))[1]["unitPrice"] == 0 or None, "the free line in BC")
    e2e.settle()
    e2e.dv_update("salesorderdetails", second["salesorderdetailid"], {"quantity": 7})
    wait_for(lambda: _bc_lines(e2e, str(coupling.bc_id))[1]["quantity"] == 7 or None, "the quantity in BC")
    e2e.settle()
    # A priced line removed in Sales (its document's totals notify) goes in BC too; the order stays.
    e2e.dv_http.delete(f"salesorderdetails({numbered[2]['salesorderdetailid']})")
    wait_for(lambda: len(_bc_lines(e2e, str(coupling.bc_id))) == 2 or None, "the line removed in BC")
    e2e.settle()
    assert [li["quantity"] for li in _bc_lines(e2e, str(coupling.bc_id))] == [5, 7]
    assert e2e.failures() == []
