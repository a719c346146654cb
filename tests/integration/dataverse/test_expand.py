"""`$expand` of single-valued (lookup) and collection-valued (one-to-many) navigation properties.

As Dataverse: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/join-tables
"""

from __future__ import annotations

import httpx
import pytest

from devstack.dataverse import DataverseSandbox

pytestmark = pytest.mark.integration


@pytest.fixture
def customers(sandbox: DataverseSandbox) -> dict[str, str]:
    [account] = sandbox.seed("accounts", [{"name": "Fabrikam", "accountnumber": "C1"}])
    contacts = sandbox.seed(
        "contacts",
        [
            {
                "firstname": "Ann",
                "lastname": "A",
                "parentcustomerid_account@odata.bind": f"/accounts({account})",
            },
            {
                "firstname": "Bob",
                "lastname": "B",
                "parentcustomerid_account@odata.bind": f"/accounts({account})",
            },
            {"firstname": "Cid", "lastname": "C"},
        ],
    )
    sandbox.store.update(
        "accounts",
        account,
        {"primarycontactid@odata.bind": f"/contacts({contacts[0]})"},
        sandbox.caller(sandbox.users["integration-user"]),
    )
    return {"account": account, "ann": contacts[0], "bob": contacts[1], "cid": contacts[2]}


def test_single_valued_expand_with_nested_select(http: httpx.Client, customers: dict[str, str]) -> None:
    response = http.get(
        f"accounts({customers['account']})",
        params={
            "$select": "name",
            "$expand": "primarycontactid($select=firstname),createdby($select=fullname)",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["primarycontactid"]["firstname"] == "Ann"
    assert body["primarycontactid"]["contactid"] == customers["ann"]
    assert set(body["primarycontactid"]) == {"@odata.etag", "firstname", "contactid"}
    assert body["createdby"]["fullname"]
    contacts = http.get(
        "contacts",
        params={
            "$select": "firstname",
            "$expand": "parentcustomerid_account($select=name)",
            "$orderby": "firstname",
        },
    ).json()["value"]
    assert [c["parentcustomerid_account"] and c["parentcustomerid_account"]["name"] for c in contacts] == [
        "Fabrikam",
        "Fabrikam",
        None,
    ]


def test_collection_valued_expand_with_nested_select_filter_orderby_top(
    http: httpx.Client, customers: dict[str, str]
) -> None:
    nested = (
        "contact_customer_accounts($select=firstname;$filter=lastname ne 'Z';$orderby=firstname desc;$top=1)"
    )
    response = http.get("accounts", params={"$select": "name", "$expand": nested})
    assert response.status_code == 200, response.text
    [account] = response.json()["value"]
    assert account["contact_customer_accounts"] == [
        {
            "@odata.etag": account["contact_customer_accounts"][0]["@odata.etag"],
            "firstname": "Bob",
            "contactid": customers["bob"],
        }
    ]
    everyone = http.get(
        "accounts", params={"$select": "name", "$expand": "contact_customer_accounts($select=firstname)"}
    )
    assert sorted(c["firstname"] for c in everyone.json()["value"][0]["contact_customer_accounts"]) == [
        "Ann",
        "Bob",
    ]


@pytest.mark.parametrize(
    ("expand", "named"),
    [
        ("nosuchnavigation", "nosuchnavigation"),
        ("primarycontactid($filter=firstname eq 'Ann')", "$filter"),
        ("contact_customer_accounts($expand=createdby)", "$expand"),
        ("contact_customer_accounts($skip=1)", "$skip"),
        ("contact_customer_accounts($select=nosuchcolumn)", "nosuchcolumn"),
        ("contact_customer_accounts($filter=nosuchcolumn eq 1)", "nosuchcolumn"),
        ("primarycontactid($select=firstname", "malformed"),
    ],
)
def test_unsupported_expand_forms_are_refused(
    http: httpx.Client, customers: dict[str, str], expand: str, named: str
) -> None:
    response = http.get("accounts", params={"$select": "name", "$expand": expand})
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]["message"]


def test_expand_is_refused_with_change_tracking(http: httpx.Client, customers: dict[str, str]) -> None:
    response = http.get(
        "accounts",
        params={"$select": "name", "$expand": "primarycontactid"},
        headers={"Prefer": "odata.track-changes"},
    )
    assert response.status_code == 400
    assert "$expand" in response.json()["error"]["message"]
