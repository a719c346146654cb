"""Sales documents end to end through the dev host (issue 17): a document and its lines sync as one
unit. An order submitted in Sales becomes a BC sales order with its lines in one request; a line
changed in BC comes back; shipping in BC brings the shipped quantities back."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import E2EStack, diff, sales_lines, wait_for

pytestmark = pytest.mark.e2e

ORDER = "SALES ORDER"


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _customer(e2e: E2EStack) -> tuple[dict[str, Any], str]:
    customer = e2e.bc_create("customers", {"displayName": f"Orders {_tag()}", "city": "Oslo"})
    coupling = e2e.wait_coupled("CUSTOMER", "bc", customer["id"])
    return customer, str(coupling.dv_id)


def _item(e2e: E2EStack, price: float = 12.5) -> tuple[dict[str, Any], str]:
    item = e2e.bc_create(
        "items", {"displayName": f"Desk {_tag()}", "unitPrice": price, "baseUnitOfMeasureCode": "PCS"}
    )
    coupling = e2e.wait_coupled("ITEM-PRODUCT", "bc", item["id"])
    return item, str(coupling.dv_id)


def _unit(e2e: E2EStack, code: str = "PCS") -> str:
    """The Dataverse unit coupled to BC's unit `code` (UNIT couples by name, never creates)."""
    [unit] = e2e.bc_find("unitsOfMeasure", f"code eq '{code}'")
    coupling = e2e.coupling("UNIT", "bc", unit["id"])
    if coupling is None:
        # Coupled by this sync, or by the service meanwhile (an item's sync brings its unit along):
        # then this sync finds the Dataverse unit coupled already and skips.
        result = e2e.sync("UNIT", "bc", unit["id"])
        assert result.outcome in ("coupled", "skipped"), result
        coupling = e2e.wait_coupled("UNIT", "bc", unit["id"])
    return str(coupling.dv_id)


