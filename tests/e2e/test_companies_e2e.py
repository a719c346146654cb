"""Three BC companies with one Dataverse environment (issue 18, point 1).

The stack starts as a single-company deployment (company A, as every deployment before companies);
then a third company is created in BC, B and C are added to `BC_COMPANY_IDS` and set-up is run, as an
operator would. Each company's records land in Dataverse tagged with their company (`bcbi_companyid`,
as BC's own connector does), an account created in Sales for B lands in B only, the same customer
number in two companies stays two records, and a deletion in one company touches no other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.bc import DEFAULT_COMPANY_ID, SECOND_COMPANY_ID
from shared import runtime
from shared.companies import COMPANY_VALUE
from shared.connectors.credentials import StaticTokenCredential
from shared.ops.setup import AdminCredentials, run_setup
from tests.e2e.harness import SALES_USER, E2EStack, mapping_file, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"
THIRD_COMPANY_ID = "3c5e7a9b-1d2f-4e6a-8b0c-2d4f6a8c0e1b"
A, B, C = DEFAULT_COMPANY_ID, SECOND_COMPANY_ID, THIRD_COMPANY_ID
ADMIN = AdminCredentials(
    dataverse=StaticTokenCredential("admin-user"), bc=StaticTokenCredential("admin-user")
)


@pytest.fixture(scope="module")
def e2e_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # Deletions propagate, so that "touches nothing in the others" is about real deletes.
    return mapping_file(tmp_path_factory.mktemp("mappings"), "companies", CUSTOMER={"deletion": "propagate"})


@pytest.fixture(scope="module")
def companies(e2e: E2EStack) -> Iterator[dict[str, httpx.Client]]:
    """A coupled customer of A from the single-company days, then companies B and C brought in."""
    before = e2e.bc_create("customers", {"displayName": "Single-company days"})
    e2e.wait_coupled(CUSTOMER, "bc", before["id"])
    e2e.settle()
    added = e2e.control.post(f"{e2e.bc_url}/_sandbox/companies", json={"id": C, "name": "CRONUS UK Ltd."})
    assert added.status_code == 201, added.text
    os.environ["BC_COMPANY_IDS"] = f"{A},{B},{C}"
    runtime.reset()
    report = run_setup(runtime.get_runtime(), ADMIN, couple_salespeople=False)
    assert report.ok, report
    initial = [line for line in report.created if "initial sync queued" in line]
    assert len(initial) == 2 and not any(A in line for line in initial), report.created  # A was synced
    assert any(f"home company {A}" in line for line in report.created), report.created
    e2e.settle(timeout=120)
    api = e2e.stack.env["BC_API_URL"]
    clients = {
        company: httpx.Client(base_url=f"{api}/companies({company})/", headers=SALES_USER, timeout=30)
        for company in (A, B, C)
    }
    clients["before"] = before  # type: ignore[assignment]
    yield clients
    for client in clients.values():
        if isinstance(client, httpx.Client):
            client.close()


def _row(e2e: E2EStack, company: str) -> str:
    return runtime.get_runtime().for_company(company).dataverse_company_row()


def _create(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("customers", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _account_of(e2e: E2EStack, company: str, bc_id: str) -> dict[str, Any]:
    view = runtime.get_runtime().for_company(company)

    def coupled() -> str | None:
        c = view.couplings.get(CUSTOMER, "bc", bc_id)
        return c.dv_id if c is not None and c.state == "coupled" and c.dv_id else None

    dv_id = wait_for(coupled, f"customer {bc_id} of {company} to be coupled", 30)
    account = e2e.dv_get("accounts", dv_id)
    assert account is not None
    return account


def test_a_customer_of_each_company_lands_tagged_with_its_company(
    e2e: E2EStack, companies: dict[str, httpx.Client]
) -> None:
    created = {
        c: _create(companies[c], {"displayName": f"Own {c[:4]} {uuid.uuid4().hex[:4]}"}) for c in (A, B, C)
    }
    for company, customer in created.items():
        account = _account_of(e2e, company, customer["id"])
        assert account["name"] == customer["displayName"]
        assert account[COMPANY_VALUE] == _row(e2e, company)
    # The single-company days' account stays untagged: untagged rows are the home company's.
    old = e2e.coupling(CUSTOMER, "bc", companies["before"]["id"])  # type: ignore[index]
    assert old is not None and e2e.dv_get("accounts", str(old.dv_id))[COMPANY_VALUE] is None  # type: ignore[index]
    # Shared master data: each company coupled its currencies to the same rows, none duplicated.
    for iso in ("EUR", "GBP", "CAD"):
        assert len(e2e.dv_find("transactioncurrencies", f"isocurrencycode eq '{iso}'")) == 1, iso
    e2e.settle()
    assert e2e.failures() == []


def test_an_account_created_in_sales_for_company_b_lands_only_in_b(
    e2e: E2EStack, companies: dict[str, httpx.Client]
) -> None:
    name = f"Sales for B {uuid.uuid4().hex[:6]}"
    account = e2e.dv_create(
        "accounts",
        {
            "name": name,
            "customertypecode": 3,
            "bcbi_companyid@odata.bind": f"/bcbi_companies({_row(e2e, B)})",
        },
    )
    view = runtime.get_runtime().for_company(B)

    def coupled() -> Any:
        c = view.couplings.get(CUSTOMER, "dv", account["accountid"])
        return c if c is not None and c.state == "coupled" and c.bc_id else None

    coupling = wait_for(coupled, "the account to be coupled in B", 30)
    assert companies[B].get(f"customers({coupling.bc_id})").json()["displayName"] == name
    e2e.settle()
    for company in (A, C):
        found = (
            companies[company]
            .get("customers", params={"$filter": f"displayName eq '{name}'"})
            .json()["value"]
        )
        assert found == [], company
        assert (
            runtime.get_runtime().for_company(company).couplings.get(CUSTOMER, "dv", account["accountid"])
            is None
        )


def test_a_change_in_sales_of_another_companys_account_costs_what_it_costs_with_one_company(
    e2e: E2EStack, companies: dict[str, httpx.Client]
) -> None:
    customer = _create(companies[C], {"displayName": "Edited in Sales"})
    account = _account_of(e2e, C, customer["id"])
    e2e.settle()
    before = e2e.service_requests()
    e2e.dv_update("accounts", account["accountid"], {"telephone1": "+44 20 7946 0000"})

    def changed() -> bool | None:
        found = companies[C].get(f"customers({customer['id']})").json()
        return True if found.get("phoneNumber") == "+44 20 7946 0000" else None

    wait_for(changed, "the phone number to reach C's customer", 30)
    e2e.settle()
    spent = {k: v - before.get(k, 0) for k, v in e2e.service_requests().items() if v != before.get(k, 0)}
    # Its company comes from its coupling (storage reads), not from an API request: read it, write
    # BC; BC's notification of that write is an echo known by its stamp, without a read.
    assert spent == {"DV GET accounts": 1, "BC PATCH customers": 1}, spent


def test_the_same_number_in_two_companies_stays_two_records_and_a_delete_touches_one(
    e2e: E2EStack, companies: dict[str, httpx.Client]
) -> None:
    number = f"MC{uuid.uuid4().hex[:6].upper()}"
    in_b = _create(companies[B], {"number": number, "displayName": "Same number in B"})
    in_c = _create(companies[C], {"number": number, "displayName": "Same number in C"})
    account_b = _account_of(e2e, B, in_b["id"])
    account_c = _account_of(e2e, C, in_c["id"])
    assert account_b["accountid"] != account_c["accountid"]
    assert sorted(a["name"] for a in e2e.dv_find("accounts", f"accountnumber eq '{number}'")) == [
        "Same number in B",
        "Same number in C",
    ]
    e2e.settle()

    response = companies[B].delete(f"customers({in_b['id']})", headers={"If-Match": "*"})
    assert response.status_code == 204, response.text
    wait_for(lambda: e2e.dv_get("accounts", account_b["accountid"]) is None, "B's account to be deleted")
    e2e.settle()
    still = e2e.dv_get("accounts", account_c["accountid"])
    assert still is not None and still["name"] == "Same number in C"
    assert companies[C].get(f"customers({in_c['id']})").status_code == 200
    assert runtime.get_runtime().for_company(C).couplings.get(CUSTOMER, "bc", in_c["id"]) is not None
    assert runtime.get_runtime().for_company(B).couplings.get(CUSTOMER, "bc", in_b["id"]) is None


def test_removing_a_company_stops_it_and_says_what_stays_behind(
    e2e: E2EStack, companies: dict[str, httpx.Client]
) -> None:
    kept = _create(companies[C], {"displayName": "Kept in C"})
    account = _account_of(e2e, C, kept["id"])
    e2e.settle()
    os.environ["BC_COMPANY_IDS"] = f"{A},{B}"
    runtime.reset()
    report = run_setup(runtime.get_runtime(), ADMIN, couple_salespeople=False)
    assert report.ok, report
    removed = [line for line in report.updated if "no longer in BC_COMPANY_IDS: stopped" in line]
    assert len(removed) == 1 and C in removed[0] and "couplings" in removed[0], report.updated
    assert any(
        "deleted: company no longer in BC_COMPANY_IDS" in line and C in line for line in report.updated
    )
    live = runtime.get_runtime().bc.list_subscriptions()
    assert not [s for s in live if C in str(s.get("resource", "")).lower()]

    companies[C].patch(
        f"customers({kept['id']})", json={"displayName": "Changed after removal"}, headers={"If-Match": "*"}
    )
    e2e.settle()
    assert e2e.dv_get("accounts", account["accountid"])["name"] == "Kept in C"  # type: ignore[index]
    # What stays behind: the Dataverse row, tagged with C, and C's coupling under C's keys.
    assert e2e.dv_get("accounts", account["accountid"])[COMPANY_VALUE] is not None  # type: ignore[index]
    os.environ["BC_COMPANY_IDS"] = f"{A},{B},{C}"
    runtime.reset()
    assert runtime.get_runtime().for_company(C).couplings.get(CUSTOMER, "bc", kept["id"]) is not None
