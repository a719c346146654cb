"""Issue 12, points 4-6 end to end through the dev host: the audit trail (per field old -> new, who,
which way, conflicts with both values and the winner; a record's timeline on both systems), newest_wins
per field, and dry runs that write nothing. This module runs its own stack on a copy of default.yaml
whose CUSTOMER resolves conflicts with `newest_wins`."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bcsync.cli import app
from devstack.dataverse.config import SALES_USER_ID
from shared.ops import operations as ops
from shared.store.couplings import Coupling
from tests.e2e.harness import E2EStack, diff, mapping_file, wait_for, writes

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"
# Dataverse's modifiedon has one-second precision: edits meant to be ordered are this far apart.
AFTER_A_SECOND = 1.2


@pytest.fixture(scope="module")
def e2e_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("mappings")
    return mapping_file(folder, "newest_wins", CUSTOMER={"conflict": "newest_wins"})


def _tag() -> str:
    return uuid.uuid4().hex[:6].upper()


def _coupled_customer(e2e: E2EStack, **fields: Any) -> tuple[str, str]:
    tag = _tag()
    customer = e2e.bc_create("customers", {"displayName": f"Audit {tag}", "city": "Atlanta", **fields})
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    e2e.settle()
    assert coupling.dv_id is not None
    return customer["id"], coupling.dv_id


def _payment_terms(e2e: E2EStack, code: str) -> str:
    [terms] = e2e.bc_find("paymentTerms", f"code eq '{code}'")
    return str(terms["id"])


def _coupling(e2e: E2EStack, bc_id: str) -> Coupling:
    coupling = e2e.coupling(CUSTOMER, "bc", bc_id)
    assert coupling is not None
    return coupling


def bcsync(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={**os.environ, "COLUMNS": "200"})


# ----------------------------------------------------------------------------- 4. the audit trail
def test_history_says_per_field_old_and_new_who_changed_it_and_which_way(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e, phoneNumber="555-0100")

    e2e.dv_update("accounts", dv_id, {"telephone1": "555-0111"})  # Alex Seller, in Sales
    wait_for(lambda: e2e.bc_get("customers", bc_id)["phoneNumber"] == "555-0111", "the phone in BC")  # type: ignore[index]
    e2e.settle()
    e2e.bc_update("customers", bc_id, {"city": "Macon"})
    wait_for(lambda: e2e.dv_get("accounts", dv_id)["address1_city"] == "Macon", "the city in Sales")  # type: ignore[index]
    e2e.settle()

    entries = [e for e in ops.history(e2e.rt, CUSTOMER, "bc", bc_id) if e.outcome == "modified"]
    from_bc, from_sales = entries[0], entries[1]
    assert (from_sales.outcome, from_sales.direction, from_sales.source) == ("modified", "to_bc", "dv")
    assert from_sales.user == SALES_USER_ID
    [phone] = from_sales.changes
    assert (phone["field"], phone["old"], phone["new"], phone["from"], phone["user"]) == (
        "phoneNumber", "555-0100", "555-0111", "dv", SALES_USER_ID,
    )  # fmt: skip
    assert (from_bc.direction, from_bc.source, from_bc.user) == ("to_dataverse", "bc", "")
    assert [(c["field"], c["old"], c["new"]) for c in from_bc.changes] == [("city", "Atlanta", "Macon")]

    # JSON lines export: one entry per line, newest first, with everything the table shows.
    exported = bcsync("history", CUSTOMER, "--bc", bc_id, "--jsonl", "-")
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    modified = [line for line in lines if line["outcome"] == "modified"]
    assert [line["direction"] for line in modified[:2]] == ["to_dataverse", "to_bc"]
    assert modified[1]["changes"][0]["new"] == "555-0111" and modified[1]["user"] == SALES_USER_ID
    table = bcsync("history", CUSTOMER, "--dv", dv_id)
    assert "phoneNumber: '555-0100' -> '555-0111'" in table.output, table.output
    # Rich wraps at the terminal's width (80 columns without one): compare the words, not the lines.
    assert f"change in Dataverse by {SALES_USER_ID}" in " ".join(table.output.split()), table.output


def test_a_resolved_conflict_keeps_the_discarded_value_and_says_which_won_and_why(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    cod = _payment_terms(e2e, "COD")  # no Dataverse option: the pair fails and waits, both edits kept
    e2e.bc_update("customers", bc_id, {"city": "Macon", "paymentTermsId": cod})
    wait_for(lambda: _coupling(e2e, bc_id).last_result == "failed", "the BC change to fail")
    time.sleep(AFTER_A_SECOND)
    e2e.dv_update("accounts", dv_id, {"address1_city": "Athens"})
    wait_for(lambda: _coupling(e2e, bc_id).skipped, "the Dataverse change to fail the same way (skipped)")
    e2e.settle()
    e2e.bc_update("customers", bc_id, {"paymentTermsId": _payment_terms(e2e, "30 DAYS")})  # the fix
    e2e.settle()

    retried = ops.retry(e2e.rt, CUSTOMER, "bc", bc_id).retried[0]
    assert retried.outcome == "modified", retried
    [conflict] = retried.conflicts
    assert (conflict["field"], conflict["bc"], conflict["dv"], conflict["winner"]) == (
        "city", "Macon", "Athens", "dv",
    )  # fmt: skip
    assert "newest_wins: Dataverse is newer" in conflict["why"]
    [entry] = [e for e in ops.history(e2e.rt, CUSTOMER, "dv", dv_id) if e.conflicts][:1]
    assert entry.conflicts == retried.conflicts  # the discarded BC value stays in the journal
    assert entry.outcome == "modified" and entry.reason.startswith("retry") is False


# ------------------------------------------------------------------------- 5. newest_wins per field
def test_newest_wins_is_decided_per_field_not_by_the_whole_record(e2e: E2EStack) -> None:
    """BC's address edit is older than Sales'; a later BC phone edit makes the BC record newer as a
    whole. Per field, Sales' newer address wins and BC's phone still reaches Sales."""
    bc_id, dv_id = _coupled_customer(e2e)
    cod = _payment_terms(e2e, "COD")
    e2e.bc_update("customers", bc_id, {"city": "Macon", "paymentTermsId": cod})  # T0, held up by COD
    wait_for(lambda: _coupling(e2e, bc_id).last_result == "failed", "the BC change to be seen (and fail)")
    assert "city" in (_coupling(e2e, bc_id).seen or {}).get("bc", {})
    time.sleep(AFTER_A_SECOND)
    e2e.dv_update("accounts", dv_id, {"address1_city": "Athens"})  # T1 > T0
    wait_for(lambda: _coupling(e2e, bc_id).skipped, "the Sales change to be seen (and fail the same way)")
    e2e.settle()
    time.sleep(AFTER_A_SECOND)
    e2e.bc_update(
        "customers", bc_id, {"phoneNumber": "555-0123", "paymentTermsId": _payment_terms(e2e, "30 DAYS")}
    )
    e2e.settle()

    ops.retry(e2e.rt, CUSTOMER, "bc", bc_id)

    customer, account = e2e.bc_get("customers", bc_id), e2e.dv_get("accounts", dv_id)
    assert customer is not None and account is not None
    assert (customer["city"], account["address1_city"]) == ("Athens", "Athens")
    assert account["telephone1"] == "555-0123"
    settled = _coupling(e2e, bc_id)
    assert settled.last_result == "modified" and settled.seen is None  # nothing waits any more


def test_a_records_timeline_covers_both_systems_also_before_it_was_coupled(e2e: E2EStack) -> None:
    tag = _tag()
    account = e2e.dv_create(
        "accounts",
        {"name": f"Timeline {tag}", "customertypecode": 3, "paymenttermscode": 3},  # not in value_map
    )
    dv_id = account["accountid"]

    def failed() -> bool:
        return any(e.outcome == "failed" for e in e2e.rt.journal.history(CUSTOMER, "dv", dv_id))

    wait_for(failed, "the uncoupled account's failure in the journal")
    e2e.dv_update("accounts", dv_id, {"paymenttermscode": 1})
    coupling = e2e.wait_coupled(CUSTOMER, "dv", dv_id)
    e2e.settle()

    timeline = ops.history(e2e.rt, CUSTOMER, "bc", str(coupling.bc_id))
    outcomes = [e.outcome for e in timeline]
    assert "failed" in outcomes and "inserted" in outcomes, outcomes  # the failure is only under the DV id
    assert outcomes.index("inserted") < outcomes.index("failed")  # newest first
    assert len({(e.at, e.outcome, e.reason) for e in timeline}) == len(timeline)  # each entry once


# ----------------------------------------------------------------------------------- 6. dry runs
INTEGRATION_USER = {"Authorization": "Bearer integration-user", "If-Match": "*"}


def _quiet_dv_update(e2e: E2EStack, dv_id: str, changes: dict[str, Any]) -> None:
    """A change the service does not hear about: made as its own integration user, whose changes the
    Dataverse webhook drops as echoes. Only a sync (or a dry run of one) finds it."""
    response = e2e.dv_http.patch(f"accounts({dv_id})", json=changes, headers=INTEGRATION_USER)
    assert response.status_code == 204, response.text


def _journal_rows(e2e: E2EStack, bc_id: str, dv_id: str) -> int:
    return len(ops.history(e2e.rt, CUSTOMER, "bc", bc_id, limit=500)) + len(
        ops.history(e2e.rt, CUSTOMER, "dv", dv_id, limit=500)
    )


def test_dry_runs_of_sync_retry_and_couple_show_old_and_new_and_write_nothing(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    name = str(e2e.bc_get("customers", bc_id)["displayName"])  # type: ignore[index]
    _quiet_dv_update(e2e, dv_id, {"name": "Renamed in Sales"})
    loose_bc, loose_dv = _coupled_customer(e2e, city="Boston")
    ops.uncouple(e2e.rt, CUSTOMER, "bc", loose_bc)
    _quiet_dv_update(e2e, loose_dv, {"address1_city": "Salem"})
    e2e.settle()
    before_bc, before_dv = writes(e2e.bc), writes(e2e.dv)
    coupling_before = _coupling(e2e, bc_id)
    journal_before = _journal_rows(e2e, bc_id, dv_id) + _journal_rows(e2e, loose_bc, loose_dv)

    synced = ops.sync_now(e2e.rt, CUSTOMER, "dv", dv_id, dry_run=True)
    assert synced.dry_run and synced.outcome == "modified"
    assert [(c["field"], c["old"], c["new"], c["direction"]) for c in synced.changes] == [
        ("displayName", name, "Renamed in Sales", "to_bc")
    ]
    preferred = ops.sync_now(e2e.rt, CUSTOMER, "dv", dv_id, prefer="bc", dry_run=True)
    assert [(c["field"], c["new"], c["direction"]) for c in preferred.changes] == [
        ("displayName", name, "to_dataverse")
    ]
    retried = ops.retry(e2e.rt, CUSTOMER, "dv", dv_id, dry_run=True).retried[0]
    assert retried.dry_run and retried.changes == synced.changes
    coupled = ops.couple(e2e.rt, CUSTOMER, loose_bc, loose_dv, sync_from="bc", dry_run=True)
    assert coupled.dry_run and coupled.outcome == "modified"
    assert [(c["field"], c["old"], c["new"], c["direction"]) for c in coupled.changes] == [
        ("city", "Salem", "Boston", "to_dataverse")
    ]
    shown = bcsync("sync", CUSTOMER, "--dv", dv_id, "--dry-run")
    assert shown.exit_code == 0, shown.output
    assert "dry run, nothing written: would be modified" in shown.output
    assert f"displayName: 'Renamed in Sales' -> '{name}'" not in shown.output  # old -> new, not reversed
    assert f"displayName: '{name}' -> 'Renamed in Sales'" in shown.output

    assert diff(writes(e2e.bc), before_bc) == {} and diff(writes(e2e.dv), before_dv) == {}
    assert e2e.coupling(CUSTOMER, "bc", loose_bc) is None  # not coupled by the dry run
    assert _coupling(e2e, bc_id).etag == coupling_before.etag  # the coupling row was not written
    assert _journal_rows(e2e, bc_id, dv_id) + _journal_rows(e2e, loose_bc, loose_dv) == journal_before
    assert e2e.queue_depth() == 0


def test_resync_dry_run_counts_lists_and_exports_what_it_would_touch(e2e: E2EStack, tmp_path: Path) -> None:
    _, dv_id = _coupled_customer(e2e)
    _quiet_dv_update(e2e, dv_id, {"telephone1": "555-0199"})
    e2e.settle()
    before_bc, before_dv = writes(e2e.bc), writes(e2e.dv)
    export = tmp_path / "resync.jsonl"

    shown = bcsync("resync", CUSTOMER, "--dry-run", "--export", str(export), "--show", "50")

    assert shown.exit_code == 0, shown.output
    assert "(dry run: nothing written)" in shown.output and "would touch" in shown.output
    items = [json.loads(line) for line in export.read_text().splitlines()]
    mine = [i for i in items if i["dv_id"] == dv_id]
    assert [(i["outcome"], [(c["field"], c["new"]) for c in i["changes"]]) for i in mine] == [
        ("modified", [("phoneNumber", "555-0199")])
    ]
    assert "phoneNumber: (empty) -> '555-0199'" in shown.output or "555-0199" in shown.output
    assert all(i["outcome"] != "unchanged" for i in items)
    assert diff(writes(e2e.bc), before_bc) == {} and diff(writes(e2e.dv), before_dv) == {}
