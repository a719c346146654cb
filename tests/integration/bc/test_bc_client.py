"""`BusinessCentralClient` against the sandbox over real HTTP."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest

from shared import odata
from shared.connectors.business_central import WEBHOOK_SUPPORTED_ENTITY_SETS, BatchOperation, parse_resource
from shared.connectors.errors import (
    AlreadyExistsError,
    AmbiguousWriteError,
    ConcurrencyError,
    NotFoundError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.connectors.retry import RetryPolicy
from tests.integration.bc.conftest import Bc, Receiver

pytestmark = pytest.mark.integration


def test_paging_over_45000_customers_reads_each_once_in_three_requests(bc: Bc) -> None:
    seeded = set(bc.sandbox.seed_customers(45_000))
    with bc.client() as client:
        pages = list(client.query_pages(bc.company, "customers", select=["id", "number"]))
        assert [len(p) for p in pages] == [20_000, 20_000, 5_002]
        ids = [row["id"] for page in pages for row in page]
        assert len(ids) == len(set(ids)) and seeded <= set(ids)
        assert client.stats.total == 3 and client.stats.requests["GET customers"] == 3


def test_modified_since_returns_changes_oldest_first(bc: Bc) -> None:
    ids = bc.sandbox.seed_customers(50)
    with bc.client() as client:
        # The sandbox's clock, not this process's: an earlier test on the same sandbox may have
        # moved it forward (expiry, retry schedules), and then every seeded row looked newer.
        since = bc.sandbox.clock.now()
        time.sleep(0.01)
        for record_id in (ids[30], ids[5], ids[12]):
            bc.sandbox.change("customers", record_id, {"city": "Changed"})
            time.sleep(0.002)  # distinct milliseconds: BC orders equal timestamps by key, not by time
        rows = list(
            client.modified_since(bc.company, "customers", since, overlap=dt.timedelta(0), select=["city"])
        )
        assert [r["id"] for r in rows] == [ids[30], ids[5], ids[12]]
        assert all(r["city"] == "Changed" for r in rows)
        stamps = [r["lastModifiedDateTime"] for r in rows]
        assert stamps == sorted(stamps)
        with_overlap = list(
            client.modified_since(bc.company, "customers", since, overlap=dt.timedelta(hours=1))
        )
        assert len(with_overlap) == 52  # everything seeded in the last hour, the overlap re-reads it
        assert len(list(client.modified_since(bc.company, "customers", None))) == 52


def test_get_create_update_delete_with_etags(bc: Bc) -> None:
    with bc.client() as client:
        created = client.create(bc.company, "customers", {"displayName": "Client Co"})
        assert (
            client.get(bc.company, "customers", created["id"], select=["displayName"])["displayName"]
            == "Client Co"
        )
        updated = client.update(
            bc.company, "customers", created["id"], {"city": "Lima"}, etag=created["@odata.etag"]
        )
        assert updated["city"] == "Lima"
        with pytest.raises(ConcurrencyError) as info:
            client.update(
                bc.company, "customers", created["id"], {"city": "Quito"}, etag=created["@odata.etag"]
            )
        assert info.value.code == "Request_EntityChanged" and info.value.status == 409
        with pytest.raises(ConcurrencyError):
            client.delete(bc.company, "customers", created["id"], etag=created["@odata.etag"])
        client.delete(bc.company, "customers", created["id"], etag=updated["@odata.etag"])
        assert client.get(bc.company, "customers", created["id"]) is None
        client.delete(bc.company, "customers", created["id"], etag="*")  # already gone is fine
        with pytest.raises(NotFoundError):
            client.delete(bc.company, "customers", created["id"], etag="*", missing_ok=False)


def test_typed_errors_carry_bc_code_and_message(bc: Bc) -> None:
    with bc.client() as client:
        with pytest.raises(ValidationError) as info:
            client.create(bc.company, "customers", {"paymentTermsId": "11111111-2222-3333-4444-555555555555"})
        assert info.value.code == "Application_DialogException" and "paymentTermsId" in info.value.message
        with pytest.raises(AlreadyExistsError):
            client.create(bc.company, "customers", {"number": "C00010"})
        assert client.stats.retries == 0


def test_throttling_is_absorbed_by_retries_within_the_limit(bc: Bc) -> None:
    bc.sandbox.set_limits(requests_per_window=4, window_seconds=1)
    with bc.client(policy=RetryPolicy(max_attempts=6, max_total_seconds=10)) as client:
        for _ in range(8):
            assert client.companies()
        assert client.stats.throttled >= 1 and client.stats.retries == client.stats.throttled
    assert bc.sandbox.counters.snapshot()["throttled"]["rate"] >= 1
    bc.sandbox.set_limits(requests_per_window=1, window_seconds=60)
    with bc.client(policy=RetryPolicy(max_attempts=2, max_total_seconds=5)) as client:
        with pytest.raises(ThrottledError) as info:
            for _ in range(3):
                client.companies()
        assert info.value.retry_after is not None and info.value.retry_after >= 1


def test_transient_failures_are_retried_but_an_ambiguous_create_is_not(bc: Bc) -> None:
    with bc.client() as client:
        bc.sandbox.faults.add({"action": "status", "status": 500, "method": "GET", "times": 2})
        assert client.companies()
        assert client.stats.retries == 2
        bc.sandbox.faults.add({"action": "drop", "method": "POST", "path_contains": "customers"})
        with pytest.raises(AmbiguousWriteError):
            client.create(bc.company, "customers", {"displayName": "Maybe"})
        bc.sandbox.faults.add({"action": "commit_then_fail", "method": "POST", "path_contains": "customers"})
        with pytest.raises(TransientError):
            client.create(bc.company, "customers", {"displayName": "Committed"})
        names = [r["displayName"] for r in client.query(bc.company, "customers")]
        assert names.count("Committed") == 1  # never re-sent blindly


def test_batch_results_per_operation_and_atomic_rollback(bc: Bc) -> None:
    with bc.client() as client:
        first = next(client.query(bc.company, "customers"))
        ops = [
            BatchOperation("POST", "customers", body={"displayName": "B1"}),
            BatchOperation("PATCH", "customers", first["id"], {"city": "Stale"}, etag='W/"bogus"'),
            BatchOperation("GET", "customers", first["id"]),
        ]
        results = client.batch(bc.company, ops)
        assert [r.status for r in results] == [201, 409, 200]
        assert isinstance(results[1].error, ConcurrencyError) and results[0].ok
        atomic = client.batch(bc.company, ops[:2], atomic=True)
        # BC answers 201 for the rolled-back POST; the client reports it as not applied.
        assert [r.status for r in atomic] == [201, 409]
        assert not atomic[0].ok and atomic[0].error is not None and "rolled back" in atomic[0].error.message
        assert sum(r["displayName"] == "B1" for r in client.query(bc.company, "customers")) == 1
        many = [BatchOperation("GET", "customers", first["id"]) for _ in range(250)]
        assert len(client.batch(bc.company, many)) == 250
        assert client.stats.requests["POST $batch"] == 2 + 3


def test_many_queries_go_in_one_batch_and_a_long_answer_is_read_to_its_end(bc: Bc) -> None:
    ids = bc.sandbox.seed_customers(150)
    quoted = [odata.eq("id", uuid.UUID(i)) for i in ids]
    with bc.client() as client:
        before = client.stats.total
        filters = [odata.or_(*part) for part in odata.or_chunks(quoted[:120])]
        filters += [odata.eq("id", uuid.UUID(ids[149])), "displayName eq 'O''Neil & Co?'"]  # quote, &, ?
        rows = client.query_many(bc.company, "customers", filters, select=["id", "number"])
        assert sorted(r["id"] for r in rows) == sorted([*ids[:120], ids[149]])
        assert set(rows[0]) == {"@odata.etag", "id", "number"}
        assert client.stats.total - before == 1 and len(filters) > 3  # one `$batch` for all of them

        # A query whose answer has more than a page follows its next links.
        bc.sandbox.config.max_page_size = 40
        try:
            everything = client.query_many(bc.company, "customers", ["number ne ''"], select=["id"])
        finally:
            bc.sandbox.config.max_page_size = 20_000
        assert set(ids) <= {r["id"] for r in everything}
        # A refused query raises as `query` would.
        with pytest.raises(ValidationError):
            client.query_many(bc.company, "customers", ["nosuchfield eq 1"], select=["id"])


def test_subscription_lifecycle_and_resource_parsing(bc: Bc, receiver: Receiver) -> None:
    with bc.client() as client:
        resource = f"/api/v2.0/companies({bc.company})/customers"
        sub = client.create_subscription(receiver.url, resource, "state")
        assert [s["subscriptionId"] for s in client.list_subscriptions()] == [sub["subscriptionId"]]
        renewed = client.renew_subscription(sub["subscriptionId"], sub["@odata.etag"])
        assert len(receiver.handshakes) == 2 and renewed["@odata.etag"] != sub["@odata.etag"]
        customer = next(client.query(bc.company, "customers"))
        bc.sandbox.change("customers", customer["id"], {"city": "Notified"})
        bc.sandbox.flush_webhooks()
        entry = receiver.entries()[0]
        ref = parse_resource(entry["resource"], company_ids=[bc.company], entity_sets={"customers"})
        assert (ref.company_id, ref.entity_set, ref.record_id) == (bc.company, "customers", customer["id"])
        assert client.get(ref.company_id, ref.entity_set, ref.record_id)["city"] == "Notified"
        client.delete_subscription(sub["subscriptionId"], renewed["@odata.etag"])
        assert client.list_subscriptions() == []


def test_collection_notification_is_followed_through_the_rebuilt_filter(bc: Bc, receiver: Receiver) -> None:
    bc.sandbox.set_webhook_config(coalesce_seconds=60, collection_threshold=3)
    with bc.client() as client:
        client.create_subscription(receiver.url, f"api/v2.0/companies({bc.company})/customers", "s")
        ids = bc.sandbox.seed_customers(4)
        for record_id in ids:
            bc.sandbox.change("customers", record_id, {"city": "Many"})
        bc.sandbox.flush_webhooks()
        entry = receiver.entries()[0]
        ref = parse_resource(entry["resource"], company_ids=[bc.company], entity_sets={"customers"})
        assert entry["changeType"] == "collection" and ref.record_id is None and ref.filter
        rows = list(client.query(ref.company_id, ref.entity_set, filter=ref.filter))
        assert {r["id"] for r in rows} == set(ids)


def test_webhook_supported_sets_come_from_bc_once_per_company(bc: Bc) -> None:
    with bc.client() as client:
        sets = client.webhook_supported_entity_sets(bc.company)
        assert {"customers", "items", "itemCategories", "salesOrders"} <= sets
        assert not {"contacts", "salespeoplePurchasers", "itemLedgerEntries"} & sets
        assert client.webhook_supported_entity_sets(bc.company) is sets
        assert client.stats.requests["GET webhookSupportedResources"] == 1
    # A BC without the runtime page (404): the documented list.
    bc.sandbox.faults.add({"action": "status", "status": 404, "path_contains": "webhookSupportedResources"})
    with bc.client() as client:
        assert client.webhook_supported_entity_sets(bc.company) == WEBHOOK_SUPPORTED_ENTITY_SETS
