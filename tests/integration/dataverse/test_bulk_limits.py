"""How bulk requests count against Dataverse's service-protection limits (docs/limits.md).

A `$batch` and a CreateMultiple / UpdateMultiple / UpsertMultiple each count as ONE request, but
their execution time grows with the records they carry: the bulk actions are charged a modelled cost
per record (Microsoft's bulk operation samples) on top of the handler's CPU time.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from devstack.dataverse.config import INTEGRATION_USER_ID
from shared.connectors.dataverse import BatchRequest, DataverseClient

pytestmark = pytest.mark.integration

ACCOUNT = "Microsoft.Dynamics.CRM.account"


def _targets(count: int) -> list[dict[str, str]]:
    return [{"@odata.type": ACCOUNT, "accountid": str(uuid.uuid4()), "name": f"A{i}"} for i in range(count)]


def _execution_ms(sandbox: DataverseSandbox) -> float:
    return sandbox.execution_limiter.total(INTEGRATION_USER_ID)


def _requests(sandbox: DataverseSandbox) -> float:
    return sandbox.request_limiter.total(INTEGRATION_USER_ID)


@pytest.mark.parametrize("count", [100, 1000])
def test_upsert_multiple_is_one_request_charged_per_record(
    http: httpx.Client, sandbox: DataverseSandbox, count: int
) -> None:
    response = http.post("accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": _targets(count)})
    assert response.status_code == 204
    assert len(sandbox.rows("accounts")) == count
    assert _requests(sandbox) == 1
    modelled = count * sandbox.config.upsert_multiple_ms_per_record  # 20 ms a record by default
    spent = _execution_ms(sandbox)
    # The modelled cost plus the handler's CPU time (a few ms per 100 records here).
    assert modelled <= spent < modelled + count * 5


def test_each_bulk_action_has_its_own_cost(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    sandbox.set_limits(create_multiple_ms_per_record=100, update_multiple_ms_per_record=300)
    targets = _targets(10)
    assert http.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets}).is_success
    after_create = _execution_ms(sandbox)
    assert 1_000 <= after_create < 1_100
    for target in targets:
        target["name"] += " renamed"
    assert http.post("accounts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets}).is_success
    assert 3_000 <= _execution_ms(sandbox) - after_create < 3_100
    assert _requests(sandbox) == 2


def test_a_failed_bulk_action_is_charged_its_cpu_time_only(
    http: httpx.Client, sandbox: DataverseSandbox
) -> None:
    targets = _targets(50)
    targets[-1]["name"] = "x" * 161  # too long: the whole request rolls back
    response = http.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert response.status_code == 400 and sandbox.rows("accounts") == []
    assert _execution_ms(sandbox) < 50 * sandbox.config.create_multiple_ms_per_record


def test_bulk_work_reaches_the_execution_time_limit(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    sandbox.set_limits(max_execution_ms=1_500, window_seconds=60)
    first = http.post("accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": _targets(100)})
    assert first.status_code == 204  # the request that goes over is itself allowed (2,000 ms)
    refused = http.get("WhoAmI")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "0x80072321"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_batch_is_one_request_charged_its_parts_time(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    sandbox.set_limits(max_requests=2, window_seconds=60)
    [known] = sandbox.seed("accounts", [{"name": "Known"}])
    parts = [BatchRequest("PATCH", f"accounts({known})", {"name": f"v{i}"}) for i in range(5)]
    parts.append(
        BatchRequest("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": _targets(10)})
    )
    responses = client.batch(parts)
    assert [r.status for r in responses] == [204] * 5 + [200]
    assert _requests(sandbox) == 1  # six operations, one request
    assert _execution_ms(sandbox) >= 10 * sandbox.config.create_multiple_ms_per_record
    assert client.whoami().user_id  # the second request of the window
    assert _requests(sandbox) == 2


def test_rate_limit_headers_report_requests_and_execution_time_left(
    http: httpx.Client, sandbox: DataverseSandbox
) -> None:
    first = http.get("WhoAmI")
    assert first.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "5999"
    # Seconds, as Dataverse writes them: a grouping separator and two decimals.
    assert first.headers["x-ms-ratelimit-time-remaining-xrm-requests"] == "1,200.00"
    http.post("accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": _targets(100)})
    left = http.get("WhoAmI").headers["x-ms-ratelimit-time-remaining-xrm-requests"]
    assert re.fullmatch(r"1,19\d\.\d\d", left) and float(left.replace(",", "")) <= 1_198.0


def test_costs_are_settable_and_zero_switches_them_off(sandbox: DataverseSandbox) -> None:
    assert sandbox.limits()["upsert_multiple_ms_per_record"] == 20.0
    sandbox.set_limits(upsert_multiple_ms_per_record=0)
    assert sandbox.bulk_ms_per_record("UpsertMultiple") == 0.0
    with pytest.raises(ValueError, match="positive"):
        sandbox.set_limits(max_requests=0)
    with pytest.raises(ValueError, match="positive"):
        sandbox.set_limits(create_multiple_ms_per_record=-1)


def test_the_clients_budget_counts_bulk_requests_as_the_server_does(
    base_url: str, sandbox: DataverseSandbox
) -> None:
    from shared.connectors.credentials import StaticTokenCredential
    from shared.connectors.retry import RequestBudget

    budget = RequestBudget(6000, 300)
    client = DataverseClient(base_url, StaticTokenCredential("integration-user"), budget=budget)
    try:
        client.bulk_chunk_size = 1000
        records = [{"accountid": str(uuid.uuid4()), "name": f"U{i}"} for i in range(1000)]
        assert all(r.ok for r in client.upsert_multiple("accounts", records))
        assert all(r.ok for r in client.batch([BatchRequest("GET", "WhoAmI") for _ in range(10)]))
    finally:
        client.close()
    assert _requests(sandbox) == 2
    assert budget.left() == 6000 - 2  # one unit per request sent, as Dataverse counts
