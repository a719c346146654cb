"""Full resync and the documents' bulk path against a Dataverse without the bulk operation messages,
as Dynamics 365 Sales / Customer Engagement on-premises 9.1 is (the sandbox with `bulk_messages`
off answers CreateMultiple / UpdateMultiple / UpsertMultiple 404 "Resource not found for the
segment"). The service learns it from the first answer and writes each chunk as one `$batch` of
single upserts: everything is coupled and written as online, at the same number of requests, and a
second run writes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.sync import bulk
from tests.e2e.harness import E2EStack, diff, running_stack, writes

pytestmark = pytest.mark.e2e

CUSTOMERS = 2_500
INVOICES, LINES = 300, 5


@pytest.fixture(scope="module")
def e2e(e2e_environment: dict[str, str]) -> Iterator[E2EStack]:
    with running_stack(e2e_environment) as stack:
        stack.dv.config.bulk_messages = False  # read by the sandbox on every request
        yield stack


def _bulk_kinds(cost: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in cost.items() if "Multiple" in k}


def test_full_resync_without_bulk_messages_couples_everything_in_batches(e2e: E2EStack) -> None:
    assert not e2e.dv.rows("accounts")
    ids = e2e.bc.seed_customers(CUSTOMERS)
    for name in ("CURRENCY", "UNIT OF MEASURE", "UNIT"):
        assert bulk.run_full_resync(e2e.engine, name).status == "succeeded"
    before = e2e.service_requests()
    run = bulk.run_full_resync(e2e.engine, "CUSTOMER")
    cost = diff(e2e.service_requests(), before)
    print(
        f"\nfull resync of {CUSTOMERS:,} customers without bulk messages: {run.counts}, "
        f"{sum(cost.values())} requests {cost}"
    )
    assert run.status == "succeeded", run
    accounts = {r["accountnumber"]: r for r in e2e.dv.rows("accounts")}
    coupled = dict(e2e.rt.couplings.all_ids("CUSTOMER", "bc"))
    for bc_id in ids:
        customer = e2e.bc.get("customers", bc_id)
        account = accounts.get(customer["number"])
        assert account is not None, customer["number"]
        assert coupled.get(bc_id) == account["accountid"]
        assert (account["name"], account["address1_city"]) == (
            customer["displayName"],
            customer["city"] or None,
        )
    assert e2e.rt.dataverse.bulk_messages is False
    # At most one bulk message is tried (its 404 tells); 3 chunks of up to 1,000 are 3 $batch of upserts.
    assert sum(_bulk_kinds(cost).values()) <= 1, cost
    assert cost.get("DV POST $batch", 0) >= 3, cost
    # The run's own requests (the service-wide count also holds whatever a delta poll sent meanwhile);
    # online: 3 UpsertMultiple where these are 3 $batch.
    assert run.api_requests < 40, (run.api_requests, cost)

    dv_writes, bc_writes, before = writes(e2e.dv), writes(e2e.bc), e2e.service_requests()
    second = bulk.run_full_resync(e2e.engine, "CUSTOMER")
    assert second.status == "succeeded", second
    assert diff(writes(e2e.dv), dv_writes) == {} and diff(writes(e2e.bc), bc_writes) == {}
    assert _bulk_kinds(diff(e2e.service_requests(), before)) == {}


def test_posted_invoices_come_in_bulk_without_bulk_messages(e2e: E2EStack) -> None:
    items = [f"OP{n:03d}" for n in range(10)]
    e2e.bc.seed("items", [
        {"number": n, "displayName": f"On-prem item {n}", "unitPrice": 10 + i, "baseUnitOfMeasureCode": "PCS"}
        for i, n in enumerate(items)
    ])  # fmt: skip
    assert bulk.run_full_resync(e2e.engine, "ITEM-PRODUCT").status == "succeeded"
    customers = [a["accountnumber"] for a in e2e.dv.rows("accounts")][:50]
    invoices = e2e.bc.seed_posted_invoices(customers, items, INVOICES, LINES)
    before = e2e.service_requests()
    run = bulk.run_full_resync(e2e.engine, "POSTED INVOICE")
    cost = diff(e2e.service_requests(), before)
    print(
        f"\n{INVOICES} posted invoices of {LINES} lines without bulk messages: {run.counts}, "
        f"{sum(cost.values())} requests {cost}"
    )
    assert run.status == "succeeded", run
    assert run.counts.get("inserted") == INVOICES, run.counts
    details = e2e.dv.rows("invoicedetails")
    assert len(details) == INVOICES * LINES
    by_invoice: dict[str, list[float]] = {}
    for d in details:
        by_invoice.setdefault(str(d["_invoiceid_value"]), []).append(d["quantity"])
    for bc_id in invoices[:20]:
        coupling = e2e.coupling("POSTED INVOICE", "bc", bc_id)
        assert coupling is not None and coupling.dv_id
        response = e2e.bc_http.get(f"salesInvoices({bc_id})", params={"$expand": "salesInvoiceLines"})
        bc_lines = response.json()["salesInvoiceLines"]
        assert sorted(by_invoice[coupling.dv_id]) == sorted(line["quantity"] for line in bc_lines)
    # Headers: 1 $batch of 300 upserts; details: 2 $batch of up to 1,000 (online: 1 + 2 UpsertMultiple).
    assert _bulk_kinds(cost) == {}, cost
    assert sum(cost.values()) < 30, cost
