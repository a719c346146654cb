"""CRUD, lookups, ETags, upsert by key and errors: the sandbox on the wire and the client over it."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from devstack.dataverse.config import EUR_CURRENCY_ID, INTEGRATION_USER_ID, SALES_USER_ID, USD_CURRENCY_ID
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConcurrencyError,
    NotFoundError,
    ValidationError,
)

pytestmark = pytest.mark.integration

USD = f"/transactioncurrencies({USD_CURRENCY_ID})"


def test_create_without_representation_answers_204_with_entity_id(http: httpx.Client, base_url: str) -> None:
    response = http.post("accounts", json={"name": "Fabrikam"})
    assert response.status_code == 204
    entity_id = response.headers["OData-EntityId"]
    assert entity_id.startswith(base_url + "accounts(")
    record_id = entity_id[len(base_url + "accounts(") : -1]
    row = http.get(f"accounts({record_id})?$select=name").json()
    assert row["name"] == "Fabrikam"
    assert row["accountid"] == record_id
    assert row["@odata.etag"].startswith('W/"')
    assert row["@odata.context"].endswith("$metadata#accounts(name)/$entity")


def test_create_with_representation_returns_the_row(client: DataverseClient) -> None:
    row = client.create(
        "accounts",
        {
            "name": "Contoso",
            "accountnumber": "C10000",
            "creditlimit": 5000.5,
            "customertypecode": 3,
            "transactioncurrencyid@odata.bind": USD,
        },
    )
    assert row["_transactioncurrencyid_value"] == USD_CURRENCY_ID
    assert row["_ownerid_value"] == INTEGRATION_USER_ID
    assert row["_createdby_value"] == row["_modifiedby_value"] == INTEGRATION_USER_ID
    assert row["statecode"] == 0 and row["statuscode"] == 1
    assert row["createdon"].endswith("Z")
    assert row["creditlimit"] == 5000.5


def test_update_with_stale_etag_is_a_concurrency_error(client: DataverseClient) -> None:
    row = client.create("accounts", {"name": "Old"})
    updated = client.update("accounts", row["accountid"], {"name": "New"}, etag=row["@odata.etag"])
    assert updated["name"] == "New"
    assert updated["@odata.etag"] != row["@odata.etag"]
    with pytest.raises(ConcurrencyError) as info:
        client.update("accounts", row["accountid"], {"name": "Lost"}, etag=row["@odata.etag"])
    assert info.value.status == 412
    assert client.get("accounts", row["accountid"])["name"] == "New"  # type: ignore[index]


def test_get_if_none_match_answers_304_when_unchanged(http: httpx.Client, client: DataverseClient) -> None:
    row = client.create("accounts", {"name": "Cached"})
    response = http.get(f"accounts({row['accountid']})", headers={"If-None-Match": row["@odata.etag"]})
    assert response.status_code == 304
    client.update("accounts", row["accountid"], {"name": "Changed"}, etag=row["@odata.etag"])
    assert (
        http.get(f"accounts({row['accountid']})", headers={"If-None-Match": row["@odata.etag"]}).status_code
        == 200
    )


def test_delete_and_missing_records(client: DataverseClient, http: httpx.Client) -> None:
    row = client.create("accounts", {"name": "Doomed"})
    with pytest.raises(ConcurrencyError):
        client.delete("accounts", row["accountid"], etag='W/"1"')
    client.delete("accounts", row["accountid"], etag=row["@odata.etag"])
    assert client.get("accounts", row["accountid"]) is None
    with pytest.raises(NotFoundError):
        client.delete("accounts", row["accountid"])
    missing = str(uuid.uuid4())
    body = http.get(f"accounts({missing})").json()
    # As in the Web API documentation's own example: the code is empty.
    assert body == {"error": {"code": "", "message": f"account With Id = {missing} Does Not Exist"}}
    patch = http.patch(f"accounts({missing})", json={"name": "x"}, headers={"If-Match": "*"})
    assert patch.status_code == 404


def test_patch_without_if_match_upserts_on_the_id(http: httpx.Client) -> None:
    record_id = str(uuid.uuid4())
    prefer = {"Prefer": "return=representation"}
    created = http.patch(f"accounts({record_id})", json={"name": "Via PATCH"}, headers=prefer)
    assert created.status_code == 201
    updated = http.patch(f"accounts({record_id})", json={"telephone1": "1"}, headers=prefer)
    assert updated.status_code == 200
    assert updated.json()["name"] == "Via PATCH"
    assert updated.headers["ETag"] == updated.json()["@odata.etag"]


def test_upsert_by_alternate_key_modes(client: DataverseClient, http: httpx.Client) -> None:
    created = client.upsert_by_key("products", {"productnumber": "O'B-1"}, {"name": "O'Brien"})
    assert created["productnumber"] == "O'B-1"  # copied from the URL into the new row
    again = client.upsert_by_key(
        "products", {"productnumber": "O'B-1"}, {"name": "O'Brien Ltd", "productnumber": "X"}
    )
    assert again["productid"] == created["productid"]
    assert again["productnumber"] == "O'B-1"  # key columns in the body are ignored on update
    assert again["name"] == "O'Brien Ltd"
    with pytest.raises(AlreadyExistsError, match="matching key values already exists") as exists:
        client.upsert_by_key("products", {"productnumber": "O'B-1"}, {"name": "dup"}, mode="create_only")
    assert (exists.value.status, exists.value.code) == (412, "")
    with pytest.raises(NotFoundError):
        client.upsert_by_key("products", {"productnumber": "NOPE"}, {"name": "n"}, mode="update_only")
    plain = http.patch("products(productnumber='A-2')", json={"name": "A2"})
    assert plain.status_code == 204
    assert plain.headers["OData-EntityId"].endswith("products(productnumber='A-2')")
    wrong_key = http.patch("products(name='x')", json={"name": "x"})
    assert wrong_key.status_code == 400
    assert "not an alternate key" in wrong_key.json()["error"]["message"]


def test_alternate_key_values_are_unique(client: DataverseClient) -> None:
    client.create("products", {"name": "One", "productnumber": "K1"})
    with pytest.raises(AlreadyExistsError):
        client.create("products", {"name": "Two", "productnumber": "k1"})  # case-insensitive collation


def test_lookups_bind_and_read_back(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    account = client.create("accounts", {"name": "Parent"})
    contact = client.create(
        "contacts",
        {
            "firstname": "James",
            "lastname": "Glynn",
            "parentcustomerid_account@odata.bind": f"/accounts({account['accountid']})",
            "transactioncurrencyid@odata.bind": f"transactioncurrencies({EUR_CURRENCY_ID})",
        },
    )
    assert contact["fullname"] == "James Glynn"
    assert contact["_parentcustomerid_value"] == account["accountid"]
    assert contact["_transactioncurrencyid_value"] == EUR_CURRENCY_ID
    linked = client.update(
        "accounts",
        account["accountid"],
        {"primarycontactid@odata.bind": f"/contacts({contact['contactid']})"},
        etag=account["@odata.etag"],
    )
    assert linked["_primarycontactid_value"] == contact["contactid"]
    cleared = client.update(
        "accounts", account["accountid"], {"primarycontactid@odata.bind": None}, etag=linked["@odata.etag"]
    )
    assert cleared["_primarycontactid_value"] is None
    stats = client.upsert_by_key(
        "bcs_customerstatistics",
        {"bcs_customerno": "10000"},
        {
            "bcs_name": "10000",
            "bcs_balance": 12.5,
            "bcs_asofdate": "2026-01-31",
            "bcs_accountid@odata.bind": f"/accounts({account['accountid']})",
        },
    )
    assert stats["_bcs_accountid_value"] == account["accountid"]
    assert sandbox.get("bcs_customerstatistics", stats["bcs_customerstatisticid"])["bcs_balance"] == 12.5  # type: ignore[index]


def test_binding_a_missing_record_is_404_and_a_wrong_target_is_400(http: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    response = http.post(
        "contacts", json={"lastname": "X", "parentcustomerid_account@odata.bind": f"/accounts({missing})"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["message"] == f"account With Id = {missing} Does Not Exist"
    wrong = http.post(
        "contacts", json={"lastname": "X", "parentcustomerid_account@odata.bind": f"/contacts({missing})"}
    )
    assert wrong.status_code == 400
    unknown_nav = http.post(
        "accounts", json={"name": "X", "nosuchlookup@odata.bind": f"/contacts({missing})"}
    )
    assert unknown_nav.status_code == 400
    assert "nosuchlookup" in unknown_nav.json()["error"]["message"]


def test_bad_columns_and_values_are_400_with_dataverse_messages(http: httpx.Client) -> None:
    unknown = http.post("accounts", json={"name": "X", "bogus": 1}).json()["error"]
    assert (
        unknown["message"]
        == "Could not find a property named 'bogus' on type 'Microsoft.Dynamics.CRM.account'."
    )
    direct = http.post("accounts", json={"name": "X", "_primarycontactid_value": str(uuid.uuid4())})
    assert direct.status_code == 400
    assert "Use Navigation properties" in direct.json()["error"]["message"]
    too_long = http.post("accounts", json={"name": "x" * 161}).json()["error"]
    assert too_long["code"] == "0x80044331"
    assert "maximum allowed length of '160'" in too_long["message"]
    bad_choice = http.post("accounts", json={"name": "X", "customertypecode": 99})
    assert bad_choice.status_code == 400
    assert "outside the valid range" in bad_choice.json()["error"]["message"]
    wrong_type = http.post("accounts", json={"name": "X", "creditlimit": "lots"})
    assert wrong_type.status_code == 400
    select = http.get("accounts?$select=name,nope").json()["error"]
    assert (
        select["message"]
        == "Could not find a property named 'nope' on type 'Microsoft.Dynamics.CRM.account'."
    )
    filtered = http.get("accounts?$filter=nope eq 1").json()["error"]
    assert "'nope'" in filtered["message"]


def test_client_maps_validation_errors(client: DataverseClient) -> None:
    with pytest.raises(ValidationError) as info:
        client.create("accounts", {"name": "x" * 200})
    assert info.value.code == "0x80044331"


def test_writes_record_the_calling_user(sandbox: DataverseSandbox, base_url: str) -> None:
    sales = DataverseClient(base_url, StaticTokenCredential("sales-user"))
    try:
        row = sales.create("accounts", {"name": "Sold"})
        assert sales.whoami().user_id == SALES_USER_ID
    finally:
        sales.close()
    assert row["_createdby_value"] == row["_modifiedby_value"] == row["_ownerid_value"] == SALES_USER_ID


def test_unknown_token_is_401(base_url: str) -> None:
    response = httpx.get(base_url + "accounts", headers={"Authorization": "Bearer nobody"})
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    client = DataverseClient(base_url, StaticTokenCredential("nobody"))
    with pytest.raises(AuthenticationError):
        client.whoami()
    client.close()


def test_caller_object_id_impersonates(http: httpx.Client) -> None:
    response = http.post(
        "accounts",
        json={"name": "On behalf"},
        headers={"CallerObjectId": "7b1f9c2e-0000-4000-8000-00000000a002", "Prefer": "return=representation"},
    )
    assert response.json()["_createdby_value"] == SALES_USER_ID


def test_create_with_chosen_id_survives_a_lost_answer(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    record_id = str(uuid.uuid4())
    sandbox.injector.add(
        {"action": "commit_then_fail", "method": "POST", "path_contains": "accounts", "status": 0}
    )
    row = client.create("accounts", {"name": "Exactly once"}, record_id=record_id)
    assert row["accountid"] == record_id
    assert [r["name"] for r in sandbox.rows("accounts")] == ["Exactly once"]
    assert client.stats.requests["GET accounts"] == 1  # the read that resolved the ambiguity


def test_create_with_taken_id_on_a_clear_first_attempt_raises(client: DataverseClient) -> None:
    record_id = str(uuid.uuid4())
    client.create("accounts", {"name": "First"}, record_id=record_id)
    with pytest.raises(AlreadyExistsError):
        client.create("accounts", {"name": "Second"}, record_id=record_id)


def test_product_starts_as_draft_and_state_sets_default_status(client: DataverseClient) -> None:
    product = client.create(
        "products", {"productnumber": "1000", "name": "Bicycle", "price": 4000, "producttypecode": 1}
    )
    assert (product["statecode"], product["statuscode"]) == (2, 0)
    active = client.update("products", product["productid"], {"statecode": 0}, etag=product["@odata.etag"])
    assert (active["statecode"], active["statuscode"]) == (0, 1)


def test_documented_errors_carry_an_empty_code(client: DataverseClient, http: httpx.Client) -> None:
    """404 and both 412s look as in the Web API documentation's examples: `"code": ""`."""
    row = client.create("accounts", {"name": "Versioned"})
    client.update("accounts", row["accountid"], {"name": "v2"}, etag=row["@odata.etag"])
    stale = http.patch(
        f"accounts({row['accountid']})", json={"name": "x"}, headers={"If-Match": row["@odata.etag"]}
    )
    assert stale.status_code == 412
    assert stale.json()["error"] == {
        "code": "",
        "message": "The version of the existing record doesn't match the RowVersion property provided.",
    }
    with pytest.raises(ConcurrencyError) as info:  # If-Match was sent: a stale version, code or not
        client.update("accounts", row["accountid"], {"name": "x"}, etag=row["@odata.etag"])
    assert info.value.code == ""
    exists = http.patch("products(productnumber='K-1')", json={"name": "k"}, headers={"If-None-Match": "*"})
    assert exists.status_code == 204
    again = http.patch("products(productnumber='K-1')", json={"name": "k"}, headers={"If-None-Match": "*"})
    assert (again.status_code, again.json()["error"]["code"]) == (412, "")


