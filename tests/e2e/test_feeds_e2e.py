"""The change feeds end to end (issue 6): webhooks from both sandboxes, BC `collection`
notifications, the delta poll as the safety net, and BC subscription upkeep.

The tests run in file order on one stack; the last one moves the BC sandbox's clock days ahead,
which is why it comes last."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from shared.feeds.poll import delta_poll
from shared.feeds.registration import ensure_bc_subscriptions
from shared.ops import operations
from shared.sync import bulk
from shared.timestamps import parse_iso
from tests.e2e.harness import E2EStack, diff, wait_for, writes

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"
QUIET_SECONDS = 2.0
BURST = 1500
HOUR = 3600.0


def _coupled_customer(e2e: E2EStack) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    customer = e2e.bc_create("customers", {"displayName": f"Feed {tag}", "phoneNumber": "555-0600"})
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    e2e.settle()
    return customer["id"], str(coupling.dv_id)


def _customers_subscription(e2e: E2EStack) -> dict[str, Any] | None:
    subs = [s for s in e2e.rt.bc.list_subscriptions() if str(s["resource"]).endswith("/customers")]
    assert len(subs) <= 1, subs
    return subs[0] if subs else None


def _quiet_period(e2e: E2EStack) -> tuple[dict[str, int], dict[str, int]]:
    """Writes both sandboxes receive during the next `QUIET_SECONDS` (and until all is delivered)."""
    bc_before, dv_before = writes(e2e.bc), writes(e2e.dv)
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        e2e.settle()
    return diff(writes(e2e.bc), bc_before), diff(writes(e2e.dv), dv_before)


# ------------------------------------------------------------ 8. a person's change, then quiet
@pytest.mark.parametrize("origin", ["bc", "dv"])
def test_a_users_change_arrives_within_a_second_and_then_all_is_quiet(e2e: E2EStack, origin: str) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    bc_before, dv_before = writes(e2e.bc), writes(e2e.dv)
    phone = f"555-07{uuid.uuid4().int % 100:02d}"
    budget = e2e.bc.webhook_config()["coalesce_seconds"] + 1.0 if origin == "bc" else 1.0

    started = time.monotonic()
    if origin == "bc":
        e2e.bc_update("customers", bc_id, {"phoneNumber": phone})
        wait_for(lambda: e2e.dv.get("accounts", dv_id)["telephone1"] == phone, "the change in Dataverse",
                 timeout=budget, interval=0.01)  # fmt: skip
    else:
        e2e.dv_update("accounts", dv_id, {"telephone1": phone})
        wait_for(lambda: e2e.bc.get("customers", bc_id)["phoneNumber"] == phone, "the change in BC",
                 timeout=budget, interval=0.01)  # fmt: skip
    latency = time.monotonic() - started
    print(f"\n{origin} change by an ordinary user -> counterpart written in {latency * 1000:.0f} ms")

    quiet_bc, quiet_dv = _quiet_period(e2e)
    assert (quiet_bc, quiet_dv) == ({}, {}), "writes after the sync: the two systems ping-pong"
    # Exactly the user's write and ours, nothing else.
    assert diff(writes(e2e.bc), bc_before) == {"PATCH customers": 1}
    assert diff(writes(e2e.dv), dv_before) == {"PATCH accounts": 1}


# ------------------------------------------------------------ 9. BC `collection` notification
def test_a_burst_of_1500_bc_changes_arrives_as_one_collection_and_all_sync(e2e: E2EStack) -> None:
    ids = e2e.bc.seed_customers(BURST, start=700_000)
    bulk.run_full_resync(e2e.engine, CUSTOMER)  # couples them (creates the accounts in bulk)
    e2e.settle(timeout=60)
    wanted = {e2e.bc.get("customers", i)["number"] for i in ids}
    window = e2e.bc.webhook_config()["coalesce_seconds"]
    e2e.bc.set_webhook_config(coalesce_seconds=30.0)  # every change of the burst in one window
    deliveries_before = len(e2e.bc.webhooks.deliveries)
    before = e2e.service_requests()
    try:
        for record_id in ids:
            e2e.bc.change("customers", record_id, {"city": "Burstville"})
        started = time.monotonic()
        e2e.bc.flush_webhooks()
    finally:
        e2e.bc.set_webhook_config(coalesce_seconds=window)

    sent = [d for d in e2e.bc.webhooks.deliveries[deliveries_before:] if d["outcome"] == "delivered"]
    entries = [entry for d in sent for entry in d["body"]["value"]]
    assert [e["changeType"] for e in entries] == ["collection"], entries[:3]

    def synced() -> int:
        rows = e2e.dv.rows("accounts")
        return sum(
            1 for r in rows if r.get("accountnumber") in wanted and r.get("address1_city") == "Burstville"
        )

    wait_for(lambda: synced() == BURST, f"all {BURST} changes in Dataverse", timeout=90, interval=0.25)
    elapsed = time.monotonic() - started
    e2e.settle(timeout=60)
    spent = diff(e2e.service_requests(), before)
    print(
        f"\n{BURST} BC changes as one collection: synced in {elapsed:.1f} s, {sum(spent.values())} requests"
    )
    print(f"  {spent}")
    assert synced() == BURST
    assert sum(spent.values()) < 20, "a collection is read and written in bulk, not record by record"


# ------------------------------------------------------------ 10. the delta poll as safety net
def test_a_lost_bc_notification_is_caught_by_the_delta_poll(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    e2e.stack.host.invoke_timer("delta_poll")  # the first poll only sets the baselines
    subscription = _customers_subscription(e2e)
    assert subscription is not None
    # The notification is lost: BC dropped the subscription (as it does after a 4xx answer).
    e2e.rt.bc.delete_subscription(subscription["subscriptionId"], subscription["@odata.etag"])

    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-0610"})
    e2e.settle()
    assert e2e.dv.get("accounts", dv_id)["telephone1"] == "555-0600", (
        "the change was not lost: test proves nothing"
    )

    e2e.stack.host.invoke_timer("delta_poll")
    wait_for(
        lambda: e2e.dv.get("accounts", dv_id)["telephone1"] == "555-0610", "the delta poll to sync the change"
    )
    e2e.settle()

    # Upkeep re-creates the subscription BC deleted, and notifications flow again.
    e2e.stack.host.invoke_timer("subscription_upkeep")
    assert _customers_subscription(e2e) is not None
    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-0611"})
    wait_for(
        lambda: e2e.dv.get("accounts", dv_id)["telephone1"] == "555-0611",
        "a notified change after re-creation",
    )


def test_the_delta_poll_skips_company_contacts_without_a_request(e2e: E2EStack) -> None:
    bc_id, _ = _coupled_customer(e2e)
    delta_poll(e2e.rt)  # baselines, or catch up with what the earlier tests changed
    e2e.settle()
    # BC copies a customer change to its company contact; contacts have no webhooks, so only the
    # poll sees it, and a person added to that company.
    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-0620"})
    company = e2e.bc.company_contact(bc_id)
    e2e.bc_create(
        "contacts", {"type": "Person", "displayName": "Kim Poll", "companyNumber": company["number"]}
    )
    e2e.settle()

    report = delta_poll(e2e.rt)
    # Only the person is enqueued (and read); the company contact is known out of scope from the
    # poll's own query.
    assert report.enqueued["CONTACT/bc"] == 1, report
    assert report.out_of_scope >= 1, report
    e2e.settle()


def test_a_dataverse_table_without_change_tracking_is_polled_by_modified_time(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    sandbox = e2e.dv
    sandbox.set_change_tracking("accounts", False)
    try:
        assert e2e.rt.dataverse.change_tracking_enabled("account", refresh=True) is False
        first = delta_poll(e2e.rt)
        assert {"CUSTOMER", "VENDOR"} <= set(first.untracked) and "CUSTOMER/dv" in first.baselines, first
        mark = e2e.rt.watermarks.get("CUSTOMER", "dv")
        assert mark is not None and mark.value.startswith("modifiedon:")

        # A person's change in Sales whose webhook is lost, within the second of the service's own
        # write: `modifiedon` counts whole seconds, so both carry the same time (only the row
        # version tells them apart). The sandbox's clock is set back to that second for the write.
        synced = e2e.rt.couplings.get(CUSTOMER, "dv", dv_id)
        assert synced is not None and synced.dv_modified
        back = (parse_iso(synced.dv_modified) - sandbox.now()).total_seconds()
        on_commit, sandbox.store.on_commit = sandbox.store.on_commit, None
        sandbox.advance_clock(back)
        try:
            e2e.dv_update("accounts", dv_id, {"telephone1": "555-0630"})
        finally:
            sandbox.advance_clock(-back)
            sandbox.store.on_commit = on_commit
        person = e2e.dv_get("accounts", dv_id)
        assert person is not None and person["modifiedon"] == synced.dv_modified, "not the same second"
        e2e.settle()
        assert e2e.bc_get("customers", bc_id)["phoneNumber"] != "555-0630", "the change was not lost"

        found = delta_poll(e2e.rt)
        assert found.enqueued["CUSTOMER/dv"] == 1, found
        wait_for(
            lambda: e2e.bc_get("customers", bc_id)["phoneNumber"] == "555-0630", "the poll's change in BC"
        )
        e2e.settle()
        # Read again within the overlap, but already synchronized: not queued again.
        again = delta_poll(e2e.rt)
        assert again.enqueued["CUSTOMER/dv"] == 0, again
        # Change tracking is not asked again at the next poll (once per table every few hours).
        before = e2e.rt.dataverse.stats.requests["GET EntityDefinitions"]
        delta_poll(e2e.rt)
        assert e2e.rt.dataverse.stats.requests["GET EntityDefinitions"] == before
    finally:
        sandbox.set_change_tracking("accounts", True)
        e2e.rt.dataverse.change_tracking_enabled("account", refresh=True)
    # Turned on again: the next poll catches up on the modified time once, then keeps a delta link.
    back = delta_poll(e2e.rt)
    assert "CUSTOMER" not in back.untracked and "CUSTOMER/dv" in back.baselines, back
    mark = e2e.rt.watermarks.get("CUSTOMER", "dv")
    assert mark is not None and "$deltatoken=" in mark.value
    e2e.settle()


# ------------------------------------------------------------ 11. subscription upkeep
def test_a_subscription_near_expiry_is_renewed(e2e: E2EStack) -> None:
    before = _customers_subscription(e2e)
    assert before is not None
    # 37 h later on BC's clock the subscription has less than the 36 h left that trigger renewal.
    e2e.bc.advance_clock(37 * HOUR)
    rt = e2e.rt
    # The upkeep timer reads the wall clock; the sandbox's clock is only BC's, so pass it in.
    report = ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings, rt.subscriptions,
                                     now=e2e.bc.clock.now())  # fmt: skip
    assert any("customers" in label and "renewed" in label for label in report.updated), report
    after = _customers_subscription(e2e)
    assert after is not None and after["subscriptionId"] == before["subscriptionId"]
    assert after["expirationDateTime"] > before["expirationDateTime"]


def test_an_expired_subscription_is_recreated_by_the_upkeep_timer(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    before = _customers_subscription(e2e)
    assert before is not None
    e2e.bc.advance_clock(73 * HOUR)  # past the 3-day lifetime: BC has removed it
    assert _customers_subscription(e2e) is None

    e2e.stack.host.invoke_timer("subscription_upkeep")
    after = _customers_subscription(e2e)
    assert after is not None and after["subscriptionId"] != before["subscriptionId"]
    assert after["expirationDateTime"] > before["expirationDateTime"]
    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-0620"})
    wait_for(
        lambda: e2e.dv.get("accounts", dv_id)["telephone1"] == "555-0620",
        "a notified change after re-creation",
    )

    # The operator's status shows the live subscription's expiry, not the one BC removed.
    status = operations.status(e2e.rt)
    customer_status = next(m for m in status.mappings if m.mapping == CUSTOMER)
    assert customer_status.subscription_expires == after["expirationDateTime"]
