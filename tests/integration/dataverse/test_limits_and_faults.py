"""Service protection, fault injection and the control surface.

Limits: https://learn.microsoft.com/power-apps/developer/data-platform/api-limits
"""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from devstack.serve import ServerHandle
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import ThrottledError

pytestmark = pytest.mark.integration


def test_request_limit_answers_429_with_retry_after(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    sandbox.set_limits(max_requests=3, window_seconds=60)
    assert [http.get("WhoAmI").status_code for _ in range(3)] == [200, 200, 200]
    refused = http.get("WhoAmI")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"] == {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 3 over time window of 60 seconds.",
    }
    # Limits are per user: the sales user is not affected.
    other = httpx.get(str(http.base_url) + "WhoAmI", headers={"Authorization": "Bearer sales-user"})
    assert other.status_code == 200
    assert sandbox.counters.snapshot()["throttled"] == {"requests": 1}


def test_client_honours_retry_after(
    client: DataverseClient, sandbox: DataverseSandbox, sleeps: list[float]
) -> None:
    sandbox.injector.add({"action": "status", "status": 429, "retry_after": 7, "path_contains": "WhoAmI"})
    assert client.whoami().user_id
    assert sleeps == [7.0]
    assert client.stats.throttled == 1 and client.stats.requests["GET WhoAmI"] == 2


def test_client_gives_up_when_retry_after_exceeds_its_budget(
    client: DataverseClient, sandbox: DataverseSandbox, sleeps: list[float]
) -> None:
    sandbox.set_limits(max_requests=1, window_seconds=60)  # Retry-After ~60 s > the policy's 30 s
    client.whoami()
    with pytest.raises(ThrottledError) as info:
        client.whoami()
    assert info.value.retry_after is not None and info.value.retry_after > 30
    assert client.stats.requests["GET WhoAmI"] == 2
    assert sleeps == []


def test_concurrency_limit_refuses_at_once(
    dv_server: ServerHandle, sandbox: DataverseSandbox, base_url: str
) -> None:
    sandbox.set_limits(max_concurrent=2)
    sandbox.injector.add({"action": "latency", "seconds": 0.5, "path_contains": "WhoAmI", "times": 0})
    headers = {"Authorization": "Bearer integration-user"}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(
            pool.map(
                lambda _: httpx.get(base_url + "WhoAmI", headers=headers, timeout=5).status_code, range(4)
            )
        )
    assert sorted(statuses) == [200, 200, 429, 429]
    assert sandbox.counters.snapshot()["throttled"]["concurrency"] == 2


def test_execution_time_limit(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    sandbox.set_limits(max_execution_ms=150, window_seconds=60)
    sandbox.injector.add({"action": "latency", "seconds": 0.2, "path_contains": "WhoAmI"})
    assert http.get("WhoAmI").status_code == 200  # the slow request itself is allowed
    refused = http.get("WhoAmI")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "0x80072321"


def test_injected_503_is_retried_by_the_client(
    client: DataverseClient, sandbox: DataverseSandbox, sleeps: list[float]
) -> None:
    sandbox.injector.add({"action": "status", "status": 503, "path_contains": "accounts", "method": "GET"})
    assert list(client.query("accounts")) == []
    assert len(sleeps) == 1 and client.stats.retries == 1


def test_non_idempotent_write_is_not_resent_after_a_500(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    sandbox.injector.add({"action": "commit_then_fail", "method": "POST", "path_contains": "accounts"})
    with pytest.raises(Exception) as info:
        client.create("accounts", {"name": "Once"})
    assert getattr(info.value, "status", None) == 500
    assert len(sandbox.rows("accounts")) == 1  # committed once, never re-sent


def test_control_surface(dv_server: ServerHandle, sandbox: DataverseSandbox) -> None:
    control = f"{dv_server.url}/_sandbox"
    seeded = httpx.post(f"{control}/seed", json={"entity_set": "accounts", "records": [{"name": "Seeded"}]})
    assert seeded.status_code == 201 and len(seeded.json()["ids"]) == 1
    bad_seed = httpx.post(f"{control}/seed", json={"entity_set": "accounts", "records": [{"bogus": 1}]})
    assert bad_seed.status_code == 400
    limits = httpx.post(f"{control}/limits", json={"max_requests": 10})
    assert limits.json()["max_requests"] == 10
    assert httpx.post(f"{control}/limits", json={"max_requests": -1}).status_code == 400
    assert httpx.post(f"{control}/limits", json={"nonsense": 1}).status_code == 400
    user = httpx.post(
        f"{control}/users",
        json={
            "token": "buyer",
            "systemuserid": "a1b2c3d4-0000-4000-8000-0000000000b5",
            "fullname": "Bea Buyer",
        },
    )
    assert user.status_code == 201
    whoami = httpx.get(f"{dv_server.url}/api/data/v9.2/WhoAmI", headers={"Authorization": "Bearer buyer"})
    assert whoami.json()["UserId"] == "a1b2c3d4-0000-4000-8000-0000000000b5"
    stats = httpx.get(f"{control}/stats").json()
    assert stats["requests"]["GET WhoAmI"] == 1
    assert httpx.post(f"{control}/reset").status_code == 204
    assert sandbox.rows("accounts") == [] and "buyer" not in sandbox.users
