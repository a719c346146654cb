"""`bcsync setup` and the Sales-side solution: imported once with the administrator credential, roles
checked, the missing ones listed; without it, the service says what is missing."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from bcsync.cli import app
from devstack.dataverse.config import INTEGRATION_USER_ID, SALES_USER_ID
from shared.connectors.credentials import StaticTokenCredential
from shared.ops.setup import AdminCredentials, run_setup
from shared.sales.solution import ROLE_ADMINISTRATOR, ROLE_AVAILABILITY, ROLE_USER, read_info
from shared.sales.statistics import push_statistics
from shared.store.couplings import Coupling
from tests.integration.ops.conftest import ADMIN_TOKEN, OpsStack, bc_customer, seed_account

pytestmark = pytest.mark.integration

ADMIN = AdminCredentials(dataverse=StaticTokenCredential(ADMIN_TOKEN), bc=StaticTokenCredential(ADMIN_TOKEN))


@pytest.fixture
def bare(ops: OpsStack) -> OpsStack:
    """A Dataverse environment set-up never touched: no solution, no roles."""
    ops.reset(with_solution=False)
    ops.dv.config.solution_import_delay_seconds = 0.5
    return ops


def _imports(ops: OpsStack) -> list[dict[str, object]]:
    return [r for r in ops.dv.rows("asyncoperations") if r.get("name") == "ImportSolutionAsync"]


def test_setup_imports_the_solution_once_then_says_nothing_changed(bare: OpsStack) -> None:
    info = read_info()
    first = run_setup(bare.rt, ADMIN, couple_salespeople=False)

    assert first.ok, [c for c in first.checks if not c.ok] + first.failed
    assert f"Dataverse solution {info.unique_name} {info.version} (imported)" in first.created
    assert f"security role {ROLE_ADMINISTRATOR} for the integration user" in first.created
    assert f"security role {ROLE_USER} for the integration user" in first.created
    imports = _imports(bare)
    assert len(imports) == 1 and imports[0]["statuscode"] == 30
    assert imports[0]["_createdby_value"] == "ad300000-0000-4000-8000-000000000001"  # the administrator
    assert [
        (s["uniquename"], s["version"]) for s in bare.dv.rows("solutions") if s["uniquename"] != "Default"
    ] == [(info.unique_name, info.version)]
    # Who lacks what: the licensed, enabled users without the Sales roles.
    assert "Alex Seller" in first.roles[ROLE_USER] and "Alex Seller" in first.roles[ROLE_AVAILABILITY]
    assert any(ROLE_AVAILABILITY in t and "Alex Seller" in t for t in first.todo)

    second = run_setup(bare.rt, ADMIN, couple_salespeople=False)
    assert second.ok and not second.changed, (second.created, second.updated)
    assert f"Dataverse solution {info.unique_name} {info.version}" in second.existing
    assert len(_imports(bare)) == 1

    bare.dv.assign_role(SALES_USER_ID, ROLE_USER)
    third = run_setup(bare.rt, ADMIN, couple_salespeople=False)
    assert "Alex Seller" not in third.roles[ROLE_USER] and "Alex Seller" in third.roles[ROLE_AVAILABILITY]


def test_without_the_solution_and_an_administrator_setup_says_what_to_do(bare: OpsStack) -> None:
    report = run_setup(bare.rt, None, couple_salespeople=False)

    check = next(c for c in report.checks if c.name.startswith("Dataverse solution"))
    assert not check.ok and "is not installed" in check.detail
    assert "--admin-device-code" in check.fix and "docs/sales-solution.md" in check.fix
    assert "`bcsync pack-solution`" in check.fix  # the command that exists (bcsync/cli.py)
    assert not report.ok and _imports(bare) == []


def test_an_older_installed_solution_is_upgraded(bare: OpsStack) -> None:
    info = read_info()
    bare.dv.store.seed(
        "solutions",
        [{"uniquename": info.unique_name, "friendlyname": "old", "version": "0.9.0.0", "ismanaged": False}],
        bare.dv.caller(bare.dv.users["admin-user"]),
    )
    report = run_setup(bare.rt, ADMIN, couple_salespeople=False)
    assert f"Dataverse solution {info.unique_name} {info.version} (imported over 0.9.0.0)" in report.updated
    assert len(_imports(bare)) == 1


def test_the_integration_user_gets_its_roles_and_the_service_can_write_statistics(bare: OpsStack) -> None:
    run_setup(bare.rt, ADMIN, couple_salespeople=False)
    held = {
        r["roleid"]
        for r in bare.dv.rows("systemuserrolescollection")
        if r["systemuserid"] == INTEGRATION_USER_ID
    }
    names = {r["roleid"]: r["name"] for r in bare.dv.rows("roles")}
    assert {names[r] for r in held} == {ROLE_ADMINISTRATOR, ROLE_USER}


def test_cli_setup_twice_imports_once_and_says_nothing_changed(bare: OpsStack) -> None:
    runner = CliRunner()
    args = [
        "setup",
        "--no-salespeople",
        "--admin-dataverse-token",
        ADMIN_TOKEN,
        "--admin-bc-token",
        ADMIN_TOKEN,
    ]
    first = runner.invoke(app, args, env=dict(os.environ))
    assert first.exit_code == 0, first.output
    assert "imported" in first.output
    second = runner.invoke(app, args, env=dict(os.environ))
    assert second.exit_code == 0, second.output
    assert "nothing changed" in second.output and "imported" not in second.output
    assert len(_imports(bare)) == 1


def test_statistics_without_the_solution_say_to_run_setup(bare: OpsStack) -> None:
    # A customer coupled before the solution was there (or it was removed): the statistics table is missing.
    bc_id = bc_customer(bare, "Adatum Corporation")["id"]
    bare.rt.couplings.create(Coupling("CUSTOMER", bc_id, seed_account(bare, "Adatum (CRM)")))
    report = push_statistics(bare.rt)
    [failed] = report.failed
    assert "Resource not found for the segment 'bcs_customerstatistics'" in failed
    assert "`bcsync setup`" in failed and "docs/sales-solution.md" in failed

    run_setup(bare.rt, ADMIN, couple_salespeople=False)
    assert push_statistics(bare.rt).written == 1
