"""`make run`'s demo (issue 12, point 7): what it announces is what its data does. Salesperson OF
has no Dataverse user, so the demo says its customers fail; they exist and fail, saying why."""

from __future__ import annotations

import pytest

from devstack.demo import DEMO_OF_CUSTOMERS, start_demo
from shared.ops import operations
from tests.e2e.harness import E2EStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(e2e: E2EStack) -> list[str]:
    """The demo, started once for the module's stack: what it announced."""
    return list(start_demo(e2e.stack))


def test_the_customers_the_demo_announces_as_failing_exist_and_fail_saying_why(
    e2e: E2EStack, demo: list[str]
) -> None:
    lines = demo
    announced = next(line for line in lines if line.startswith("salespeople not coupled"))
    assert "OF (" in announced, lines
    held = next(line for line in lines if line.startswith("customers of uncoupled salespeople"))
    assert all(name in held for name in DEMO_OF_CUSTOMERS), held

    customers = {c["displayName"]: c for c in e2e.bc.store.rows(e2e.company_id, "customers")}
    failing = {customers[name]["id"] for name in DEMO_OF_CUSTOMERS}
    errors = {e.bc_id: e for e in operations.list_errors(e2e.rt, "CUSTOMER") if e.bc_id in failing}
    assert set(errors) == failing, (errors, lines)
    assert all("OF" in e.message for e in errors.values()), errors
    status = next(m for m in operations.status(e2e.rt).mappings if m.mapping == "CUSTOMER")
    assert status.failed == len(DEMO_OF_CUSTOMERS), status


def test_the_demo_documents_flow_posted_invoices_to_sales_and_the_submitted_order_to_bc(
    e2e: E2EStack, demo: list[str]
) -> None:
    from devstack.demo import DEMO_INVOICES
    from tests.e2e.harness import wait_for

    lines = demo
    assert any(line.startswith("sales orders entered in Sales") for line in lines), lines
    invoices = [i for i in e2e.bc.store.rows(e2e.company_id, "salesInvoices") if i["status"] == "Open"]
    assert len(invoices) >= DEMO_INVOICES
    for invoice in invoices[:DEMO_INVOICES]:
        coupling = e2e.coupling("POSTED INVOICE", "bc", invoice["id"])
        assert coupling is not None and coupling.dv_id, (invoice["number"], lines)
        detail_count = len(
            [d for d in e2e.dv.rows("invoicedetails") if d["_invoiceid_value"] == coupling.dv_id]
        )
        assert detail_count == 2
    orders = {o["name"]: o for o in e2e.dv.rows("salesorders")}
    submitted, draft = orders["Desks for Atlanta"], orders["Chairs (draft)"]
    coupling = wait_for(
        lambda: e2e.coupling("SALES ORDER", "dv", submitted["salesorderid"]), "the demo order in BC"
    )
    assert coupling.bc_id and len(e2e.bc.store.lines_of(e2e.company_id, coupling.bc_id)) == 2
    assert e2e.coupling("SALES ORDER", "dv", draft["salesorderid"]) is None
