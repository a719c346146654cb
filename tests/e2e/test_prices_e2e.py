"""Prices BC -> Sales (issue 17): API v2.0 has no price lists, so BC's item unit price goes to one
Sales price list (settings.price_list) as a price list item per coupled product in its base unit,
as BC's own connector keeps its default price list when extended prices are off (ITEM PRICE)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.harness import E2EStack, diff, wait_for

pytestmark = pytest.mark.e2e

PRICE = "ITEM PRICE"


def _price_item(e2e: E2EStack, product_id: str) -> dict[str, Any] | None:
    price_list = e2e.rt.mappings.settings.price_list
    assert price_list is not None
    rows = e2e.dv_find(
        "productpricelevels", f"_productid_value eq {product_id} and _pricelevelid_value eq {price_list.id}"
    )
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def test_a_price_change_in_bc_reaches_the_sales_price_list(e2e: E2EStack) -> None:
    price_list = e2e.rt.mappings.settings.price_list
    assert price_list is not None
    listed = e2e.dv_get("pricelevels", price_list.id)
    assert listed is not None and listed["name"] == "Business Central"
    usd = e2e.dv_find("transactioncurrencies", "isocurrencycode eq 'USD'")[0]["transactioncurrencyid"]
    assert listed["_transactioncurrencyid_value"] == usd  # the local currency (bc_local_currency_code)

    item = e2e.bc_create(
        "items",
        {"displayName": f"Priced {uuid.uuid4().hex[:6]}", "baseUnitOfMeasureCode": "PCS", "unitPrice": 10},
    )
    product_id = str(e2e.wait_coupled("ITEM-PRODUCT", "bc", item["id"]).dv_id)
    coupling = e2e.wait_coupled(PRICE, "bc", item["id"])
    e2e.settle()
    row = _price_item(e2e, product_id)
    assert row is not None and row["productpricelevelid"] == coupling.dv_id
    unit = e2e.rt.couplings.get("UNIT", "bc", e2e.bc_find("unitsOfMeasure", "code eq 'PCS'")[0]["id"])
    assert unit is not None
    assert (row["amount"], row["_uomid_value"], row["pricingmethodcode"]) == (10, unit.dv_id, 1)
    assert row["_transactioncurrencyid_value"] == usd  # Dataverse takes the price list's currency
    product = e2e.dv_get("products", product_id)
    assert product is not None and row["_uomscheduleid_value"] == product["_defaultuomscheduleid_value"]

    before = e2e.service_requests()
    e2e.bc_update("items", item["id"], {"unitPrice": 12.5})
    wait_for(lambda: (_price_item(e2e, product_id) or {}).get("amount") == 12.5, "the new price in Sales")
    e2e.settle()
    spent = diff(e2e.service_requests(), before)
    print(f"item price change: {spent}")  # the README's numbers (pytest -s)
    # One BC read per mapping of items (ITEM-PRODUCT and ITEM PRICE each read the changed item), one
    # Dataverse write each (the product's price, the price list item's amount).
    assert spent.get("BC GET items", 0) <= 2, spent
    assert sum(v for k, v in spent.items() if k.startswith("DV PATCH")) == 2, spent
    assert not [k for k in spent if k.startswith("DV POST")], spent
    assert (e2e.dv_get("products", product_id) or {})["price"] == 12.5

    # One way: a price edited in Sales is overwritten by BC's next price (the write's ETag no longer
    # matches, so the price list item is read again and BC's value written).
    e2e.dv_update("productpricelevels", str(coupling.dv_id), {"amount": 99})
    e2e.settle()
    before = e2e.service_requests()
    e2e.bc_update("items", item["id"], {"unitPrice": 14})
    wait_for(lambda: (_price_item(e2e, product_id) or {}).get("amount") == 14, "BC's price over the edit")
    e2e.settle()
    spent = diff(e2e.service_requests(), before)
    print(f"item price change over a Sales edit: {spent}")
    assert spent.get("DV PATCH productpricelevels") == 2, spent  # refused (412), then written
    assert spent.get("DV GET productpricelevels") == 1, spent  # the read after the refusal
    assert not e2e.failures()


def test_a_duplicate_price_for_a_product_and_unit_is_refused_as_dataverse_refuses_it(e2e: E2EStack) -> None:
    price_list = e2e.rt.mappings.settings.price_list
    assert price_list is not None
    item = e2e.bc_create(
        "items",
        {"displayName": f"Dup {uuid.uuid4().hex[:6]}", "baseUnitOfMeasureCode": "PCS", "unitPrice": 3},
    )
    coupling = e2e.wait_coupled(PRICE, "bc", item["id"])
    e2e.settle()
    existing = e2e.dv_get("productpricelevels", str(coupling.dv_id))
    assert existing is not None
    body = {
        "pricelevelid@odata.bind": f"/pricelevels({price_list.id})",
        "productid@odata.bind": f"/products({existing['_productid_value']})",
        "uomid@odata.bind": f"/uoms({existing['_uomid_value']})",
        "amount": 4,
    }
    refused = e2e.dv_http.post("productpricelevels", json=body)
    assert refused.status_code == 400, refused.text
    assert (
        refused.json()["error"]["message"]
        == "This product and unit combination has a price for this price list."
    )
    missing = e2e.dv_http.post("productpricelevels", json={k: v for k, v in body.items() if "uomid" not in k})
    assert missing.status_code == 400 and "unit id is missing" in missing.json()["error"]["message"]


def test_an_initial_sync_puts_every_item_price_in_the_price_list_in_batches(e2e: E2EStack) -> None:
    """A full resync of ITEM PRICE: Dataverse has no UpsertMultiple for price list items, so they go
    as one `$batch` per 1,000."""
    from shared.sync import bulk

    tag = uuid.uuid4().hex[:4].upper()
    count = 30
    e2e.bc.seed(
        "items",
        [
            {"number": f"P{tag}{n:03d}", "displayName": f"Priced {n}", "baseUnitOfMeasureCode": "PCS",
             "unitPrice": n + 1}
            for n in range(count)
        ],
    )  # fmt: skip
    bulk.run_full_resync(e2e.engine, "ITEM-PRODUCT")
    e2e.settle()
    before = e2e.service_requests()
    run = bulk.run_full_resync(e2e.engine, PRICE)
    e2e.settle()
    spent = diff(e2e.service_requests(), before)
    print(f"ITEM PRICE full resync of {count} new prices: {spent} {run.counts}")
    assert spent.get("DV POST $batch", 0) >= 1, spent
    assert not [k for k in spent if "Multiple" in k], spent
    for n in (0, count - 1):
        item = e2e.bc_find("items", f"number eq 'P{tag}{n:03d}'")[0]
        coupling = e2e.coupling(PRICE, "bc", item["id"])
        assert coupling is not None and coupling.dv_id, run.counts
        assert (e2e.dv_get("productpricelevels", str(coupling.dv_id)) or {})["amount"] == n + 1
