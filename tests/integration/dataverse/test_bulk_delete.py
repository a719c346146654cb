"""`BulkDelete`: an asynchronous job whose status is read from `asyncoperations`.

As Dataverse: https://learn.microsoft.com/power-apps/developer/data-platform/delete-data-bulk
"""

from __future__ import annotations

import httpx
import pytest

from devstack.dataverse import DataverseSandbox

pytestmark = pytest.mark.integration


def request(conditions: list[dict[str, object]], operator: str = "And") -> dict[str, object]:
    return {
        "QuerySet": [
            {
                "EntityName": "account",
                "ColumnSet": {"AllColumns": False, "Columns": []},
                "Criteria": {"FilterOperator": operator, "Conditions": conditions},
            }
        ],
        "JobName": "Remove test accounts",
        "SendEmailNotification": False,
        "ToRecipients": [],
        "CCRecipients": [],
        "RecurrencePattern": "",
        "StartDateTime": "2020-01-01T00:00:00Z",
    }


def job(http: httpx.Client, job_id: str) -> dict[str, object]:
    response = http.get(
        f"asyncoperations({job_id})", params={"$select": "name,operationtype,statecode,statuscode,message"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_bulk_delete_runs_as_an_asynchronous_job(
    http: httpx.Client, sandbox: DataverseSandbox, base_url: str
) -> None:
    sandbox.seed(
        "accounts",
        [
            {"name": "Test 1", "accountnumber": "T1"},
            {"name": "Test 2", "accountnumber": "T2"},
            {"name": "Keep", "accountnumber": "K1"},
        ],
    )
    conditions = [
        {"AttributeName": "name", "Operator": "Like", "Values": [{"Value": "test%", "Type": "System.String"}]}
    ]
    response = http.post("BulkDelete", json=request(conditions))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"] == f"{base_url}$metadata#Microsoft.Dynamics.CRM.BulkDeleteResponse"
    waiting = job(http, body["JobId"])
    assert (waiting["operationtype"], waiting["statecode"], waiting["statuscode"]) == (13, 0, 0)
    assert len(sandbox.rows("accounts")) == 3  # not yet: the job waits for the asynchronous service
    sandbox.advance_clock(sandbox.config.bulk_delete_delay_seconds + 1)
    done = job(http, body["JobId"])
    assert (done["statecode"], done["statuscode"]) == (3, 30)
    assert done["message"] == "2 record(s) deleted."
    assert [r["name"] for r in sandbox.rows("accounts")] == ["Keep"]


def test_bulk_delete_conditions_and_or(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    sandbox.seed("accounts", [{"name": f"A{i}", "numberofemployees": i} for i in range(6)])
    conditions = [
        {
            "AttributeName": "numberofemployees",
            "Operator": "LessThan",
            "Values": [{"Value": "1", "Type": "System.Int32"}],
        },
        {"AttributeName": "numberofemployees", "Operator": "In", "Values": [{"Value": "4"}, {"Value": "5"}]},
    ]
    job_id = http.post("BulkDelete", json=request(conditions, "Or")).json()["JobId"]
    sandbox.advance_clock(sandbox.config.bulk_delete_delay_seconds + 1)
    assert job(http, job_id)["statuscode"] == 30
    assert sorted(r["name"] for r in sandbox.rows("accounts")) == ["A1", "A2", "A3"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"JobName": "x"}, "QuerySet"),
        (request([{"AttributeName": "name", "Operator": "Under", "Values": []}]), "Under"),
        (request([{"AttributeName": "nosuchcolumn", "Operator": "Null"}]), "nosuchcolumn"),
        ({**request([]), "JobName": ""}, "JobName"),
        ({**request([]), "RecurrencePattern": "FREQ=DAILY;INTERVAL=1;"}, "RecurrencePattern"),
    ],
)
def test_bad_bulk_delete_requests_are_refused_and_start_no_job(
    http: httpx.Client, sandbox: DataverseSandbox, body: dict[str, object], named: str
) -> None:
    response = http.post("BulkDelete", json=body)
    assert response.status_code == 400
    assert named in response.json()["error"]["message"]
    assert sandbox.rows("asyncoperations") == []
