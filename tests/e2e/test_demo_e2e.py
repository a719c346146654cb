"""`make run`'s demo (issue 12, point 7): what it announces is what its data does. Salesperson OF
has no Dataverse user, so the demo says its customers fail; they exist and fail, saying why."""

from __future__ import annotations

import pytest

from devstack.demo import DEMO_OF_CUSTOMERS, start_demo
from shared.ops import operations
from tests.e2e.harness import E2EStack

pytestmark = pytest.mark.e2e


def test_the_customers_the_demo_announces_as_failing_exist_and_fail_saying_why(e2e: E2EStack) -> None:
    lines = list(start_demo(e2e.stack))
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
