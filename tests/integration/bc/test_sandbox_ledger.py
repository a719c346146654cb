"""Stock in the BC sandbox: item ledger entries (read-only, entry numbers that only grow) and the
item's `inventory` FlowField, which posting moves without touching the item record."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.bc.conftest import Bc, Receiver, wait_for
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration


def _post(bc: Bc, *entries: dict) -> httpx.Response:
    return bc.http.post(f"{bc.url}/_sandbox/itemLedgerEntries/post", json={"entries": list(entries)})


def _item(bc: Bc, number: str) -> dict:
    rows = bc.http.get(bc.entity_url("items"), params={"$filter": f"number eq '{number}'"}).json()["value"]
    return dict(rows[0])


def test_posting_moves_inventory_but_not_the_item_and_numbers_only_grow(bc: Bc) -> None:
    before = _item(bc, "I00010")
    assert before["inventory"] == 0
    first = _post(bc, {"itemNumber": "I00010", "quantity": 10, "entryType": "Purchase"})
    second = _post(
        bc,
        {"itemNumber": "I00010", "quantity": -3, "entryType": "Sale"},
        {"itemNumber": "I00020", "quantity": 7},
    )
    assert first.status_code == second.status_code == 201
    numbers = first.json()["entryNumbers"] + second.json()["entryNumbers"]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3

    after = _item(bc, "I00010")
    assert after["inventory"] == 7
    assert (after["lastModifiedDateTime"], after["@odata.etag"]) == (
        before["lastModifiedDateTime"],
        before["@odata.etag"],
    )
    assert _item(bc, "I00020")["inventory"] == 7
    # A stale-looking ETag is still current: posting did not modify the item.
    patched = bc.http.patch(
        bc.entity_url("items", after["id"]),
        json={"unitPrice": 9},
        headers={"If-Match": before["@odata.etag"]},
    )
    assert patched.status_code == 200, patched.text

    page = bc.http.get(
        bc.entity_url("itemLedgerEntries"),
        params={
            "$filter": f"entryNumber gt {numbers[0]}",
            "$orderby": "entryNumber",
            "$select": "entryNumber,itemNumber,quantity,entryType",
        },
    ).json()["value"]
    assert [(e["entryNumber"], e["itemNumber"], e["quantity"], e["entryType"]) for e in page] == [
        (numbers[1], "I00010", -3, "Sale"),
        (numbers[2], "I00020", 7, "Positive Adjmt."),
    ]


def test_item_ledger_entries_are_read_only_and_cannot_be_subscribed(bc: Bc, receiver: Receiver) -> None:
    _post(bc, {"itemNumber": "I00010", "quantity": 1})
    entry = bc.http.get(bc.entity_url("itemLedgerEntries")).json()["value"][0]
    assert set(entry) >= {
        "id",
        "entryNumber",
        "itemNumber",
        "postingDate",
        "entryType",
        "documentNumber",
        "quantity",
        "costAmountActual",
        "lastModifiedDateTime",
    }
    assert_error(
        bc.http.post(bc.entity_url("itemLedgerEntries"), json={"itemNumber": "I00010", "quantity": 1}),
        405,
        "BadRequest_MethodNotAllowed",
    )
    etag = {"If-Match": "*"}
    assert_error(
        bc.http.patch(bc.entity_url("itemLedgerEntries", entry["id"]), json={"quantity": 5}, headers=etag),
        405,
        "BadRequest_MethodNotAllowed",
    )
    assert_error(
        bc.http.delete(bc.entity_url("itemLedgerEntries", entry["id"]), headers=etag),
        405,
        "BadRequest_MethodNotAllowed",
    )
    item = _item(bc, "I00010")
    refused = bc.http.patch(bc.entity_url("items", item["id"]), json={"inventory": 99}, headers=etag)
    assert refused.status_code == 400 and "read-only" in refused.text
    subscribe = bc.http.post(
        f"{bc.base}/subscriptions",
        json={
            "notificationUrl": receiver.url,
            "resource": f"/api/v2.0/companies({bc.company})/itemLedgerEntries",
            "clientState": "ledger-client-state-0001",
        },
    )
    assert subscribe.status_code == 400


def test_posting_notifies_nothing_about_the_item(bc: Bc, receiver: Receiver) -> None:
    resource = f"/api/v2.0/companies({bc.company})/items"
    created = bc.http.post(
        f"{bc.base}/subscriptions",
        json={
            "notificationUrl": receiver.url,
            "resource": resource,
            "clientState": "ledger-client-state-0002",
        },
    )
    assert created.status_code == 201, created.text
    item = _item(bc, "I00020")
    bc.http.patch(bc.entity_url("items", item["id"]), json={"unitPrice": 200}, headers={"If-Match": "*"})
    bc.sandbox.flush_webhooks()
    assert wait_for(lambda: len(receiver.entries()) == 1)
    _post(bc, {"itemNumber": "I00020", "quantity": 12})
    bc.sandbox.flush_webhooks()
    assert len(receiver.entries()) == 1  # the price change only


def test_bad_postings_are_refused_whole(bc: Bc) -> None:
    refused = _post(bc, {"itemNumber": "I00010", "quantity": 5}, {"itemNumber": "NOPE", "quantity": 1})
    assert refused.status_code == 400 and "NOPE" in refused.text
    wrong_sign = _post(bc, {"itemNumber": "I00010", "quantity": 5, "entryType": "Sale"})
    assert wrong_sign.status_code == 400 and "negative" in wrong_sign.text
    assert _item(bc, "I00010")["inventory"] == 0
    assert bc.http.get(bc.entity_url("itemLedgerEntries")).json()["value"] == []
    assert _post(bc, {"itemNumber": "I00010", "quantity": 1}).json()["entryNumbers"] == [1]


def test_an_item_with_ledger_entries_cannot_be_deleted(bc: Bc) -> None:
    _post(bc, {"itemNumber": "I00010", "quantity": 2})
    item = _item(bc, "I00010")
    message = assert_error(
        bc.http.delete(bc.entity_url("items", item["id"]), headers={"If-Match": "*"}),
        400,
        "Application_DialogException",
    )
    assert "has ledger entries" in message
    other = _item(bc, "I00020")
    assert bc.http.delete(bc.entity_url("items", other["id"]), headers={"If-Match": "*"}).status_code == 204
