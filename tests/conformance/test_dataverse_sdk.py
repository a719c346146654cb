"""Microsoft's Dataverse SDK for Python (`powerplatform-dataverse-client`) against the sandbox, unpatched.

The SDK refuses plain HTTP, so the sandbox is served over TLS on loopback with a certificate generated
here (none is committed); the SDK's HTTP library (requests) is pointed at it with `REQUESTS_CA_BUNDLE`,
its documented trust override. The calls are the ones the SDK's README shows its users.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.models.filters import col
from PowerPlatform.Dataverse.models.upsert import UpsertItem

from devstack.dataverse import DataverseSandbox, create_app
from devstack.serve import ServerHandle, serve_in_thread
from tests.support.tls import write_loopback_certificate

pytestmark = pytest.mark.integration


class SandboxToken:
    """An azure-core TokenCredential answering the sandbox's integration-user token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("integration-user", int(time.time()) + 3600)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, DataverseSandbox]]:
    cert, key = write_loopback_certificate(tmp_path_factory.mktemp("tls"))
    app = create_app()
    handle = serve_in_thread(app, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        yield handle, app.state.sandbox
    handle.stop()


@pytest.fixture
def sandbox(tls_server: tuple[ServerHandle, DataverseSandbox]) -> DataverseSandbox:
    tls_server[1].reset()
    return tls_server[1]


@pytest.fixture
def sdk(
    tls_server: tuple[ServerHandle, DataverseSandbox], sandbox: DataverseSandbox
) -> Iterator[DataverseClient]:
    assert tls_server[0].url.startswith("https://127.0.0.1:")
    with DataverseClient(tls_server[0].url, SandboxToken()) as client:
        yield client


def test_crud(sdk: DataverseClient, sandbox: DataverseSandbox) -> None:
    account_id = sdk.records.create(
        "account", {"name": "Contoso", "accountnumber": "SDK-1", "creditlimit": 5000}
    )
    record = sdk.records.retrieve("account", account_id, select=["name", "creditlimit"])
    assert (record["name"], record["creditlimit"]) == ("Contoso", 5000)
    sdk.records.update("account", account_id, {"name": "Contoso Ltd"})
    assert sandbox.get("accounts", account_id)["name"] == "Contoso Ltd"  # type: ignore[index]
    sdk.records.delete("account", account_id)
    assert sandbox.get("accounts", account_id) is None


def test_bulk_create_update_and_bulk_delete_job(sdk: DataverseClient, sandbox: DataverseSandbox) -> None:
    ids = sdk.records.create("account", [{"name": f"Bulk {i}", "accountnumber": f"B{i}"} for i in range(5)])
    assert len(ids) == 5 and {r["accountid"] for r in sandbox.rows("accounts")} == set(ids)
    sdk.records.update("account", ids[:2], {"description": "updated together"})
    assert sum(r["description"] == "updated together" for r in sandbox.rows("accounts")) == 2
    job_id = sdk.records.delete("account", ids[2:])  # a list goes through the BulkDelete action
    assert job_id
    sandbox.advance_clock(sandbox.config.bulk_delete_delay_seconds + 1)
    job = sdk.records.retrieve("asyncoperation", job_id, select=["statecode", "statuscode", "operationtype"])
    assert (job["operationtype"], job["statecode"], job["statuscode"]) == (13, 3, 30)
    assert {r["accountid"] for r in sandbox.rows("accounts")} == set(ids[:2])


def test_upsert_by_alternate_key(sdk: DataverseClient, sandbox: DataverseSandbox) -> None:
    sdk.records.upsert(
        "product", [UpsertItem(alternate_key={"productnumber": "UP-1"}, record={"name": "First"})]
    )
    sdk.records.upsert(
        "product", [UpsertItem(alternate_key={"productnumber": "UP-1"}, record={"name": "Renamed"})]
    )
    assert [(r["productnumber"], r["name"]) for r in sandbox.rows("products")] == [("UP-1", "Renamed")]
    sdk.records.upsert(
        "product",
        [
            UpsertItem(alternate_key={"productnumber": f"UP-{i}"}, record={"name": f"Many {i}"})
            for i in (1, 2, 3)
        ],
    )
    rows = {r["productnumber"]: r["name"] for r in sandbox.rows("products")}
    assert rows == {"UP-1": "Many 1", "UP-2": "Many 2", "UP-3": "Many 3"}


def test_in_not_in_filters_and_paging(sdk: DataverseClient, sandbox: DataverseSandbox) -> None:
    sandbox.seed("accounts", [{"name": f"Row {i:02d}", "accountnumber": f"R{i:02d}"} for i in range(12)])
    chosen = (
        sdk.query.builder("account")
        .select("name")
        .where(col("accountnumber").in_(["R01", "R03", "R05"]))
        .execute()
    )
    assert sorted(r["name"] for r in chosen) == ["Row 01", "Row 03", "Row 05"]
    others = sdk.query.builder("account").select("name").where(col("accountnumber").not_in(["R00"])).execute()
    assert len(list(others)) == 11
    pages = list(sdk.query.builder("account").select("name").page_size(5).execute_pages())
    assert [len(list(p)) for p in pages] == [5, 5, 2]
    assert sandbox.counters.snapshot()  # the sandbox saw the traffic


def test_batch_with_change_set(sdk: DataverseClient, sandbox: DataverseSandbox) -> None:
    batch = sdk.batch.new()
    batch.records.create("account", {"name": "Batched", "accountnumber": "BA-1"})
    with batch.changeset() as change_set:
        change_set.records.create("contact", {"firstname": "Alice", "lastname": "Able"})
    result = batch.execute()
    assert len(result.succeeded) == 2
    assert [r["name"] for r in sandbox.rows("accounts")] == ["Batched"]
    assert [r["firstname"] for r in sandbox.rows("contacts")] == ["Alice"]


def test_table_and_column_metadata(sdk: DataverseClient, sandbox: DataverseSandbox) -> None:
    info = sdk.tables.get("account")
    assert info is not None
    assert (info.entity_set_name, info.primary_id_attribute, info.primary_name_attribute) == (
        "accounts",
        "accountid",
        "name",
    )
    columns = {c["LogicalName"] for c in sdk.tables.list_columns("account")}
    assert {"name", "accountnumber", "paymenttermscode", "primarycontactid"} <= columns
    assert sdk.tables.get_alternate_keys("account") == []  # Dataverse defines none on account
    keys = sdk.tables.get_alternate_keys("product")
    assert [k.key_attributes for k in keys] == [["productnumber"]]
    # A picklist given by label: the SDK reads the option set (PicklistAttributeMetadata cast) to map it.
    account_id = sdk.records.create("account", {"name": "Labelled", "paymenttermscode": "Net 45"})
    assert sandbox.get("accounts", account_id)["paymenttermscode"] == 3  # type: ignore[index]
