"""Every admin action through `bcsync`, against the sandboxes (the same operations as the HTTP API)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bcsync.cli import app
from bcsync.cli import ops as cli_ops
from shared.messages import SyncMessage, to_json
from tests.integration.ops.conftest import OpsStack, bc_customer, seed_account

pytestmark = pytest.mark.integration


def bcsync(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={**os.environ, "COLUMNS": "200"})


def bcsync_json(*args: str) -> Any:
    result = bcsync("--json", *args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_couple_sync_history_uncouple(salespeople_coupled: OpsStack) -> None:
    ops = salespeople_coupled
    bc_id = bc_customer(ops, "Adatum Corporation")["id"]
    dv_id = seed_account(ops, "Adatum (CRM)")

    coupled = bcsync("couple", "CUSTOMER", "--bc", bc_id, "--dv", dv_id)
    assert coupled.exit_code == 0, coupled.output
    assert "modified" in coupled.output and ops.dv.get("accounts", dv_id)["name"] == "Adatum Corporation"

    ops.dv.store.update(
        "accounts", dv_id, {"telephone1": "+1 404 555 0100"}, ops.dv.caller(ops.dv.users["sales-user"])
    )
    synced = bcsync_json("sync", "CUSTOMER", "--dv", dv_id)
    assert synced["outcome"] == "modified" and synced["fields"] == ["phoneNumber"]
    assert ops.bc.get("customers", bc_id)["phoneNumber"] == "+1 404 555 0100"

    entries = bcsync_json("history", "CUSTOMER", "--bc", bc_id)
    # The dev host also gets Dataverse's notification of the phone change and may journal it, as an
    # echo, after the command did the work: the two changes are what the history must show.
    changes = [e["outcome"] for e in entries if e["outcome"] != "unchanged"]
    assert changes[:2] == ["modified", "modified"], entries
    table = bcsync("history", "CUSTOMER", "--dv", dv_id)
    assert "phoneNumber" in table.output

    uncoupled = bcsync("uncouple", "CUSTOMER", "--dv", dv_id)
    assert uncoupled.exit_code == 0 and ops.rt.couplings.get("CUSTOMER", "dv", dv_id) is None


def test_match_dry_run_then_for_real(salespeople_coupled: OpsStack) -> None:
    ops = salespeople_coupled
    dv_id = seed_account(ops, "adatum corporation")  # matches by name, case-insensitively
    dry = bcsync("match", "CUSTOMER", "--dry-run")
    assert dry.exit_code == 0 and "would couple 1" in dry.output
    assert ops.rt.couplings.get("CUSTOMER", "dv", dv_id) is None

    real = bcsync_json("match", "CUSTOMER")
    assert real["coupled"] == [[bc_customer(ops, "Adatum Corporation")["id"], dv_id]]
    assert ops.rt.couplings.get("CUSTOMER", "dv", dv_id) is not None
    assert ops.dv.get("accounts", dv_id)["name"] == "Adatum Corporation"  # aligned after coupling


def test_resync_shows_progress_and_the_run_can_be_followed(adatum_coupled: tuple) -> None:
    ops, bc_id, dv_id = adatum_coupled
    ops.bc.change("customers", bc_id, {"city": "Savannah"})

    dry = bcsync("resync", "CUSTOMER", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "CUSTOMER resync" in dry.output and "dry run: nothing written" in dry.output
    assert ops.dv.get("accounts", dv_id).get("address1_city") != "Savannah"

    real = bcsync("--json", "resync", "CUSTOMER")
    assert real.exit_code == 0, real.output
    assert "CUSTOMER resync" in real.stderr and "2/2" in real.stderr  # the progress bar
    run = json.loads(real.stdout)
    assert run["status"] == "succeeded" and run["counts"].get("modified") == 1
    assert ops.dv.get("accounts", dv_id)["address1_city"] == "Savannah"

    followed = bcsync_json("run", "CUSTOMER", run["run_id"])
    assert followed["run_id"] == run["run_id"] and followed["status"] == "succeeded"


def test_a_resync_in_this_process_draws_its_progress_from_the_callback(
    adatum_coupled: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = adatum_coupled[0]

    def no_polling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a resync run by this process must not be polled from the journal")

    # On the class: the CLI may build its own runtime (and journal) from a settings file.
    monkeypatch.setattr(type(ops.rt.journal), "get_run", no_polling)
    seen: list[tuple[int, int]] = []
    run_here = cli_ops.run_full_resync_here

    def spy(rt: Any, mapping: str, **kwargs: Any) -> Any:
        draw = kwargs["on_progress"]

        def on_progress(run: Any) -> None:
            seen.append((run.done, run.total))
            draw(run)

        return run_here(rt, mapping, **{**kwargs, "on_progress": on_progress})

    monkeypatch.setattr(cli_ops, "run_full_resync_here", spy)
    result = bcsync("resync", "CUSTOMER", "--dry-run")
    assert result.exit_code == 0, result.output
    assert seen and seen[-1] == (2, 2)
    assert "CUSTOMER resync" in result.stderr and "2/2" in result.stderr


def test_errors_retry_and_retry_all(adatum_coupled: tuple) -> None:
    ops, bc_id, _ = adatum_coupled
    company = ops.rt.company_id
    ops.bc.change(
        "customers", bc_id, {"paymentTermsId": ops.bc.store.find_by_key(company, "paymentTerms", "COD")["id"]}
    )
    failed = bcsync("--json", "sync", "CUSTOMER", "--bc", bc_id)
    assert failed.exit_code == 1 and json.loads(failed.stdout)["outcome"] == "failed"

    listed = bcsync("errors", "CUSTOMER")
    assert listed.exit_code == 0 and "COD" in listed.output

    queued = bcsync_json("retry", "CUSTOMER", "--all")
    assert queued["queued"] == 1

    ops.bc.change(
        "customers",
        bc_id,
        {"paymentTermsId": ops.bc.store.find_by_key(company, "paymentTerms", "30 DAYS")["id"]},
    )
    retried = bcsync_json("retry", "CUSTOMER", "--bc", bc_id)
    assert retried["retried"][0]["outcome"] in ("modified", "unchanged")
    assert bcsync_json("errors") == []


def test_poison_list_and_replay(ops: OpsStack) -> None:
    storage = ops.rt.storage
    poison = storage.queue(storage.poison_queue_name)
    poison.send_message(to_json(SyncMessage(mapping="CUSTOMER", side="dv", id="x", reason="test")))

    assert len(bcsync_json("poison")) == 1
    assert "would replay 1" in bcsync("poison", "--replay", "--dry-run").output
    assert len(poison.peek_messages()) == 1
    assert "replayed 1" in bcsync("poison", "--replay").output
    assert poison.peek_messages() == []


def test_status_statistics_and_availability(adatum_coupled: tuple) -> None:
    status = bcsync("status")
    assert status.exit_code == 0 and "CUSTOMER" in status.output and "SALESPEOPLE" in status.output

    pushed = bcsync_json("statistics")
    assert pushed["written"] == 1
    again = bcsync("statistics")
    assert "0 written" in again.output

    available = bcsync_json("availability", "I00010")
    assert available["item_number"] == "I00010"
    missing = bcsync("availability", "NOPE-1")
    assert missing.exit_code == 4 and "no item NOPE-1" in missing.output


def test_bad_input_exits_non_zero_with_the_reason(ops: OpsStack) -> None:
    unknown = bcsync("sync", "NOPE", "--bc", "6d81597f-0f9f-e711-8122-000d3aa2331c")
    assert unknown.exit_code == 4 and "known: " in unknown.output
    # Not an id, so a BC number: looked up with the quote escaped, and not found.
    bad_id = bcsync("sync", "CUSTOMER", "--bc", "' or 1 eq 1")
    assert bad_id.exit_code == 4 and 'no BC record with number "\' or 1 eq 1"' in bad_id.output
    both = bcsync("uncouple", "CUSTOMER", "--bc", "a", "--dv", "b")
    assert both.exit_code == 1 and "exactly one" in both.output


def test_couple_and_retry_all_dry_runs_say_what_they_would_do_and_do_nothing(
    salespeople_coupled: OpsStack,
) -> None:
    ops = salespeople_coupled
    bc_id = bc_customer(ops, "Adatum Corporation")["id"]
    dv_id = seed_account(ops, "Adatum (CRM)")

    dry = bcsync("couple", "CUSTOMER", "--bc", bc_id, "--dv", dv_id, "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert f"would couple BC {bc_id} with Dataverse {dv_id}, then sync from BC:" in dry.output
    assert "dry run, nothing written: would be modified" in dry.output
    assert "displayName: 'Adatum (CRM)' -> 'Adatum Corporation'  BC -> Dataverse" in dry.output
    assert ops.rt.couplings.get("CUSTOMER", "dv", dv_id) is None
    assert ops.dv.get("accounts", dv_id)["name"] == "Adatum (CRM)"
    nothing = bcsync_json("retry", "CUSTOMER", "--all", "--dry-run")
    assert nothing["dry_run"] is True and nothing["queued"] == len(nothing["records"])


# ------------------------------------------------------------------ issue 12, point 7: rough edges
def bcsync_at_80(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={**os.environ, "COLUMNS": "80"})


def test_records_are_named_by_their_bc_number_or_code_in_every_command(salespeople_coupled: OpsStack) -> None:
    ops = salespeople_coupled
    otis = ops.bc.store.find_by_key(ops.rt.company_id, "salespeoplePurchasers", "OF")
    assert bcsync("uncouple", "SALESPEOPLE", "--bc", "OF").exit_code == 0
    assert ops.rt.couplings.get("SALESPEOPLE", "bc", otis["id"]) is None
    # BC's name differs from the Dataverse user's; `--sync-from bc` keeps BC's, although
    # SALESPEOPLE flows to BC only.
    ops.bc.change("salespeoplePurchasers", otis["id"], {"displayName": "Otis Falls (BC)"})
    coupled = bcsync("couple", "SALESPEOPLE", "--bc", "OF", "--dv", "otis.falls@contoso.example",
                     "--sync-from", "bc")  # fmt: skip
    assert coupled.exit_code == 0, coupled.output
    assert ops.bc.get("salespeoplePurchasers", otis["id"])["displayName"] == "Otis Falls (BC)"
    coupling = ops.rt.couplings.get("SALESPEOPLE", "bc", otis["id"])
    assert coupling is not None and coupling.dv_id == "5a1e5000-0000-4000-8000-0000000000a3"

    adatum = bc_customer(ops, "Adatum Corporation")
    dv_id = seed_account(ops, "Adatum (CRM)")
    assert bcsync("couple", "CUSTOMER", "--bc", adatum["number"], "--dv", dv_id).exit_code == 0
    synced = bcsync_json("sync", "CUSTOMER", "--bc", adatum["number"])
    assert synced["bc_id"] == adatum["id"]
    entries = bcsync_json("history", "CUSTOMER", "--bc", adatum["number"])
    assert entries and entries[0]["bc_id"] == adatum["id"]
    # the account now carries BC's number: Dataverse is named by it too
    assert bcsync_json("history", "CUSTOMER", "--dv", adatum["number"])[0]["dv_id"] == dv_id
    assert bcsync("uncouple", "CUSTOMER", "--bc", adatum["number"]).exit_code == 0
    unknown = bcsync("sync", "CUSTOMER", "--bc", "C99999")
    assert unknown.exit_code == 4 and "no BC record with number 'C99999'" in unknown.output


def test_a_sync_that_does_not_finish_exits_non_zero_with_a_sentence(adatum_coupled: tuple) -> None:
    ops, bc_id, _ = adatum_coupled
    ops.bc.faults.add({"action": "status", "status": 503, "times": None, "path_contains": bc_id})
    try:
        queued = bcsync("sync", "CUSTOMER", "--bc", bc_id)
    finally:
        ops.bc.faults.clear()
    assert queued.exit_code == 1, queued.output
    assert "None" not in queued.output
    text = " ".join(queued.output.split())
    assert "CUSTOMER was not synchronized now: BC did not serve GET customers (503" in text, text
    assert f"BC id {bc_id}" in text and "queued, tried again in" in text


def test_status_errors_and_setup_read_whole_at_80_columns(adatum_coupled: tuple) -> None:
    ops, bc_id, _ = adatum_coupled
    company = ops.rt.company_id
    cod = ops.bc.store.find_by_key(company, "paymentTerms", "COD")["id"]
    ops.bc.change("customers", bc_id, {"paymentTermsId": cod})
    assert bcsync("sync", "CUSTOMER", "--bc", bc_id).exit_code == 1

    status = bcsync_at_80("status")
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert all(len(line) <= 80 for line in lines), status.output
    assert "…" not in status.output
    for mapping in ops.rt.mappings.entities():
        # every mapping name whole on one line, with its counts
        assert any(line.startswith(mapping.name + " ") for line in lines), (mapping.name, status.output)
    customer = next(line for line in lines if line.startswith("CUSTOMER "))
    assert customer.split()[1:4] == ["1", "1", "0"], customer  # coupled 1, failed 1, conflict 0
    assert "oldest" in status.output and "unsynced" in status.output

    listed = bcsync_at_80("errors")
    assert listed.exit_code == 0 and all(len(line) <= 80 for line in listed.output.splitlines())
    text = " ".join(listed.output.split())
    assert "failed" in text and "COD" in text and "resolve: bcsync retry CUSTOMER --bc C00010" in text

    setup = bcsync_at_80("setup")
    assert all(len(line) <= 80 for line in setup.output.splitlines()), setup.output
    assert "…" not in setup.output
    joined = " ".join(setup.output.split())
    for check in ("mapping file", "storage", "Dataverse connection"):
        assert check in joined, setup.output
