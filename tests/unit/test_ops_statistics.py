"""Customer statistics figures (pure): what is computed from BC's records and when a push is needed."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.sales.statistics import CustomerFigures, compute_figures, statistics_row

CUSTOMER = {
    "id": "c1",
    "number": "C00010",
    "displayName": "Adatum",
    "creditLimit": 5000,
    "customerFinancialDetail": {"balance": 120.5, "totalSalesExcludingTax": 9000, "overdueAmount": 20},
}


def test_figures_combine_financial_details_orders_and_open_invoices() -> None:
    orders = [
        {"customerId": "c1", "salesOrderLines": [
            {"quantity": 4, "shippedQuantity": 1, "amountIncludingTax": 400},  # 300 outstanding, 100 shipped
            {"quantity": 2, "shippedQuantity": 2, "invoicedQuantity": 1, "amountIncludingTax": 50},  # 25
            {"quantity": 0, "amountIncludingTax": 10},  # a comment line: ignored
        ]},
        {"customerId": "someone-else", "salesOrderLines": [{"quantity": 1, "amountIncludingTax": 999}]},
    ]  # fmt: skip
    invoices = [{"customerId": "c1", "remainingAmount": 70}, {"customerId": "c1", "remainingAmount": 30.25}]

    figures = compute_figures([CUSTOMER], orders, invoices)["c1"]

    assert figures == CustomerFigures(
        "c1", "C00010", "Adatum", balance=120.5, outstanding_orders=300, shipped_not_invoiced=125,
        outstanding_invoices=100.25, total_sales=9000, overdue_amount=20, credit_limit=5000,
    )  # fmt: skip


def test_a_customer_without_documents_has_zero_figures() -> None:
    bare = {"id": "c2", "number": "C00020", "displayName": "Trey"}
    figures = compute_figures([bare], [], [])["c2"]
    assert (figures.balance, figures.outstanding_orders, figures.credit_limit) == (0, 0, 0)


def test_fingerprint_changes_with_any_figure_and_only_then() -> None:
    base = compute_figures([CUSTOMER], [], [])["c1"]
    same = compute_figures([dict(CUSTOMER)], [], [])["c1"]
    assert base.fingerprint() == same.fingerprint()
    for field in ("balance", "outstanding_orders", "credit_limit", "name"):
        changed = CustomerFigures(
            **{**base.__dict__, field: getattr(base, field) + ("x" if field == "name" else 1)}
        )
        assert changed.fingerprint() != base.fingerprint(), field


def test_the_row_addresses_the_alternate_key_and_binds_the_account() -> None:
    figures = CustomerFigures("c1", "O'NEIL", "O'Neil Ltd", balance=1.5)
    row = statistics_row(figures, "acc-1", dt.date(2026, 1, 2))
    assert row["@odata.id"] == "bcs_customerstatistics(bcs_customerno='O''NEIL')"
    assert row["bcs_accountid@odata.bind"] == "/accounts(acc-1)"
    assert row["bcs_asofdate"] == "2026-01-02"
    assert row["bcs_balance"] == pytest.approx(1.5)
