"""Conformance of the BC sandbox's records and writes with BC API v2.0 (docs/bc-sandbox.md#sources)."""

from __future__ import annotations

import base64
import re

import httpx
import pytest

from devstack.bc import SECOND_COMPANY_ID
from devstack.bc.seed_data import reference_id
from tests.integration.bc.conftest import Bc

pytestmark = pytest.mark.integration

CORRELATION_SUFFIX = re.compile(r"  CorrelationId:  [0-9a-f-]{36}\.$")
MS_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert CORRELATION_SUFFIX.search(error["message"]), error["message"]
    return str(error["message"])


def test_url_shapes_with_and_without_tenant(bc: Bc) -> None:
    for path in ("/v2.0/contoso/production/api/v2.0", "/v2.0/production/api/v2.0", "/api/v2.0"):
        response = bc.http.get(f"{bc.url}{path}/companies")
        assert response.status_code == 200
        ids = {c["id"] for c in response.json()["value"]}
        assert {bc.company, SECOND_COMPANY_ID} <= ids
    assert_error(bc.http.get(f"{bc.url}/v2.0/contoso/staging/api/v2.0/companies"), 404, "BadRequest_NotFound")


def test_requests_without_a_known_bearer_token_get_401(bc: Bc) -> None:
    anonymous = httpx.get(bc.entity_url("customers"))
    assert_error(anonymous, 401, "Authentication_InvalidCredentials")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(bc.entity_url("customers"), headers={"Authorization": "Bearer nobody"})
    assert wrong.status_code == 401


def test_post_answers_201_with_the_record_number_from_the_series_and_an_opaque_etag(bc: Bc) -> None:
    response = bc.http.post(bc.entity_url("customers"), json={"displayName": "Fourth Coffee", "city": "Oslo"})
    assert response.status_code == 201
    record = response.json()
    assert re.fullmatch(r"C\d{5}", record["number"])
    assert (
        record["displayName"] == "Fourth Coffee"
        and record["blocked"] == " "
        and record["currencyCode"] == "USD"
    )
    assert MS_TIMESTAMP.match(record["lastModifiedDateTime"])
    etag = record["@odata.etag"]
    assert etag.startswith('W/"') and not etag[3:-1].isdigit()
    assert base64.b64decode(etag[3:-1]).startswith(b"'")  # BC-shaped opaque token
    assert response.headers["etag"] == etag
    assert response.headers["location"].endswith(f"/customers({record['id']})")
    again = bc.http.post(bc.entity_url("customers"), json={"displayName": "Fifth Coffee"}).json()
    assert again["number"] != record["number"]


def test_patch_and_delete_require_if_match(bc: Bc) -> None:
    record = bc.http.post(bc.entity_url("customers"), json={"displayName": "Needs ETag"}).json()
    url = bc.entity_url("customers", record["id"])
    message = assert_error(bc.http.patch(url, json={"city": "Rome"}), 400, "BadRequest_InvalidToken")
    assert message.startswith("Could not validate the client concurrency token")
    assert_error(bc.http.delete(url), 400, "BadRequest_InvalidToken")
    assert bc.http.get(url).json()["city"] == ""


def test_patch_returns_the_full_record_and_a_stale_etag_gets_409(bc: Bc) -> None:
    record = bc.http.post(bc.entity_url("customers"), json={"displayName": "Versioned"}).json()
    url = bc.entity_url("customers", record["id"])
    first = bc.http.patch(url, json={"city": "Rome"}, headers={"If-Match": record["@odata.etag"]})
    assert first.status_code == 200
    updated = first.json()
    assert updated["city"] == "Rome" and updated["displayName"] == "Versioned" and "email" in updated
    assert updated["@odata.etag"] != record["@odata.etag"]
    assert updated["lastModifiedDateTime"] > record["lastModifiedDateTime"]
    stale = bc.http.patch(url, json={"city": "Paris"}, headers={"If-Match": record["@odata.etag"]})
    assert assert_error(stale, 409, "Request_EntityChanged").startswith(
        "Another user has already changed the record."
    )
    assert_error(
        bc.http.delete(url, headers={"If-Match": record["@odata.etag"]}), 409, "Request_EntityChanged"
    )
    star = bc.http.patch(url, json={"city": "Paris"}, headers={"If-Match": "*"})
    assert star.status_code == 200 and star.json()["city"] == "Paris"


