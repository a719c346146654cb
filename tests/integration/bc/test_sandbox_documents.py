"""Sales documents in the BC sandbox: deep insert, BC's numbers and amounts, the bound actions of the
APIV2 pages (shipAndInvoice, makeOrder, post) and BC's refusal to edit posted or released documents."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.bc.conftest import Bc
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration


def _first(bc: Bc, entity_set: str) -> dict[str, Any]:
    return dict(bc.http.get(bc.entity_url(entity_set)).json()["value"][0])


def _order(bc: Bc, quantities: tuple[float, ...] = (2, 3, 1)) -> dict[str, Any]:
    customer, item = _first(bc, "customers"), _first(bc, "items")
    body = {
        "customerNumber": customer["number"],
        "externalDocumentNumber": "ORD-1",
        "salesOrderLines": [
            {"lineType": "Item", "lineObjectNumber": item["number"], "quantity": q, "unitPrice": 10}
            for q in quantities
        ],
    }
    response = bc.http.post(bc.entity_url("salesOrders"), params={"$expand": "salesOrderLines"}, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_deep_insert_creates_the_order_with_its_lines_numbers_and_totals_in_one_request(bc: Bc) -> None:
    order = _order(bc)
    assert order["number"].startswith("S-ORD")
    lines = order["salesOrderLines"]
    assert [(line["sequence"], line["quantity"], line["amountIncludingTax"]) for line in lines] == [
        (10000, 2, 20), (20000, 3, 30), (30000, 1, 10),
    ]  # fmt: skip
    read = bc.http.get(bc.entity_url("salesOrders", order["id"])).json()
    assert read["totalAmountIncludingTax"] == 60
    assert read["shipToName"] == read["customerName"]  # taken from the customer, as BC does


def test_a_refused_line_refuses_the_whole_deep_insert(bc: Bc) -> None:
    customer = _first(bc, "customers")
    before = len(bc.http.get(bc.entity_url("salesOrders")).json()["value"])
    body = {
        "customerNumber": customer["number"],
        "salesOrderLines": [{"lineObjectNumber": "NO-SUCH", "quantity": 1}],
    }
    assert_error(bc.http.post(bc.entity_url("salesOrders"), json=body), 400, "Internal_RecordNotFound")
    assert len(bc.http.get(bc.entity_url("salesOrders")).json()["value"]) == before


def test_ship_and_invoice_posts_the_invoice_with_its_lines_and_deletes_the_order(bc: Bc) -> None:
    order = _order(bc)
    response = bc.http.post(f"{bc.entity_url('salesOrders', order['id'])}/Microsoft.NAV.shipAndInvoice")
    assert response.status_code == 204, response.text
    assert bc.http.get(bc.entity_url("salesOrders", order["id"])).status_code == 404
    invoices = bc.http.get(
        bc.entity_url("salesInvoices"),
        params={"$filter": f"orderNumber eq '{order['number']}'", "$expand": "salesInvoiceLines"},
    ).json()["value"]
    assert len(invoices) == 1
    invoice = invoices[0]
    assert (invoice["status"], invoice["totalAmountIncludingTax"], invoice["remainingAmount"]) == (
        "Open",
        60,
        60,
    )
    assert [line["quantity"] for line in invoice["salesInvoiceLines"]] == [2, 3, 1]
    # A posted invoice is not edited any more, as BC's APIV2 page refuses it.
    refused = bc.http.patch(
        bc.entity_url("salesInvoices", invoice["id"]),
        json={"externalDocumentNumber": "X"},
        headers={"If-Match": "*"},
    )
    assert "posted and can no longer be modified" in assert_error(refused, 400, "Application_DialogException")


def test_a_shipped_order_is_released_and_refuses_line_edits(bc: Bc) -> None:
    order = _order(bc, (4,))
    assert bc.http.post(f"{bc.url}/_sandbox/salesOrders/{order['id']}/ship").status_code == 204
    read = bc.http.get(
        bc.entity_url("salesOrders", order["id"]), params={"$expand": "salesOrderLines"}
    ).json()
    assert (read["status"], read["fullyShipped"]) == ("Released", True)
    line = read["salesOrderLines"][0]
    assert line["shippedQuantity"] == 4
    refused = bc.http.patch(
        bc.entity_url("salesOrderLines", line["id"]), json={"quantity": 5}, headers={"If-Match": "*"}
    )
    message = assert_error(refused, 400, "Application_TestFieldError")
    assert f"No.={order['number']}. Current value is 'Released'" in message


def test_make_order_turns_a_quote_into_an_order_with_its_lines(bc: Bc) -> None:
    customer, item = _first(bc, "customers"), _first(bc, "items")
    body = {
        "customerNumber": customer["number"],
        "salesQuoteLines": [{"lineObjectNumber": item["number"], "quantity": 7}],
    }
    quote = bc.http.post(bc.entity_url("salesQuotes"), json=body).json()
    assert (
        bc.http.post(f"{bc.entity_url('salesQuotes', quote['id'])}/Microsoft.NAV.makeOrder").status_code
        == 204
    )
    assert bc.http.get(bc.entity_url("salesQuotes", quote["id"])).status_code == 404
    orders = bc.http.get(bc.entity_url("salesOrders"), params={"$expand": "salesOrderLines"}).json()["value"]
    made = [o for o in orders if o["customerNumber"] == customer["number"] and o["salesOrderLines"]]
    assert any(o["salesOrderLines"][0]["quantity"] == 7 for o in made)


def test_make_order_keeps_the_quotes_line_numbers(bc: Bc) -> None:
    customer, item = _first(bc, "customers"), _first(bc, "items")
    body = {
        "customerNumber": customer["number"],
        "salesQuoteLines": [{"lineObjectNumber": item["number"], "quantity": q} for q in (1, 2, 3)],
    }
    quote = bc.http.post(
        bc.entity_url("salesQuotes"), json=body, params={"$expand": "salesQuoteLines"}
    ).json()
    first = next(line for line in quote["salesQuoteLines"] if line["quantity"] == 1)
    assert (
        bc.http.delete(bc.entity_url("salesQuoteLines", first["id"]), headers={"If-Match": "*"}).status_code
        == 204
    )
    made = bc.http.post(f"{bc.entity_url('salesQuotes', quote['id'])}/Microsoft.NAV.makeOrder")
    assert made.status_code == 204, made.text
    orders = bc.http.get(
        bc.entity_url("salesOrders"),
        params={"$expand": "salesOrderLines", "$filter": f"customerNumber eq '{customer['number']}'"},
    ).json()["value"]
    lines = [
        (li["sequence"], li["quantity"])
        for o in orders
        for li in o["salesOrderLines"]
        if o["salesOrderLines"]
    ]
    assert (20000, 2) in lines and (30000, 3) in lines and (10000, 2) not in lines


def test_an_action_the_page_does_not_declare_is_refused(bc: Bc) -> None:
    order = _order(bc)
    response = bc.http.post(f"{bc.entity_url('salesOrders', order['id'])}/Microsoft.NAV.post")
    assert "Microsoft.NAV.post" in assert_error(response, 404, "BadRequest_ResourceNotFound")
