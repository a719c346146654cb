"""Conformance of queries, paging and `$batch` with BC's documentation (docs/bc-sandbox.md#sources)."""

from __future__ import annotations

import pytest

from tests.integration.bc.conftest import Bc
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration


def values(bc: Bc, entity_set: str = "customers", **params: str) -> list[dict]:
    response = bc.http.get(bc.entity_url(entity_set), params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["value"])


def test_select_filter_orderby_top_skip(bc: Bc) -> None:
    bc.sandbox.seed("customers", [{"displayName": "O'Brien Ltd", "city": "Dublin", "creditLimit": 500},
                                  {"displayName": "Zeta", "city": "Dublin", "creditLimit": 1500},
                                  {"displayName": "Alpha", "city": "Cork", "creditLimit": 2500}])  # fmt: skip
    rows = values(bc, **{"$select": "number,displayName", "$filter": "displayName eq 'O''Brien Ltd'"})
    assert [r["displayName"] for r in rows] == ["O'Brien Ltd"]
    assert set(rows[0]) == {"@odata.etag", "number", "displayName"}
    dublin = values(bc, **{"$filter": "city eq 'Dublin' and creditLimit gt 1000"})
    assert [r["displayName"] for r in dublin] == ["Zeta"]
    either = values(bc, **{"$filter": "(city eq 'Cork' or city eq 'Dublin') and not (creditLimit ge 1000)"})
    assert sorted(r["displayName"] for r in either) == ["O'Brien Ltd"]
    ordered = values(
        bc, **{"$orderby": "creditLimit desc", "$top": "2", "$skip": "1", "$filter": "creditLimit gt 0"}
    )
    assert [r["displayName"] for r in ordered] == ["Zeta", "O'Brien Ltd"]
    one = values(bc)[0]
    assert [r["id"] for r in values(bc, **{"$filter": f"id eq {one['id']}"})] == [one["id"]]


def test_filter_on_last_modified_date_time(bc: Bc) -> None:
    before = values(bc)
    cutoff = max(r["lastModifiedDateTime"] for r in before)
    changed = bc.sandbox.change("customers", before[0]["id"], {"city": "Later"})
    rows = values(bc, **{"$filter": f"lastModifiedDateTime gt {cutoff}"})
    assert [r["id"] for r in rows] == [changed["id"]]
    assert values(bc, **{"$filter": "lastModifiedDateTime gt 2000-01-01T00:00:00Z"})


