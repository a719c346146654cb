"""Queries, paging and change tracking (docs/dataverse-sandbox.md#sources) through the wire and the client."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from shared import odata
from shared.connectors.dataverse import DataverseClient

pytestmark = pytest.mark.integration


def seed_accounts(sandbox: DataverseSandbox, count: int) -> list[str]:
    return sandbox.seed(
        "accounts",
        [
            {"name": f"Account {i:04d}", "accountnumber": f"A{i:04d}", "numberofemployees": i}
            for i in range(count)
        ],
    )


def test_paging_follows_next_links_without_gaps(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    ids = seed_accounts(sandbox, 23)
    pages = list(client.query_pages("accounts", select=["name"], page_size=5))
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    seen = [r["accountid"] for p in pages for r in p]
    assert sorted(seen) == sorted(ids)
    assert client.stats.requests["GET accounts"] == 5


def test_next_link_and_preference_applied_on_the_wire(
    http: httpx.Client, sandbox: DataverseSandbox, base_url: str
) -> None:
    seed_accounts(sandbox, 3)
    response = http.get(
        "accounts?$select=name&$filter=numberofemployees ge 0", headers={"Prefer": "odata.maxpagesize=2"}
    )
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=2"
    body = response.json()
    assert len(body["value"]) == 2
    assert body["@odata.nextLink"].startswith(base_url + "accounts?")
    assert "%3Ccookie" in body["@odata.nextLink"]
    assert "$filter=" in body["@odata.nextLink"]
    rest = http.get(body["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=2"}).json()
    assert len(rest["value"]) == 1
    assert "@odata.nextLink" not in rest
    assert set(rest["value"][0]) == {"@odata.etag", "name", "accountid"}


def test_filter_orderby_and_top(
    client: DataverseClient, sandbox: DataverseSandbox, http: httpx.Client
) -> None:
    seed_accounts(sandbox, 12)
    text = odata.and_(odata.ge("numberofemployees", 3), odata.lt("numberofemployees", 9))
    rows = list(
        client.query(
            "accounts",
            select=["numberofemployees"],
            filter=text,
            orderby=["numberofemployees desc"],
            page_size=4,
        )
    )
    assert [r["numberofemployees"] for r in rows] == [8, 7, 6, 5, 4, 3]
    top = http.get("accounts?$select=name&$orderby=name desc&$top=2").json()
    assert [r["name"] for r in top["value"]] == ["Account 0011", "Account 0010"]
    assert "@odata.nextLink" not in top
    named = list(client.query("accounts", select=["name"], filter=odata.eq("accountnumber", "a0007")))
    assert [r["name"] for r in named] == ["Account 0007"]
    within = list(
        client.query(
            "accounts", select=["name"], filter=odata.dataverse_in("accountnumber", ["A0001", "A0002"])
        )
    )
    assert len(within) == 2
    assert http.get("accounts/$count?$filter=numberofemployees lt 5").text == "5"


def test_change_tracking_reports_updates_then_deletes(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    ids = seed_accounts(sandbox, 7)
    first = client.changes("accounts", select=["name"], delta_link=None)
    assert first.full_scan
    assert sorted(r["accountid"] for r in first.upserted) == sorted(ids)
    row = client.get("accounts", ids[0])
    assert row is not None
    client.update("accounts", ids[0], {"name": "Renamed"}, etag=row["@odata.etag"])
    client.delete("accounts", ids[1])
    fleeting = client.create("accounts", {"name": "Fleeting"})
    client.delete("accounts", fleeting["accountid"])
    created = client.create("accounts", {"name": "New"})
    delta = client.changes("accounts", select=["name"], delta_link=first.delta_link)
    assert not delta.full_scan
    assert [r["name"] for r in delta.upserted] == ["Renamed", "New"]
    assert set(delta.upserted[1]) == {"@odata.etag", "name", "accountid"}
    assert delta.deleted == [ids[1], fleeting["accountid"]]  # created-then-deleted still shows as deleted
    assert created["accountid"] in {r["accountid"] for r in delta.upserted}
    quiet = client.changes("accounts", select=["name"], delta_link=delta.delta_link)
    assert quiet.upserted == [] and quiet.deleted == []


def test_initial_change_tracking_pages_and_delta_pages(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    seed_accounts(sandbox, 5)
    headers = {"Prefer": "odata.track-changes,odata.maxpagesize=2"}
    pages, url = [], "accounts?$select=name"
    while True:
        body = http.get(url, headers=headers).json()
        pages.append(body["value"])
        if "@odata.nextLink" not in body:
            break
        url = body["@odata.nextLink"]
    assert [len(p) for p in pages] == [2, 2, 1]
    delta_link = body["@odata.deltaLink"]
    assert "$deltatoken=" in delta_link
    for row in sandbox.rows("accounts")[:3]:
        sandbox.store.update(
            "accounts", row["accountid"], {"telephone1": "1"}, sandbox.caller(sandbox.users["sales-user"])
        )
    delta = http.get(delta_link, headers=headers).json()
    assert delta["@odata.context"].endswith("$metadata#accounts(name)/$delta")
    assert len(delta["value"]) == 2 and "@odata.nextLink" in delta
    tail = http.get(delta["@odata.nextLink"], headers=headers).json()
    assert len(tail["value"]) == 1 and "@odata.deltaLink" in tail


def test_track_changes_rejects_filter(http: httpx.Client) -> None:
    response = http.get(
        "accounts?$select=name&$filter=name eq 'x'", headers={"Prefer": "odata.track-changes"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        'The "$filter" query parameter isn\'t supported when Change Tracking is enabled.'
    )


def test_expired_delta_token_falls_back_to_a_full_scan(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    seed_accounts(sandbox, 3)
    first = client.changes("accounts", select=["name"], delta_link=None)
    sandbox.advance_clock(8 * 24 * 3600)  # ExpireChangeTrackingInDays is 7
    again = client.changes("accounts", select=["name"], delta_link=first.delta_link)
    assert again.full_scan
    assert len(again.upserted) == 3


def test_client_refuses_foreign_links(client: DataverseClient) -> None:
    with pytest.raises(ValueError, match="refusing"):
        client.changes(
            "accounts",
            select=["name"],
            delta_link=f"http://evil.example/api/data/v9.2/accounts?$deltatoken={uuid.uuid4()}",
        )
