"""Issue 12 end to end through the dev host: BC-assigned numbers come back to Sales right after a
create (point 2), and rough edges (point 7): an owner changed by hand in Sales is put back on the
change notification, and README's set-up example for the sandboxes works."""

from __future__ import annotations

import os
import uuid

import pytest
from typer.testing import CliRunner

from bcsync.cli import app
from devstack.dataverse.config import SALES_USER_ID, SandboxUser
from shared.ops import operations
from tests.e2e.harness import E2EStack, wait_for

pytestmark = pytest.mark.e2e

JIM = SandboxUser(
    "jim-olive", "a1b2c3d4-0000-4000-8000-00000000a001", "Jim Olive", "jim.olive@contoso.example"
)


def _tag() -> str:
    return uuid.uuid4().hex[:6].upper()


def test_readmes_sandbox_setup_example_registers_with_the_admin_user(e2e: E2EStack) -> None:
    result = CliRunner().invoke(
        app,
        ["setup", "--admin-dataverse-token", "admin-user", "--admin-bc-token", "admin-user"],
        env={**os.environ, "COLUMNS": "80"},
    )
    assert "401" not in result.output, result.output
    text = " ".join(result.output.split())
    assert "FAILED" not in text and "Failed" not in text, result.output


# ------------------------------------------------------------------ point 2: numbers come back
def test_an_account_created_in_sales_gets_its_bc_customer_number_within_seconds(e2e: E2EStack) -> None:
    name = f"Numbered {_tag()}"
    account = e2e.dv_create("accounts", {"name": name, "customertypecode": 3})
    coupling = e2e.wait_coupled("CUSTOMER", "dv", account["accountid"], timeout=20)
    customer = e2e.bc_get("customers", str(coupling.bc_id))
    assert customer is not None and customer["number"]
    wait_for(
        lambda: e2e.dv_get("accounts", account["accountid"])["accountnumber"] == customer["number"],  # type: ignore[index]
        "BC's customer number in the account's accountnumber",
        timeout=10,
    )
    e2e.settle()
    result = operations.sync_now(e2e.rt, "CUSTOMER", "dv", account["accountid"])
    assert result.outcome == "unchanged", result
    assert e2e.dv_get("accounts", account["accountid"])["accountnumber"] == customer["number"]  # type: ignore[index]


def test_a_product_created_in_sales_gets_its_bc_item_number_within_seconds(e2e: E2EStack) -> None:
    tag = _tag()
    product = e2e.dv_create(
        "products", {"name": f"Widget {tag}", "productnumber": f"SALES-{tag}", "producttypecode": 1}
    )
    coupling = e2e.wait_coupled("ITEM-PRODUCT", "dv", product["productid"], timeout=20)
    item = e2e.bc_get("items", str(coupling.bc_id))
    assert item is not None and item["number"] and item["number"] != f"SALES-{tag}"
    wait_for(
        lambda: e2e.dv_get("products", product["productid"])["productnumber"] == item["number"],  # type: ignore[index]
        "BC's item number in the product's productnumber",
        timeout=10,
    )
    e2e.settle()
    assert e2e.dv_get("products", product["productid"])["productnumber"] == item["number"]  # type: ignore[index]


# --------------------------------------------------------- point 7: an owner changed by hand
def test_an_owner_changed_by_hand_in_sales_is_put_back_on_the_notification(e2e: E2EStack) -> None:
    e2e.dv.add_user(JIM)
    jo = e2e.bc.store.find_by_key(e2e.company_id, "salespeoplePurchasers", "JO")
    if e2e.coupling("SALESPEOPLE", "bc", jo["id"]) is None:
        operations.couple(e2e.rt, "SALESPEOPLE", "JO", JIM.systemuserid, sync_from="dv")
    customer = e2e.bc_create("customers", {"displayName": f"Owned {_tag()}", "salespersonCode": "JO"})
    coupling = e2e.wait_coupled("CUSTOMER", "bc", customer["id"])
    dv_id = str(coupling.dv_id)
    e2e.settle()
    assert e2e.dv_get("accounts", dv_id)["_ownerid_value"] == JIM.systemuserid  # type: ignore[index]

    # A salesperson assigns the account to themselves by hand. No delta poll runs in this stack
    # (the timers never fire): only the change notification can put the owner back.
    e2e.dv_update("accounts", dv_id, {"ownerid@odata.bind": f"/systemusers({SALES_USER_ID})"})
    wait_for(
        lambda: e2e.dv_get("accounts", dv_id)["_ownerid_value"] == JIM.systemuserid,  # type: ignore[index]
        "the owner put back from BC's salesperson",
        timeout=10,
    )
    e2e.settle()
    assert e2e.dv_get("accounts", dv_id)["_ownerid_value"] == JIM.systemuserid  # type: ignore[index]
