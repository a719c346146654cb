"""Rows of issue 16 checked against BC's API pages (microsoft/BCApps `src/Apps/W1/APIV2`) and docs:
`$metadata` from the sandbox's own entity definitions, `$expand=contactsInformation`, transactional
`$batch` answers, PATCH with read-only fields sent back, and the contact / item / item category fields.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from devstack.bc.entities import COMPUTED_SETS, ENTITY_SETS
from tests.integration.bc.conftest import Bc
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def _metadata(bc: Bc) -> ET.Element:
    response = bc.http.get(f"{bc.base}/$metadata")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.content)


def _entity_types(root: ET.Element) -> dict[str, ET.Element]:
    return {t.get("Name", ""): t for t in root.iter(f"{EDM}EntityType")}


def test_metadata_describes_every_set_as_the_data_shows_it(bc: Bc) -> None:
    types = _entity_types(_metadata(bc))
    company_navs = {n.get("Name") for n in types["company"].iter(f"{EDM}NavigationProperty")}
    assert company_navs == set(ENTITY_SETS) | set(COMPUTED_SETS)
    customer = bc.http.get(bc.entity_url("customers"), params={"$top": "1"}).json()["value"][0]
    declared = [p.get("Name") for p in types["customer"].iter(f"{EDM}Property")]
    assert declared == [k for k in customer if not k.startswith("@")]  # same names, same order
    key = types["customer"].find(f"{EDM}Key/{EDM}PropertyRef")
    assert key is not None and key.get("Name") == "id"
    props = {p.get("Name"): p for p in types["customer"].iter(f"{EDM}Property")}
    assert props["displayName"].get("MaxLength") == "100"
    assert props["creditLimit"].get("Type") == "Edm.Decimal"
    assert props["creditLimit"].get("Nullable") == "false"
    assert props["lastModifiedDateTime"].get("Type") == "Edm.DateTimeOffset"
    navs = {n.get("Name"): n.get("Type") for n in types["customer"].iter(f"{EDM}NavigationProperty")}
    assert navs == {
        "customerFinancialDetail": "Microsoft.NAV.customerFinancialDetail",
        "contactsInformation": "Collection(Microsoft.NAV.contactInformation)",
    }


def test_service_document_and_metadata_only_answer_get(bc: Bc) -> None:
    document = bc.http.get(f"{bc.base}/").json()
    assert document["@odata.context"] == f"{bc.base}/$metadata"
    assert document["value"] == [{"name": "companies", "kind": "EntitySet", "url": "companies"}]
    assert_error(bc.http.post(f"{bc.base}/$metadata", json={}), 405, "BadRequest_MethodNotAllowed")


def test_expand_contacts_information_on_customers_and_vendors(bc: Bc) -> None:
    response = bc.http.get(
        bc.entity_url("customers"), params={"$expand": "contactsInformation", "$filter": "number eq 'C00010'"}
    )
    assert response.status_code == 200, response.text
    (customer,) = response.json()["value"]
    rows = customer["contactsInformation"]
    assert [(r["contactType"], r["relatedId"], r["relatedType"]) for r in rows] == [
        ("Company", customer["id"], "Customer")
    ]
    same = bc.http.get(f"{bc.entity_url('customers', customer['id'])}/contactsInformation").json()["value"]
    assert rows == same
    one = bc.http.get(bc.entity_url("customers", customer["id"]), params={"$expand": "contactsInformation"})
    assert one.json()["contactsInformation"] == same
    vendor = bc.http.post(bc.entity_url("vendors"), json={"displayName": "Fabrikam"}).json()
    expanded = bc.http.get(bc.entity_url("vendors", vendor["id"]), params={"$expand": "contactsInformation"})
    assert [r["relatedType"] for r in expanded.json()["contactsInformation"]] == ["Vendor"]
    wrong = bc.http.get(bc.entity_url("items"), params={"$expand": "contactsInformation"})
    assert "Could not find a property named 'contactsInformation' on type 'Microsoft.NAV.item'" in wrong.text


def _batch(bc: Bc, requests: list[dict], atomic: bool) -> list[dict]:
    headers = {"Isolation": "snapshot"} if atomic else {}
    response = bc.http.post(f"{bc.base}/$batch", json={"requests": requests}, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["responses"])


def test_transactional_batch_keeps_the_answers_of_rolled_back_operations(bc: Bc) -> None:
    """Microsoft's example (use-odata-batch): the operations before the failure answer 200/201/204
    although everything is rolled back; only the failed one carries an error."""
    customer = bc.http.get(bc.entity_url("customers"), params={"$top": "1"}).json()["value"][0]
    url = f"companies({bc.company})"
    requests = [
        {"id": "1", "method": "POST", "url": f"{url}/customers", "body": {"displayName": "Rolled back"}},
        {
            "id": "2",
            "method": "PATCH",
            "url": f"{url}/customers({customer['id']})",
            "headers": {"If-Match": "*"},
            "body": {"displayName": "Renamed"},
        },
        {
            "id": "3",
            "method": "PATCH",
            "url": f"{url}/customers({customer['id']})",
            "headers": {"If-Match": "*"},
            "body": {"blocked": "Nope"},
        },
    ]
    responses = _batch(bc, requests, atomic=True)
    assert [r["status"] for r in responses] == [201, 200, 400]
    assert responses[2]["body"]["error"]["code"] == "Application_DialogException"
    names = {c["displayName"] for c in bc.http.get(bc.entity_url("customers")).json()["value"]}
    assert "Rolled back" not in names and "Renamed" not in names
    assert (
        bc.http.get(bc.entity_url("customers", customer["id"])).json()["displayName"]
        == customer["displayName"]
    )
    # Without Isolation each operation stands alone.
    responses = _batch(bc, requests, atomic=False)
    assert [r["status"] for r in responses] == [201, 200, 400]
    names = {c["displayName"] for c in bc.http.get(bc.entity_url("customers")).json()["value"]}
    assert {"Rolled back", "Renamed"} <= names


def test_patch_with_read_only_fields_sent_back_unchanged_is_accepted(bc: Bc) -> None:
    read = bc.http.get(bc.entity_url("customers"), params={"$top": "1"}).json()["value"][0]
    body = {**read, "creditLimit": 1234}  # the whole record as read, annotations included
    response = bc.http.patch(bc.entity_url("customers", read["id"]), json=body, headers={"If-Match": "*"})
    assert response.status_code == 200, response.text
    assert response.json()["creditLimit"] == 1234
    # The same instant written another way (offset instead of Z) is the same value.
    read = response.json()
    same_time = read["lastModifiedDateTime"].replace("Z", "+00:00")
    ok = bc.http.patch(
        bc.entity_url("customers", read["id"]),
        json={"lastModifiedDateTime": same_time, "balanceDue": read["balanceDue"], "id": read["id"].upper()},
        headers={"If-Match": "*"},
    )
    assert ok.status_code == 200, ok.text


def test_patch_of_a_changed_read_only_field_or_a_null_value(bc: Bc) -> None:
    read = bc.http.get(bc.entity_url("customers"), params={"$top": "1"}).json()["value"][0]
    url = bc.entity_url("customers", read["id"])
    message = assert_error(
        bc.http.patch(url, json={"balanceDue": 5}, headers={"If-Match": "*"}), 400, "BadRequest"
    )
    assert message.startswith("Control 'balanceDue' is read-only.")
    changed_time = bc.http.patch(
        url, json={"lastModifiedDateTime": "2001-01-01T00:00:00Z"}, headers={"If-Match": "*"}
    )
    assert "Control 'lastModifiedDateTime' is read-only." in changed_time.text
    # Text is nullable in $metadata: null stores empty text (also for a read-only text already empty).
    cleared = bc.http.patch(
        url, json={"website": None, "taxAreaDisplayName": None}, headers={"If-Match": "*"}
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["website"] == ""
    # Value types are Nullable="false": refused naming the type, never Python's None.
    message = assert_error(
        bc.http.patch(url, json={"balanceDue": None}, headers={"If-Match": "*"}), 400, "BadRequest"
    )
    assert "A null value was found for the property named 'balanceDue'" in message
    assert "Edm.Decimal[Nullable=False]" in message and "None" not in message
    wrong_type = bc.http.patch(url, json={"creditLimit": "lots"}, headers={"If-Match": "*"})
    assert "to the expected type 'Edm.Decimal' of the property 'creditLimit'" in wrong_type.text
    bad_time = bc.http.patch(url, json={"lastModifiedDateTime": 5}, headers={"If-Match": "*"})
    assert "Cannot convert the literal '5' to the expected type 'Edm.DateTimeOffset'" in bad_time.text


def test_contact_job_title_and_last_interaction_date(bc: Bc) -> None:
    created = bc.http.post(
        bc.entity_url("contacts"),
        json={"displayName": "Robert Townes", "type": "Person", "jobTitle": "Buyer"},
    )
    assert created.status_code == 201, created.text
    contact = created.json()
    assert contact["jobTitle"] == "Buyer" and contact["lastInteractionDate"] == "0001-01-01"
    too_long = bc.http.patch(
        bc.entity_url("contacts", contact["id"]), json={"jobTitle": "x" * 31}, headers={"If-Match": "*"}
    )
    assert_error(too_long, 400, "Application_StringExceededLength")
    refused = bc.http.patch(
        bc.entity_url("contacts", contact["id"]),
        json={"lastInteractionDate": "2026-01-01"},
        headers={"If-Match": "*"},
    )
    assert "Control 'lastInteractionDate' is read-only." in refused.text


def test_item_tax_and_posting_group_fields(bc: Bc) -> None:
    item = bc.http.get(bc.entity_url("items"), params={"$top": "1"}).json()["value"][0]
    for name in (
        "taxGroupId",
        "taxGroupCode",
        "generalProductPostingGroupId",
        "generalProductPostingGroupCode",
        "inventoryPostingGroupId",
        "inventoryPostingGroupCode",
    ):
        assert name in item
    patched = bc.http.patch(
        bc.entity_url("items", item["id"]),
        json={"generalProductPostingGroupCode": "retail", "inventoryPostingGroupCode": "resale"},
        headers={"If-Match": "*"},
    )
    assert patched.status_code == 200, patched.text
    assert (
        patched.json()["generalProductPostingGroupCode"],
        patched.json()["inventoryPostingGroupCode"],
    ) == (
        "RETAIL",
        "RESALE",
    )


def test_item_categories_are_a_set_listed_as_webhook_supported(bc: Bc) -> None:
    created = bc.http.post(
        bc.entity_url("itemCategories"), json={"code": "chair", "displayName": "Office Chair"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["code"] == "CHAIR"
    runtime = f"{bc.url}/v2.0/contoso/production/api/microsoft/runtime/v1.0"
    listed = bc.http.get(f"{runtime}/companies({bc.company})/webhookSupportedResources").json()["value"]
    assert {"resource": "v2.0/itemCategories"} in listed
    assert {"resource": "v2.0/contacts"} not in listed