def _bc_order(e2e: E2EStack, order_id: str) -> dict[str, Any]:
    response = e2e.bc_http.get(f"salesOrders({order_id})", params={"$expand": "salesOrderLines"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _dv_order(e2e: E2EStack, order_id: str) -> dict[str, Any]:
    response = e2e.dv_http.get(f"salesorders({order_id})", params={"$expand": "order_details"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _details(order: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(order["order_details"], key=lambda d: d["bcs_bclinenumber"] or 0)


def _sales_order(
    e2e: E2EStack, account: str, product: str, uom: str, quantities: list[float]
) -> dict[str, Any]:
    return e2e.dv_create(
        "salesorders",
        {
            "name": f"Order {_tag()}",
            "customerid_account@odata.bind": f"/accounts({account})",
            "order_details": [
                {
                    "productid@odata.bind": f"/products({product})",
                    "uomid@odata.bind": f"/uoms({uom})",
                    "quantity": q,
                    "priceperunit": 12.5,
                    "ispriceoverridden": True,
                }
                for q in quantities
            ],
        },
    )


def test_a_submitted_order_becomes_a_bc_order_and_bc_changes_and_shipments_come_back(e2e: E2EStack) -> None:
    customer, account = _customer(e2e)
    item, product = _item(e2e)
    uom = _unit(e2e)
    e2e.settle()

    order = _sales_order(e2e, account, product, uom, [2, 3, 5])
    e2e.settle()
    # An active (draft) order is not BC's business yet: only submitted orders sync.
    assert e2e.coupling(ORDER, "dv", order["salesorderid"]) is None

    before = e2e.service_requests()
    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})  # submit
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    bc_order = _bc_order(e2e, str(coupling.bc_id))
    assert bc_order["customerNumber"] == customer["number"]
    lines = [
        (li["lineObjectNumber"], li["quantity"], li["unitOfMeasureCode"])
        for li in bc_order["salesOrderLines"]
    ]
    assert sorted(lines) == [(item["number"], q, "PCS") for q in (2, 3, 5)]
    assert bc_order["totalAmountIncludingTax"] == 125  # BC's own total
    cost = diff(e2e.service_requests(), before)
    assert cost.get("BC POST salesOrders") == 1  # header and lines: one deep insert
    assert not any(k.startswith("BC POST") and k != "BC POST salesOrders" for k in cost), cost

    # BC's number and line numbers come back to Sales.
    sales = _dv_order(e2e, order["salesorderid"])
    assert sales["bcs_bcnumber"] == bc_order["number"]
    assert [d["bcs_bclinenumber"] for d in _details(sales)] == [10000, 20000, 30000]
    # ...with a working link to the order in the BC web client (page 42, Sales Order).
    assert "&page=42&" in sales["bcs_bcurl"]
    card = httpx.get(sales["bcs_bcurl"], timeout=10)
    assert card.status_code == 200 and bc_order["number"] in card.text

    # A line changed in BC comes back; Dataverse recomputes its own total.
    second = next(line for line in bc_order["salesOrderLines"] if line["quantity"] == 3)
    e2e.bc_update("salesOrderLines", second["id"], {"quantity": 4})
    wait_for(
        lambda: sorted(d["quantity"] for d in _details(_dv_order(e2e, order["salesorderid"]))) == [2, 4, 5],
        "the BC line change in Sales",
    )
    e2e.settle()
    assert _dv_order(e2e, order["salesorderid"])["totalamount"] == 137.5

    # Shipping in BC: the shipped quantities reach the Sales order.
    shipped = e2e.control.post(f"{e2e.bc_url}/_sandbox/salesOrders/{coupling.bc_id}/ship")
    assert shipped.status_code == 204, shipped.text
    wait_for(
        lambda: all(
            d["quantityshipped"] == d["quantity"] for d in _details(_dv_order(e2e, order["salesorderid"]))
        ),
        "the shipped quantities in Sales",
    )
    e2e.settle()
    assert e2e.failures() == []


def test_a_submitted_order_of_50_lines_is_created_in_bc_with_one_request(e2e: E2EStack) -> None:
    """Issue 16: the service uses BC's deep insert, so the number of BC writes does not grow with the
    lines: the header and its 50 lines are one `POST salesOrders`."""
    _, account = _customer(e2e)
    _, product = _item(e2e)
    uom = _unit(e2e)
    e2e.settle()
    quantities = [float(1 + k % 4) for k in range(50)]
    order = _sales_order(e2e, account, product, uom, quantities)
    e2e.settle()

    before = e2e.service_requests()
    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})  # submit
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    cost = diff(e2e.service_requests(), before)
    bc_writes = {
        k: v for k, v in cost.items() if k.split()[:2] in (["BC", "POST"], ["BC", "PATCH"], ["BC", "DELETE"])
    }
    assert bc_writes == {"BC POST salesOrders": 1}, cost
    bc_order = _bc_order(e2e, str(coupling.bc_id))
    assert sorted(line["quantity"] for line in bc_order["salesOrderLines"]) == sorted(quantities)
    assert [line["sequence"] for line in bc_order["salesOrderLines"]] == [10000 * (k + 1) for k in range(50)]
    assert e2e.failures() == []


def _dv_invoice(e2e: E2EStack, bc_id: str) -> dict[str, Any] | None:
    coupling = e2e.coupling("POSTED INVOICE", "bc", bc_id)
    if coupling is None or not coupling.dv_id:
        return None
    response = e2e.dv_http.get(f"invoices({coupling.dv_id})", params={"$expand": "invoice_details"})
    return dict(response.json()) if response.status_code == 200 else None


def test_posting_an_invoice_in_bc_creates_the_sales_invoice_with_its_lines(e2e: E2EStack) -> None:
    customer, account = _customer(e2e)
    item, product = _item(e2e, price=40)
    uom = _unit(e2e)
    e2e.settle()
    body = {
        "customerNumber": customer["number"],
        "salesInvoiceLines": [{"lineObjectNumber": item["number"], "quantity": q} for q in (1, 2)],
    }
    draft = e2e.bc_create("salesInvoices", body)
    e2e.settle()
    assert e2e.coupling("POSTED INVOICE", "bc", draft["id"]) is None  # a draft is not posted

    posted = e2e.bc_http.post(f"salesInvoices({draft['id']})/Microsoft.NAV.post")
    assert posted.status_code == 204, posted.text
    invoice = wait_for(lambda: _dv_invoice(e2e, draft["id"]), "the posted invoice in Sales")
    e2e.settle()
    invoice = _dv_invoice(e2e, draft["id"])
    assert invoice is not None
    assert (invoice["invoicenumber"], invoice["_customerid_value"], invoice["statecode"]) == (
        draft["number"], account, 0,
    )  # fmt: skip
    details = sorted(invoice["invoice_details"], key=lambda d: d["lineitemnumber"])
    shown = [(d["_productid_value"], d["_uomid_value"], d["quantity"], d["priceperunit"]) for d in details]
    assert shown == [(product, uom, 1, 40), (product, uom, 2, 40)]
    assert invoice["totalamount"] == 120  # Dataverse's own total from the details
    # BC's number and a working link to the posted invoice (page 132, Posted Sales Invoice).
    assert invoice["bcs_bcnumber"] == draft["number"] and "&page=132&" in invoice["bcs_bcurl"]
    card = httpx.get(invoice["bcs_bcurl"], timeout=10)
    assert card.status_code == 200 and draft["number"] in card.text
    assert e2e.failures() == []


def test_ship_and_invoice_posts_the_order_whose_invoice_reaches_sales(e2e: E2EStack) -> None:
    account = _customer(e2e)[1]
    product = _item(e2e)[1]
    uom = _unit(e2e)
    e2e.settle()
    order = _sales_order(e2e, account, product, uom, [1, 1])
    e2e.settle()  # the draft's own notifications first (a draft is skipped)
    e2e.dv_update("salesorders", order["salesorderid"], {"statecode": 1, "statuscode": 3})
    coupling = e2e.wait_coupled(ORDER, "dv", order["salesorderid"])
    e2e.settle()
    response = e2e.bc_http.post(f"salesOrders({coupling.bc_id})/Microsoft.NAV.shipAndInvoice")
    assert response.status_code == 204, response.text
    [bc_invoice] = e2e.bc_find("salesInvoices", f"orderId eq {coupling.bc_id}")
    invoice = wait_for(lambda: _dv_invoice(e2e, bc_invoice["id"]), "the order's invoice in Sales")
    assert [d["quantity"] for d in invoice["invoice_details"]] == [1, 1]
    # BC deleted the fully posted order: its coupling goes (deletion: remove_coupling); the Sales order stays.
    wait_for(lambda: e2e.coupling(ORDER, "dv", order["salesorderid"]) is None, "the order's coupling removed")
    assert e2e.dv_get("salesorders", order["salesorderid"]) is not None
    e2e.settle()
    assert e2e.failures() == []


def test_a_full_resync_brings_posted_invoices_in_bulk_and_lists_those_of_uncoupled_customers(
    e2e: E2EStack,
) -> None:
    from shared.sync import bulk

    customer = _customer(e2e)[0]
    item = _item(e2e, price=5)[0]
    _unit(e2e)
    blocked = e2e.bc_create(
        "customers", {"displayName": f"Blocked {_tag()}", "blocked": "Ship"}
    )  # out of scope
    e2e.settle()
    invoices = e2e.bc.seed_posted_invoices(
        [customer["number"], customer["number"], blocked["number"]], [item["number"]], 3, 4
    )
    before = e2e.service_requests()
    run = bulk.run_full_resync(e2e.engine, "POSTED INVOICE")
    cost = diff(e2e.service_requests(), before)
    assert run.status == "succeeded"
    assert run.counts.get("inserted", 0) >= 2 and run.counts.get("skipped", 0) >= 1
    skipped_number = e2e.bc_get("salesInvoices", invoices[2])["number"]  # type: ignore[index]
    assert f"skipped (references not coupled): {skipped_number}" in run.message
    for bc_id in invoices[:2]:
        invoice = _dv_invoice(e2e, bc_id)
        assert invoice is not None and sorted(d["quantity"] for d in invoice["invoice_details"]) == [
            1,
            2,
            3,
            4,
        ]
    assert _dv_invoice(e2e, invoices[2]) is None
    # Bulk: one BC page, one UpsertMultiple of headers and one of details; nothing per invoice.
    assert cost.get("DV POST invoices UpsertMultiple") == 1, cost
    assert cost.get("DV POST invoicedetails UpsertMultiple") == 1, cost
    assert not any(k.startswith("DV POST invoices") and "Upsert" not in k for k in cost), cost
    journal = e2e.rt.journal.history("POSTED INVOICE", "bc", invoices[2])
    assert journal and journal[0].outcome == "skipped" and "CUSTOMER" in journal[0].reason


def test_a_quote_activated_in_sales_with_three_lines_appears_in_bc_with_the_same_lines(e2e: E2EStack) -> None:
    customer, account = _customer(e2e)
    item, product = _item(e2e, price=20)
    uom = _unit(e2e)
    e2e.settle()
    quote = e2e.dv_create(
        "quotes",
        {
            "name": f"Quote {_tag()}",
            "customerid_account@odata.bind": f"/accounts({account})",
            "quote_details": sales_lines(product, uom, (1, 2, 3)),
        },
    )  # fmt: skip
    e2e.settle()
    assert e2e.coupling("SALES QUOTE", "dv", quote["quoteid"]) is None  # a draft quote stays in Sales
    e2e.dv_update("quotes", quote["quoteid"], {"statecode": 1, "statuscode": 3})  # activate
    coupling = e2e.wait_coupled("SALES QUOTE", "dv", quote["quoteid"])
    e2e.settle()
    response = e2e.bc_http.get(f"salesQuotes({coupling.bc_id})", params={"$expand": "salesQuoteLines"})
    assert response.status_code == 200, response.text
    bc_quote = response.json()
    assert bc_quote["customerNumber"] == customer["number"]
    shown = sorted(
        (li["lineObjectNumber"], li["quantity"], li["unitOfMeasureCode"])
        for li in bc_quote["salesQuoteLines"]
    )
    assert shown == [(item["number"], q, "PCS") for q in (1, 2, 3)]
    assert bc_quote["totalAmountIncludingTax"] == 120
    numbers = sorted(
        d["lineitemnumber"] for d in e2e.dv.rows("quotedetails") if d["_quoteid_value"] == quote["quoteid"]
    )
    assert numbers == [10000, 20000, 30000]  # BC's line numbers back on the Sales quote lines
    assert e2e.failures() == []
