"""Metadata generated from the sandbox's own tables: service document, `$metadata`, `EntityDefinitions`.

As Dataverse: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query-metadata-web-api
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from devstack.dataverse.schema import TABLES, Kind

pytestmark = pytest.mark.integration

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def test_service_document_lists_every_entity_set(
    http: httpx.Client, sandbox: DataverseSandbox, base_url: str
) -> None:
    body = http.get("").json()
    assert body["@odata.context"] == f"{base_url}$metadata"
    names = {item["name"] for item in body["value"]}
    assert set(TABLES) <= names and "EntityDefinitions" in names
    assert all(item["kind"] == "EntitySet" and item["url"] == item["name"] for item in body["value"])


def test_csdl_matches_the_tables(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    response = http.get("$metadata")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    types = {t.get("Name"): t for t in root.iter(f"{EDM}EntityType")}
    assert set(types) == {t.logical_name for t in TABLES.values()}
    account = types["account"]
    properties = {p.get("Name"): p.get("Type") for p in account.iter(f"{EDM}Property")}
    assert properties == {
        name: {Kind.MONEY: "Edm.Decimal", Kind.CHOICE: "Edm.Int32", Kind.LOOKUP: "Edm.Guid"}.get(
            c.kind, c.kind.value
        )
        for name, c in TABLES["accounts"].columns.items()
    }
    assert account.find(f"{EDM}Key/{EDM}PropertyRef").get("Name") == "accountid"  # type: ignore[union-attr]
    sets = {s.get("Name"): s.get("EntityType") for s in root.iter(f"{EDM}EntitySet")}
    assert sets["accounts"] == "Microsoft.Dynamics.CRM.account"


def test_entity_definitions_as_the_sdk_reads_them(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    response = http.get(
        "EntityDefinitions",
        params={
            "$select": "LogicalName,EntitySetName,PrimaryIdAttribute",
            "$filter": "LogicalName eq 'account'",
        },
    )
    assert response.status_code == 200, response.text
    [account] = response.json()["value"]
    assert {k: v for k, v in account.items() if k != "MetadataId"} == {
        "LogicalName": "account",
        "EntitySetName": "accounts",
        "PrimaryIdAttribute": "accountid",
    }
    by_key = http.get("EntityDefinitions(LogicalName='account')", params={"$select": "EntitySetName"}).json()
    assert by_key["EntitySetName"] == "accounts" and by_key["MetadataId"] == account["MetadataId"]
    by_id = http.get(f"EntityDefinitions({account['MetadataId']})", params={"$select": "LogicalName"}).json()
    assert by_id["LogicalName"] == "account"


def test_change_tracking_enabled_per_table(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    rows = http.get("EntityDefinitions", params={"$select": "LogicalName,ChangeTrackingEnabled"}).json()[
        "value"
    ]
    flags = {r["LogicalName"]: r["ChangeTrackingEnabled"] for r in rows}
    assert flags == {t.logical_name: t.change_tracking for t in TABLES.values()}
    assert flags["account"] is True and flags["organization"] is False
    untracked = http.get(
        "EntityDefinitions", params={"$select": "LogicalName", "$filter": "ChangeTrackingEnabled eq false"}
    )
    assert {r["LogicalName"] for r in untracked.json()["value"]} == {
        t.logical_name for t in TABLES.values() if not t.change_tracking
    }


def test_picklist_cast_with_option_set(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    response = http.get(
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    )
    assert response.status_code == 200, response.text
    attributes = {a["LogicalName"]: a for a in response.json()["value"]}
    expected = {n for n, c in TABLES["accounts"].columns.items() if c.kind is Kind.CHOICE} - {
        "statecode",
        "statuscode",
    }
    assert set(attributes) == expected
    options = {
        o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"]
        for o in attributes["paymenttermscode"]["OptionSet"]["Options"]
    }
    assert options == TABLES["accounts"].columns["paymenttermscode"].choices
    assert (
        attributes["paymenttermscode"]["@odata.type"] == "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
    )


def test_expand_attributes_and_keys(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    response = http.get(
        "EntityDefinitions(LogicalName='product')",
        params={
            "$select": "LogicalName",
            "$expand": "Keys($select=KeyAttributes),Attributes($select=LogicalName,AttributeType;"
            "$filter=AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Lookup')",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [k["KeyAttributes"] for k in body["Keys"]] == [["productnumber"]]
    lookups = {a["LogicalName"] for a in body["Attributes"]}
    assert lookups == {
        c.name for c in TABLES["products"].columns.values() if c.kind is Kind.LOOKUP and c.name != "ownerid"
    }
    one = http.get("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')").json()
    assert (one["AttributeType"], one["MaxLength"], one["IsPrimaryName"]) == ("String", 160, True)
    assert http.get("EntityDefinitions(LogicalName='product')/Keys").json()["value"][0]["KeyAttributes"] == [
        "productnumber"
    ]
    assert http.get("EntityDefinitions(LogicalName='account')/Keys").json()["value"] == []


@pytest.mark.parametrize(
    ("method", "url", "status", "named"),
    [
        ("GET", "EntityDefinitions?$top=1", 400, "$top"),
        ("GET", "EntityDefinitions?$select=NoSuchProperty", 400, "NoSuchProperty"),
        ("GET", "EntityDefinitions?$expand=ManyToManyRelationships", 400, "ManyToManyRelationships"),
        ("GET", "EntityDefinitions(LogicalName='nosuchtable')", 404, "nosuchtable"),
        (
            "GET",
            "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')?$expand=OptionSet",
            400,
            "OptionSet",
        ),
        ("POST", "EntityDefinitions", 400, "EntityDefinitions"),
        ("GET", "RelationshipDefinitions", 404, "RelationshipDefinitions"),
    ],
)
def test_metadata_refusals(
    http: httpx.Client, sandbox: DataverseSandbox, method: str, url: str, status: int, named: str
) -> None:
    response = http.request(method, url, json={} if method == "POST" else None)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]
