"""The admin API over real HTTP through the dev host: roles, and every action."""

from __future__ import annotations

import time

import pytest

from shared import runtime
from shared.messages import SyncMessage, to_json
from tests.integration.ops.conftest import OpsStack, bc_customer, seed_account, wait_for
from tests.support.jwt_keys import key_pair, sign

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------ roles
@pytest.mark.parametrize(
    ("token_kind", "status", "reason"),
    [
        ("none", 401, "missing Authorization header"),
        ("expired", 401, "expired"),
        ("wrong_audience", 401, "audience"),
        ("bad_signature", 401, "signature is invalid"),
        ("wrong_role", 403, "Integration.Administrator"),
    ],
)
def test_callers_without_a_valid_token_or_the_role_are_refused(
    ops_stack: OpsStack, token_kind: str, status: int, reason: str
) -> None:
    ops = ops_stack
    now = int(time.time())
    tokens = {
        "none": None,
        "expired": ops.token("admin", exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "wrong_audience": ops.token("admin", aud="api://someone-else"),
        "bad_signature": sign(key_pair("attacker"), {"sub": "x"}, kid="ops-signing-key"),
        "wrong_role": ops.token("availability"),
    }
    response = ops.api(
        "POST", "manage/retry", token=tokens[token_kind], json={"mapping": "CUSTOMER", "all": True}
    )

    assert response.status_code == status
    assert reason in response.json()["error"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_read_only_role_reads_but_does_not_act(ops: OpsStack) -> None:
    user = ops.token("user")
    assert ops.api("GET", "manage/status", token=user).status_code == 200
    assert ops.api("GET", "manage/errors", token=user).status_code == 200
    refused = ops.api("POST", "manage/statistics/push", token=user)
    assert refused.status_code == 403
    assert ops.api("GET", "products/I00010/availability", token=user).status_code == 403


def test_webhook_endpoints_never_accept_a_bearer_token_instead_of_their_secret(ops: OpsStack) -> None:
    admin = ops.token("admin")
    assert ops.api("POST", "webhooks/dataverse", token=admin, content=b"{}").status_code == 401


def test_without_auth_settings_the_api_is_closed_with_a_503_naming_the_setting(
    ops: OpsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTH_JWKS_URL", "")
    runtime.reset()
    try:
        response = ops.api("GET", "manage/status", token=ops.token("admin"))
    finally:
        monkeypatch.undo()
        runtime.reset()
    assert response.status_code == 503
    assert "AUTH_JWKS_URL" in response.json()["error"]


def test_bad_input_gets_a_reason(ops: OpsStack) -> None:
    admin = ops.token("admin")
    guid = "6d81597f-0f9f-e711-8122-000d3aa2331c"
    unknown_mapping = ops.api("POST", "manage/sync", token=admin, json={"mapping": "NOPE", "bc_id": guid})
    assert unknown_mapping.status_code == 404 and "CUSTOMER" in unknown_mapping.json()["error"]
    # A path is neither an id nor a number: 400 naming the field, before any request.
    bad_id = ops.api("POST", "manage/sync", token=admin, json={"mapping": "CUSTOMER", "dv_id": "../../x"})
    assert bad_id.status_code == 400 and "`dv_id`" in bad_id.json()["error"]
    # What is not an id is a number (BC's, or the Dataverse field it maps to), looked up with one
    # escaped query and never put in a URL path or a storage key: not found is a 404 saying so.
    number = ops.api("POST", "manage/sync", token=admin, json={"mapping": "CUSTOMER", "dv_id": "' or 1 eq 1"})
    assert number.status_code == 404 and "no Dataverse record with accountnumber" in number.json()["error"]
    empty = ops.api("POST", "manage/sync", token=admin, json={"mapping": "CUSTOMER", "dv_id": " "})
    assert empty.status_code == 400 and "`dv_id`" in empty.json()["error"]
    both_ids = ops.api(
        "POST", "manage/sync", token=admin, json={"mapping": "CUSTOMER", "bc_id": "a", "dv_id": "b"}
    )
    assert both_ids.status_code == 400 and "exactly one" in both_ids.json()["error"]
    typo = ops.api("POST", "manage/match-coupling", token=admin, json={"mapping": "CUSTOMER", "dryrun": True})
    assert typo.status_code == 400 and "dryrun" in typo.json()["error"]
    assert ops.api("GET", "manage/couple", token=admin).status_code == 405
    assert ops.api("GET", "manage/nothing-here", token=admin).status_code == 404
    other = ops.api("GET", "manage/status", token=admin, params={"company": guid})
    assert other.status_code == 400 and "not in BC_COMPANY_IDS" in other.json()["error"]


# ---------------------------------------------------------------------------------------- actions
def test_couple_history_sync_with_direction_and_uncouple(salespeople_coupled: OpsStack) -> None:
    ops = salespeople_coupled
    admin = ops.token("admin")
    bc_id = bc_customer(ops, "Adatum Corporation")["id"]
    dv_id = seed_account(ops, "Adatum (CRM)")

    body = {"mapping": "CUSTOMER", "bc_id": bc_id, "dv_id": dv_id, "sync_from": "bc"}
    coupled = ops.api("POST", "manage/couple", token=admin, json=body)
    assert coupled.status_code == 200, coupled.text
    assert coupled.json()["outcome"] == "modified"
    assert ops.dv.get("accounts", dv_id)["name"] == "Adatum Corporation"

    # Both sides change the same field: the direction the operator picks wins.
    ops.bc.change("customers", bc_id, {"displayName": "Adatum (BC edit)"})
    ops.dv.store.update(
        "accounts", dv_id, {"name": "Adatum (CRM edit)"}, ops.dv.caller(ops.dv.users["sales-user"])
    )
    synced = ops.api(
        "POST", "manage/sync", token=admin, json={"mapping": "CUSTOMER", "dv_id": dv_id, "prefer": "dv"}
    )
    assert synced.status_code == 200, synced.text
    assert synced.json()["outcome"] == "modified"
    assert ops.bc.get("customers", bc_id)["displayName"] == "Adatum (CRM edit)"

    history = ops.api(
        "GET", "manage/history", token=ops.token("user"), params={"mapping": "CUSTOMER", "bc_id": bc_id}
    )
    outcomes = [e["outcome"] for e in history.json()["entries"]]
    assert outcomes[:3] == ["modified", "modified", "coupled"]  # newest first

    uncoupled = ops.api("POST", "manage/uncouple", token=admin, json={"mapping": "CUSTOMER", "bc_id": bc_id})
    assert uncoupled.status_code == 200
    assert ops.rt.couplings.get("CUSTOMER", "bc", bc_id) is None
    assert ops.dv.get("accounts", dv_id) is not None  # the records stay


def test_match_coupling_dry_run_changes_nothing(ops: OpsStack) -> None:
    admin = ops.token("admin")
    dv_id = seed_account(ops, "Trey Research")  # matches BC's Trey Research by name (priority 2)
    before = ops.dv.get("accounts", dv_id)

    dry = ops.api("POST", "manage/match-coupling", token=admin, json={"mapping": "CUSTOMER", "dry_run": True})
    assert dry.status_code == 200, dry.text
    trey = bc_customer(ops, "Trey Research")["id"]
    assert dry.json()["coupled"] == [[trey, dv_id]]
    assert ops.rt.couplings.get("CUSTOMER", "dv", dv_id) is None
    assert ops.dv.get("accounts", dv_id) == before


def test_full_resync_dry_run_is_followed_to_the_end_and_writes_nothing(adatum_coupled: tuple) -> None:
    ops, bc_id, _ = adatum_coupled
    admin = ops.token("admin")
    ops.bc.change("customers", bc_id, {"city": "Savannah"})
    accounts_before = {r["accountid"]: r.get("address1_city") for r in ops.dv.rows("accounts")}

    started = ops.api(
        "POST", "manage/full-resync", token=admin, json={"mapping": "CUSTOMER", "dry_run": True}
    )
    assert started.status_code == 202, started.text
    progress_url = started.json()["progress_url"].removeprefix("/api/")

    def finished() -> dict | None:
        run = ops.api("GET", progress_url, token=ops.token("user")).json()
        return run if run["status"] not in ("queued", "running") else None

    run = wait_for(finished, timeout=20)
    assert run["status"] == "succeeded" and run["dry_run"] is True
    assert run["total"] == run["done"] >= 2
    assert run["counts"].get("modified", 0) >= 1  # Adatum's city would be written
    assert {r["accountid"]: r.get("address1_city") for r in ops.dv.rows("accounts")} == accounts_before


def test_dry_run_of_sync_couple_and_retry_answers_old_and_new_and_writes_nothing(
    adatum_coupled: tuple,
) -> None:
    ops, bc_id, dv_id = adatum_coupled
    admin = ops.token("admin")
    ops.bc.change("customers", bc_id, {"city": "Savannah"})  # no webhook is registered: not synced yet
    city = ops.dv.get("accounts", dv_id).get("address1_city")
    journal = len(ops.rt.journal.history("CUSTOMER", "bc", bc_id))
    coupling = ops.rt.couplings.get("CUSTOMER", "bc", bc_id)
    trey = bc_customer(ops, "Trey Research")["id"]
    ops.bc.change("customers", trey, {"currencyCode": ""})  # local currency: nothing to wait for
    other_dv = seed_account(ops, "Trey (CRM)", "acc00000-0000-4000-8000-0000000000f2")

    body = {"mapping": "CUSTOMER", "bc_id": bc_id, "dry_run": True}
    synced = ops.api("POST", "manage/sync", token=admin, json=body)
    retried = ops.api("POST", "manage/retry", token=admin, json=body)
    coupled = ops.api("POST", "manage/couple", token=admin, json={
        "mapping": "CUSTOMER", "bc_id": trey, "dv_id": other_dv, "sync_from": "bc", "dry_run": True,
    })  # fmt: skip
    retry_all = ops.api("POST", "manage/retry", token=admin, json={"mapping": "CUSTOMER", "all": True,
                                                                    "dry_run": True})  # fmt: skip

    assert synced.status_code == 200, synced.text
    answer = synced.json()
    assert answer["dry_run"] is True and answer["outcome"] == "modified"
    assert [(c["field"], c["old"], c["new"], c["direction"]) for c in answer["changes"]] == [
        ("city", city, "Savannah", "to_dataverse")
    ]
    assert retried.status_code == 200 and retried.json()["retried"][0]["changes"] == answer["changes"]
    assert coupled.status_code == 200, coupled.text
    assert coupled.json()["dry_run"] is True and any(
        c["new"] == "Trey Research" for c in coupled.json()["changes"]
    )
    assert retry_all.status_code == 200 and retry_all.json()["dry_run"] is True
    assert ops.dv.get("accounts", dv_id).get("address1_city") == city
    assert len(ops.rt.journal.history("CUSTOMER", "bc", bc_id)) == journal
    assert ops.rt.couplings.get("CUSTOMER", "bc", bc_id).etag == coupling.etag  # type: ignore[union-attr]
    assert ops.rt.couplings.get("CUSTOMER", "bc", trey) is None
    bad = ops.api("POST", "manage/sync", token=admin, json={**body, "dry_run": "yes"})
    assert bad.status_code == 400 and "dry_run" in bad.json()["error"]


def test_errors_are_listed_and_a_retry_after_the_fix_succeeds(adatum_coupled: tuple) -> None:
    ops, bc_id, _ = adatum_coupled
    admin = ops.token("admin")
    unmapped = ops.bc.store.find_by_key(ops.rt.company_id, "paymentTerms", "14 DAYS")["id"]
    ops.bc.change("customers", bc_id, {"paymentTermsId": unmapped})
    failed = ops.api("POST", "manage/sync", token=admin, json={"mapping": "CUSTOMER", "bc_id": bc_id})
    assert failed.json()["outcome"] == "failed"

    errors = ops.api("GET", "manage/errors", token=ops.token("user"), params={"mapping": "CUSTOMER"}).json()[
        "errors"
    ]
    assert [(e["bc_id"], e["state"]) for e in errors] == [(bc_id, "failed")]
    assert "14 DAYS" in errors[0]["message"]

    ops.bc.change(
        "customers",
        bc_id,
        {"paymentTermsId": ops.bc.store.find_by_key(ops.rt.company_id, "paymentTerms", "30 DAYS")["id"]},
    )
    retried = ops.api("POST", "manage/retry", token=admin, json={"mapping": "CUSTOMER", "bc_id": bc_id})
    assert retried.status_code == 200
    assert retried.json()["retried"][0]["outcome"] in ("modified", "unchanged")
    assert ops.api("GET", "manage/errors", token=admin).json()["errors"] == []


def test_poison_messages_are_listed_and_replayed(ops: OpsStack) -> None:
    admin = ops.token("admin")
    storage = ops.rt.storage
    poison = storage.queue(storage.poison_queue_name)
    poison.send_message(
        to_json(SyncMessage(mapping="CUSTOMER", side="bc", id="not-a-real-id", reason="test"))
    )
    poison.send_message("this is not a sync message")

    listed = ops.api("GET", "manage/poison", token=admin).json()["messages"]
    assert sorted(m["valid"] for m in listed) == [False, True]
    status = ops.api("GET", "manage/status", token=admin).json()
    assert status["poison_queue_depth"] == 2
    assert next(m for m in status["mappings"] if m["mapping"] == "CUSTOMER")["poison_messages"] == 1

    dry = ops.api("POST", "manage/poison/replay", token=admin, json={"dry_run": True}).json()
    assert len(dry["replayed"]) == 1 and len(dry["kept"]) == 1
    assert len(poison.peek_messages(max_messages=32)) == 2  # the dry run moved nothing

    replayed = ops.api("POST", "manage/poison/replay", token=admin, json={}).json()
    assert len(replayed["replayed"]) == 1 and "not a sync message" in replayed["kept"][0]["summary"]


def test_status_reports_each_mapping(adatum_coupled: tuple) -> None:
    ops, _, _ = adatum_coupled
    status = ops.api("GET", "manage/status", token=ops.token("user")).json()
    rows = {m["mapping"]: m for m in status["mappings"]}
    assert rows["CUSTOMER"]["coupled"] == 1
    assert rows["SALESPEOPLE"]["coupled"] == 2
    assert rows["CUSTOMER"]["failed"] == 0
