"""What salespeople see: product availability and customer statistics, against the sandboxes."""

from __future__ import annotations

import pytest

from shared.ops import operations
from shared.sales.statistics import push_statistics
from tests.integration.ops.conftest import OpsStack

pytestmark = pytest.mark.integration

PRODUCT_ID = "0d0c0000-0000-4000-8000-000000000001"


def _set_inventory(ops: OpsStack, number: str, quantity: float) -> dict:
    # As in BC: stock moves only by posting item ledger entries; `inventory` is their sum.
    item = ops.bc.store.find_by_key(ops.rt.company_id, "items", number)
    moved = quantity - float(item["inventory"])
    if moved:
        ops.bc.post_item_entries([{"itemNumber": number, "quantity": moved}])
    return dict(ops.bc.store.find_by_key(ops.rt.company_id, "items", number))


def test_availability_by_number_and_by_coupled_product(ops: OpsStack) -> None:
    item = _set_inventory(ops, "I00010", 42)
    token = ops.token("availability")

    response = ops.api("GET", "products/i00010/availability", token=token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["item_number"], body["inventory"], body["unit_of_measure"]) == ("I00010", 42, "PCS")
    assert body["as_of"].endswith("Z") and body["cached"] is False

    ops.dv.seed("products", [{"productid": PRODUCT_ID, "name": "ATHENS Desk", "productnumber": "I00010",
                              "producttypecode": 1}])  # fmt: skip
    operations.couple(ops.rt, "ITEM-PRODUCT", item["id"], PRODUCT_ID, sync_from="bc")
    assert ops.rt.couplings.get("ITEM-PRODUCT", "dv", PRODUCT_ID) is not None
    by_id = ops.api("GET", f"products/by-id/{PRODUCT_ID}/availability", token=token).json()
    assert by_id["item_number"] == "I00010" and by_id["product_id"] == PRODUCT_ID


def test_availability_is_cached_briefly(ops: OpsStack) -> None:
    _set_inventory(ops, "I00020", 5)
    token = ops.token("availability")
    first = ops.api("GET", "products/I00020/availability", token=token).json()
    requests_before = ops.bc.counters.snapshot()
    _set_inventory(ops, "I00020", 4)
    second = ops.api("GET", "products/I00020/availability", token=token).json()

    assert second["cached"] is True and second["inventory"] == first["inventory"] == 5
    assert ops.bc.counters.snapshot() == requests_before  # answered without asking BC


def test_unknown_items_and_products_are_404_with_a_message(ops: OpsStack) -> None:
    token = ops.token("availability")
    missing = ops.api("GET", "products/NOPE-1/availability", token=token)
    assert missing.status_code == 404 and "no item NOPE-1" in missing.json()["error"]
    uncoupled = ops.api("GET", f"products/by-id/{PRODUCT_ID}/availability", token=token)
    assert uncoupled.status_code == 404 and "not coupled" in uncoupled.json()["error"]


def test_statistics_push_writes_changed_customers_only(adatum_coupled: tuple) -> None:
    ops, bc_id, dv_id = adatum_coupled

    first = push_statistics(ops.rt)
    assert (first.customers, first.changed, first.written, first.failed) == (1, 1, 1, [])
    rows = ops.dv.rows("bcs_customerstatistics")
    assert len(rows) == 1
    row = rows[0]
    assert row["bcs_customerno"] == ops.bc.get("customers", bc_id)["number"]
    assert row["_bcs_accountid_value"] == dv_id
    assert row["bcs_outstandingorders"] == 0
    assert first.bc_requests == 3  # customers, orders, open invoices: one paged query each

    ops.dv.counters.reset()
    unchanged = push_statistics(ops.rt)
    assert (unchanged.changed, unchanged.written, unchanged.dataverse_requests) == (0, 0, 0)
    assert not any("bcs_customerstatistics" in key for key in ops.dv.counters.snapshot()["requests"])

    # An order for Adatum changes its outstanding orders: one write, for that customer only.
    order = ops.rt.bc.create(ops.rt.company_id, "salesOrders", {"customerId": bc_id})
    ops.rt.bc.create(ops.rt.company_id, "salesOrderLines",
                     {"documentId": order["id"], "lineObjectNumber": "I00010", "quantity": 2})  # fmt: skip
    changed = push_statistics(ops.rt)
    assert (changed.changed, changed.written) == (1, 1)
    row = ops.dv.rows("bcs_customerstatistics")[0]
    assert row["bcs_outstandingorders"] == pytest.approx(2 * 1000.8)


def test_statistics_push_through_the_api(adatum_coupled: tuple) -> None:
    ops, _, _ = adatum_coupled
    response = ops.api("POST", "manage/statistics/push", token=ops.token("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["written"] == 1