def test_delete_answers_204_then_the_record_is_gone(bc: Bc) -> None:
    record = bc.http.post(bc.entity_url("customers"), json={"displayName": "Short-lived"}).json()
    url = bc.entity_url("customers", record["id"])
    assert bc.http.delete(url, headers={"If-Match": record["@odata.etag"]}).status_code == 204
    assert_error(bc.http.get(url), 404, "Internal_RecordNotFound")
    assert_error(bc.http.delete(url, headers={"If-Match": "*"}), 404, "Internal_RecordNotFound")


def test_unknown_references_are_rejected_with_bc_errors(bc: Bc) -> None:
    unknown = "11111111-2222-3333-4444-555555555555"
    url = bc.entity_url("customers")
    cases = [
        ({"paymentTermsId": unknown}, "paymentTermsId"),
        ({"shipmentMethodId": unknown}, "shipmentMethodId"),
        ({"currencyCode": "XYZ"}, "Currency"),
        ({"salespersonCode": "NOPE"}, "Salesperson"),
        ({"blocked": "Sometimes"}, "blocked"),
    ]
    for body, mention in cases:
        message = assert_error(
            bc.http.post(url, json={"displayName": "Bad", **body}), 400, "Application_DialogException"
        )
        assert mention in message
    count = len(bc.http.get(url).json()["value"])
    assert count == 2  # nothing was created by the refused requests


def test_known_references_are_accepted_and_codes_resolve_ids(bc: Bc) -> None:
    terms = reference_id(bc.company, "paymentTerms", "14 DAYS")
    body = {"displayName": "Refs", "paymentTermsId": terms, "currencyCode": "eur", "salespersonCode": "ps"}
    record = bc.http.post(bc.entity_url("customers"), json={**body, "blocked": "Ship"}).json()
    assert record["paymentTermsId"] == terms
    assert record["currencyCode"] == "EUR" and record["currencyId"] == reference_id(
        bc.company, "currencies", "EUR"
    )
    assert record["salespersonCode"] == "PS"  # Code fields are upper-cased, as in BC
    assert record["blocked"] == "Ship"


def test_field_level_validation_messages(bc: Bc) -> None:
    url = bc.entity_url("customers")
    too_long = bc.http.post(url, json={"displayName": "x" * 101})
    assert "must be less than or equal to 100" in assert_error(
        too_long, 400, "Application_StringExceededLength"
    )
    # BC's words and code for an unknown property in a body (as seen in a real BC answer).
    unknown = assert_error(bc.http.post(url, json={"nickname": "x"}), 400, "BadRequest")
    assert unknown.startswith(
        "The property 'nickname' does not exist on type 'Microsoft.NAV.customer'. "
        "Make sure to only use property names that are defined by the type."
    )
    assert_error(bc.http.post(url, json={"creditLimit": "lots"}), 400, "BadRequest")
    assert_error(bc.http.post(url, json={"balanceDue": 5}), 400, "BadRequest")
    duplicate = bc.http.post(url, json={"number": "C00010", "displayName": "Dup"})
    assert_error(duplicate, 400, "Internal_EntityWithSameKeyExists")


def test_every_entity_set_serves_id_timestamp_and_etag(bc: Bc) -> None:
    for entity_set in ("customers", "vendors", "contacts", "items", "currencies", "unitsOfMeasure",
                       "paymentTerms", "shipmentMethods", "salespeoplePurchasers", "salesQuotes",
                       "salesOrders", "salesInvoices"):  # fmt: skip
        response = bc.http.get(bc.entity_url(entity_set))
        assert response.status_code == 200, entity_set
        for row in response.json()["value"]:
            assert {"@odata.etag", "id", "lastModifiedDateTime"} <= row.keys()
    assert_error(bc.http.get(bc.entity_url("salespeople")), 404, "BadRequest_ResourceNotFound")


def test_changes_record_who_made_them(bc: Bc) -> None:
    record = bc.http.post(bc.entity_url("customers"), json={"displayName": "Audited"}).json()
    assert bc.sandbox.get("customers", record["id"])["_by"] == "INTEGRATION"
    sales = httpx.patch(
        bc.entity_url("customers", record["id"]),
        json={"city": "Bergen"},
        headers={"Authorization": "Bearer sales-user", "If-Match": record["@odata.etag"]},
    )
    assert sales.status_code == 200
    assert bc.sandbox.get("customers", record["id"])["_by"] == "SALES"


