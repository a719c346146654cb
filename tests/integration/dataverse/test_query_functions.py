"""Dataverse's query functions in `$filter`, in the forms Microsoft documents.

Source: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/queryfunctions
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from devstack.dataverse import DataverseSandbox

pytestmark = pytest.mark.integration

CRM = "Microsoft.Dynamics.CRM."


def names(http: httpx.Client, entity_set: str, filter: str, **aliases: str) -> list[str]:
    params = {"$select": "name", "$filter": filter, "$orderby": "name"} | {
        f"@{k}": v for k, v in aliases.items()
    }
    response = http.get(entity_set, params=params)
    assert response.status_code == 200, response.text
    return [row["name"] for row in response.json()["value"]]


@pytest.fixture
def accounts(sandbox: DataverseSandbox) -> None:
    # Created six days ago, three days ago and now (the sandbox clock moves between seeds).
    sandbox.seed("accounts", [{"name": "Old", "accountnumber": "A1", "numberofemployees": 5}])
    sandbox.advance_clock(3 * 86400)
    sandbox.seed("accounts", [{"name": "Mid", "accountnumber": "A2", "numberofemployees": 50}])
    sandbox.advance_clock(3 * 86400)
    sandbox.seed(
        "accounts", [{"name": "New", "accountnumber": "A3", "numberofemployees": 500}], as_user="sales-user"
    )


def test_in_and_not_in_take_the_documented_double_quoted_values(http: httpx.Client, accounts: None) -> None:
    assert names(http, "accounts", f'{CRM}In(PropertyName=\'accountnumber\',PropertyValues=["A1","A3"])') == [
        "New",
        "Old",
    ]
    assert names(http, "accounts", f"{CRM}NotIn(PropertyName='accountnumber',PropertyValues=[\"A1\"])") == [
        "Mid",
        "New",
    ]
    # The parameter-alias form of the reference's syntax examples.
    aliased = names(
        http, "accounts", f"{CRM}In(PropertyName=@p1,PropertyValues=@p2)", p1="'accountnumber'", p2='["A2"]'
    )
    assert aliased == ["Mid"]


def test_between_is_inclusive(http: httpx.Client, accounts: None) -> None:
    text = f'{CRM}Between(PropertyName=\'numberofemployees\',PropertyValues=["5","50"])'
    assert names(http, "accounts", text) == ["Mid", "Old"]


def test_today_and_last_x_days_use_the_sandbox_clock(
    http: httpx.Client, sandbox: DataverseSandbox, accounts: None
) -> None:
    assert names(http, "accounts", f"{CRM}Today(PropertyName='createdon')") == ["New"]
    assert names(http, "accounts", f"{CRM}LastXDays(PropertyName='createdon',PropertyValue=4)") == [
        "Mid",
        "New",
    ]
    assert names(
        http, "accounts", f"{CRM}LastXDays(PropertyName=@p1,PropertyValue=@p2)", p1="'createdon'", p2="7"
    ) == [
        "Mid",
        "New",
        "Old",
    ]


def test_on_on_or_after_on_or_before_and_next_x_days(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    today = sandbox.now().astimezone(dt.UTC).date()
    days = {"Past": -10, "Today": 0, "Soon": 3, "Later": 30}
    sandbox.seed(
        "pricelevels",
        [{"name": name, "begindate": (today + dt.timedelta(days=d)).isoformat()} for name, d in days.items()],
    )
    # pricelevels' primary name is `name`; begindate is a date-only column.
    on_text = f"{CRM}On(PropertyName='begindate',PropertyValue='{today.isoformat()}')"
    assert names(http, "pricelevels", on_text) == ["Today"]
    after = f"{CRM}OnOrAfter(PropertyName='begindate',PropertyValue='{today.isoformat()}')"
    assert names(http, "pricelevels", after) == ["Later", "Soon", "Today"]
    before = f"{CRM}OnOrBefore(PropertyName='begindate',PropertyValue='{today.isoformat()}')"
    assert names(http, "pricelevels", before) == ["Past", "Today"]
    assert names(http, "pricelevels", f"{CRM}NextXDays(PropertyName='begindate',PropertyValue=5)") == ["Soon"]


def test_equal_user_id_is_the_caller(http: httpx.Client, accounts: None) -> None:
    mine = names(http, "accounts", f"{CRM}EqualUserId(PropertyName='ownerid')")
    assert mine == ["Mid", "Old"]  # the integration user's
    as_seller = http.get(
        "accounts",
        params={"$select": "name", "$filter": f"{CRM}EqualUserId(PropertyName='ownerid')"},
        headers={"Authorization": "Bearer sales-user"},
    )
    assert [r["name"] for r in as_seller.json()["value"]] == ["New"]


def test_query_functions_refuse_bad_parameters(http: httpx.Client, accounts: None) -> None:
    bad = http.get("accounts", params={"$filter": f"{CRM}LastXDays(PropertyName='createdon')"})
    assert bad.status_code == 400 and "PropertyValue" in bad.json()["error"]["message"]
    unknown = http.get("accounts", params={"$filter": f"{CRM}Today(PropertyName='nosuchcolumn')"})
    assert unknown.status_code == 400 and "nosuchcolumn" in unknown.json()["error"]["message"]
    alias = http.get("accounts", params={"$filter": f"{CRM}Today(PropertyName=@p9)"})
    assert alias.status_code == 400 and "@p9" in alias.json()["error"]["message"]
