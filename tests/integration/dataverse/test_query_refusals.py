"""Query options the sandbox does not implement are refused loudly (400 naming them), never ignored.

An ignored option answers 200 with every row: a client would take unfiltered data for its answer.
"""

from __future__ import annotations

import httpx
import pytest

from devstack.dataverse import DataverseSandbox

pytestmark = pytest.mark.integration

FETCH = "<fetch top='1'><entity name='account'><attribute name='name'/></entity></fetch>"


@pytest.fixture
def accounts(sandbox: DataverseSandbox) -> list[str]:
    return sandbox.seed("accounts", [{"name": f"Account {i}", "accountnumber": f"R{i}"} for i in range(3)])


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"fetchXml": FETCH}, "fetchXml"),
        ({"$apply": "aggregate(numberofemployees with sum as total)"}, "$apply"),
        ({"savedQuery": "00000000-0000-0000-00aa-000010001002"}, "savedQuery"),
        ({"userQuery": "00000000-0000-0000-00aa-000010001002"}, "userQuery"),
        ({"$search": "Account"}, "$search"),
        ({"$levels": "max"}, "$levels"),
        ({"$compute": "numberofemployees mul 2 as double"}, "$compute"),
        ({"$filter": "tolower(name) eq 'account 1'"}, "function 'tolower'"),
        (
            {"$filter": "Microsoft.Dynamics.CRM.Above(PropertyName='accountid',PropertyValue='x')"},
            "function 'Microsoft.Dynamics.CRM.Above'",
        ),
    ],
)
def test_unimplemented_query_options_answer_400_naming_them(
    http: httpx.Client, accounts: list[str], params: dict[str, str], named: str
) -> None:
    response = http.get("accounts", params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert named in error["message"]
    assert error["code"] == "0x80060888"


def test_skip_is_refused_as_dataverse_refuses_it(http: httpx.Client, accounts: list[str]) -> None:
    response = http.get("accounts", params={"$skip": "1", "$select": "name"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "0x80060888",
        "message": "The query parameter $skip is not supported",
    }


def test_single_record_and_count_refuse_options_they_do_not_take(
    http: httpx.Client, accounts: list[str]
) -> None:
    record = http.get(f"accounts({accounts[0]})", params={"$filter": "name eq 'x'"})
    assert record.status_code == 400 and "$filter" in record.json()["error"]["message"]
    count = http.get("accounts/$count", params={"$top": "1"})
    assert count.status_code == 400 and "$top" in count.json()["error"]["message"]
    assert http.get("accounts/$count", params={"$filter": "name eq 'Account 1'"}).text == "1"


def test_parameter_aliases_and_plain_custom_options_are_not_refused(
    http: httpx.Client, accounts: list[str]
) -> None:
    # OData custom query options (no `$`, not Dataverse's own) are ignored by the service, as here.
    response = http.get("accounts", params={"$select": "name", "cachebust": "1"})
    assert response.status_code == 200
    assert len(response.json()["value"]) == 3
