"""`bcsync setup` against the sandboxes, from systems with nothing registered."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from bcsync.cli import app
from devstack.bc import DEFAULT_COMPANY_ID
from devstack.bc.seed_data import reference_id
from devstack.dataverse.config import INTEGRATION_USER_ID, USD_CURRENCY_ID
from shared import runtime
from shared.connectors.credentials import StaticTokenCredential
from shared.feeds.registration import ENDPOINT_NAME
from shared.ops.setup import AdminCredentials, run_setup
from tests.integration.ops.conftest import ADMIN_TOKEN, SALES_USERS, OpsStack

pytestmark = pytest.mark.integration

ADMIN = AdminCredentials(dataverse=StaticTokenCredential(ADMIN_TOKEN), bc=StaticTokenCredential(ADMIN_TOKEN))


def test_setup_registers_everything_and_a_second_run_changes_nothing(ops: OpsStack) -> None:
    first = run_setup(ops.rt, ADMIN)

    assert first.ok, [c for c in first.checks if not c.ok] + first.failed
    assert f"Dataverse webhook endpoint {ENDPOINT_NAME}" in first.created
    endpoints = ops.dv.rows("serviceendpoints")
    assert [e["name"] for e in endpoints] == [ENDPOINT_NAME]
    steps = ops.dv.rows("sdkmessageprocessingsteps")
    assert len(steps) == len([c for c in first.created if c.startswith("Dataverse step")]) > 0
    assert {s["name"].split(": ")[1].split(" of ")[0] for s in steps} == {"Create", "Update", "Delete"}
    bc_created = [c for c in first.created if c.startswith("BC subscription")]
    assert {"BC subscription customers", "BC subscription items"} <= {c.split(" (")[0] for c in bc_created}
    assert len(ops.bc.webhooks.subscriptions) == len(bc_created)
    assert "queue sync-requests-poison" in first.existing + first.created
    # The registration ran as the administrator, never as the integration user.
    assert all(e["_createdby_value"] == "ad300000-0000-4000-8000-000000000001" for e in endpoints)

    # The price list of BC's item prices (settings.price_list), in the local currency, by the integration
    # user.
    price_list = ops.rt.mappings.settings.price_list
    assert price_list is not None and f"price list 'Business Central' ({price_list.id})" in first.created
    [row] = [r for r in ops.dv.rows("pricelevels") if r["pricelevelid"] == price_list.id]
    assert row["name"] == "Business Central" and row["_transactioncurrencyid_value"] == USD_CURRENCY_ID
    assert row["_createdby_value"] == INTEGRATION_USER_ID

    second = run_setup(ops.rt, ADMIN)

    assert second.ok
    assert not second.changed, (second.created, second.updated)
    assert f"price list 'Business Central' ({price_list.id})" in second.existing
    assert f"Dataverse webhook endpoint {ENDPOINT_NAME}" in second.existing
    assert len(ops.dv.rows("sdkmessageprocessingsteps")) == len(steps)
    assert sorted(second.existing) == sorted(set(second.existing))


def test_salespeople_are_coupled_by_email_and_the_others_listed_with_the_reason(ops: OpsStack) -> None:
    report = run_setup(ops.rt, ADMIN)

    by_code = {sp.code: sp for sp in report.salespeople}
    assert by_code["JO"].status == "coupled"  # e-mail matched case-insensitively
    assert by_code["JO"].user_id == SALES_USERS[0].systemuserid
    assert by_code["OF"].status == "coupled"
    assert by_code["PS"].status == "not_coupled"
    assert "disabled" in by_code["PS"].reason
    assert any("couple salespeople PS" in todo for todo in report.todo)
    jo = reference_id(DEFAULT_COMPANY_ID, "salespeoplePurchasers", "JO")
    coupling = ops.rt.couplings.get("SALESPEOPLE", "bc", jo)
    assert coupling is not None and coupling.dv_id == SALES_USERS[0].systemuserid

    again = run_setup(ops.rt, ADMIN)
    assert {sp.code: sp.status for sp in again.salespeople} == {
        "JO": "already_coupled",
        "OF": "already_coupled",
        "PS": "not_coupled",
    }


def test_a_wrong_secret_is_reported_as_bad_credentials(
    ops: OpsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAVERSE_STATIC_TOKEN", "not-the-integration-users-secret")
    runtime.reset()
    try:
        report = run_setup(runtime.get_runtime(), None)
    finally:
        monkeypatch.undo()
        runtime.reset()

    check = next(c for c in report.checks if c.name == "Dataverse connection")
    assert not check.ok
    assert "rejected the integration user's credentials (401)" in check.detail
    assert "wrong secret" in check.fix
    assert not report.ok
    bc_check = next(c for c in report.checks if c.name == "Business Central connection")
    assert bc_check.ok  # the other system is checked on its own


def test_a_missing_security_role_is_reported_per_table(ops: OpsStack) -> None:
    # Dataverse answers 403 to a user without a security role that can read the table.
    ops.dv.injector.add(
        {"action": "status", "status": 403, "method": "GET", "path_contains": "/products", "times": 0}
    )
    try:
        report = run_setup(ops.rt, None)
    finally:
        ops.dv.injector.clear()

    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["Dataverse read product"]
    assert "lacking a role" in failed[0].fix and "security role" in failed[0].fix
    assert any(t.startswith("Dataverse read product:") for t in report.todo)


def test_unknown_company_and_unreachable_url_say_what_to_fix(
    ops: OpsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BC_COMPANY_IDS", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("DATAVERSE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    runtime.reset()
    try:
        report = run_setup(runtime.get_runtime(), None)
    finally:
        monkeypatch.undo()
        runtime.reset()

    checks = {c.name: c for c in report.checks}
    assert "cannot reach http://127.0.0.1:9" in checks["Dataverse connection"].detail
    assert "DATAVERSE_URL" in checks["Dataverse connection"].fix
    company = checks["BC company 11111111-2222-3333-4444-555555555555"]
    assert not company.ok and "CRONUS USA, Inc." in company.detail
    assert "BC_COMPANY_IDS" in company.fix


def test_setup_without_an_administrator_lists_what_is_left_to_do(ops: OpsStack) -> None:
    report = run_setup(ops.rt, None, couple_salespeople=False)

    assert report.ok
    assert not [c for c in report.created if "webhook" in c or "subscription" in c]
    assert any("register the Dataverse webhook endpoint" in t for t in report.todo)
    assert any("create the BC webhook subscriptions" in t for t in report.todo)
    assert ops.dv.rows("serviceendpoints") == []


def test_cli_setup_prints_the_report_and_is_idempotent(ops: OpsStack) -> None:
    runner = CliRunner()
    args = ["setup", "--admin-dataverse-token", ADMIN_TOKEN, "--admin-bc-token", ADMIN_TOKEN]
    first = runner.invoke(app, args, env=dict(os.environ))
    assert first.exit_code == 0, first.output
    assert "Created" in first.output and ENDPOINT_NAME in first.output
    assert "PS" in first.output and "disabled" in first.output

    second = runner.invoke(app, ["--json", *args], env=dict(os.environ))
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert report["created"] == [] and report["updated"] == []


def test_setup_shows_which_dataverse_currency_is_bcs_blank_local_currency(ops: OpsStack) -> None:
    report = run_setup(ops.rt, None, couple_salespeople=False)

    local = next(c for c in report.checks if c.name == "local currency")
    assert local.ok
    assert "BC blank currency code (local currency USD) <-> Dataverse currency USD US Dollar" in local.detail
    assert "the organization's base currency" in local.detail


def test_setup_says_what_to_change_when_the_local_currency_is_missing_in_dataverse(ops: OpsStack) -> None:
    # A company whose LCY Code is CAD, connected to a Dataverse whose base currency is USD.
    ms = ops.rt.mappings
    cad = ms.model_copy(update={"settings": ms.settings.model_copy(update={"bc_local_currency_code": "CAD"})})
    import shared.ops.setup as setup_module

    original = setup_module.load_mapping_set
    setup_module.load_mapping_set = lambda path: cad  # type: ignore[assignment]
    try:
        report = run_setup(ops.rt, None, couple_salespeople=False)
    finally:
        setup_module.load_mapping_set = original

    local = next(c for c in report.checks if c.name == "local currency")
    assert not local.ok
    assert "Dataverse has no currency with ISO code CAD" in local.detail
    assert "add the currency CAD in Dataverse" in local.fix and "base currency USD" in local.fix
    assert "settings.bc_local_currency_code" in local.fix
    assert any(t.startswith("local currency: add the currency CAD") for t in report.todo)
    assert not report.ok
    # The price list of item prices waits for that currency, saying so.
    price_list = next(c for c in report.checks if c.name == "price list 'Business Central'")
    assert not price_list.ok and "fix the local currency" in price_list.fix