def test_a_412_on_create_without_a_code_means_it_exists(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    """A POST carries no If-Match, so its 412 means "already exists" whatever the code says."""
    sandbox.injector.add({"action": "status", "status": 412, "method": "POST", "path_contains": "accounts"})
    with pytest.raises(AlreadyExistsError) as info:
        client.create("accounts", {"name": "Taken"}, record_id=str(uuid.uuid4()))
    assert (info.value.status, info.value.code) == (412, "")


def test_ambiguous_create_recovers_through_a_412_without_a_code(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    """The create commits but its answer is lost; the read that follows misses it (404, empty code);
    the resent create is refused with a 412 without 0x80040237. The client reads again and returns
    the record instead of taking the 412 for a concurrency error."""
    record_id = str(uuid.uuid4())
    sandbox.injector.add(
        {
            "action": "commit_then_fail",
            "method": "POST",
            "path_contains": "accounts",
            "status": 503,
            "times": 1,
        }
    )
    sandbox.injector.add(
        {"action": "status", "status": 404, "method": "GET", "path_contains": "accounts", "times": 1}
    )
    sandbox.injector.add(
        {"action": "status", "status": 412, "method": "POST", "path_contains": "accounts", "times": 1}
    )
    row = client.create("accounts", {"name": "Exactly once"}, record_id=record_id)
    assert row["accountid"] == record_id
    assert [r["name"] for r in sandbox.rows("accounts")] == ["Exactly once"]
    assert client.stats.requests["POST accounts"] == 2
    assert client.stats.requests["GET accounts"] == 2
