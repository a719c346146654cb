"""Conformance of webhooks with BC's documentation (docs/bc-sandbox.md#sources): handshake,
lifecycle, coalescing, collections, retries."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.bc.conftest import Bc, Receiver, wait_for
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration

# The documented sample: every entry has exactly these keys.
# https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions
SAMPLE_ENTRY_KEYS = {"subscriptionId", "clientState", "expirationDateTime", "resource", "changeType",
                     "lastModifiedDateTime"}  # fmt: skip


def subscribe(bc: Bc, receiver: Receiver, entity_set: str = "customers", state: str = "s3cret") -> dict:
    body = {
        "notificationUrl": receiver.url,
        "resource": f"/api/v2.0/companies({bc.company})/{entity_set}",
        "clientState": state,
    }
    response = bc.http.post(f"{bc.base}/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_create_performs_the_handshake_and_answers_201_with_the_subscription(
    bc: Bc, receiver: Receiver
) -> None:
    sub = subscribe(bc, receiver)
    assert len(receiver.handshakes) == 1
    for key in ("subscriptionId", "notificationUrl", "resource", "timestamp", "userId",
                "lastModifiedDateTime", "clientState", "expirationDateTime", "@odata.etag"):  # fmt: skip
        assert key in sub
    assert sub["clientState"] == "s3cret" and sub["notificationUrl"] == receiver.url
    listed = bc.http.get(f"{bc.base}/subscriptions").json()["value"]
    assert [s["subscriptionId"] for s in listed] == [sub["subscriptionId"]]


@pytest.mark.parametrize("answer", ["wrong", "400", "slow"])
def test_a_failed_handshake_creates_nothing(bc: Bc, receiver: Receiver, answer: str) -> None:
    receiver.handshake_answer = answer
    bc.sandbox.set_webhook_config(handshake_timeout_seconds=0.3)
    receiver.slow_seconds = 0.6
    body = {"notificationUrl": receiver.url, "resource": f"/api/v2.0/companies({bc.company})/customers"}
    response = bc.http.post(f"{bc.base}/subscriptions", json=body)
    assert_error(response, 400, "BadRequest")
    assert bc.http.get(f"{bc.base}/subscriptions").json()["value"] == []


def test_unsupported_resources_and_foreign_hosts_are_refused(bc: Bc, receiver: Receiver) -> None:
    for entity_set in ("contacts", "salespeoplePurchasers"):
        body = {
            "notificationUrl": receiver.url,
            "resource": f"/api/v2.0/companies({bc.company})/{entity_set}",
        }
        response = bc.http.post(f"{bc.base}/subscriptions", json=body)
        assert "does not support webhook" in assert_error(response, 400, "BadRequest_ResourceNotSupported")
    body = {
        "notificationUrl": "https://example.com/hook",
        "resource": f"api/v2.0/companies({bc.company})/items",
    }
    assert "loopback" in assert_error(bc.http.post(f"{bc.base}/subscriptions", json=body), 400, "BadRequest")
    assert receiver.handshakes == []


def test_renew_requires_if_match_and_repeats_the_handshake(bc: Bc, receiver: Receiver) -> None:
    sub = subscribe(bc, receiver)
    url = f"{bc.base}/subscriptions('{sub['subscriptionId']}')"
    assert_error(bc.http.patch(url, json={}), 400, "BadRequest_InvalidToken")
    bc.sandbox.advance_clock(3600)
    renewed = bc.http.patch(url, json={}, headers={"If-Match": sub["@odata.etag"]})
    assert renewed.status_code == 200
    assert len(receiver.handshakes) == 2
    assert renewed.json()["expirationDateTime"] > sub["expirationDateTime"]
    stale = bc.http.patch(url, json={}, headers={"If-Match": sub["@odata.etag"]})
    assert_error(stale, 409, "Request_EntityChanged")
    receiver.handshake_answer = "wrong"
    refused = bc.http.patch(url, json={}, headers={"If-Match": renewed.json()["@odata.etag"]})
    assert refused.status_code == 400


def test_subscriptions_expire_after_three_days(bc: Bc, receiver: Receiver) -> None:
    sub = subscribe(bc, receiver)
    bc.sandbox.advance_clock(3 * 24 * 3600 - 60)
    assert len(bc.http.get(f"{bc.base}/subscriptions").json()["value"]) == 1
    bc.sandbox.advance_clock(120)
    assert bc.http.get(f"{bc.base}/subscriptions").json()["value"] == []
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.change("customers", customer["id"], {"city": "After expiry"})
    bc.sandbox.flush_webhooks()
    assert receiver.notifications == []
    gone = bc.http.delete(f"{bc.base}/subscriptions('{sub['subscriptionId']}')", headers={"If-Match": "*"})
    assert gone.status_code == 404


def test_delete_removes_the_subscription(bc: Bc, receiver: Receiver) -> None:
    sub = subscribe(bc, receiver)
    url = f"{bc.base}/subscriptions('{sub['subscriptionId']}')"
    assert_error(bc.http.delete(url), 400, "BadRequest_InvalidToken")
    assert bc.http.delete(url, headers={"If-Match": sub["@odata.etag"]}).status_code == 204
    assert bc.http.get(f"{bc.base}/subscriptions").json()["value"] == []


def test_notification_body_matches_the_documented_sample(bc: Bc, receiver: Receiver) -> None:
    customers_sub = subscribe(bc, receiver, "customers", "state-c")
    items_sub = subscribe(bc, receiver, "items", "state-i")
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    item = bc.http.get(bc.entity_url("items")).json()["value"][0]
    changed = bc.http.patch(bc.entity_url("customers", customer["id"]), json={"city": "X"},
                            headers={"If-Match": customer["@odata.etag"]}).json()  # fmt: skip
    bc.http.delete(bc.entity_url("items", item["id"]), headers={"If-Match": item["@odata.etag"]})
    assert bc.sandbox.flush_webhooks() == 1
    assert len(receiver.notifications) == 1  # several subscriptions, one POST
    body = receiver.notifications[0]
    assert set(body) == {"value"}
    by_sub = {e["subscriptionId"]: e for e in body["value"]}
    assert all(set(e) == SAMPLE_ENTRY_KEYS for e in body["value"])
    c = by_sub[customers_sub["subscriptionId"]]
    assert c["changeType"] == "updated" and c["clientState"] == "state-c"
    assert c["resource"] == f"api/v2.0/companies({bc.company})/customers({customer['id']})"
    # Stamped in OnDatabaseModify, before the record's SystemModifiedAt: a little earlier.
    assert c["lastModifiedDateTime"] < changed["lastModifiedDateTime"]
    assert c["expirationDateTime"] == customers_sub["expirationDateTime"]
    i = by_sub[items_sub["subscriptionId"]]
    assert i["changeType"] == "deleted" and i["resource"].endswith(f"/items({item['id']})")


def test_changes_within_the_window_are_coalesced(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=0.4)
    subscribe(bc, receiver)
    record = bc.http.post(bc.entity_url("customers"), json={"displayName": "New"}).json()
    for n in range(3):
        record = bc.sandbox.change("customers", record["id"], {"city": f"C{n}"})
    time.sleep(0.1)
    assert receiver.notifications == []  # still inside the window
    assert wait_for(lambda: len(receiver.notifications) == 1, timeout=3)
    entries = receiver.entries()
    # Only an update merges into an earlier update: created, then the three updates as one.
    assert [e["changeType"] for e in entries] == ["created", "updated"]
    assert entries[1]["lastModifiedDateTime"] < record["lastModifiedDateTime"]
    assert entries[0]["lastModifiedDateTime"] < entries[1]["lastModifiedDateTime"]


def test_an_update_then_a_delete_are_two_entries(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=60)
    subscribe(bc, receiver)
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    updated = bc.http.patch(bc.entity_url("customers", customer["id"]), json={"city": "Gone soon"},
                            headers={"If-Match": customer["@odata.etag"]}).json()  # fmt: skip
    bc.http.delete(bc.entity_url("customers", customer["id"]), headers={"If-Match": updated["@odata.etag"]})
    bc.sandbox.flush_webhooks()
    assert [e["changeType"] for e in receiver.entries()] == ["updated", "deleted"]


def test_an_update_that_changes_nothing_is_not_notified_and_keeps_the_etag(
    bc: Bc, receiver: Receiver
) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=60)
    subscribe(bc, receiver)
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.advance_clock(5)  # the last real change is more than 2 s before the null update
    same = bc.http.patch(bc.entity_url("customers", customer["id"]), json={"city": customer["city"]},
                         headers={"If-Match": customer["@odata.etag"]})  # fmt: skip
    assert same.status_code == 200
    assert same.json()["@odata.etag"] == customer["@odata.etag"]
    assert same.json()["lastModifiedDateTime"] == customer["lastModifiedDateTime"]
    bc.sandbox.flush_webhooks()
    assert receiver.notifications == []


def test_a_null_update_within_two_seconds_of_a_change_is_notified(bc: Bc, receiver: Receiver) -> None:
    # IsNullUpdate cannot tell it from a change another subscriber made just before: BC sends it.
    bc.sandbox.set_webhook_config(coalesce_seconds=60)
    subscribe(bc, receiver)
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.flush_webhooks()
    changed = bc.http.patch(bc.entity_url("customers", customer["id"]), json={"city": "Real"},
                            headers={"If-Match": customer["@odata.etag"]}).json()  # fmt: skip
    bc.sandbox.flush_webhooks()
    receiver.notifications.clear()
    bc.http.patch(bc.entity_url("customers", customer["id"]), json={"city": "Real"},
                  headers={"If-Match": changed["@odata.etag"]})  # fmt: skip
    bc.sandbox.flush_webhooks()
    assert [e["changeType"] for e in receiver.entries()] == ["updated"]


def test_more_than_1000_changes_in_the_window_become_one_collection_entry(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=60)
    subscribe(bc, receiver)
    ids = bc.sandbox.seed_customers(1001)
    for record_id in ids:
        bc.sandbox.change("customers", record_id, {"city": "Bulk"})
    bc.sandbox.flush_webhooks()
    entries = receiver.entries()
    assert len(entries) == 1
    entry = entries[0]
    assert entry["changeType"] == "collection" and set(entry) == SAMPLE_ENTRY_KEYS
    path, _, query = entry["resource"].partition("?")
    assert path == f"/api/v2.0/companies({bc.company})/customers"
    assert query.startswith("$filter=lastModifiedDateTime%20gt%20")
    filtered = bc.http.get(f"{bc.url}/v2.0/contoso/production{path}?{query.replace('%20', ' ')}")
    assert {r["id"] for r in filtered.json()["value"]} == set(ids)


def test_a_collection_with_a_delete_is_the_bare_collection_url(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=60, collection_threshold=5)
    subscribe(bc, receiver)
    ids = bc.sandbox.seed_customers(6)
    for record_id in ids:
        bc.sandbox.change("customers", record_id, {"city": "Bulk"})
    bc.sandbox.store.delete(bc.company, "customers", ids[0], "SALES", if_match="*")
    bc.sandbox.flush_webhooks()
    entries = receiver.entries()
    assert len(entries) == 1 and entries[0]["changeType"] == "collection"
    assert entries[0]["resource"] == f"/api/v2.0/companies({bc.company})/customers"


def test_exactly_1000_changes_are_sent_one_by_one(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=60)
    subscribe(bc, receiver)
    for record_id in bc.sandbox.seed_customers(1000):
        bc.sandbox.change("customers", record_id, {"city": "Bulk"})
    bc.sandbox.flush_webhooks()
    entries = receiver.entries()
    assert len(entries) == 1000 and {e["changeType"] for e in entries} == {"updated"}


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_retriable_answers_are_retried(bc: Bc, receiver: Receiver, status: int) -> None:
    subscribe(bc, receiver)
    receiver.statuses.extend([status, status])
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.change("customers", customer["id"], {"city": "Retry"})
    bc.sandbox.flush_webhooks()
    outcomes = [d["outcome"] for d in bc.sandbox.webhooks.deliveries]
    assert outcomes == ["retry", "retry", "delivered"]
    assert len(receiver.notifications) == 3 and receiver.notifications[0] == receiver.notifications[2]
    assert len(bc.http.get(f"{bc.base}/subscriptions").json()["value"]) == 1


def test_retries_stop_after_the_schedule(bc: Bc, receiver: Receiver) -> None:
    subscribe(bc, receiver)
    receiver.statuses.extend([500] * 10)
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.change("customers", customer["id"], {"city": "Down"})
    bc.sandbox.flush_webhooks()
    outcomes = [d["outcome"] for d in bc.sandbox.webhooks.deliveries]
    # BC's schedule has 5 retries (the test config keeps the count, 50 ms apart); when the 6th
    # attempt fails the subscription is deleted.
    assert outcomes == ["retry"] * 5 + ["gave_up"]
    assert bc.http.get(f"{bc.base}/subscriptions").json()["value"] == []
    assert bc.sandbox.counters.snapshot()["webhooks"]["subscription_deleted"] == 1


def test_the_default_retry_schedule_is_bcs_get_delay_time_for_attempt() -> None:
    from devstack.bc.config import BcSandboxConfig

    assert BcSandboxConfig().retry_delays_seconds == (60.0, 60.0, 600.0, 6000.0, 60000.0)


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_any_other_non_success_answer_deletes_the_subscription(
    bc: Bc, receiver: Receiver, status: int
) -> None:
    subscribe(bc, receiver)
    receiver.statuses.append(status)
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.change("customers", customer["id"], {"city": "Refused"})
    bc.sandbox.flush_webhooks()
    assert [d["outcome"] for d in bc.sandbox.webhooks.deliveries] == ["refused"]
    assert bc.http.get(f"{bc.base}/subscriptions").json()["value"] == []
    assert bc.sandbox.counters.snapshot()["webhooks"]["subscription_deleted"] == 1


def test_only_changes_of_the_subscribed_company_and_set_are_notified(bc: Bc, receiver: Receiver) -> None:
    from devstack.bc import SECOND_COMPANY_ID

    subscribe(bc, receiver, "items")
    other = bc.sandbox.store.rows(SECOND_COMPANY_ID, "items")[0]
    bc.sandbox.change("items", other["id"], {"displayName": "Elsewhere"}, company_id=SECOND_COMPANY_ID)
    customer = bc.http.get(bc.entity_url("customers")).json()["value"][0]
    bc.sandbox.change("customers", customer["id"], {"city": "Not items"})
    bc.sandbox.flush_webhooks()
    assert receiver.notifications == []


def test_at_most_200_subscriptions(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(subscription_lifetime_seconds=3600)
    for _ in range(200):
        subscribe(bc, receiver)
    body = {"notificationUrl": receiver.url, "resource": f"/api/v2.0/companies({bc.company})/customers"}
    response = bc.http.post(f"{bc.base}/subscriptions", json=body)
    assert "200" in assert_error(response, 400, "Application_DialogException")


def test_subscriptions_work_under_the_tenant_prefix_and_bare(bc: Bc, receiver: Receiver) -> None:
    subscribe(bc, receiver)
    bare = httpx.get(f"{bc.url}/api/v2.0/subscriptions", headers={"Authorization": "Bearer integration-user"})
    assert len(bare.json()["value"]) == 1


def test_webhook_supported_resources_list_what_can_be_subscribed(bc: Bc) -> None:
    runtime = f"{bc.url}/v2.0/contoso/production/api/microsoft/runtime/v1.0"
    url = f"{runtime}/companies({bc.company})/webhookSupportedResources"
    response = bc.http.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith(f"$metadata#companies({bc.company})/webhookSupportedResources")
    resources = [row["resource"] for row in body["value"]]
    assert all(set(row) == {"resource"} for row in body["value"])  # BC's page 5460 has one field
    assert {"v2.0/customers", "v2.0/items", "v2.0/salesOrders", "v2.0/vendors"} <= set(resources)
    # contacts and salespeoplePurchasers are not subscribable (docs/bc-sandbox.md), nor are the lines.
    assert not {"v2.0/contacts", "v2.0/salespeoplePurchasers", "v2.0/salesOrderLines"} & set(resources)
    for resource in resources:  # every one listed is served, and its subscription passes validation
        entity_set = resource.removeprefix("v2.0/")
        assert bc.http.get(bc.entity_url(entity_set), params={"$top": "1"}).status_code == 200, resource
    sales = bc.http.get(url, params={"$filter": "startswith(resource,'v2.0/sales')", "$select": "resource"})
    assert [r["resource"] for r in sales.json()["value"]] == sorted(r for r in resources if "/sales" in r)
    assert_error(bc.http.post(url, json={}), 405, "BadRequest_MethodNotAllowed")
    assert_error(
        bc.http.get(f"{runtime}/companies({bc.company})/customers"), 404, "BadRequest_ResourceNotFound"
    )
    assert_error(
        bc.http.get(f"{runtime}/companies(11111111-2222-3333-4444-555555555555)/webhookSupportedResources"),
        404,
        "BadRequest_NotFound",
    )
    assert httpx.get(url).status_code == 401
