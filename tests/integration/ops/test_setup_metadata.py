"""Set-up reads Dataverse's table metadata where the service relies on it: change tracking on every
table the delta poll follows, and every choice value the mappings write in its column's options."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.connectors.credentials import StaticTokenCredential
from shared.ops.setup import AdminCredentials, run_setup
from tests.integration.ops.conftest import ADMIN_TOKEN, OpsStack

pytestmark = pytest.mark.integration

ADMIN = AdminCredentials(dataverse=StaticTokenCredential(ADMIN_TOKEN))


def test_a_table_without_change_tracking_is_reported_with_the_fix(ops: OpsStack) -> None:
    ops.dv.set_change_tracking("accounts", False)

    report = run_setup(ops.rt, None, couple_salespeople=False)

    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["Dataverse change tracking account"]
    check = failed[0]
    assert check.detail.startswith("table account (CUSTOMER, VENDOR) has change tracking off: the delta poll")
    assert "shows no deleted rows" in check.detail
    assert check.fix.startswith("turn on Track changes for the table account in make.powerapps.com")
    assert "--admin-device-code" in check.fix
    assert any(t.startswith("Dataverse change tracking account: turn on Track changes") for t in report.todo)
    tracked = next(c for c in report.checks if c.name == "Dataverse change tracking contact")
    assert tracked.ok
    assert not report.ok


def test_setup_with_an_administrator_turns_change_tracking_on(ops: OpsStack) -> None:
    ops.dv.set_change_tracking("accounts", False)

    report = run_setup(ops.rt, ADMIN, couple_salespeople=False)

    assert "change tracking on Dataverse table account (turned on)" in report.updated
    assert next(c for c in report.checks if c.name == "Dataverse change tracking account").ok
    assert ops.dv.store.table("accounts").table.change_tracking is True
    again = run_setup(ops.rt, ADMIN, couple_salespeople=False)
    assert not any("change tracking" in u for u in again.updated)


def test_a_mapping_value_missing_from_the_option_set_is_a_precise_failure(ops: OpsStack) -> None:
    # An environment whose account "Relationship Type" has no Vendor option (11).
    with ops.dv.store.lock:
        data = ops.dv.store.table("accounts")
        column = data.table.columns["customertypecode"]
        choices = {k: v for k, v in (column.choices or {}).items() if k != 11}
        data.table = replace(
            data.table, columns={**data.table.columns, "customertypecode": replace(column, choices=choices)}
        )

    report = run_setup(ops.rt, None, couple_salespeople=False)

    failed = {c.name: c for c in report.checks if not c.ok}
    assert set(failed) == {
        "option value VENDOR customertypecode: account.customertypecode = 11",
        "option value VENDOR filter: account.customertypecode = 11",
    }, failed
    assert failed["option value VENDOR filter: account.customertypecode = 11"].detail.startswith(
        "VENDOR's Dataverse filter compares account.customertypecode with 11, which has no option 11"
    )
    check = failed["option value VENDOR customertypecode: account.customertypecode = 11"]
    assert check.detail.startswith(
        "VENDOR writes 11 (the constant of field customertypecode) to account.customertypecode, which has no "
        "option 11; its options are 1 Competitor"
    )
    assert "3 Customer" in check.detail
    assert "add the option 11 to the choice column customertypecode of table account" in check.fix
    assert not report.ok


def test_the_shipped_mappings_pass_the_metadata_checks(ops: OpsStack) -> None:
    report = run_setup(ops.rt, None, couple_salespeople=False)

    values = next(c for c in report.checks if c.name == "option values")
    assert values.ok and "choice values the mappings use exist in Dataverse" in values.detail
    tracking = [c for c in report.checks if c.name.startswith("Dataverse change tracking")]
    assert tracking and all(c.ok for c in tracking)
