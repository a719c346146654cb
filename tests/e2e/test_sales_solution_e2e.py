"""The Sales side through the full stack, as a salesperson sees it in Dataverse: the customer's
statistics row, its BC number and a working link to BC, a product's quantity on hand with its "as of"
time, and coupling by typing a BC number (refused with the reason when it cannot be done; clearing it
uncouples)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from devstack.dataverse.config import SALES_USER_ID
from devstack.demo import DATAVERSE_ADMIN_TOKEN
from devstack.stack import INTEGRATION_TOKEN
from shared.connectors.credentials import StaticTokenCredential
from shared.ops import operations
from shared.ops.setup import AdminCredentials, run_setup
from shared.sales.solution import ROLE_AVAILABILITY, ROLE_USER
from shared.sales.statistics import push_statistics
from shared.sales.stock import refresh_stock
from tests.e2e.harness import E2EStack, running_stack, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER, ITEM = "CUSTOMER", "ITEM-PRODUCT"


def _account(e2e: E2EStack, account_id: str) -> dict[str, Any]:
    found = e2e.dv_get("accounts", account_id)
    assert found is not None
    return found


def test_a_salesperson_sees_statistics_number_and_a_working_link(e2e: E2EStack) -> None:
    customer = e2e.bc_create("customers", {"displayName": f"Link {uuid.uuid4().hex[:6]}"})
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    e2e.settle()
    account = _account(e2e, str(coupling.dv_id))
    assert account["bcs_bcnumber"] == customer["number"]
    assert account["bcs_bccouplingstatus"] is None
    link = account["bcs_bcurl"]
    assert link.startswith(f"{e2e.bc_url}/contoso/production/?company=CRONUS%20USA%2C%20Inc.&page=21&filter=")
    card = httpx.get(link, timeout=10)
    assert (
        card.status_code == 200 and customer["number"] in card.text and customer["displayName"] in card.text
    )

    push_statistics(e2e.rt)
    query = f"bcs_customerstatistics?$filter=_bcs_accountid_value eq {coupling.dv_id}"
    refused = e2e.dv_http.get(query)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "0x80040220"
    e2e.dv.assign_role(SALES_USER_ID, ROLE_USER)  # what an administrator does after set-up lists it
    rows = e2e.dv_http.get(query).json()["value"]
    assert [r["bcs_customerno"] for r in rows] == [customer["number"]]
    assert rows[0]["bcs_balance"] == 0 and rows[0]["bcs_asofdate"]


def test_a_salesperson_sees_quantity_on_hand_and_as_of(e2e: E2EStack) -> None:
    item = e2e.bc_create(
        "items", {"displayName": f"Desk {uuid.uuid4().hex[:6]}", "baseUnitOfMeasureCode": "PCS"}
    )
    product_id = str(e2e.wait_coupled(ITEM, "bc", item["id"]).dv_id)
    e2e.settle()
    refresh_stock(e2e.rt)  # the ledger cursor
    posted = e2e.control.post(
        f"{e2e.bc_url}/_sandbox/itemLedgerEntries/post",
        json={"entries": [{"itemNumber": item["number"], "quantity": 12, "entryType": "Purchase"}]},
    )
    assert posted.status_code == 201, posted.text
    refresh_stock(e2e.rt)
    e2e.settle()
    e2e.dv.assign_role(SALES_USER_ID, ROLE_AVAILABILITY)
    product = e2e.dv_http.get(
        f"products({product_id})?$select=quantityonhand,bcs_quantityasof,bcs_bcnumber"
    ).json()
    assert product["quantityonhand"] == 12 and product["bcs_quantityasof"]
    assert product["bcs_bcnumber"] == item["number"]


def test_typing_a_bc_number_couples_and_clearing_it_uncouples(e2e: E2EStack) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    invocations = len(e2e.stack.host.invocations)
    [bc_id] = e2e.bc.seed(
        "customers", [{"number": f"T{tag}", "displayName": f"Typed {tag}", "city": "Atlanta"}]
    )
    account = e2e.dv_create(
        "accounts", {"name": f"Lead {tag}", "customertypecode": 3, "bcs_bcnumber": f"T{tag}"}
    )
    account_id = account["accountid"]

    coupling = e2e.wait_coupled(CUSTOMER, "bc", bc_id)
    assert coupling.dv_id == account_id
    e2e.settle()
    synced = _account(e2e, account_id)
    assert synced["name"] == f"Typed {tag}" and synced["address1_city"] == "Atlanta"  # BC's values won
    assert synced["bcs_bcurl"] and synced["bcs_bccouplingstatus"] is None

    # A number no BC customer has, and a number coupled elsewhere: refused, saying why, on the form.
    stray = e2e.dv_create(
        "accounts", {"name": f"Stray {tag}", "customertypecode": 3, "bcs_bcnumber": "NOPE-1"}
    )
    status = wait_for(lambda: _account(e2e, stray["accountid"])["bcs_bccouplingstatus"], "the refusal")
    assert "no BC customers has number 'NOPE-1'" in status
    twin = e2e.dv_create(
        "accounts", {"name": f"Twin {tag}", "customertypecode": 3, "bcs_bcnumber": f"T{tag}"}
    )
    status = wait_for(lambda: _account(e2e, twin["accountid"])["bcs_bccouplingstatus"], "the refusal")
    assert f"already coupled to Dataverse account {account_id}" in status
    assert e2e.coupling(CUSTOMER, "dv", twin["accountid"]) is None

    # Correcting the number clears the refusal once it couples.
    [other_bc] = e2e.bc.seed("customers", [{"number": f"U{tag}", "displayName": f"Other {tag}"}])
    e2e.dv_update("accounts", stray["accountid"], {"bcs_bcnumber": f"U{tag}"})
    e2e.wait_coupled(CUSTOMER, "bc", other_bc)
    e2e.settle()
    assert _account(e2e, stray["accountid"])["bcs_bccouplingstatus"] is None

    # Clearing the number uncouples (both records stay) and removes the link.
    e2e.dv_update("accounts", account_id, {"bcs_bcnumber": None})
    wait_for(lambda: e2e.coupling(CUSTOMER, "bc", bc_id) is None or None, "the uncoupling")
    e2e.settle()
    cleared = _account(e2e, account_id)
    assert cleared["bcs_bcurl"] is None and e2e.bc_get("customers", bc_id) is not None
    assert not e2e.failures(invocations)  # refusals are outcomes, never a function that raised


def test_typing_a_bc_number_couples_a_product_and_a_contact_too(e2e: E2EStack) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    invocations = len(e2e.stack.host.invocations)
    # A product: the BC item's values win, its link opens the Item Card; clearing the number uncouples.
    [item_id] = e2e.bc.seed(
        "items",
        [{"number": f"TI{tag}", "displayName": f"Typed item {tag}", "baseUnitOfMeasureCode": "PCS",
          "unitPrice": 7}],
    )  # fmt: skip
    product = e2e.dv_create(
        "products",
        {"name": f"Lead product {tag}", "productnumber": f"LP-{tag}", "producttypecode": 1,
         "bcs_bcnumber": f"TI{tag}"},
    )  # fmt: skip
    coupling = e2e.wait_coupled(ITEM, "bc", item_id)
    assert coupling.dv_id == product["productid"]
    e2e.settle()
    synced = e2e.dv_get("products", product["productid"])
    assert synced is not None and synced["name"] == f"Typed item {tag}"
    assert "&page=30&" in synced["bcs_bcurl"] and synced["bcs_bccouplingstatus"] is None
    assert httpx.get(synced["bcs_bcurl"], timeout=10).status_code == 200
    e2e.dv_update("products", product["productid"], {"bcs_bcnumber": None})
    wait_for(lambda: e2e.coupling(ITEM, "bc", item_id) is None or None, "the product's uncoupling")

    # A contact of a coupled account, typed with the number of the BC person of that customer.
    customer = e2e.bc_create("customers", {"displayName": f"Firm {tag}"})
    account_id = str(e2e.wait_coupled(CUSTOMER, "bc", customer["id"]).dv_id)
    [person_id] = e2e.bc.seed(
        "contacts",
        [{"type": "Person", "displayName": f"Robin {tag}", "email": f"robin{tag}@e2e.example",
          "companyNumber": e2e.bc.company_contact(customer["id"])["number"]}],
    )  # fmt: skip
    number = e2e.bc.get("contacts", person_id)["number"]
    contact = e2e.dv_create(
        "contacts",
        {"lastname": f"Lead {tag}", "bcs_bcnumber": number,
         "parentcustomerid_account@odata.bind": f"/accounts({account_id})"},
    )  # fmt: skip
    coupled = e2e.wait_coupled("CONTACT", "bc", person_id, timeout=20)
    assert coupled.dv_id == contact["contactid"]
    e2e.settle()
    shown = e2e.dv_get("contacts", contact["contactid"])
    assert shown is not None and shown["emailaddress1"] == f"robin{tag}@e2e.example"  # BC's values won
    assert "&page=5050&" in shown["bcs_bcurl"] and shown["bcs_bccouplingstatus"] is None
    assert not e2e.failures(invocations)


def test_a_service_never_set_up_says_to_run_setup_and_works_after_it() -> None:
    with running_stack(with_solution=False) as fresh:
        customer = fresh.bc_create("customers", {"displayName": f"Early {uuid.uuid4().hex[:6]}"})

        def failure() -> str | None:
            entries = fresh.rt.journal.history(CUSTOMER, "bc", customer["id"])
            failed = [e for e in entries if e.outcome == "failed"]
            return failed[0].reason if failed else None

        reason = wait_for(failure, "the customer's failure")
        assert "is not installed" in reason and "`bcsync setup`" in reason, reason
        shown = [e for e in operations.list_errors(fresh.rt, CUSTOMER) if e.bc_id == customer["id"]]
        assert shown and "`bcsync setup`" in shown[0].message, shown  # what `bcsync errors` lists

        dv_admin = StaticTokenCredential(DATAVERSE_ADMIN_TOKEN)
        admin = AdminCredentials(dataverse=dv_admin, bc=StaticTokenCredential(INTEGRATION_TOKEN))
        report = run_setup(fresh.rt, admin, couple_salespeople=False)
        assert any("(imported)" in c for c in report.created), report.created
        assert operations.retry_all(fresh.rt, CUSTOMER).queued >= 1
        coupling = fresh.wait_coupled(CUSTOMER, "bc", customer["id"])
        fresh.settle()
        account = fresh.dv_get("accounts", str(coupling.dv_id))
        assert account is not None and account["bcs_bcnumber"] == customer["number"] and account["bcs_bcurl"]
