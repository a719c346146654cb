"""Webhooks out (docs/dataverse-sandbox.md#sources): registration, the RemoteExecutionContext, auth,
retries, failures."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from devstack.dataverse.config import INTEGRATION_USER_ID, ROOT_BUSINESS_UNIT_ID, SALES_USER_ID
from devstack.serve import ServerHandle
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import ValidationError

from .conftest import Receiver

pytestmark = pytest.mark.integration

# Top-level keys of the documented sample, in order:
# https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks
SAMPLE_KEYS = [
    "BusinessUnitId",
    "CorrelationId",
    "Depth",
    "InitiatingUserId",
    "InputParameters",
    "IsExecutingOffline",
    "IsInTransaction",
    "IsOfflinePlayback",
    "IsolationMode",
    "MessageName",
    "Mode",
    "OperationCreatedOn",
    "OperationId",
    "OrganizationId",
    "OrganizationName",
    "OutputParameters",
    "OwningExtension",
    "ParentContext",
    "PostEntityImages",
    "PreEntityImages",
    "PrimaryEntityId",
    "PrimaryEntityName",
    "RequestId",
    "SecondaryEntityName",
    "SharedVariables",
    "Stage",
    "UserId",
]
ENTITY_KEYS = [
    "Attributes",
    "EntityState",
    "FormattedValues",
    "Id",
    "KeyAttributes",
    "LogicalName",
    "RelatedEntities",
    "RowVersion",
]


def register(
    client: DataverseClient,
    receiver: Receiver,
    message: str,
    table: str,
    attributes: list[str],
    image: list[str] | None = None,
) -> tuple[str, str]:
    endpoint = client.ensure_webhook_endpoint("bc-sync", receiver.url, "WebhookKey", "s3cret")
    step = client.ensure_step(endpoint, message, table, attributes, image)
    return endpoint, step


def attributes(entity: dict) -> dict:
    return {a["key"]: a["value"] for a in entity["Attributes"]}


def test_update_delivers_the_documented_context(
    client: DataverseClient, sandbox: DataverseSandbox, receiver: Receiver, base_url: str
) -> None:
    _, step = register(
        client, receiver, "Update", "contact", ["firstname", "lastname"], image=["fullname", "emailaddress1"]
    )
    contact = client.create(
        "contacts", {"firstname": "Jim", "lastname": "Glynn", "emailaddress1": "j@example.com"}
    )
    sales = DataverseClient(base_url, StaticTokenCredential("sales-user"))
    sales.update("contacts", contact["contactid"], {"firstname": "James"}, etag=contact["@odata.etag"])
    sales.close()
    assert sandbox.webhooks.flush(5)
    [request] = receiver.requests
    assert request["query"] == {"code": "s3cret"}
    headers = request["headers"]
    assert headers["x-ms-dynamics-organization"] == "bcsyncdev.crm.dynamics.com"
    assert headers["x-ms-dynamics-entity-name"] == "contact"
    assert headers["x-ms-dynamics-request-name"] == "Update"
    assert headers["x-ms-correlation-request-id"]
    raw = request["body"].decode()
    assert '"Entity:http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts"' in raw  # WCF escaping
    body = json.loads(raw)
    assert list(body) == SAMPLE_KEYS
    assert body["InitiatingUserId"] == body["UserId"] == SALES_USER_ID
    assert body["BusinessUnitId"] == ROOT_BUSINESS_UNIT_ID
    assert (body["MessageName"], body["Stage"], body["Mode"], body["Depth"]) == ("Update", 40, 1, 1)
    assert body["PrimaryEntityName"] == "contact" and body["PrimaryEntityId"] == contact["contactid"]
    assert body["OwningExtension"]["Id"] == step
    assert body["OperationCreatedOn"].startswith("/Date(") and body["OperationCreatedOn"].endswith("+0000)/")
    target = body["InputParameters"][0]["value"]
    assert body["InputParameters"][0]["key"] == "Target"
    assert target["__type"] == "Entity:http://schemas.microsoft.com/xrm/2011/Contracts"
    assert list(target)[1:] == ENTITY_KEYS
    values = attributes(target)
    assert set(values) == {
        "firstname",
        "contactid",
        "fullname",
        "modifiedon",
        "modifiedby",
        "modifiedonbehalfby",
    }
    assert values["firstname"] == "James" and values["fullname"] == "James Glynn"
    assert values["modifiedon"].startswith("/Date(")
    assert values["modifiedby"]["Id"] == SALES_USER_ID and values["modifiedby"]["LogicalName"] == "systemuser"
    images = {i["key"]: attributes(i["value"]) for i in body["PostEntityImages"]}
    assert images["AsynchronousStepPrimaryName"] == {
        "fullname": "James Glynn",
        "contactid": contact["contactid"],
    }
    assert images["PostImage"] == {"fullname": "James Glynn", "emailaddress1": "j@example.com"}
    assert body["ParentContext"]["Stage"] == 30
    [delivery] = sandbox.webhooks.deliveries()
    assert delivery.status == "delivered" and delivery.http_status == 200


def test_filtering_attributes_decide_what_fires(
    client: DataverseClient, sandbox: DataverseSandbox, receiver: Receiver
) -> None:
    register(client, receiver, "Update", "account", ["name"])
    account = client.create("accounts", {"name": "A"})
    account = client.update(
        "accounts", account["accountid"], {"telephone1": "1"}, etag=account["@odata.etag"]
    )
    assert sandbox.webhooks.flush(5) and receiver.requests == []
    client.update(
        "accounts", account["accountid"], {"name": "A"}, etag=account["@odata.etag"]
    )  # same value fires too
    assert sandbox.webhooks.flush(5) and len(receiver.requests) == 1
    body = json.loads(receiver.requests[0]["body"])
    assert body["InitiatingUserId"] == INTEGRATION_USER_ID


def test_create_and_delete_messages(
    client: DataverseClient, sandbox: DataverseSandbox, receiver: Receiver
) -> None:
    register(client, receiver, "Create", "account", [])
    register(client, receiver, "Delete", "account", [])
    account = client.create("accounts", {"name": "Short-lived", "customertypecode": 3, "creditlimit": 10})
    client.delete("accounts", account["accountid"])
    assert sandbox.webhooks.flush(5)
    bodies = sorted((json.loads(r["body"]) for r in receiver.requests), key=lambda b: b["MessageName"])
    created, deleted = bodies
    assert created["MessageName"] == "Create"
    assert created["OutputParameters"] == [{"key": "id", "value": account["accountid"]}]
    values = attributes(created["InputParameters"][0]["value"])
    assert values["customertypecode"] == {
        "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts",
        "Value": 3,
    }
    assert values["creditlimit"]["__type"].startswith("Money:") and values["creditlimit"]["Value"] == 10
    assert deleted["MessageName"] == "Delete"
    reference = deleted["InputParameters"][0]["value"]
    assert reference["__type"].startswith("EntityReference:") and reference["Id"] == account["accountid"]


def test_registration_is_idempotent(
    client: DataverseClient, receiver: Receiver, sandbox: DataverseSandbox
) -> None:
    endpoint, step = register(client, receiver, "Update", "account", ["name", "telephone1"])
    again_endpoint, again_step = register(client, receiver, "Update", "account", ["telephone1", "name"])
    assert (again_endpoint, again_step) == (endpoint, step)
    assert len(client.list_webhook_endpoints()) == 1
    changed = client.ensure_step(endpoint, "Update", "account", ["name"])
    assert changed == step
    [listed] = client.list_steps(endpoint)
    assert listed["filteringattributes"] == "name"
    endpoint_row = sandbox.get("serviceendpoints", endpoint)
    assert endpoint_row is not None and endpoint_row["contract"] == 8


def test_header_auth_from_settings_xml(
    client: DataverseClient, sandbox: DataverseSandbox, receiver: Receiver
) -> None:
    endpoint = client.ensure_webhook_endpoint("hdr", receiver.url, "HttpHeader", {"x-functions-key": "k1"})
    client.ensure_step(endpoint, "Create", "account", None)
    client.create("accounts", {"name": "A"})
    assert sandbox.webhooks.flush(5)
    assert receiver.requests[0]["headers"]["x-functions-key"] == "k1"
    assert receiver.requests[0]["query"] == {}


def test_503_is_retried_once_and_other_failures_become_failed_system_jobs(
    client: DataverseClient, sandbox: DataverseSandbox, receiver: Receiver
) -> None:
    _, step = register(client, receiver, "Create", "account", [])
    receiver.statuses.extend([503, 200])
    client.create("accounts", {"name": "Retried"})
    assert sandbox.webhooks.flush(5)
    assert [d.attempts for d in sandbox.webhooks.deliveries()] == [2]
    receiver.statuses.extend([500])
    account = client.create("accounts", {"name": "Failed"})
    assert sandbox.webhooks.flush(5)
    failed = [d for d in sandbox.webhooks.deliveries() if d.status == "failed"]
    assert len(failed) == 1 and failed[0].attempts == 1 and failed[0].http_status == 500
    jobs = list(
        client.query("asyncoperations", filter=f"statuscode eq 31 and _owningextensionid_value eq {step}")
    )
    assert len(jobs) == 1
    assert jobs[0]["_regardingobjectid_value"] == account["accountid"]
    assert "500" in jobs[0]["message"]


def test_only_loopback_urls_can_be_registered(client: DataverseClient, http: httpx.Client) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        client.ensure_webhook_endpoint("bad", "https://example.com/hook", "WebhookKey", "k")
    response = http.post(
        "serviceendpoints", json={"name": "x", "contract": 8, "url": "http://10.0.0.1:7071/api/x"}
    )
    assert response.status_code == 400


def test_the_write_does_not_wait_for_the_receiver(
    client: DataverseClient, sandbox: DataverseSandbox, receiver: Receiver, dv_server: ServerHandle
) -> None:
    register(client, receiver, "Create", "account", [])
    receiver.delay = 1.0
    started = time.monotonic()
    client.create("accounts", {"name": "Fast"})
    assert time.monotonic() - started < 0.5
    listed = httpx.get(f"{dv_server.url}/_sandbox/webhooks?payload=false").json()
    assert [d["status"] for d in listed["deliveries"]] == ["pending"]
    flushed = httpx.post(f"{dv_server.url}/_sandbox/webhooks/flush", json={"timeout": 5})
    assert flushed.json() == {"flushed": True, "pending": 0}
    assert sandbox.webhooks.deliveries()[0].status == "delivered"
