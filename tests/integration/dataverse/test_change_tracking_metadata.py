"""Change tracking per table as Dataverse: a delta request on a table without it is refused with
ChangeTrackingNotEnabledForEntity; an administrator turns it on with a PUT of the table's definition
(never PATCH, never off again) and publishes; the service's client reads the flag once per table."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.dataverse import CHANGE_TRACKING_NOT_ENABLED, DataverseClient
from shared.connectors.errors import AuthenticationError, ValidationError

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(base_url: str) -> Iterator[DataverseClient]:
    client = DataverseClient(base_url, StaticTokenCredential("admin-user"))
    yield client
    client.close()


def test_a_delta_request_on_a_table_without_change_tracking_is_refused(
    http: httpx.Client, sandbox: DataverseSandbox
) -> None:
    sandbox.set_change_tracking("accounts", False)

    response = http.get("accounts", params={"$select": "name"}, headers={"Prefer": "odata.track-changes"})

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": CHANGE_TRACKING_NOT_ENABLED,
        "message": "Entity account isn't enabled for change tracking.",
    }
    flag = http.get("EntityDefinitions(LogicalName='account')", params={"$select": "ChangeTrackingEnabled"})
    assert flag.json()["ChangeTrackingEnabled"] is False
    # Without the preference the table is read as always.
    assert http.get("accounts", params={"$select": "name"}).status_code == 200


def test_the_client_reads_the_flag_once_and_an_administrator_turns_it_on(
    client: DataverseClient, admin: DataverseClient, sandbox: DataverseSandbox
) -> None:
    sandbox.set_change_tracking("accounts", False)
    created = client.create("accounts", {"name": "Made while untracked"}, select=["accountid"])

    assert client.change_tracking_enabled("account") is False
    assert client.change_tracking_enabled("account") is False
    with pytest.raises(ValidationError) as refused:
        client.changes("accounts", select=["accountid"], delta_link=None)
    assert refused.value.code == CHANGE_TRACKING_NOT_ENABLED
    assert client.stats.requests["GET EntityDefinitions"] == 1

    with pytest.raises(AuthenticationError):  # a customizer's job, not the integration user's
        client.enable_change_tracking("account")
    admin.enable_change_tracking("account")

    assert admin.stats.requests == {
        "GET EntityDefinitions": 1,
        "PUT EntityDefinitions": 1,
        "POST PublishXml": 1,
    }
    assert client.change_tracking_enabled("account", refresh=True) is True
    batch = client.changes("accounts", select=["accountid"], delta_link=None)
    # The first tracking request returns every row, as on Dataverse, then changes from here on.
    assert batch.full_scan and "$deltatoken=" in batch.delta_link
    assert [r["accountid"] for r in batch.upserted] == [created["accountid"]]


def test_metadata_is_updated_with_put_only_and_tracking_never_turned_off(
    base_url: str, sandbox: DataverseSandbox
) -> None:
    headers = {"Authorization": "Bearer admin-user", "Accept": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        definition = http.get("EntityDefinitions(LogicalName='account')").json()
        url = f"EntityDefinitions({definition['MetadataId']})"
        body = {k: v for k, v in definition.items() if k != "@odata.context"}

        patched = http.patch(url, json={"ChangeTrackingEnabled": False})
        assert patched.status_code == 400 and "PUT" in patched.json()["error"]["message"]
        off = http.put(url, json={**body, "ChangeTrackingEnabled": False})
        assert off.status_code == 400 and "can't be disabled" in off.json()["error"]["message"]
        renamed = http.put(url, json={**body, "EntitySetName": "clients"})
        assert renamed.status_code == 400 and "EntitySetName" in renamed.json()["error"]["message"]
        assert http.put(url, json=body).status_code == 204  # unchanged: accepted, nothing to do
        assert http.post("PublishXml", json={}).status_code == 400

    with httpx.Client(
        base_url=base_url, headers={"Authorization": "Bearer integration-user"}, timeout=10
    ) as http:
        refused = http.put(url, json=body)
        assert refused.status_code == 403
