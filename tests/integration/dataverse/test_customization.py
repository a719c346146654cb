"""Customizing the sandbox as Dataverse is customized: solution import (`ImportSolutionAsync` with its
asynchronous job and import job), metadata writes (`POST EntityDefinitions`, `.../Attributes`,
`.../Keys` inside a named solution), `RelationshipDefinitions`, and security roles enforced on the
tables created that way."""

from __future__ import annotations

import base64
import io
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from devstack.dataverse.config import SALES_USER_ID
from shared.sales.solution import ROLE_USER, SOLUTION_DIR, pack, read_info

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer admin-user", "OData-Version": "4.0", "Accept": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def seller(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer sales-user", "OData-Version": "4.0", "Accept": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        yield client


def _import(client: httpx.Client, data: bytes, job_id: str | None = None) -> dict[str, Any]:
    body = {
        "OverwriteUnmanagedCustomizations": False,
        "PublishWorkflows": True,
        "CustomizationFile": base64.b64encode(data).decode(),
        "ImportJobId": job_id or str(uuid.uuid4()),
    }
    response = client.post("ImportSolutionAsync", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _finish(sandbox: DataverseSandbox, client: httpx.Client, async_id: str) -> dict[str, Any]:
    sandbox.advance_clock(sandbox.config.solution_import_delay_seconds + 1)
    return dict(client.get(f"asyncoperations({async_id})").json())


def test_a_fresh_sandbox_has_no_bcs_customization(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    missing = http.get("bcs_customerstatistics")
    assert missing.status_code == 404 and "bcs_customerstatistics" in missing.json()["error"]["message"]
    # As a real environment without the solution: no number column on orders either (BC's own solution
    # names its column bcbi_businesscentralordernumber; this service writes its own, bcs_bcnumber).
    assert http.get("salesorders?$select=businesscentralordernumber").status_code == 400
    unknown = http.get("accounts?$select=bcs_bcnumber")
    assert unknown.status_code == 400 and "bcs_bcnumber" in unknown.json()["error"]["message"]
    assert http.get("solutions?$filter=uniquename eq 'BusinessCentralSync'").json()["value"] == []


def test_import_solution_async_creates_what_the_zip_declares(
    admin: httpx.Client, sandbox: DataverseSandbox
) -> None:
    job_id = str(uuid.uuid4())
    answer = _import(admin, pack(), job_id)
    assert answer["ImportJobKey"] == job_id
    waiting = admin.get(f"asyncoperations({answer['AsyncOperationId']})").json()
    assert (waiting["statecode"], waiting["statuscode"]) == (0, 0)
    assert admin.get("bcs_customerstatistics").status_code == 404  # nothing until the job runs

    done = _finish(sandbox, admin, answer["AsyncOperationId"])
    assert (done["statecode"], done["statuscode"]) == (3, 30), done
    job = admin.get(f"importjobs({job_id})").json()
    assert job["progress"] == 100 and 'result="success"' in job["data"]

    info = read_info(SOLUTION_DIR)
    solution = admin.get(f"solutions?$filter=uniquename eq '{info.unique_name}'&$select=version").json()
    assert [s["version"] for s in solution["value"]] == [info.version]
    publisher = admin.get("publishers?$filter=uniquename eq 'bcsync'").json()["value"]
    assert publisher[0]["customizationprefix"] == "bcs"

    table = admin.get("EntityDefinitions(LogicalName='bcs_customerstatistic')?$expand=Keys").json()
    assert table["EntitySetName"] == "bcs_customerstatistics" and table["IsCustomEntity"] is True
    assert table["Keys"][0]["KeyAttributes"] == ["bcs_customerno"]
    for entity in ("account", "contact", "product"):
        names = {
            a["LogicalName"]
            for a in admin.get(
                f"EntityDefinitions(LogicalName='{entity}')/Attributes?$select=LogicalName"
            ).json()["value"]
        }
        assert {"bcs_bcnumber", "bcs_bcurl", "bcs_bccouplingstatus"} <= names
    documents = {"quote": {"bcs_bcnumber", "bcs_bcurl"}, "salesorder": {"bcs_bcnumber", "bcs_bcurl"},
                 "invoice": {"bcs_bcnumber", "bcs_bcurl"},
                 "salesorderdetail": {"bcs_bclinenumber"}}  # fmt: skip
    for entity, columns in documents.items():
        names = {
            a["LogicalName"]
            for a in admin.get(
                f"EntityDefinitions(LogicalName='{entity}')/Attributes?$select=LogicalName"
            ).json()["value"]
        }
        assert columns <= names, entity
    lookup = admin.get(
        "EntityDefinitions(LogicalName='bcs_customerstatistic')/Attributes(LogicalName='bcs_accountid')"
    ).json()
    assert (
        lookup["Targets"] == ["account"] and lookup["DisplayName"]["UserLocalizedLabel"]["Label"] == "Account"
    )
    forms = admin.get("systemforms?$select=name,objecttypecode,type,formxml").json()["value"]
    quick = next(f for f in forms if f["objecttypecode"] == "bcs_customerstatistic")
    main = next(f for f in forms if f["objecttypecode"] == "account")
    assert quick["type"] == 6 and main["type"] == 2
    assert "bcs_customerstatistic" in main["formxml"] and quick["systemformid"] in main["formxml"]
    # Contacts, products and the documents get a main form showing their number, link (and status).
    mains = {f["objecttypecode"]: f["formxml"] for f in forms if f["type"] == 2}
    for table in ("contact", "product", "quote", "salesorder", "invoice"):
        assert 'datafieldname="bcs_bcurl"' in mains[table], table
    assert 'datafieldname="bcs_quantityasof"' in mains["product"]
    roles = {r["name"] for r in admin.get("roles?$select=name").json()["value"]}
    assert {"Integration Administrator", "Integration User", "Product Availability User"} <= roles
    # The new table works: upsert by its alternate key, bound to an account.
    account = admin.post("accounts", json={"name": "Adatum"}, headers={"Prefer": "return=representation"})
    row = {
        "bcs_name": "Adatum",
        "bcs_balance": 10.5,
        "bcs_accountid@odata.bind": f"/accounts({account.json()['accountid']})",
    }
    assert admin.patch("bcs_customerstatistics(bcs_customerno='10000')", json=row).status_code == 204


def test_a_broken_or_older_solution_fails_the_job_with_the_reason(
    admin: httpx.Client, sandbox: DataverseSandbox, tmp_path: Any
) -> None:
    broken = _import(admin, b"not a zip")
    failed = _finish(sandbox, admin, broken["AsyncOperationId"])
    assert (failed["statecode"], failed["statuscode"]) == (3, 31) and "not a zip" in failed["message"]
    job = admin.get(f"importjobs({broken['ImportJobKey']})").json()
    assert 'result="failure"' in job["data"]

    sandbox.import_solution(pack())
    older = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pack())) as source, zipfile.ZipFile(older, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            if name == "solution.xml":
                current = f"<Version>{read_info().version}</Version>".encode()
                assert current in content
                content = content.replace(current, b"<Version>0.9.0.0</Version>")
            target.writestr(name, content)
    answer = _import(admin, older.getvalue())
    refused = _finish(sandbox, admin, answer["AsyncOperationId"])
    assert refused["statuscode"] == 31 and "older than the installed version" in refused["message"]


def test_only_an_administrator_imports(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    body = {"CustomizationFile": base64.b64encode(pack()).decode(), "ImportJobId": str(uuid.uuid4())}
    response = http.post("ImportSolutionAsync", json=body)
    assert response.status_code == 403 and response.json()["error"]["code"] == "0x80040220"


def test_roles_are_enforced_on_the_solution_tables(
    admin: httpx.Client, seller: httpx.Client, sandbox: DataverseSandbox
) -> None:
    sandbox.import_solution(pack())
    refused = seller.get("bcs_customerstatistics")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (
        error["code"] == "0x80040220" and "missing prvReadbcs_CustomerStatistic privilege" in error["message"]
    )
    assert seller.get("accounts?$select=bcs_bcnumber").status_code == 200  # standard tables: not checked

    role = admin.get(f"roles?$filter=name eq '{ROLE_USER}'&$select=roleid").json()["value"][0]["roleid"]
    reference = {"@odata.id": f"{admin.base_url}roles({role})"}
    assigned = admin.post(f"systemusers({SALES_USER_ID})/systemuserroles_association/$ref", json=reference)
    assert assigned.status_code == 204, assigned.text
    assert seller.get("bcs_customerstatistics").status_code == 200
    held = admin.get(f"systemuserrolescollection?$filter=systemuserid eq {SALES_USER_ID}").json()["value"]
    assert [r["roleid"] for r in held] == [role]
    # Integration User reads; it does not write.
    write = seller.post("bcs_customerstatistics", json={"bcs_name": "x", "bcs_customerno": "1"})
    assert write.status_code == 403 and "prvCreatebcs_CustomerStatistic" in write.json()["error"]["message"]
    # Only an administrator assigns roles.
    again = seller.post(f"systemusers({SALES_USER_ID})/systemuserroles_association/$ref", json=reference)
    assert again.status_code == 403


def test_tables_columns_and_keys_are_created_through_entity_definitions(
    admin: httpx.Client, sandbox: DataverseSandbox
) -> None:
    headers = {"MSCRM.SolutionUniqueName": "Default"}
    label = {"LocalizedLabels": [{"Label": "Bank Account", "LanguageCode": 1033}]}
    table = {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": "new_BankAccount",
        "DisplayName": label,
        "DisplayCollectionName": {"LocalizedLabels": [{"Label": "Bank Accounts", "LanguageCode": 1033}]},
        "OwnershipType": "UserOwned",
        "HasActivities": False,
        "HasNotes": False,
        "IsActivity": False,
        "Attributes": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "SchemaName": "new_Name",
                "IsPrimaryName": True,
                "MaxLength": 100,
                "FormatName": {"Value": "Text"},
                "DisplayName": {"LocalizedLabels": [{"Label": "Name", "LanguageCode": 1033}]},
            }
        ],
    }
    created = admin.post("EntityDefinitions", json=table, headers=headers)
    assert created.status_code == 204, created.text
    assert "EntityDefinitions(" in created.headers["OData-EntityId"]
    column = {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": "new_IBAN",
        "MaxLength": 34,
        "DisplayName": {"LocalizedLabels": [{"Label": "IBAN", "LanguageCode": 1033}]},
    }
    added = admin.post(
        "EntityDefinitions(LogicalName='new_bankaccount')/Attributes", json=column, headers=headers
    )
    assert added.status_code == 204, added.text
    key = {"SchemaName": "new_iban_key", "KeyAttributes": ["new_iban"]}
    keyed = admin.post("EntityDefinitions(LogicalName='new_bankaccount')/Keys", json=key, headers=headers)
    assert keyed.status_code == 204, keyed.text

    definition = admin.get("EntityDefinitions(LogicalName='new_bankaccount')?$expand=Keys").json()
    assert definition["EntitySetName"] == "new_bankaccounts" and definition["SchemaName"] == "new_BankAccount"
    assert definition["Keys"][0]["KeyAttributes"] == ["new_iban"]
    assert admin.patch("new_bankaccounts(new_iban='DE00')", json={"new_name": "Main"}).status_code == 204
    assert admin.get("new_bankaccounts?$select=new_name,new_iban").json()["value"][0]["new_iban"] == "DE00"

    unknown = admin.post(
        "EntityDefinitions",
        json={**table, "SchemaName": "new_Other"},
        headers={"MSCRM.SolutionUniqueName": "Nope"},
    )
    assert unknown.status_code == 400 and "Nope" in unknown.json()["error"]["message"]
    unprefixed = admin.post("EntityDefinitions", json={**table, "SchemaName": "Other"}, headers=headers)
    assert unprefixed.status_code == 400 and "prefix" in unprefixed.json()["error"]["message"]
    again = admin.post("EntityDefinitions", json=table, headers=headers)
    assert again.status_code == 400 and "already exists" in again.json()["error"]["message"]


def test_relationship_definitions(admin: httpx.Client, sandbox: DataverseSandbox) -> None:
    rows = admin.get("RelationshipDefinitions?$select=SchemaName,ReferencingEntity,ReferencedEntity").json()[
        "value"
    ]
    assert {
        "SchemaName": "contact_customer_accounts",
        "ReferencingEntity": "contact",
        "ReferencedEntity": "account",
    } in [{k: r[k] for k in ("SchemaName", "ReferencingEntity", "ReferencedEntity")} for r in rows]
    one = admin.get("RelationshipDefinitions(SchemaName='order_details')").json()
    assert (one["ReferencingAttribute"], one["ReferencedAttribute"]) == ("salesorderid", "salesorderid")
    sandbox.import_solution(pack())
    wanted = "$filter=ReferencingEntity eq 'bcs_customerstatistic'&$select=ReferencingAttribute"
    custom = admin.get(f"RelationshipDefinitions?{wanted}").json()["value"]
    assert {r["ReferencingAttribute"] for r in custom} == {"bcs_accountid", "transactioncurrencyid"}