def test_bad_query_options_get_400(bc: Bc) -> None:
    for params in ({"$filter": "nosuchfield eq 1"}, {"$filter": "city eq"}, {"$select": "bogus"},
                   {"$orderby": "city sideways"}, {"$top": "-1"}, {"$apply": "x"}):  # fmt: skip
        response = bc.http.get(bc.entity_url("customers"), params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"].startswith("BadRequest")


def test_unknown_property_in_a_query_reads_as_in_bc(bc: Bc) -> None:
    # BC's wording names the entity type, e.g. "... on type 'Microsoft.NAV.customer'."
    cases = [
        ({"$filter": "nosuchfield eq 1"}, "nosuchfield"),
        ({"$select": "id,bogus"}, "bogus"),
        ({"$orderby": "nickname desc"}, "nickname"),
        ({"$expand": "lines"}, "lines"),
    ]
    for params, name in cases:
        message = assert_error(bc.http.get(bc.entity_url("customers"), params=params), 400, "BadRequest")
        assert message.startswith(
            f"Could not find a property named '{name}' on type 'Microsoft.NAV.customer'.  CorrelationId:  "
        ), message
    lines = bc.http.get(bc.entity_url("salesOrders"), params={"$select": "bogus"})
    assert "on type 'Microsoft.NAV.salesOrder'." in assert_error(lines, 400, "BadRequest")


def test_or_across_different_fields_is_refused_as_bc_refuses_it(bc: Bc) -> None:
    # BC's OData known limitations: an `or` between conditions on two fields has no AL filter.
    for text in ("city eq 'Cork' or creditLimit gt 0",
                 "city eq 'Cork' or (city eq 'Dublin' and creditLimit gt 0)",
                 "(displayName eq 'A' or number eq 'C00010') and city eq 'Cork'",
                 "contains(displayName,'a') or contains(number,'a')"):  # fmt: skip
        refused = bc.http.get(bc.entity_url("customers"), params={"$filter": text})
        message = assert_error(refused, 501, "BadRequest_MethodNotImplemented")
        assert message.startswith("The 'OR' operator is not supported on distinct fields on an OData filter.")
    # An `or` on one field (the service's `any_eq`) is fine, also inside an `and` with other fields.
    for text in ("number eq 'C00010' or number eq 'C00020'",
                 "(number eq 'C00010' or number eq 'C00020') and city ne 'Nowhere'",
                 "lastModifiedDateTime gt 2000-01-01T00:00:00Z or lastModifiedDateTime eq null"):  # fmt: skip
        assert bc.http.get(bc.entity_url("customers"), params={"$filter": text}).status_code == 200, text


def test_count_segment_and_count_option(bc: Bc) -> None:
    bc.sandbox.seed("customers", [{"displayName": f"Count {n}", "city": "Countville"} for n in range(7)])
    total = len(values(bc))
    plain = bc.http.get(bc.entity_url("customers") + "/$count")
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"].startswith("text/plain") and plain.text == str(total)
    filtered = bc.http.get(bc.entity_url("customers") + "/$count", params={"$filter": "city eq 'Countville'"})
    assert filtered.text == "7"
    # `@odata.count` counts what the filter matches, not the page `$top` cuts.
    page = bc.http.get(
        bc.entity_url("customers"), params={"$count": "true", "$top": "2", "$filter": "city eq 'Countville'"}
    ).json()
    assert page["@odata.count"] == 7 and len(page["value"]) == 2
    assert "@odata.count" not in bc.http.get(bc.entity_url("customers"), params={"$count": "false"}).json()
    assert_error(bc.http.get(bc.entity_url("customers"), params={"$count": "yes"}), 400, "BadRequest")
    assert bc.http.post(bc.entity_url("customers") + "/$count", json={}).status_code == 405


def test_companies_answer_filter_select_and_top(bc: Bc) -> None:
    url = f"{bc.base}/companies"
    everything = bc.http.get(url).json()["value"]
    assert all(c["name"] != c["displayName"] for c in everything)  # separate fields in BC
    usa = next(c for c in everything if c["id"] == bc.company)
    by_name = bc.http.get(url, params={"$filter": f"name eq '{usa['name']}'", "$select": "id,name"})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["value"] == [{"id": bc.company, "name": usa["name"]}]
    # The display name is not the name: a lookup by name with it finds nothing.
    assert bc.http.get(url, params={"$filter": f"name eq '{usa['displayName']}'"}).json()["value"] == []
    first = bc.http.get(url, params={"$top": "1", "$orderby": "name desc"}).json()["value"]
    assert [c["name"] for c in first] == [max(c["name"] for c in everything)]
    one = bc.http.get(f"{url}({bc.company})", params={"$select": "displayName"}).json()
    assert {k: v for k, v in one.items() if not k.startswith("@")} == {"displayName": usa["displayName"]}
    bogus = bc.http.get(url, params={"$select": "bogus"})
    assert "on type 'Microsoft.NAV.company'." in assert_error(bogus, 400, "BadRequest")


def test_server_driven_paging_with_next_link_and_maxpagesize(bc: Bc) -> None:
    bc.sandbox.seed_customers(25)
    url: str | None = bc.entity_url("customers") + "?$select=id,number&$orderby=displayName"
    headers = {"Prefer": "odata.maxpagesize=10"}
    seen: list[str] = []
    pages = 0
    while url:
        response = bc.http.get(url, headers=headers)
        assert response.status_code == 200
        assert response.headers["preference-applied"] == "odata.maxpagesize=10"
        body = response.json()
        assert len(body["value"]) <= 10
        seen += [r["id"] for r in body["value"]]
        url = body.get("@odata.nextLink")
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == 27


def test_paging_neither_skips_nor_repeats_a_record_modified_meanwhile(bc: Bc) -> None:
    ids = bc.sandbox.seed_customers(30)
    url = bc.entity_url("customers") + "?$orderby=lastModifiedDateTime,number"
    first = bc.http.get(url, headers={"Prefer": "odata.maxpagesize=10"}).json()
    bc.sandbox.change("customers", first["value"][0]["id"], {"city": "Moved"})  # re-sorts to the end
    rest = bc.http.get(first["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=100"}).json()
    seen = [r["id"] for r in first["value"] + rest["value"]]
    assert set(ids) <= set(seen)
    assert seen.count(first["value"][0]["id"]) == 2  # seen again after its change, nothing skipped


def test_top_limits_the_total_across_pages(bc: Bc) -> None:
    bc.sandbox.seed_customers(30)
    first = bc.http.get(
        bc.entity_url("customers") + "?$top=15", headers={"Prefer": "odata.maxpagesize=10"}
    ).json()
    second = bc.http.get(first["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=10"}).json()
    assert len(first["value"]) == 10 and len(second["value"]) == 5 and "@odata.nextLink" not in second


def test_page_size_above_20000_is_413(bc: Bc) -> None:
    response = bc.http.get(bc.entity_url("customers"), headers={"Prefer": "odata.maxpagesize=20001"})
    assert response.status_code == 413


def _batch(bc: Bc, requests: list[dict], atomic: bool = False) -> list[dict]:
    headers = {"Isolation": "snapshot"} if atomic else {}
    response = bc.http.post(f"{bc.base}/$batch", json={"requests": requests}, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["responses"])


def test_batch_runs_each_operation_and_answers_per_operation(bc: Bc) -> None:
    rel = f"companies({bc.company})/customers"
    existing = values(bc)[0]
    responses = _batch(
        bc,
        [
            {"id": "a", "method": "POST", "url": rel, "headers": {"Content-Type": "application/json"},
             "body": {"displayName": "Batch One"}},
            {"id": "b", "method": "PATCH", "url": f"{rel}({existing['id']})", "body": {"city": "Nowhere"}},
            {"id": "c", "method": "GET", "url": f"{bc.base}/{rel}({existing['id']})"},
        ],
    )  # fmt: skip
    assert [(r["id"], r["status"]) for r in responses] == [("a", 201), ("b", 400), ("c", 200)]
    assert responses[0]["body"]["displayName"] == "Batch One"
    assert responses[1]["body"]["error"]["code"] == "BadRequest_InvalidToken"
    assert responses[2]["body"]["id"] == existing["id"]
    assert any(r["displayName"] == "Batch One" for r in values(bc))  # the non-atomic batch kept op a


def test_atomic_batch_rolls_everything_back_on_a_failure(bc: Bc) -> None:
    rel = f"companies({bc.company})/customers"
    existing = values(bc)[0]
    before = {r["id"]: r["@odata.etag"] for r in values(bc)}
    responses = _batch(
        bc,
        [
            {"id": "1", "method": "POST", "url": rel, "body": {"displayName": "Rolled back"}},
            {"id": "2", "method": "PATCH", "url": f"{rel}({existing['id']})", "headers": {"If-Match": "*"},
             "body": {"city": "Changed"}},
            {"id": "3", "method": "PATCH", "url": f"{rel}({existing['id']})",
             "headers": {"If-Match": existing["@odata.etag"]}, "body": {"city": "Stale"}},
        ],
        atomic=True,
    )  # fmt: skip
    statuses = {r["id"]: r["status"] for r in responses}
    # As Microsoft's example shows: the operations before the failure keep their success answers,
    # although nothing of the batch was applied.
    assert (statuses["1"], statuses["2"], statuses["3"]) == (201, 200, 409)
    assert {r["id"]: r["@odata.etag"] for r in values(bc)} == before
    ok = _batch(bc, [{"id": "1", "method": "POST", "url": rel, "body": {"displayName": "Kept"}}], atomic=True)
    assert ok[0]["status"] == 201 and any(r["displayName"] == "Kept" for r in values(bc))


def test_batch_over_100_operations_is_refused(bc: Bc) -> None:
    rel = f"companies({bc.company})/customers"
    requests = [{"id": str(n), "method": "GET", "url": rel} for n in range(101)]
    response = bc.http.post(f"{bc.base}/$batch", json={"requests": requests})
    message = assert_error(response, 400, "BadRequest")
    assert message.startswith(
        "The current batch message contains too many parts. A maximum number of '100' query operations"
    )
    assert "batches of at most 100" in message
    assert len(_batch(bc, requests[:100])) == 100
