"""Dynamics 365 Sales / Customer Engagement on-premises 9.1 has no CreateMultiple, UpdateMultiple or
UpsertMultiple (the bulk operation messages came to Dataverse online only). The sandbox in that mode
(`bulk_messages=False`) answers them 404 "Resource not found for the segment", as such a server does;
the client learns it from the first answer and sends every chunk as one `$batch` of single writes,
with the same per-record results and the same number of requests per chunk."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import NotFoundError, ValidationError

pytestmark = pytest.mark.integration

# What a write stamps differently on every run: left out when comparing the two paths' rows.
VOLATILE = {"createdon", "modifiedon", "versionnumber", "overriddencreatedon"}


@pytest.fixture
def onprem(sandbox: DataverseSandbox, monkeypatch: pytest.MonkeyPatch) -> DataverseSandbox:
    monkeypatch.setattr(sandbox.config, "bulk_messages", False)
    return sandbox


def test_the_server_answers_a_bulk_message_as_an_unknown_segment(
    onprem: DataverseSandbox, http: httpx.Client
) -> None:
    target = {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "x"}
    for action in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple"):
        response = http.post(f"accounts/Microsoft.Dynamics.CRM.{action}", json={"Targets": [target]})
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "0x8006088a"
        assert error["message"] == f"Resource not found for the segment 'Microsoft.Dynamics.CRM.{action}'."
    assert onprem.rows("accounts") == []


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {"accountid": str(uuid.UUID(int=i + 1)), "name": f"Account {i}", "accountnumber": f"C{i:05d}"}
        for i in range(n)
    ]


def _rows(sandbox: DataverseSandbox, entity_set: str) -> dict[str, dict[str, Any]]:
    key = {"accounts": "accountid", "products": "productid"}[entity_set]
    return {str(r[key]): {k: v for k, v in r.items() if k not in VOLATILE} for r in sandbox.rows(entity_set)}


def _run(client: DataverseClient) -> list[tuple[str | None, bool, str]]:
    """Creates, upserts (new and existing, by id and by alternate key), updates (one of a missing
    row) and a record refused for its data: every kind of per-record outcome."""
    client.bulk_chunk_size = 4
    records = _records(6)
    outcomes = client.create_multiple("accounts", records[:3])
    upserts = [{**r, "name": f"{r['name']} (upserted)"} for r in records[1:5]]
    outcomes += client.upsert_multiple(
        "accounts", [*upserts, {"name": "x" * 161, "accountid": records[5]["accountid"]}]
    )
    missing = str(uuid.UUID(int=999))
    outcomes += client.update_multiple(
        "accounts",
        [{"accountid": records[0]["accountid"], "telephone1": "+1 555"}, {"accountid": missing, "name": "m"}],
    )
    outcomes += client.upsert_multiple(
        "products",
        [
            {"@odata.id": "products(productnumber='K1')", "name": "By key"},
            {"@odata.id": "products(productnumber='K1')", "name": "By key again"},
        ],
    )
    return [(o.id, o.ok, type(o.error).__name__ if o.error else "") for o in outcomes]


def test_bulk_writes_without_bulk_messages_have_the_same_outcomes_and_rows_and_requests(
    sandbox: DataverseSandbox, client: DataverseClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = _run(client)
    online_rows = (_rows(sandbox, "accounts"), _rows(sandbox, "products"))
    online_requests = sum(client.stats.requests.values())
    assert client.bulk_messages is not False

    sandbox.reset()
    monkeypatch.setattr(sandbox.config, "bulk_messages", False)
    onprem_client = DataverseClient(client.base_url, client._auth, policy=client.policy)
    try:
        onprem = _run(onprem_client)
        spent = dict(onprem_client.stats.requests)
    finally:
        onprem_client.close()

    assert onprem == online
    assert [(ok, error) for _, ok, error in onprem if not ok] == [
        (False, ValidationError.__name__),
        (False, NotFoundError.__name__),
    ]
    assert _rows(sandbox, "accounts") == online_rows[0]
    assert _by_number(_rows(sandbox, "products")) == _by_number(online_rows[1])  # created by key: new ids
    assert onprem_client.bulk_messages is False
    # The first bulk write's 404 once; then one $batch per chunk (5 chunks), where online sent one bulk
    # request per chunk and a $batch more for each of the two chunks that held a refused record.
    assert spent == {"POST accounts CreateMultiple": 1, "POST $batch": 5}, spent
    assert online_requests == 7
    assert sum(spent.values()) <= online_requests + 1


def _by_number(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["productnumber"]: {k: v for k, v in r.items() if k != "productid"} for r in rows.values()}


def test_a_missing_table_is_not_taken_for_a_missing_message(client: DataverseClient) -> None:
    # A table that does not exist is a segment not found too, but not the action's: nothing is learnt.
    # (bcs_customerstatistics comes with the Sales solution, which this sandbox does not have.)
    results = client.upsert_multiple(
        "bcs_customerstatistics", [{"bcs_customerstatisticid": str(uuid.uuid4())}]
    )
    assert not results[0].ok
    assert client.bulk_messages is not False


def test_the_probe_says_which_path_and_writes_nothing(
    sandbox: DataverseSandbox, client: DataverseClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.probe_bulk_messages("accounts") is True and client.bulk_messages is True
    monkeypatch.setattr(sandbox.config, "bulk_messages", False)
    assert client.probe_bulk_messages("accounts") is False and client.bulk_messages is False
    assert sandbox.rows("accounts") == []
    assert client.stats.requests == {"POST accounts UpsertMultiple": 2}
