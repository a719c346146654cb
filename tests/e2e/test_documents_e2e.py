"""Sales documents end to end through the dev host (issue 17): a document and its lines sync as one
unit. An order submitted in Sales becomes a BC sales order with its lines in one request; a line
changed in BC comes back; shipping in BC brings the shipped quantities back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.harness import E2EStack, diff, wait_for

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
        result = e2e.sync("UNIT", "bc", unit["id"])
        assert result.outcome == "coupled", result
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
    return sorted(order["order_details"], key=lambda d: d["businesscentrallinenumber"] or 0)


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
    assert lines == [(item["number"], q, "PCS") for q in (2, 3, 5)]
    assert bc_order["totalAmountIncludingTax"] == 125  # BC's own total
    cost = diff(e2e.service_requests(), before)
    assert cost.get("BC POST salesOrders") == 1  # header and lines: one deep insert
    assert not any(k.startswith("BC POST") and k != "BC POST salesOrders" for k in cost), cost

    # BC's number and line numbers come back to Sales.
    sales = _dv_order(e2e, order["salesorderid"])
    assert sales["businesscentralordernumber"] == bc_order["number"]
    assert [d["businesscentrallinenumber"] for d in _details(sales)] == [10000, 20000, 30000]

    # A line changed in BC comes back; Dataverse recomputes its own total.
    second = bc_order["salesOrderLines"][1]
    e2e.bc_update("salesOrderLines", second["id"], {"quantity": 4})
    wait_for(
        lambda: [d["quantity"] for d in _details(_dv_order(e2e, order["salesorderid"]))] == [2, 4, 5],
        "the BC line change in Sales",
    )
    e2e.settle()
    assert _dv_order(e2e, order["salesorderid"])["totalamount"] == 137.5

    # Shipping in BC: the shipped quantities reach the Sales order.
    shipped = e2e.control.post(f"{e2e.bc_url}/_sandbox/salesOrders/{coupling.bc_id}/ship")
    assert shipped.status_code == 204, shipped.text
    wait_for(
        lambda: [d["quantityshipped"] for d in _details(_dv_order(e2e, order["salesorderid"]))] == [2, 4, 5],
        "the shipped quantities in Sales",
    )
    e2e.settle()
    assert e2e.failures() == []
