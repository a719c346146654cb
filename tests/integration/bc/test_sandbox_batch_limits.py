"""How a BC `$batch` counts against BC's per-user limits (docs/limits.md#business-central-batch).

BC's docs list batching among the ways to make fewer calls ("Instead of issuing multiple requests,
one request can be issued"): a `$batch` is one OData request for the 6,000-per-5-minutes window and
one of the 5 concurrent slots, however many of its (at most 100) operations it carries.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.bc.conftest import Bc
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration


def _customers(bc: Bc, count: int) -> list[dict]:
    return [
        bc.http.post(bc.entity_url("customers"), json={"displayName": f"Batch {n}"}).json()
        for n in range(count)
    ]


def _updates(bc: Bc, customers: list[dict]) -> list[dict]:
    return [
        {
            "id": str(n),
            "method": "PATCH",
            "url": f"companies({bc.company})/customers({c['id']})",
            "headers": {"If-Match": c["@odata.etag"], "Content-Type": "application/json"},
            "body": {"displayName": f"Renamed {n}"},
        }
        for n, c in enumerate(customers)
    ]


def test_a_batch_of_100_updates_is_one_request_of_the_window(bc: Bc) -> None:
    updates = _updates(bc, _customers(bc, 100))
    bc.sandbox.set_limits(requests_per_window=2, window_seconds=60)
    response = bc.http.post(f"{bc.base}/$batch", json={"requests": updates})
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["responses"]] == [200] * 100
    assert bc.sandbox.limiter.total("INTEGRATION") == 1
    assert bc.http.get(bc.entity_url("currencies")).status_code == 200  # the window's second request
    assert_error(bc.http.get(bc.entity_url("currencies")), 429, "Application_TooManyRequests")


def test_a_batch_holds_one_concurrency_slot(bc: Bc) -> None:
    updates = _updates(bc, _customers(bc, 100))
    bc.sandbox.set_limits(max_concurrent=2, max_queue=0)
    bc.sandbox.faults.add({"action": "latency", "seconds": 0.6, "path_contains": "$batch"})
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(bc.http.post, f"{bc.base}/$batch", json={"requests": updates})
        deadline = time.monotonic() + 5
        while bc.sandbox.gate.in_use("INTEGRATION") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the batch holds its slot (it waits 0.6 s inside it)
        assert bc.sandbox.gate.in_use("INTEGRATION") == 1
        single = bc.http.get(bc.entity_url("currencies"))  # the second of 2 slots: not refused
        assert single.status_code == 200
        assert batch.result().status_code == 200


def test_a_batch_over_the_limit_is_refused_before_any_operation_runs(bc: Bc) -> None:
    creates = [
        {
            "id": str(n),
            "method": "POST",
            "url": f"companies({bc.company})/customers",
            "body": {"displayName": "No"},
        }
        for n in range(101)
    ]
    response = bc.http.post(f"{bc.base}/$batch", json={"requests": creates})
    message = assert_error(response, 400, "BadRequest")
    assert "A maximum number of '100' query operations and change sets are allowed" in message
    names = [c["displayName"] for c in bc.http.get(bc.entity_url("customers")).json()["value"]]
    assert "No" not in names
    assert bc.sandbox.limits()["max_batch_operations"] == 100
    bc.sandbox.set_limits(max_batch_operations=2)
    three = bc.http.post(f"{bc.base}/$batch", json={"requests": creates[:3]})
    assert "A maximum number of '2' query operations" in assert_error(three, 400, "BadRequest")


def test_the_sales_user_is_not_charged_for_the_integration_users_batch(bc: Bc) -> None:
    updates = _updates(bc, _customers(bc, 5))
    bc.sandbox.set_limits(requests_per_window=1, window_seconds=60)
    assert bc.http.post(f"{bc.base}/$batch", json={"requests": updates}).status_code == 200
    other = httpx.get(bc.entity_url("currencies"), headers={"Authorization": "Bearer sales-user"})
    assert other.status_code == 200


def test_the_clients_budget_counts_a_batch_as_the_server_does(bc: Bc) -> None:
    from shared.connectors.business_central import BatchOperation
    from shared.connectors.retry import RequestBudget

    customers = _customers(bc, 100)
    budget = RequestBudget(6000, 300)
    before = bc.sandbox.limiter.total("INTEGRATION")
    with bc.client(budget=budget) as client:
        ops = [
            BatchOperation("PATCH", "customers", c["id"], {"displayName": "Budgeted"}, etag=c["@odata.etag"])
            for c in customers
        ]
        assert all(r.ok for r in client.batch(bc.company, ops))
    assert bc.sandbox.limiter.total("INTEGRATION") - before == 1
    assert budget.left() == 6000 - 1  # one unit, not 100: neither wasted nor short
