"""The service under BC's real notification behaviour (issue 11), end to end through the dev host.

The BC sandbox notifies as BC's AL code does (docs/bc-sandbox.md#webhooks): the entry's time is
stamped before the record's, only an update merges into an earlier update, a `collection` with a
delete in it is the bare collection URL, and a subscription is deleted after 6 failed deliveries or
when it expires. This module runs its own stack with `deletion: propagate` for CUSTOMER and CONTACT
(so a BC deletion is visible in Dataverse) and `BC_SWEEP_MINUTES=0` (every delta poll queues the
deletion sweep). The expiry test moves BC's clock days ahead, so it comes last.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.sync import bulk
from shared.sync.echoes import ECHOES
from tests.e2e.harness import E2EStack, diff, mapping_file, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"
CONTACT = "CONTACT"
HOUR = 3600.0


@pytest.fixture(scope="module")
def e2e_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("mappings")
    return {
        **mapping_file(
            folder, "propagate", CUSTOMER={"deletion": "propagate"}, CONTACT={"deletion": "propagate"}
        ),
        "BC_SWEEP_MINUTES": "0",
    }


def _coupled_customer(e2e: E2EStack, phone: str = "555-1100") -> tuple[str, str]:
    customer = e2e.bc_create(
        "customers", {"displayName": f"N11 {uuid.uuid4().hex[:6]}", "phoneNumber": phone}
    )
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    e2e.settle()
    return customer["id"], str(coupling.dv_id)


def _customers_subscription(e2e: E2EStack) -> dict[str, Any] | None:
    subs = [s for s in e2e.rt.bc.list_subscriptions() if str(s["resource"]).endswith("/customers")]
    assert len(subs) <= 1, subs
    return subs[0] if subs else None


def _entries_since(e2e: E2EStack, index: int) -> list[list[dict[str, Any]]]:
    """The entries of each delivered POST from delivery `index` on."""
    return [d["body"]["value"] for d in e2e.bc.webhooks.deliveries[index:] if d["outcome"] == "delivered"]


class _Window:
    """A longer coalescing window for a test (the module's default is 50 ms)."""

    def __init__(self, e2e: E2EStack, **config: Any) -> None:
        self.e2e, self.config = e2e, config

    def __enter__(self) -> None:
        self.saved = {k: self.e2e.bc.webhook_config()[k] for k in self.config}
        self.e2e.bc.set_webhook_config(**self.config)

    def __exit__(self, *exc: object) -> None:
        self.e2e.bc.set_webhook_config(**self.saved)


# --------------------------------------------------------- a bare collection (a delete in the burst)
def test_a_delete_inside_a_collection_burst_reaches_dataverse(e2e: E2EStack) -> None:
    ids = e2e.bc.seed_customers(30, start=810_000)
    bulk.run_full_resync(e2e.engine, CUSTOMER)  # couples them (creates the accounts in bulk)
    e2e.settle(timeout=60)
    changed, doomed = ids[:25], ids[25:27]
    doomed_dv = [str(e2e.wait_coupled(CUSTOMER, "bc", i).dv_id) for i in doomed]
    first = len(e2e.bc.webhooks.deliveries)
    before = e2e.service_requests()
    with _Window(e2e, coalesce_seconds=30.0, collection_threshold=20):
        for record_id in changed:
            e2e.bc.change("customers", record_id, {"city": "Sweepville"})
        for record_id in doomed:
            e2e.bc_delete("customers", record_id)
        e2e.bc.flush_webhooks()

    [entries] = _entries_since(e2e, first)
    assert [e["changeType"] for e in entries] == ["collection"]
    assert "?" not in entries[0]["resource"], "BC sends the bare collection when a delete is in it"

    for dv_id in doomed_dv:
        wait_for(lambda dv_id=dv_id: e2e.dv_get("accounts", dv_id) is None, "the deleted customer's account")
    numbers = {e2e.bc.get("customers", i)["number"] for i in changed}
    wait_for(
        lambda: (
            sum(
                1
                for r in e2e.dv.rows("accounts")
                if r.get("accountnumber") in numbers and r.get("address1_city") == "Sweepville"
            )
            == len(changed)
        ),
        "every change of the burst in Dataverse",
    )
    e2e.settle()
    assert all(e2e.coupling(CUSTOMER, "bc", i) is None for i in doomed)
    spent = diff(e2e.service_requests(), before)
    total = sum(spent.values())
    print(f"\nbare collection of {len(changed)} changes + {len(doomed)} deletes: {total} requests {spent}")
    # Pages and bulk writes for the changes, a few requests per deletion; never one per record.
    assert total <= 12 + 4 * len(doomed), spent


# ------------------------------------------------------------ several entries for one record
def test_created_and_updated_in_one_window_make_one_account(e2e: E2EStack) -> None:
    first = len(e2e.bc.webhooks.deliveries)
    name = f"Twice {uuid.uuid4().hex[:6]}"
    with _Window(e2e, coalesce_seconds=2.0):
        customer = e2e.bc_create("customers", {"displayName": name})
        e2e.bc_update("customers", customer["id"], {"city": "Second"})
        e2e.settle()
    posts = _entries_since(e2e, first)
    mine = [[e["changeType"] for e in post if customer["id"] in e["resource"]] for post in posts]
    assert ["created", "updated"] in mine, posts  # two entries for the record in one POST
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    accounts = e2e.dv_find("accounts", f"name eq '{name}'")
    assert len(accounts) == 1, "no duplicate create"
    assert accounts[0]["accountid"] == coupling.dv_id and accounts[0]["address1_city"] == "Second"


def test_updated_then_deleted_in_one_window_deletes_the_account(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    first = len(e2e.bc.webhooks.deliveries)
    with _Window(e2e, coalesce_seconds=2.0):
        e2e.bc_update("customers", bc_id, {"city": "Last words"})
        e2e.bc_delete("customers", bc_id)
        e2e.settle()
    posts = _entries_since(e2e, first)
    assert [[e["changeType"] for e in p if bc_id in e["resource"]] for p in posts] == [["updated", "deleted"]]
    wait_for(lambda: e2e.dv_get("accounts", dv_id) is None, "the account to be deleted (no lost delete)")
    assert e2e.coupling(CUSTOMER, "bc", bc_id) is None


# ---------------------------------------------------------------------------------- echoes
def test_a_bc_users_edit_right_after_our_write_is_never_taken_for_an_echo(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    first = len(e2e.bc.webhooks.deliveries)
    with _Window(e2e, coalesce_seconds=3.0):
        e2e.dv_update("accounts", dv_id, {"telephone1": "555-1111"})
        wait_for(lambda: e2e.bc.get("customers", bc_id)["phoneNumber"] == "555-1111", "our write in BC")
        # A person edits the record in BC at once: the same window, merged into one entry with ours.
        e2e.bc_update("customers", bc_id, {"city": "Personville"})
        e2e.settle()
    posts = _entries_since(e2e, first)
    mine = [e for p in posts for e in p if bc_id in e["resource"]]
    assert [e["changeType"] for e in mine] == ["updated"], mine  # our update and theirs, merged
    account = e2e.dv_get("accounts", dv_id)
    assert account is not None
    assert account["address1_city"] == "Personville", "the person's change was taken for an echo"
    assert account["telephone1"] == "555-1111"


def test_an_echo_under_real_stamps_costs_no_request(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    e2e.dv_update("accounts", dv_id, {"telephone1": "555-1212"})
    wait_for(lambda: e2e.bc.get("customers", bc_id)["phoneNumber"] == "555-1212", "our write in BC")
    first = len(e2e.bc.webhooks.deliveries)
    before = e2e.service_requests()
    e2e.settle()
    echo = [e for p in _entries_since(e2e, first) for e in p if bc_id in e["resource"]]
    # BC stamps the notification before it sets the record's time: earlier than what our write read
    # back, so the webhook knows it for its own write's echo and queues nothing.
    record_time = e2e.bc.get("customers", bc_id)["lastModifiedDateTime"]
    assert echo and echo[0]["lastModifiedDateTime"] < record_time, (echo, record_time)
    spent = diff(e2e.service_requests(), before)
    assert spent == {}, spent
    [last, *_] = e2e.rt.journal.history(CUSTOMER, "bc", bc_id)
    assert last.source == "dv" and last.outcome == "modified", "the echo was queued and handled"


def test_an_echo_the_webhook_does_not_know_is_known_by_the_processor_from_the_coupling(e2e: E2EStack) -> None:
    """Another instance wrote, or this one restarted: the webhook queues the notification, and the
    processor knows it for an echo by the stamp and the coupling it reads, still without a request."""
    bc_id, dv_id = _coupled_customer(e2e)
    ECHOES.clear()
    with _Window(e2e, coalesce_seconds=1.0):
        e2e.dv_update("accounts", dv_id, {"telephone1": "555-1313"})
        wait_for(
            lambda: e2e.rt.journal.history(CUSTOMER, "bc", bc_id)[0].outcome == "modified",
            "our sync journaled",
        )
        ECHOES.clear()  # before BC notifies (1 s window): as if another instance had written
        before = e2e.service_requests()
        e2e.settle()
    assert diff(e2e.service_requests(), before) == {}
    [handled, *_] = e2e.rt.journal.history(CUSTOMER, "bc", bc_id)
    assert handled.source == "bc" and handled.outcome == "unchanged" and "stamped" in handled.reason


# -------------------------------------------------------- deletions no notification reports
def test_a_bc_contact_delete_is_found_by_the_sweep(e2e: E2EStack) -> None:
    bc_id, _ = _coupled_customer(e2e)
    e2e.stack.host.invoke_timer("delta_poll")  # baselines (or catch up)
    e2e.settle()
    company = e2e.bc.company_contact(bc_id)
    person = e2e.bc_create(
        "contacts", {"type": "Person", "displayName": "Del Sweep", "companyNumber": company["number"]}
    )
    e2e.stack.host.invoke_timer("delta_poll")  # contacts have no webhooks: the poll brings it
    coupling = e2e.wait_coupled(CONTACT, "bc", person["id"])
    e2e.settle()
    assert e2e.dv_get("contacts", str(coupling.dv_id)) is not None

    e2e.bc_delete("contacts", person["id"])
    e2e.settle()
    assert e2e.dv_get("contacts", str(coupling.dv_id)) is not None, "nothing reported the delete yet"
    e2e.stack.host.invoke_timer("delta_poll")  # queues the id sweep (BC_SWEEP_MINUTES=0)
    wait_for(lambda: e2e.dv_get("contacts", str(coupling.dv_id)) is None, "the sweep to delete the contact")
    e2e.settle()
    assert e2e.coupling(CONTACT, "bc", person["id"]) is None


# ------------------------------------------------------------ a subscription BC deleted
def test_a_subscription_bc_deleted_after_failed_deliveries_is_recreated_and_the_gap_caught_up(
    e2e: E2EStack,
) -> None:
    kept_bc, kept_dv = _coupled_customer(e2e)
    gone_bc, gone_dv = _coupled_customer(e2e)
    e2e.stack.host.invoke_timer("delta_poll")
    e2e.settle()
    before = _customers_subscription(e2e)
    assert before is not None
    first = len(e2e.bc.webhooks.deliveries)
    # Every delivery times out: BC retries 5 times, then deletes the subscription.
    with _Window(e2e, delivery_timeout_seconds=0.000_001):
        e2e.bc_update("customers", kept_bc, {"phoneNumber": "555-1313"})
        e2e.bc_delete("customers", gone_bc)
        e2e.bc.flush_webhooks()
    outcomes = [d["outcome"] for d in e2e.bc.webhooks.deliveries[first:]]
    assert outcomes[-1] == "gave_up" and len(outcomes) == 6, outcomes
    assert _customers_subscription(e2e) is None
    e2e.settle()
    assert e2e.dv_get("accounts", gone_dv) is not None, "the delete was not lost: test proves nothing"

    e2e.stack.host.invoke_timer("delta_poll")  # every 2 minutes in production
    after = _customers_subscription(e2e)
    assert after is not None and after["subscriptionId"] != before["subscriptionId"]
    wait_for(lambda: e2e.dv_get("accounts", gone_dv) is None, "the delete in the gap to reach Dataverse")
    wait_for(lambda: e2e.dv_get("accounts", kept_dv)["telephone1"] == "555-1313", "the change in the gap")
    e2e.settle()
    e2e.bc_update("customers", kept_bc, {"phoneNumber": "555-1314"})
    wait_for(lambda: e2e.dv_get("accounts", kept_dv)["telephone1"] == "555-1314", "a notified change again")


def test_an_expired_subscription_is_recreated_by_the_delta_poll_within_minutes(e2e: E2EStack) -> None:
    bc_id, dv_id = _coupled_customer(e2e)
    gone_bc, gone_dv = _coupled_customer(e2e)
    e2e.stack.host.invoke_timer("delta_poll")
    e2e.settle()
    e2e.bc.advance_clock(73 * HOUR)  # past the 3-day lifetime: BC removed it, nothing is notified
    assert _customers_subscription(e2e) is None
    e2e.bc_delete("customers", gone_bc)
    e2e.settle()
    assert e2e.dv_get("accounts", gone_dv) is not None

    e2e.stack.host.invoke_timer("delta_poll")
    assert _customers_subscription(e2e) is not None
    wait_for(lambda: e2e.dv_get("accounts", gone_dv) is None, "the delete after expiry to reach Dataverse")
    e2e.bc_update("customers", bc_id, {"phoneNumber": "555-1414"})
    wait_for(lambda: e2e.dv_get("accounts", dv_id)["telephone1"] == "555-1414", "a notified change again")
