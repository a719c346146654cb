"""BC's local currency is the blank currency code (General Ledger Setup's LCY Code); in Dataverse it
is the currency with the LCY code's ISO code, usually the organization's base currency. Accounts a
salesperson creates in Sales carry that currency; they must reach BC with the blank code, and back.
"""

from __future__ import annotations

import uuid

import pytest

from devstack.bc.entities import ZERO_GUID
from devstack.dataverse.config import USD_CURRENCY_ID
from tests.e2e.harness import E2EStack, mapping_file, wait_for

pytestmark = pytest.mark.e2e

USD = f"/transactioncurrencies({USD_CURRENCY_ID})"


@pytest.fixture(scope="module")
def e2e_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """default.yaml with VENDOR's deletion policy `restore` (a vendor deleted in BC is re-created)."""
    folder = tmp_path_factory.mktemp("mappings")
    return mapping_file(folder, "restore-vendors", VENDOR={"deletion": "restore"})


def test_a_sales_users_account_in_the_base_currency_reaches_bc_blank_and_gets_its_number(
    e2e: E2EStack,
) -> None:
    name = f"Base Currency {uuid.uuid4().hex[:6]}"
    account = e2e.dv_create(
        "accounts", {"name": name, "customertypecode": 3, "transactioncurrencyid@odata.bind": USD}
    )
    coupling = e2e.wait_coupled("CUSTOMER", "dv", account["accountid"], timeout=10)
    customer = e2e.bc_get("customers", str(coupling.bc_id))
    assert customer is not None
    # API v2.0 shows the blank (local) currency as currencyId zero with the LCY code as currencyCode.
    assert (customer["currencyId"], customer["currencyCode"]) == (ZERO_GUID, "USD")
    number = customer["number"]
    wait_for(
        lambda: (e2e.dv_get("accounts", account["accountid"]) or {}).get("accountnumber") == number,
        f"accountnumber {number} in Sales",
        timeout=5,
    )
    e2e.settle()
    assert e2e.dv_get("accounts", account["accountid"])["_transactioncurrencyid_value"] == USD_CURRENCY_ID  # type: ignore[index]
    assert not e2e.failures()
    assert not [
        e for e in e2e.rt.journal.history("CUSTOMER", "dv", account["accountid"]) if e.outcome == "failed"
    ]


def test_a_vendor_deleted_in_bc_is_restored_in_the_local_currency(e2e: E2EStack) -> None:
    vendor = e2e.bc_create("vendors", {"displayName": f"Restored Vendor {uuid.uuid4().hex[:6]}"})
    coupling = e2e.wait_coupled("VENDOR", "bc", vendor["id"])
    e2e.settle()
    dv_id = str(coupling.dv_id)
    assert e2e.dv_get("accounts", dv_id)["_transactioncurrencyid_value"] == USD_CURRENCY_ID  # type: ignore[index]

    e2e.bc_delete("vendors", vendor["id"])

    def restored() -> str | None:
        c = e2e.coupling("VENDOR", "dv", dv_id)
        return c.bc_id if c is not None and c.state == "coupled" and c.bc_id != vendor["id"] else None

    new_id = wait_for(restored, "the vendor to be restored in BC")
    e2e.settle()
    again = e2e.bc_get("vendors", new_id)
    assert again is not None and again["displayName"] == vendor["displayName"]
    assert (again["currencyId"], again["currencyCode"]) == (ZERO_GUID, "USD")
    journal = e2e.rt.journal.history("VENDOR", "bc", new_id)
    assert any(e.reason == f"create in BC from Dataverse {dv_id}" for e in journal), journal
    assert not [e for e in journal if e.outcome == "failed"]
    assert not e2e.failures()
