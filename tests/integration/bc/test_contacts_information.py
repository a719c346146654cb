"""Company contacts, contact business relations and `contactsInformation` (API v2.0, BC 18.0+).

In BC a customer (vendor) has a company contact of its own, numbered from the contact series, linked
to it by a contact business relation; a person contact's `companyNumber` is that company contact's
number, never the customer's. `contactsInformation` is the read-only view of the relation.
"""

from __future__ import annotations

import re
import uuid

import pytest

from devstack.bc.errors import BcError
from tests.integration.bc.conftest import Bc, Receiver
from tests.integration.bc.test_sandbox_records import assert_error
from tests.integration.bc.test_sandbox_webhooks import subscribe

pytestmark = pytest.mark.integration

# dynamics_contactinformation.md: every row has exactly these properties (and no @odata.etag).
INFO_KEYS = {"contactId", "contactNumber", "contactName", "contactType", "relatedId", "relatedType"}


def info_url(bc: Bc, parent_set: str | None = None, parent_id: str | None = None) -> str:
    if parent_set is None:
        return bc.entity_url("contactsInformation")
    return f"{bc.entity_url(parent_set, parent_id)}/contactsInformation"


def get_values(bc: Bc, url: str, **params: str) -> list[dict]:
    response = bc.http.get(url, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["value"])


