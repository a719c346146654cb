"""Service protection (BC's operational limits, docs/bc-sandbox.md#sources), fault injection and
counters of the BC sandbox."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.bc.conftest import Bc
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration


def test_per_user_request_limit_answers_429_with_retry_after(bc: Bc) -> None:
    bc.sandbox.set_limits(requests_per_window=3, window_seconds=60)
    statuses = [bc.http.get(bc.entity_url("currencies")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    throttled = bc.http.get(bc.entity_url("currencies"))
    assert_error(throttled, 429, "Application_TooManyRequests")
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    other_user = httpx.get(bc.entity_url("currencies"), headers={"Authorization": "Bearer sales-user"})
    assert other_user.status_code == 200  # the window is per user
    assert bc.sandbox.counters.snapshot()["throttled"]["rate"] == 2


def _concurrent_gets(bc: Bc, count: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: bc.http.get(bc.entity_url("currencies")), range(count)))


def test_concurrency_queue_full_is_429_and_queue_timeout_is_503(bc: Bc) -> None:
    bc.sandbox.set_limits(max_concurrent=1, max_queue=1, queue_timeout_seconds=0.2)
    bc.sandbox.faults.add({"action": "latency", "seconds": 0.6, "times": 0})
    responses = _concurrent_gets(bc, 3)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 429, 503]
    unavailable = next(r for r in responses if r.status_code == 503)
    assert int(unavailable.headers["retry-after"]) >= 1
    throttled = bc.sandbox.counters.snapshot()["throttled"]
    assert throttled == {"queue_full": 1, "queue_timeout": 1}


def test_without_the_queue_a_sixth_concurrent_request_is_429_and_the_peak_is_counted(bc: Bc) -> None:
    # The strict mode bench.scale_out runs in: BC's 5 concurrent requests per user, no queue.
    bc.sandbox.set_limits(max_queue=0)
    bc.sandbox.faults.add({"action": "latency", "seconds": 0.5, "times": 0})
    responses = _concurrent_gets(bc, 6)
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429]
    assert "more than 5" in next(r for r in responses if r.status_code == 429).json()["error"]["message"]
    user = bc.sandbox.counters.snapshot()["users"]["INTEGRATION"]
    assert user == {"requests": 6, "throttled": 1, "peak_concurrent": 6}  # as the caller sent them


def test_queued_requests_run_when_a_slot_frees(bc: Bc) -> None:
    bc.sandbox.set_limits(max_concurrent=1, max_queue=5, queue_timeout_seconds=5)
    bc.sandbox.faults.add({"action": "latency", "seconds": 0.1, "times": 0})
    assert [r.status_code for r in _concurrent_gets(bc, 4)] == [200] * 4


def test_injected_status_with_retry_after_does_not_touch_data(bc: Bc) -> None:
    bc.sandbox.faults.add({"action": "status", "status": 503, "retry_after": 7, "method": "POST"})
    response = bc.http.post(bc.entity_url("customers"), json={"displayName": "Never"})
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert response.json()["error"]["message"].endswith(".")
    assert all(r["displayName"] != "Never" for r in bc.http.get(bc.entity_url("customers")).json()["value"])
    assert bc.http.post(bc.entity_url("customers"), json={"displayName": "Now"}).status_code == 201


def test_commit_then_fail_commits_the_write(bc: Bc) -> None:
    bc.sandbox.faults.add({"action": "commit_then_fail", "path_contains": "customers", "method": "POST"})
    response = bc.http.post(bc.entity_url("customers"), json={"displayName": "Committed anyway"})
    assert response.status_code == 500
    names = [r["displayName"] for r in bc.http.get(bc.entity_url("customers")).json()["value"]]
    assert "Committed anyway" in names


def test_drop_closes_the_connection_mid_response(bc: Bc) -> None:
    bc.sandbox.faults.add({"action": "drop", "path_contains": "currencies"})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(bc.entity_url("currencies"), headers={"Authorization": "Bearer integration-user"})
    assert bc.http.get(bc.entity_url("currencies")).status_code == 200


def test_timeout_fault_answers_504_after_holding_the_request(bc: Bc) -> None:
    bc.sandbox.faults.add({"action": "timeout", "seconds": 0.2})
    assert bc.http.get(bc.entity_url("currencies")).status_code == 504


def test_control_surface_and_counters(bc: Bc) -> None:
    control = f"{bc.url}/_sandbox"
    assert httpx.post(f"{control}/faults", json={"action": "explode"}).status_code == 400
    assert httpx.post(f"{control}/faults", json={"action": "status", "status": 429}).status_code == 201
    assert len(httpx.get(f"{control}/faults").json()["rules"]) == 1
    assert bc.http.get(bc.entity_url("items")).status_code == 429
    bc.http.get(bc.entity_url("items"))
    bc.http.post(f"{bc.base}/$batch", json={"requests": []})
    stats = httpx.get(f"{control}/stats").json()
    assert stats["requests"] == {"GET items": 2, "POST $batch": 1} and stats["total"] == 3
    assert httpx.post(f"{control}/stats/reset").status_code == 204
    assert httpx.get(f"{control}/stats").json()["total"] == 0
    info = httpx.get(f"{control}/info").json()
    assert info["defaultCompanyId"] == bc.company and "integration-user" in info["users"]
    seeded = httpx.post(f"{control}/seed", json={"entity_set": "customers", "count": 5}).json()
    assert seeded["created"] == 5 and len(seeded["ids"]) == 5
    assert httpx.post(f"{control}/seed", json={"entity_set": "nope", "count": 1}).status_code == 400
    assert httpx.put(f"{control}/limits", json={"max_concurrent": -1}).status_code == 400
    assert (
        httpx.put(f"{control}/webhooks/config", json={"coalesce_seconds": 0.01}).json()["coalesce_seconds"]
        == 0.01
    )
    before = httpx.get(f"{control}/clock").json()["now"]
    after = httpx.post(f"{control}/clock/advance", json={"seconds": 86400}).json()["now"]
    assert after > before