def test_timestamps_strictly_increase_per_record(bc: Bc) -> None:
    record = bc.http.post(bc.entity_url("customers"), json={"displayName": "Busy"}).json()
    stamps = [record["lastModifiedDateTime"]]
    for n in range(5):
        record = bc.sandbox.change("customers", record["id"], {"city": f"City {n}"})
        stamps.append(record["lastModifiedDateTime"])
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_sales_order_lines_update_the_header_and_validate_items(bc: Bc) -> None:
    customer = bc.http.get(bc.entity_url("customers"), params={"$filter": "number eq 'C00010'"}).json()[
        "value"
    ][0]
    order = bc.http.post(bc.entity_url("salesOrders"), json={"customerNumber": "c00010"})
    assert order.status_code == 201, order.text
    header = order.json()
    assert header["customerId"] == customer["id"] and header["customerName"] == "Adatum Corporation"
    assert header["paymentTermsId"] == customer["paymentTermsId"] and header["salesperson"] == "JO"
    lines_url = f"{bc.entity_url('salesOrders', header['id'])}/salesOrderLines"
    line = bc.http.post(lines_url, json={"lineObjectNumber": "I00010", "quantity": 2})
    assert line.status_code == 201, line.text
    assert line.json()["amountExcludingTax"] == 2001.6 and line.json()["sequence"] == 10000
    bad_item = bc.http.post(lines_url, json={"lineObjectNumber": "NOPE", "quantity": 1})
    assert_error(bad_item, 400, "Internal_RecordNotFound")
    after = bc.http.get(
        bc.entity_url("salesOrders", header["id"]), params={"$expand": "salesOrderLines"}
    ).json()
    assert after["totalAmountExcludingTax"] == 2001.6
    assert after["@odata.etag"] != header["@odata.etag"]
    assert [ln["lineObjectNumber"] for ln in after["salesOrderLines"]] == ["I00010"]
    refused = bc.http.delete(bc.entity_url("customers", customer["id"]), headers={"If-Match": "*"})
    assert "outstanding Sales Order" in assert_error(refused, 400, "Application_DialogException")


def test_sales_order_lines_need_a_document_id_or_an_id_as_in_bc(bc: Bc) -> None:
    orders = [
        bc.http.post(bc.entity_url("salesOrders"), json={"customerNumber": "C00010"}).json() for _ in "ab"
    ]
    for order in orders:
        url = f"{bc.entity_url('salesOrders', order['id'])}/salesOrderLines"
        assert bc.http.post(url, json={"lineObjectNumber": "I00010", "quantity": 1}).status_code == 201
    lines = bc.entity_url("salesOrderLines")
    # BC's page 30044 (OnFindRecord): no `id` and no `documentId` filter, no lines.
    for refused in (bc.http.get(lines), bc.http.get(lines, params={"$filter": "quantity gt 0"}),
                    bc.http.get(lines + "/$count")):  # fmt: skip
        message = assert_error(refused, 400, "Application_DialogException")
        assert message.startswith("You must specify an Id or a Document Id to get the lines.")
    first = orders[0]["id"]
    by_document = bc.http.get(lines, params={"$filter": f"documentId eq {first}"})
    assert by_document.status_code == 200, by_document.text
    [line] = by_document.json()["value"]
    assert line["documentId"] == first
    assert bc.http.get(lines, params={"$filter": f"id eq {line['id']}"}).json()["value"] == [line]
    assert bc.http.get(bc.entity_url("salesOrderLines", line["id"])).json()["id"] == line["id"]
    navigated = bc.http.get(f"{bc.entity_url('salesOrders', first)}/salesOrderLines").json()["value"]
    assert [n["id"] for n in navigated] == [line["id"]]


def test_customer_financial_detail_expands(bc: Bc) -> None:
    rows = bc.http.get(bc.entity_url("customers"), params={"$expand": "customerFinancialDetail"}).json()[
        "value"
    ]
    detail = rows[0]["customerFinancialDetail"]
    assert {"id", "number", "balance", "totalSalesExcludingTax", "overdueAmount"} <= detail.keys()
    assert detail["id"] == rows[0]["id"]
    assert_error(bc.http.get(bc.entity_url("customers"), params={"$expand": "orders"}), 400, "BadRequest")


def test_read_only_data_access_intent_refuses_writes(bc: Bc) -> None:
    response = bc.http.post(
        bc.entity_url("customers"), json={"displayName": "x"}, headers={"Data-Access-Intent": "ReadOnly"}
    )
    assert_error(response, 400, "BadRequest")
    assert (
        bc.http.get(bc.entity_url("customers"), headers={"Data-Access-Intent": "ReadOnly"}).status_code == 200
    )
