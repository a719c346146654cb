"""Issue 12, point 3: every record that is not in sync is visible in `status` and `errors` with its
state, BC's or Dataverse's own message and the one command that resolves it; a business refusal
by BC is a failure on the record, never a poison message.

Runs its own stack on a copy of default.yaml with CUSTOMER under `deletion: propagate`, so that a
Sales deletion asks BC to delete the customer (which BC refuses while an order is outstanding)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.ops import operations
from shared.ops.operations import ErrorItem
from shared.store.couplings import Coupling
from shared.sync.engine import MAX_TRANSIENT_REQUEUES
from tests.e2e.harness import E2EStack, mapping_file, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"


@pytest.fixture(scope="module")
def e2e_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("mappings")
    return mapping_file(folder, "propagate", CUSTOMER={"deletion": "propagate"})


def _coupled_customer(e2e: E2EStack, **fields: Any) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6].upper()
    customer = e2e.bc_create("customers", {"displayName": f"Visible {tag}", **fields})
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    e2e.settle()
    return customer["id"], str(coupling.dv_id)


def _error_of(e2e: E2EStack, *, bc_id: str | None = None, dv_id: str | None = None) -> ErrorItem | None:
    for item in operations.list_errors(e2e.rt, CUSTOMER):
        if (bc_id and item.bc_id == bc_id) or (dv_id and item.dv_id == dv_id):
            return item
    return None


def _customer_status(e2e: E2EStack) -> operations.MappingStatus:
    return next(m for m in operations.status(e2e.rt).mappings if m.mapping == CUSTOMER)


def _poisoned(e2e: E2EStack, record_id: str) -> list[str]:
    return [p.summary for p in operations.list_poison(e2e.rt) if record_id in p.summary]


def test_a_business_refusal_by_bc_is_a_failure_with_bcs_message_not_a_poison_message(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    order = e2e.bc_create("salesOrders", {"customerId": bc_id})
    invocations = len(e2e.stack.host.invocations)

    # A salesperson deletes the account; BC refuses to delete a customer with an outstanding order.
    response = e2e.dv_http.delete(f"accounts({dv_id})")
    assert response.status_code == 204, response.text

    def failed() -> Coupling | None:
        c = e2e.coupling(CUSTOMER, "dv", dv_id)
        return c if c is not None and c.last_result == "failed" else None

    coupling = wait_for(failed, "the refused deletion to be recorded on the coupling")
    e2e.settle()
    assert "BC refused" in coupling.last_error and "outstanding Sales Order" in coupling.last_error
    assert "400" in coupling.last_error
    assert not e2e.failures(invocations), "a business refusal must not fail the function (poison)"
    assert not _poisoned(e2e, dv_id) and not _poisoned(e2e, bc_id)
    journal = e2e.rt.journal.history(CUSTOMER, "bc", bc_id)
    assert journal[0].outcome == "failed" and "outstanding Sales Order" in journal[0].error

    item = _error_of(e2e, bc_id=bc_id)
    assert item is not None and item.state == "failed" and item.coupled
    assert "outstanding Sales Order" in item.message
    number = e2e.bc_get("customers", bc_id)["number"]  # type: ignore[index]
    assert item.bc_number == number and item.resolve == f"bcsync retry CUSTOMER --bc {number}"
    assert item.since is not None
    status = _customer_status(e2e)
    assert status.failed >= 1 and status.oldest_unsynced_change is not None
    assert status.oldest_unsynced_seconds is not None and status.oldest_unsynced_seconds >= 0

    # The cause fixed (the order deleted in BC), the one command resolves it.
    e2e.bc_delete("salesOrders", order["id"])
    result = operations.retry(e2e.rt, CUSTOMER, "bc", number)  # the command `resolve` names
    assert result.retried[0].outcome == "deleted", result
    assert e2e.bc_get("customers", bc_id) is None
    assert _error_of(e2e, bc_id=bc_id) is None


def test_an_unresolved_conflict_is_in_errors_and_status_with_the_command_that_resolves_it(
    e2e: E2EStack,
) -> None:
    bc_id, dv_id = _coupled_customer(e2e, phoneNumber="555-1200")
    window = e2e.bc.webhook_config()["coalesce_seconds"]
    e2e.bc.set_webhook_config(coalesce_seconds=5.0)
    try:
        e2e.bc.change("customers", bc_id, {"phoneNumber": "555-1211"})
        e2e.dv_update("accounts", dv_id, {"telephone1": "555-1222"})
        e2e.bc.flush_webhooks()
        e2e.settle()
    finally:
        e2e.bc.set_webhook_config(coalesce_seconds=window)
    e2e.settle()

    item = _error_of(e2e, bc_id=bc_id)
    assert item is not None and item.state == "conflict", item
    assert "555-1211" in item.message and "555-1222" in item.message
    number = e2e.bc_get("customers", bc_id)["number"]  # type: ignore[index]
    assert item.resolve == f"bcsync sync CUSTOMER --bc {number} --prefer bc|dv"
    assert _customer_status(e2e).conflicts >= 1

    operations.sync_now(e2e.rt, CUSTOMER, "bc", number, prefer="bc")
    e2e.settle()
    assert _error_of(e2e, bc_id=bc_id) is None


def test_a_transient_failure_shows_retrying_n_of_m_with_the_next_attempt_and_counts_as_unsynced(
    e2e: E2EStack,
) -> None:
    bc_id, dv_id = _coupled_customer(e2e, phoneNumber="555-1300")
    # BC throttles every read of this customer (the transport's own retries give up, the queue
    # takes over); the person's edit itself goes through.
    e2e.bc.faults.add(
        {"action": "status", "status": 429, "retry_after": 1, "method": "GET", "path_contains": bc_id,
         "times": None}
    )  # fmt: skip
    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-1311"})

    def retrying() -> ErrorItem | None:
        item = _error_of(e2e, bc_id=bc_id)
        return item if item is not None and item.state == "retrying" else None

    item = wait_for(retrying, "the record to show as retrying", timeout=60)
    assert 1 <= item.attempts <= MAX_TRANSIENT_REQUEUES and item.max_attempts == MAX_TRANSIENT_REQUEUES
    assert item.next_attempt is not None and item.message.startswith("BC did not serve GET customers (429")
    assert item.since is not None
    status = _customer_status(e2e)
    assert status.retrying >= 1 and status.oldest_unsynced_seconds is not None

    e2e.bc.faults.clear()
    wait_for(
        lambda: e2e.dv_get("accounts", dv_id)["telephone1"] == "555-1311",  # type: ignore[index]
        "the change to arrive once BC answers again",
        timeout=60,
    )
    e2e.settle()
    assert _error_of(e2e, bc_id=bc_id) is None
    coupling = e2e.coupling(CUSTOMER, "bc", bc_id)
    assert coupling is not None and coupling.unsynced_since is None and coupling.next_attempt is None


def test_an_uncoupled_records_failure_counts_in_status_and_errors(e2e: E2EStack) -> None:
    before = _customer_status(e2e).failed
    # BC refuses the create of the customer for this account once (a business rule of BC's).
    e2e.bc.faults.add({"action": "status", "status": 400, "method": "POST", "path_contains": "/customers"})
    account = e2e.dv_create("accounts", {"name": f"Refused {uuid.uuid4().hex[:6]}", "customertypecode": 3})
    dv_id = account["accountid"]
    item = wait_for(lambda: _error_of(e2e, dv_id=dv_id), "the refused create in errors")
    e2e.settle()
    assert item.state == "failed" and not item.coupled and "BC refused" in item.message
    assert item.resolve == f"bcsync retry CUSTOMER --dv {dv_id}"
    assert _customer_status(e2e).failed == before + 1
    assert not _poisoned(e2e, dv_id)

    result = operations.retry(e2e.rt, CUSTOMER, "dv", dv_id)
    assert result.retried[0].outcome == "inserted", result
    assert _error_of(e2e, dv_id=dv_id) is None


def test_a_poison_message_shows_why_the_record_failed_not_just_its_id(e2e: E2EStack) -> None:
    bc_id, _ = _coupled_customer(e2e, phoneNumber="555-1400")
    # BC refuses the integration user itself (a permission removed): not this record's fault, so
    # the host retries it and finally parks it in the poison queue.
    e2e.bc.faults.add(
        {"action": "status", "status": 403, "method": "GET", "path_contains": bc_id, "times": None}
    )
    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-1411"})
    poisoned = wait_for(lambda: _poisoned(e2e, bc_id), "the message in the poison queue", timeout=60)
    e2e.bc.faults.clear()
    assert "last error: AuthenticationError" in poisoned[0] and "403" in poisoned[0], poisoned
    assert _customer_status(e2e).poison_messages >= 1
