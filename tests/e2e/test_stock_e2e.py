"""Product availability from BC's item ledger entries (issue 11): posting stock changes an item's
`inventory` (a FlowField) without touching the item, so no notification and no new
`lastModifiedDateTime` tell the service; the delta poll's read of the item ledger does, and
`quantityonhand` follows for exactly the items touched, in bulk."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.sales.stock import refresh_stock
from shared.sync import bulk
from tests.e2e.harness import E2EStack, diff, wait_for

pytestmark = pytest.mark.e2e

ITEM = "ITEM-PRODUCT"


def _post(e2e: E2EStack, *entries: dict[str, Any]) -> list[int]:
    response = e2e.control.post(
        f"{e2e.bc_url}/_sandbox/itemLedgerEntries/post", json={"entries": list(entries)}
    )
    assert response.status_code == 201, response.text
    return list(response.json()["entryNumbers"])


def _coupled_item(e2e: E2EStack) -> tuple[dict[str, Any], str]:
    item = e2e.bc_create(
        "items", {"displayName": f"Stock {uuid.uuid4().hex[:6]}", "baseUnitOfMeasureCode": "PCS"}
    )
    coupling = e2e.wait_coupled(ITEM, "bc", item["id"])
    e2e.settle()
    return item, str(coupling.dv_id)


def _quantity(e2e: E2EStack, product_id: str) -> float:
    return float(e2e.dv.get("products", product_id)["quantityonhand"] or 0)


def _stock_requests(e2e: E2EStack, before: dict[str, int]) -> dict[str, int]:
    """What `refresh_stock`, called in the test's thread, sent: the dev host's functions may be
    finishing other work meanwhile."""
    return diff(e2e.requests_in_this_thread(), before)


def test_posted_stock_reaches_quantityonhand_at_the_next_poll_without_touching_the_item(
    e2e: E2EStack,
) -> None:
    item, product_id = _coupled_item(e2e)
    e2e.stack.host.invoke_timer("delta_poll")  # baselines (the ledger cursor too)
    e2e.settle()
    deliveries = len(e2e.bc.webhooks.deliveries)

    first, second = _post(
        e2e,
        {"itemNumber": item["number"], "quantity": 40, "entryType": "Purchase", "documentNumber": "PR-1"},
        {"itemNumber": item["number"], "quantity": -15, "entryType": "Sale", "documentNumber": "SH-1"},
    )
    assert second == first + 1
    e2e.settle()

    # BC: the FlowField moved, the record did not; nothing was notified; Sales does not know yet.
    read = e2e.bc_get("items", item["id"])
    assert read is not None and read["inventory"] == 25
    assert (read["lastModifiedDateTime"], read["@odata.etag"]) == (
        item["lastModifiedDateTime"],
        item["@odata.etag"],
    )
    assert len(e2e.bc.webhooks.deliveries) == deliveries
    assert _quantity(e2e, product_id) == 0
    entries = e2e.bc_find("itemLedgerEntries", f"itemNumber eq '{item['number']}'")
    assert sorted((e["entryNumber"], e["quantity"], e["entryType"]) for e in entries) == [
        (first, 40, "Purchase"),
        (second, -15, "Sale"),
    ]

    before = e2e.service_requests()
    e2e.stack.host.invoke_timer("delta_poll")
    wait_for(lambda: _quantity(e2e, product_id) == 25, "quantityonhand 25 in Sales")
    e2e.settle()
    spent = diff(e2e.service_requests(), before)
    assert spent.get("BC GET itemLedgerEntries") == 1, spent
    assert not [k for k in spent if k.startswith("DV") and "products" in k and "PATCH" in k], spent
    assert not e2e.failures()


def test_nothing_moved_costs_one_ledger_read(e2e: E2EStack) -> None:
    refresh_stock(e2e.rt)  # catch up with the earlier tests
    e2e.settle()
    before = e2e.requests_in_this_thread()
    report = refresh_stock(e2e.rt)
    assert (report.entries, report.items) == (0, 0)
    assert _stock_requests(e2e, before) == {"BC GET itemLedgerEntries": 1}


@pytest.mark.parametrize("full_read_above", [1000, 100])
def test_many_items_moved_are_read_and_written_in_bulk(
    e2e: E2EStack, full_read_above: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120 items moved: read 50 numbers to a request, or (past the threshold) the whole item table
    in one page of 20,000."""
    monkeypatch.setattr("shared.sales.stock.FULL_READ_ABOVE", full_read_above)
    count = 120
    tag = uuid.uuid4().hex[:4].upper()
    e2e.bc.seed(
        "items",
        [
            {"number": f"S{tag}{n:03d}", "displayName": f"Bulk {n}", "baseUnitOfMeasureCode": "PCS"}
            for n in range(count)
        ],
    )
    bulk.run_full_resync(e2e.engine, ITEM)
    e2e.settle()
    refresh_stock(e2e.rt)
    e2e.settle()
    _post(e2e, *({"itemNumber": f"S{tag}{n:03d}", "quantity": n + 1} for n in range(count)))
    _post(e2e, {"itemNumber": f"S{tag}000", "quantity": 4})  # a second entry for one item

    before = e2e.requests_in_this_thread()
    report = refresh_stock(e2e.rt)
    spent = _stock_requests(e2e, before)

    assert (report.entries, report.items) == (count + 1, count)
    assert report.counts == {f"{ITEM} modified": count}
    # 1 ledger page, 3 item reads of 50 numbers (or 1 page of all items), 1 $batch reading the
    # products, 1 $batch writing them, 1 UpdateMultiple setting their "as of" time.
    item_reads = 3 if count <= full_read_above else 1
    assert spent == {
        "BC GET itemLedgerEntries": 1,
        "BC GET items": item_reads,
        "DV POST $batch": 2,
        "DV POST products UpdateMultiple": 1,
    }, spent
    rows = {p["productnumber"]: p for p in e2e.dv.rows("products")}
    assert rows[f"S{tag}000"]["quantityonhand"] == 5 and rows[f"S{tag}119"]["quantityonhand"] == 120
    assert report.stamped == count and all(rows[f"S{tag}{n:03d}"]["bcs_quantityasof"] for n in range(count))
    e2e.settle()
    assert not e2e.failures()