def post(bc: Bc, entity_set: str, body: dict) -> dict:
    response = bc.http.post(bc.entity_url(entity_set), json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_posting_a_customer_creates_its_company_contact(bc: Bc) -> None:
    seq = max((c["seq"] for c in bc.http.get(f"{bc.url}/_sandbox/changes").json()["changes"]), default=0)
    cutoff = max(r["lastModifiedDateTime"] for r in get_values(bc, bc.entity_url("contacts")))
    customer = post(
        bc,
        "customers",
        {"displayName": "Fourth Coffee", "addressLine1": "1 Pier Road", "city": "Oslo", "country": "no",
         "phoneNumber": "+47 555 0100", "email": "info@fourthcoffee.example"},
    )  # fmt: skip
    stored = bc.sandbox.company_contact(customer["id"])
    contact = bc.http.get(bc.entity_url("contacts", stored["id"])).json()
    assert re.fullmatch(r"CT\d{5}", contact["number"]) and contact["number"] != customer["number"]
    assert contact["type"] == "Company" and contact["contactBusinessRelation"] == "Customer"
    assert (contact["displayName"], contact["addressLine1"], contact["city"], contact["country"]) == (
        "Fourth Coffee", "1 Pier Road", "Oslo", "NO"
    )  # fmt: skip
    assert (contact["phoneNumber"], contact["email"]) == ("+47 555 0100", "info@fourthcoffee.example")
    # A company contact is its own company, as BC's TypeChange sets "Company No." := "No.".
    assert (contact["companyNumber"], contact["companyName"]) == (contact["number"], "Fourth Coffee")
    assert not [key for key in contact if key.startswith("_")]  # the relation is never on the wire
    assert stored["_relatedType"] == "Customer" and stored["_relatedId"] == customer["id"]
    # Logged like any write (a delta poll of contacts finds it), by the user who created the customer.
    changes = bc.http.get(f"{bc.url}/_sandbox/changes", params={"since": seq}).json()["changes"]
    assert [(c["entitySet"], c["changeType"], c["user"]) for c in changes] == [
        ("customers", "created", "INTEGRATION"),
        ("contacts", "created", "INTEGRATION"),
    ]
    polled = get_values(bc, bc.entity_url("contacts"), **{"$filter": f"lastModifiedDateTime gt {cutoff}"})
    assert [r["id"] for r in polled] == [stored["id"]]


def test_vendors_and_the_sample_customers_have_company_contacts(bc: Bc) -> None:
    vendor = post(bc, "vendors", {"displayName": "Fabrikam Supplies", "city": "Berlin"})
    contact = bc.sandbox.company_contact(vendor["id"])
    assert (contact["type"], contact["contactBusinessRelation"], contact["displayName"]) == (
        "Company", "Vendor", "Fabrikam Supplies"
    )  # fmt: skip
    rows = get_values(bc, info_url(bc, "vendors", vendor["id"]))
    assert rows == [
        {"contactId": contact["id"], "contactNumber": contact["number"], "contactName": "Fabrikam Supplies",
         "contactType": "Company", "relatedId": vendor["id"], "relatedType": "Vendor"}
    ]  # fmt: skip
    for number, name in (("C00010", "Adatum Corporation"), ("C00020", "Trey Research")):
        customer = get_values(bc, bc.entity_url("customers"), **{"$filter": f"number eq '{number}'"})[0]
        assert bc.sandbox.company_contact(customer["id"])["displayName"] == name


def test_company_contact_creation_sends_no_contact_notification(bc: Bc, receiver: Receiver) -> None:
    sub = subscribe(bc, receiver, "customers")
    customer = post(bc, "customers", {"displayName": "Notified Once"})
    bc.sandbox.flush_webhooks()
    entries = receiver.entries()
    assert [(e["subscriptionId"], e["changeType"]) for e in entries] == [(sub["subscriptionId"], "created")]
    assert entries[0]["resource"].endswith(f"/customers({customer['id']})")
    body = {
        "notificationUrl": receiver.url,
        "resource": f"/api/v2.0/companies({bc.company})/contactsInformation",
    }
    refused = bc.http.post(f"{bc.base}/subscriptions", json=body)
    assert_error(refused, 400, "BadRequest_ResourceNotSupported")


def test_customer_navigation_lists_the_company_contact_and_its_persons(bc: Bc) -> None:
    customer = post(bc, "customers", {"displayName": "Adventure Works"})
    company = bc.sandbox.company_contact(customer["id"])
    person = post(
        bc, "contacts", {"type": "Person", "displayName": "Robert Townes", "companyNumber": company["number"]}
    )
    # The person shows its company's name and business relation (read-only fields).
    assert (person["companyNumber"], person["companyName"], person["contactBusinessRelation"]) == (
        company["number"], "Adventure Works", "Customer"
    )  # fmt: skip
    response = bc.http.get(info_url(bc, "customers", customer["id"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith(
        f"/$metadata#companies({bc.company})/customers({customer['id']})/contactsInformation"
    )
    assert "@odata.nextLink" not in body
    assert all(set(row) == INFO_KEYS for row in body["value"])
    by_type = {row["contactType"]: row for row in body["value"]}
    assert len(body["value"]) == 2
    assert by_type["Company"] == {
        "contactId": company["id"], "contactNumber": company["number"], "contactName": "Adventure Works",
        "contactType": "Company", "relatedId": customer["id"], "relatedType": "Customer",
    }  # fmt: skip
    assert by_type["Person"] == {
        "contactId": person["id"], "contactNumber": person["number"], "contactName": "Robert Townes",
        "contactType": "Person", "relatedId": customer["id"], "relatedType": "Customer",
    }  # fmt: skip
    # The documented company-level form selects the same rows.
    documented = get_values(
        bc, info_url(bc), **{"$filter": f"relatedId eq {customer['id']} and relatedType eq 'Customer'"}
    )
    assert sorted(r["contactId"] for r in documented) == sorted([company["id"], person["id"]])
    # Without the related record's filters BC loads nothing: not even a row by its key.
    assert_error(bc.http.get(f"{info_url(bc)}({person['id']})"), 400, "Application_DialogException")


def test_company_level_set_answers_one_related_record_at_a_time_like_bc(bc: Bc) -> None:
    ids = bc.sandbox.seed_customers(3, company_contacts=True)
    company = bc.sandbox.company_contact(ids[0])
    persons = [
        post(
            bc, "contacts", {"type": "Person", "displayName": f"Pat {n}", "companyNumber": company["number"]}
        )
        for n in range(4)
    ]
    related = {"$filter": f"relatedId eq {ids[0]} and relatedType eq 'Customer'"}
    url: str | None = info_url(bc)
    headers = {"Prefer": "odata.maxpagesize=2"}
    rows: list[dict] = []
    while url:
        first = {**related, "$select": "contactNumber,contactType"}
        response = bc.http.get(url, params=first if not rows else None, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["preference-applied"] == "odata.maxpagesize=2"
        body = response.json()
        assert len(body["value"]) <= 2
        rows += body["value"]
        url = body.get("@odata.nextLink")
    assert all(set(row) == {"contactNumber", "contactType"} for row in rows)  # $select, no @odata.etag
    assert sorted(r["contactNumber"] for r in rows) == sorted(
        [company["number"], *(p["number"] for p in persons)]
    )
    companies = get_values(
        bc, info_url(bc), **{"$filter": f"{related['$filter']} and contactType eq 'Company'"}
    )
    assert [r["contactNumber"] for r in companies] == [company["number"]]
    # BC's page 30072 loads its rows from relatedId and relatedType; without both it refuses.
    for refused in ("relatedType eq 'Customer' and contactType eq 'Company'", f"relatedId eq {ids[0]}", None):
        params = {"$filter": refused} if refused else {}
        response = bc.http.get(info_url(bc), params=params)
        assert_error(response, 400, "Application_DialogException")
        assert "id type not specified." in response.text
    unknown = {"$filter": related["$filter"] + " and nosuch eq 1"}
    assert_error(bc.http.get(info_url(bc), params=unknown), 400, "BadRequest")


def test_generated_customers_leave_company_contacts_out_unless_asked(bc: Bc) -> None:
    plain = bc.sandbox.seed_customers(3)
    with_contacts = bc.sandbox.seed_customers(2, start=10, company_contacts=True)
    for customer_id in plain:
        with pytest.raises(KeyError, match="no company contact"):
            bc.sandbox.company_contact(customer_id)
        assert get_values(bc, info_url(bc, "customers", customer_id)) == []
    assert all(bc.sandbox.company_contact(i)["type"] == "Company" for i in with_contacts)
    seeded = bc.sandbox.seed("customers", [{"displayName": "Seeded"}])
    assert bc.sandbox.company_contact(seeded[0])["displayName"] == "Seeded"
    response = bc.http.post(
        f"{bc.url}/_sandbox/seed",
        json={"entity_set": "customers", "count": 2, "start": 50, "company_contacts": True},
    )
    assert response.status_code == 201
    assert all(bc.sandbox.company_contact(i)["type"] == "Company" for i in response.json()["ids"])


def test_a_person_s_company_number_must_be_a_company_contact(bc: Bc) -> None:
    customer = post(bc, "customers", {"displayName": "Litware"})
    company = bc.sandbox.company_contact(customer["id"])
    refused = bc.http.post(
        bc.entity_url("contacts"),
        json={"type": "Person", "displayName": "Dana", "companyNumber": customer["number"]},
    )
    message = assert_error(refused, 400, "Application_DialogException")
    assert (
        f"The field Company No. of table Contact contains a value ({customer['number']}) that cannot be "
        "found in the related table (Contact)."
    ) in message
    person = post(
        bc, "contacts", {"type": "Person", "displayName": "Dana", "companyNumber": company["number"]}
    )
    of_a_person = bc.http.post(
        bc.entity_url("contacts"),
        json={"type": "Person", "displayName": "Eve", "companyNumber": person["number"]},
    )
    assert_error(of_a_person, 400, "Application_DialogException")
    moved = bc.http.patch(
        bc.entity_url("contacts", person["id"]),
        json={"companyNumber": customer["number"]},
        headers={"If-Match": person["@odata.etag"]},
    )
    assert_error(moved, 400, "Application_DialogException")
    with pytest.raises(BcError, match=r"Company No\."):
        bc.sandbox.seed("contacts", [{"type": "Person", "displayName": "X", "companyNumber": "C00010"}])
    # Without a company a person has no business relation; a company cannot take another's number.
    alone = post(bc, "contacts", {"type": "Person", "displayName": "Solo"})
    assert (alone["companyNumber"], alone["companyName"], alone["contactBusinessRelation"]) == (
        "",
        "",
        "None",
    )
    other = bc.http.post(
        bc.entity_url("contacts"),
        json={"type": "Company", "displayName": "Co", "companyNumber": company["number"]},
    )
    assert_error(other, 400, "Application_DialogException")


def test_renaming_a_customer_renames_its_company_contact_and_the_persons_company_name(bc: Bc) -> None:
    customer = post(bc, "customers", {"displayName": "Tailspin"})
    company = bc.sandbox.company_contact(customer["id"])
    person = post(
        bc, "contacts", {"type": "Person", "displayName": "Lee", "companyNumber": company["number"]}
    )
    renamed = bc.http.patch(
        bc.entity_url("customers", customer["id"]),
        json={"displayName": "Tailspin Toys", "city": "Seattle"},
        headers={"If-Match": customer["@odata.etag"]},
    )
    assert renamed.status_code == 200, renamed.text
    contact = bc.http.get(bc.entity_url("contacts", company["id"])).json()
    assert (contact["displayName"], contact["companyName"], contact["city"]) == (
        "Tailspin Toys", "Tailspin Toys", "Seattle"
    )  # fmt: skip
    assert contact["lastModifiedDateTime"] > company["lastModifiedDateTime"]
    assert contact["@odata.etag"] != company["_etag"]
    follower = bc.http.get(bc.entity_url("contacts", person["id"])).json()
    assert follower["companyName"] == "Tailspin Toys" and follower["displayName"] == "Lee"
    names = {
        r["contactType"]: r["contactName"] for r in get_values(bc, info_url(bc, "customers", customer["id"]))
    }
    assert names == {"Company": "Tailspin Toys", "Person": "Lee"}
    # A change of no copied field leaves the contact alone.
    before = bc.sandbox.company_contact(customer["id"])["_etag"]
    bc.sandbox.change("customers", customer["id"], {"creditLimit": 1000})
    assert bc.sandbox.company_contact(customer["id"])["_etag"] == before


def test_deleting_a_customer_removes_the_business_relation_but_keeps_the_contact(bc: Bc) -> None:
    customer = post(bc, "customers", {"displayName": "Gone Soon"})
    company = bc.sandbox.company_contact(customer["id"])
    person = post(
        bc, "contacts", {"type": "Person", "displayName": "Kim", "companyNumber": company["number"]}
    )
    deleted = bc.http.delete(bc.entity_url("customers", customer["id"]), headers={"If-Match": "*"})
    assert deleted.status_code == 204
    kept = bc.http.get(bc.entity_url("contacts", company["id"])).json()
    assert (kept["type"], kept["displayName"], kept["contactBusinessRelation"]) == (
        "Company",
        "Gone Soon",
        "None",
    )
    assert bc.sandbox.get("contacts", company["id"])["_relatedType"] == " "
    assert bc.http.get(bc.entity_url("contacts", person["id"])).json()["contactBusinessRelation"] == "None"
    with pytest.raises(KeyError):
        bc.sandbox.company_contact(customer["id"])
    related = f"relatedId eq {customer['id']} and relatedType eq 'Customer'"
    assert get_values(bc, info_url(bc), **{"$filter": related}) == []


def test_company_contact_rules_on_type_change_and_delete(bc: Bc) -> None:
    customer = post(bc, "customers", {"displayName": "Proseware"})
    company = bc.sandbox.company_contact(customer["id"])
    to_person = bc.http.patch(
        bc.entity_url("contacts", company["id"]), json={"type": "Person"}, headers={"If-Match": "*"}
    )
    assert "No. of Business Relations" in assert_error(to_person, 400, "Application_DialogException")
    plain = post(bc, "contacts", {"type": "Company", "displayName": "No Relation Inc."})
    assert plain["contactBusinessRelation"] == "None" and plain["companyNumber"] == plain["number"]
    member = post(bc, "contacts", {"type": "Person", "displayName": "Ann", "companyNumber": plain["number"]})
    with_people = bc.http.patch(
        bc.entity_url("contacts", plain["id"]), json={"type": "Person"}, headers={"If-Match": "*"}
    )
    assert "related people" in assert_error(with_people, 400, "Application_DialogException")
    # Deleting a company contact deletes its persons (Contact.OnDelete) and its business relation.
    person = post(bc, "contacts", {"type": "Person", "displayName": "Bo", "companyNumber": company["number"]})
    gone = bc.http.delete(bc.entity_url("contacts", company["id"]), headers={"If-Match": "*"})
    assert gone.status_code == 204
    assert_error(bc.http.get(bc.entity_url("contacts", person["id"])), 404, "Internal_RecordNotFound")
    assert bc.http.get(bc.entity_url("contacts", member["id"])).status_code == 200
    assert bc.http.get(bc.entity_url("customers", customer["id"])).status_code == 200
    assert get_values(bc, info_url(bc, "customers", customer["id"])) == []


def test_contacts_information_is_read_only(bc: Bc) -> None:
    customer = get_values(bc, bc.entity_url("customers"))[0]
    row = get_values(bc, info_url(bc, "customers", customer["id"]))[0]
    attempts = [
        bc.http.post(info_url(bc), json={"contactNumber": "CT99999"}),
        bc.http.post(info_url(bc, "customers", customer["id"]), json={"contactNumber": "CT99999"}),
        bc.http.patch(
            f"{info_url(bc)}({row['contactId']})", json={"contactName": "x"}, headers={"If-Match": "*"}
        ),
        bc.http.delete(f"{info_url(bc)}({row['contactId']})", headers={"If-Match": "*"}),
        bc.http.delete(info_url(bc, "customers", customer["id"]), headers={"If-Match": "*"}),
    ]
    for response in attempts:
        assert_error(response, 405, "BadRequest_MethodNotAllowed")


def test_unknown_customer_or_vendor_in_the_navigation_is_404(bc: Bc) -> None:
    missing = str(uuid.uuid4())
    message = assert_error(bc.http.get(info_url(bc, "customers", missing)), 404, "Internal_RecordNotFound")
    assert f"The Customer does not exist. Identification fields and values: Id='{missing}'" in message
    assert_error(bc.http.get(info_url(bc, "vendors", missing)), 404, "Internal_RecordNotFound")
    item = get_values(bc, bc.entity_url("items"))[0]
    assert_error(bc.http.get(info_url(bc, "items", item["id"])), 404, "BadRequest_ResourceNotFound")


def test_an_atomic_batch_rolls_the_company_contact_back_with_its_customer(bc: Bc) -> None:
    contacts_before = {r["id"]: r["@odata.etag"] for r in get_values(bc, bc.entity_url("contacts"))}
    rel = f"companies({bc.company})/customers"
    requests = [
        {"id": "1", "method": "POST", "url": rel, "body": {"displayName": "Rolled Back"}},
        {"id": "2", "method": "POST", "url": rel, "body": {"displayName": "x" * 101}},
    ]
    response = bc.http.post(
        f"{bc.base}/$batch", json={"requests": requests}, headers={"Isolation": "snapshot"}
    )
    assert [r["status"] for r in response.json()["responses"]] == [201, 400]  # 201, yet rolled back
    assert {r["id"]: r["@odata.etag"] for r in get_values(bc, bc.entity_url("contacts"))} == contacts_before
    kept = post(bc, "customers", {"displayName": "Kept"})
    # The contact number series was rolled back too: after the samples' CT00010 and CT00020, CT00030.
    assert sorted(r["number"] for r in get_values(bc, bc.entity_url("contacts"))) == [
        "CT00010",
        "CT00020",
        "CT00030",
    ]
    assert bc.sandbox.company_contact(kept["id"])["number"] == "CT00030"
