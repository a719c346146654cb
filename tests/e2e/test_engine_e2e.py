"""The sync engine end to end (issue 5): real Azurite, both sandboxes over HTTP, the dev host
running function_app's webhooks and queue processor. Each test uses its own records, so the tests
of this module share one stack without seeing each other's data."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from devstack.dataverse.config import INTEGRATION_USER_ID, SandboxUser
from shared.mapping.queries import select_fields
from shared.messages import SyncMessage
from shared.odata import eq
from shared.ops import operations
from shared.store.couplings import Coupling
from shared.sync import bulk
from shared.sync.reconcile import take_snapshot
from tests.e2e.harness import E2EStack, diff, wait_for, writes

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"


def _tag() -> str:
    return uuid.uuid4().hex[:6].upper()


def _new_coupled_customer(e2e: E2EStack, **fields: Any) -> tuple[str, str]:
    """A customer created in BC by a person and synchronized to Dataverse: (BC id, Dataverse id)."""
    tag = _tag()
    body = {"displayName": f"E2E {tag} Ltd", "email": f"{tag.lower()}@e2e.example", **fields}
    customer = e2e.bc_create("customers", body)
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    e2e.settle()
    assert coupling.dv_id is not None
    return customer["id"], coupling.dv_id


def _fresh_snapshot(e2e: E2EStack, bc_id: str, dv_id: str) -> dict[str, Any]:
    ms = e2e.rt.mappings
    m = ms.entity(CUSTOMER)
    bc = e2e.rt.bc.get(e2e.company_id, "customers", bc_id, select=select_fields(ms, m, "bc"))
    dv = e2e.rt.dataverse.get("accounts", dv_id, select=select_fields(ms, m, "dv"))
    # Through JSON, as the coupling row stores it.
    return json.loads(json.dumps(take_snapshot(ms, m, bc, dv)))


def _has_phone(e2e: E2EStack, dv_id: str, phone: str) -> bool:
    return bool(e2e.dv.get("accounts", dv_id)["telephone1"] == phone)


# ------------------------------------------------------------------ 1. create, update, delete
def test_customer_created_updated_and_deleted_in_bc_and_changed_in_dataverse(e2e: E2EStack) -> None:
    tag = _tag()
    customer = e2e.bc_create(
        "customers",
        {
            "displayName": f"Roundtrip {tag}",
            "phoneNumber": "555-0101",
            "city": "Oslo",
            "email": f"{tag}@rt.example",
        },
    )
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    account = e2e.dv_get("accounts", str(coupling.dv_id))
    assert account is not None
    assert (account["name"], account["telephone1"], account["address1_city"]) == (
        f"Roundtrip {tag}", "555-0101", "Oslo",
    )  # fmt: skip
    assert account["accountnumber"] == customer["number"]
    assert account["customertypecode"] == 3

    e2e.bc_update("customers", customer["id"], {"phoneNumber": "555-0102"})
    wait_for(
        lambda: e2e.dv_get("accounts", str(coupling.dv_id))["telephone1"] == "555-0102",  # type: ignore[index]
        "the BC phone change in Dataverse",
    )

    e2e.dv_update("accounts", str(coupling.dv_id), {"websiteurl": "https://rt.example"})
    wait_for(
        lambda: e2e.bc_get("customers", customer["id"])["website"] == "https://rt.example",  # type: ignore[index]
        "the Dataverse website change in BC",
    )
    e2e.settle()

    # default.yaml leaves CUSTOMER at `deletion: none`: the pair fails, naming what to do.
    assert e2e.rt.mappings.entity(CUSTOMER).deletion == "none"
    e2e.bc_delete("customers", customer["id"])

    def failed_coupling() -> Coupling | None:
        c = e2e.coupling(CUSTOMER, "dv", str(coupling.dv_id))
        return c if c is not None and c.last_result == "failed" else None

    failed = wait_for(failed_coupling, "the deletion to be recorded as a failure on the coupling")
    assert "the coupled BC record was deleted" in failed.last_error
    assert "deletion policy of CUSTOMER is none" in failed.last_error
    assert e2e.dv_get("accounts", str(coupling.dv_id)) is not None, "policy none must not delete the account"
    # The journal entry is written just after the coupling: wait for it rather than race it.
    newest = wait_for(
        lambda: next(
            (
                e
                for e in e2e.rt.journal.history(CUSTOMER, "dv", str(coupling.dv_id))[:1]
                if e.outcome == "failed"
            ),
            None,
        ),
        "the failure in the journal",
    )
    assert "deletion policy" in newest.error


def test_a_pair_deleted_on_both_sides_is_uncoupled_not_failed(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e)
    # The account goes first, unannounced (a delete by the integration user is dropped as an echo);
    # the customer's deletion must then find it gone, not presume it from the snapshot.
    e2e.rt.dataverse.delete("accounts", dv_id)
    e2e.bc_delete("customers", bc_id)
    wait_for(lambda: e2e.coupling(CUSTOMER, "bc", bc_id) is None, "the coupling to be removed")
    e2e.settle()
    latest = e2e.rt.journal.history(CUSTOMER, "bc", bc_id)[0]
    assert latest.outcome == "uncoupled", latest
    assert e2e.bc_get("customers", bc_id) is None and e2e.dv_get("accounts", dv_id) is None


# ------------------------------------------------------------------ 2. deferral on a lookup
def test_contact_waits_for_its_company_then_syncs(e2e: E2EStack) -> None:
    tag = _tag()
    number = f"E2EK{tag}"
    # Seeded: no notification, so the company is not coupled when its contact is synchronized.
    # A namesake first: BC's API finds a company contact's customer only through the name it copies.
    _, customer_id = e2e.bc.seed(
        "customers",
        [
            {"number": f"{number}N", "displayName": f"Parent {tag}"},
            {"number": number, "displayName": f"Parent {tag}"},
        ],
    )
    # As in BC, the person belongs to the customer's company contact, which has its own number.
    company_contact = e2e.bc.company_contact(customer_id)["number"]
    assert company_contact != number
    (contact_id,) = e2e.bc.seed(
        "contacts",
        [
            {
                "type": "Person",
                "displayName": f"Dana {tag}",
                "companyNumber": company_contact,
                "email": f"dana{tag}@e2e.example",
            }
        ],
    )
    assert e2e.coupling(CUSTOMER, "bc", customer_id) is None
    # BC sends no webhooks for contacts: the delta poll enqueues exactly this message.
    e2e.rt.storage.enqueue(
        [SyncMessage(mapping="CONTACT", side="bc", id=contact_id, reason="e2e: delta poll")]
    )

    wait_for(
        lambda: any(e.outcome == "deferred" for e in e2e.rt.journal.history("CONTACT", "bc", contact_id)),
        "the contact to be deferred",
    )
    account_coupling = e2e.wait_coupled(CUSTOMER, "bc", customer_id)
    contact_coupling = e2e.wait_coupled("CONTACT", "bc", contact_id, timeout=20)

    contact = e2e.dv_get("contacts", str(contact_coupling.dv_id))
    assert contact is not None
    assert contact["_parentcustomerid_value"] == account_coupling.dv_id
    assert (contact["emailaddress1"], contact["fullname"]) == (f"dana{tag}@e2e.example", f"Dana {tag}")
    # The journal is written after the coupling (the last stage of a sync): wait for it too.
    wait_for(
        lambda: e2e.rt.journal.history("CONTACT", "bc", contact_id)[0].outcome == "inserted",
        "the contact's insert to be journaled",
    )
    outcomes = [e.outcome for e in reversed(e2e.rt.journal.history("CONTACT", "bc", contact_id))]
    assert outcomes[0] == "deferred" and outcomes[-1] == "inserted", outcomes


def test_a_contact_entered_in_sales_joins_its_customer_s_company_contact_in_bc(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e)
    tag = _tag()
    person = e2e.dv_create(
        "contacts",
        {"firstname": "Lee", "lastname": f"Park {tag}", "emailaddress1": f"lee{tag}@e2e.example",
         "parentcustomerid_account@odata.bind": f"/accounts({dv_id})"},
    )  # fmt: skip
    coupling = e2e.wait_coupled("CONTACT", "dv", person["contactid"], timeout=20)
    contact = e2e.bc_get("contacts", str(coupling.bc_id))
    assert contact is not None
    assert (contact["type"], contact["displayName"]) == ("Person", f"Lee Park {tag}")
    assert contact["companyNumber"] == e2e.bc.company_contact(bc_id)["number"]


# ------------------------------------------------------------------ 3. uncoupled salesperson
def test_customer_of_an_uncoupled_salesperson_fails_by_name_then_syncs_once_coupled(e2e: E2EStack) -> None:
    tag = _tag()
    customer = e2e.bc_create("customers", {"displayName": f"Owned {tag}", "salespersonCode": "PS"})
    expected = (
        "salesperson 'PS' is not coupled to a Dataverse user; couple salespeople or switch to team ownership"
    )
    failed = wait_for(
        lambda: [e for e in e2e.rt.journal.history(CUSTOMER, "bc", customer["id"]) if e.outcome == "failed"],
        "the named salesperson failure in the journal",
    )
    assert failed[0].error == expected
    assert e2e.coupling(CUSTOMER, "bc", customer["id"]) is None
    listed = [i.message for i in operations.list_errors(e2e.rt, CUSTOMER) if i.bc_id == customer["id"]]
    assert listed == [expected], "the operator's error list must name the salesperson"

    # Give Peter Saddow (PS) a Dataverse user with his BC e-mail, then couple salespeople by e-mail.
    peter = SandboxUser(
        token=f"peter-{tag}", systemuserid=str(uuid.uuid4()), fullname="Peter Saddow",
        internalemailaddress="peter.saddow@contoso.example",
    )  # fmt: skip
    e2e.dv.add_user(peter)
    report = bulk.match_coupling(e2e.engine, "SALESPEOPLE", dry_run=False)
    ps_id = e2e.bc_find("salespeoplePurchasers", eq("code", "PS"))[0]["id"]
    assert (ps_id, peter.systemuserid) in report.would_couple

    result = e2e.sync(CUSTOMER, "bc", customer["id"], force=True)
    assert str(result.outcome) == "inserted", result
    account = e2e.dv_get("accounts", str(result.dv_id))
    assert account is not None and account["_ownerid_value"] == peter.systemuserid


# ------------------------------------------------------------------ 4. racing processors
def _all_at_once(*actions: Callable[[], object]) -> None:
    """Run the actions in threads released together; re-raise what any of them raised."""
    start = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        try:
            start.wait(timeout=10)
            action()
        except BaseException as exc:  # a thread's failure must fail the test, not vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


def test_two_processors_racing_on_one_pair_lose_no_update(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e)
    for round_ in range(3):
        phone, website = f"555-02{round_:02d}", f"https://race{round_}.example"
        # Both sides change while two processors converge the pair, one from each side.
        _all_at_once(
            partial(e2e.bc.change, "customers", bc_id, {"phoneNumber": phone}),
            partial(e2e.dv_update, "accounts", dv_id, {"websiteurl": website}),
            partial(e2e.sync, CUSTOMER, "bc", bc_id),
            partial(e2e.sync, CUSTOMER, "dv", dv_id),
        )
        e2e.settle()
        bc = e2e.bc_get("customers", bc_id)
        dv = e2e.dv_get("accounts", dv_id)
        assert bc is not None and dv is not None
        assert (bc["phoneNumber"], bc["website"]) == (phone, website), f"round {round_}: BC lost an update"
        assert (dv["telephone1"], dv["websiteurl"]) == (phone, website), f"round {round_}: DV lost an update"
        coupling = e2e.coupling(CUSTOMER, "bc", bc_id)
        assert coupling is not None and coupling.last_result in ("modified", "unchanged"), coupling
        assert coupling.snapshot == _fresh_snapshot(e2e, bc_id, dv_id)
    assert not [e for e in e2e.rt.journal.history(CUSTOMER, "bc", bc_id) if e.outcome == "failed"]


# ------------------------------------------------------------------ 5. ambiguous creates
def test_commit_then_fail_on_the_dataverse_create_leaves_one_account(e2e: E2EStack) -> None:
    e2e.dv.injector.add(
        {"action": "commit_then_fail", "method": "POST", "path_contains": "/accounts", "times": 1}
    )
    tag = _tag()
    customer = e2e.bc_create("customers", {"displayName": f"Once {tag}"})
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"], timeout=20)
    e2e.settle()
    assert not e2e.dv.injector.rules(), "the fault was never hit: the test proves nothing"
    accounts = e2e.dv_find("accounts", eq("accountnumber", customer["number"]))
    assert [a["accountid"] for a in accounts] == [coupling.dv_id]


def test_commit_then_fail_on_the_bc_create_leaves_one_customer(e2e: E2EStack) -> None:
    e2e.bc.faults.add(
        {"action": "commit_then_fail", "method": "POST", "path_contains": "/customers", "times": 1}
    )
    tag = _tag()
    name = f"From CRM {tag}"
    account = e2e.dv_create("accounts", {"name": name, "customertypecode": 3, "telephone1": "555-0105"})
    coupling = e2e.wait_coupled(CUSTOMER, "dv", account["accountid"], timeout=30)
    e2e.settle()
    assert not e2e.bc.faults.rules(), "the fault was never hit: the test proves nothing"
    customers = [c["id"] for c in e2e.bc_find("customers", eq("displayName", name))]
    accounts = [a["accountid"] for a in e2e.dv_find("accounts", eq("name", name))]
    assert (customers, accounts) == ([coupling.bc_id], [account["accountid"]]), (
        "an ambiguous BC create must leave exactly one customer and no second account"
    )
    assert e2e.bc_get("customers", str(coupling.bc_id))["phoneNumber"] == "555-0105"  # type: ignore[index]


# ------------------------------------------------------------------ 6. conflict under `none`
def test_field_conflict_is_journaled_and_resolved_by_the_operator(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e, phoneNumber="555-0300")
    assert e2e.rt.mappings.entity(CUSTOMER).conflict == "none"
    # BC's notification waits out a long window, so both sides are changed before anything syncs.
    window = e2e.bc.webhook_config()["coalesce_seconds"]
    e2e.bc.set_webhook_config(coalesce_seconds=5.0)
    try:
        e2e.bc.change("customers", bc_id, {"phoneNumber": "555-0311"})
        e2e.dv_update("accounts", dv_id, {"telephone1": "555-0322"})
        e2e.bc.flush_webhooks()
        e2e.settle()
    finally:
        e2e.bc.set_webhook_config(coalesce_seconds=window)
    e2e.settle()

    coupling = e2e.coupling(CUSTOMER, "bc", bc_id)
    assert coupling is not None and coupling.last_result == "conflict", coupling
    assert "'phoneNumber' changed on both sides" in coupling.last_error
    assert "555-0311" in coupling.last_error and "555-0322" in coupling.last_error
    conflicts = [e for e in e2e.rt.journal.history(CUSTOMER, "bc", bc_id) if e.outcome == "conflict"]
    assert conflicts and "555-0322" in conflicts[0].error
    # Nothing was overwritten on either side.
    assert e2e.bc_get("customers", bc_id)["phoneNumber"] == "555-0311"  # type: ignore[index]
    assert e2e.dv_get("accounts", dv_id)["telephone1"] == "555-0322"  # type: ignore[index]

    # The operator picks Dataverse's value.
    result = operations.sync_now(e2e.rt, CUSTOMER, "bc", bc_id, prefer="dv")
    assert result.outcome == "modified", result
    e2e.settle()
    assert e2e.bc_get("customers", bc_id)["phoneNumber"] == "555-0322"  # type: ignore[index]
    resolved = e2e.coupling(CUSTOMER, "bc", bc_id)
    assert resolved is not None
    assert (resolved.last_result, resolved.last_error, resolved.skipped) == ("modified", "", False)
    assert resolved.snapshot == _fresh_snapshot(e2e, bc_id, dv_id)


# ------------------------------------------------------------------ 7. request budget
def test_a_bc_change_costs_two_requests_and_its_echo_none(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e, phoneNumber="555-0400")
    invocations = len(e2e.stack.host.invocations)
    before, dv_before = e2e.service_requests(), writes(e2e.dv)

    e2e.bc.change("customers", bc_id, {"phoneNumber": "555-0401"})  # a person's change in BC
    wait_for(lambda: e2e.dv.get("accounts", dv_id)["telephone1"] == "555-0401", "the change in Dataverse")
    e2e.settle()  # the echo notification from Dataverse is delivered and handled here

    spent = diff(e2e.service_requests(), before)
    print(f"\nrequests for one BC change of a coupled customer, echo included: {spent}")
    # The account is not read: it is written with the ETag stored at the last sync (see the next test).
    assert spent == {"BC GET customers": 1, "DV PATCH accounts": 1}
    echoes = [
        d for d in e2e.dv.webhooks.deliveries()
        if d.record_id == dv_id and d.initiating_user_id == INTEGRATION_USER_ID and d.status == "delivered"
    ]  # fmt: skip
    assert echoes, "the Dataverse echo notification was never delivered: the test proves nothing"
    assert diff(writes(e2e.dv), dv_before) == {"PATCH accounts": 1}
    assert not e2e.failures(invocations)


def test_a_dataverse_change_costs_two_requests_and_its_bc_echo_none(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e, phoneNumber="555-0500")
    before = e2e.service_requests()
    bc_writes_before = writes(e2e.bc)

    e2e.dv_update("accounts", dv_id, {"telephone1": "555-0502"})  # a person's change in Dataverse
    wait_for(lambda: e2e.bc.get("customers", bc_id)["phoneNumber"] == "555-0502", "the change in BC")
    e2e.settle()  # the echo notification from BC is delivered and handled here

    spent = diff(e2e.service_requests(), before)
    print(f"\nrequests for one Dataverse change of a coupled customer, echo included: {spent}")
    assert diff(writes(e2e.bc), bc_writes_before) == {"PATCH customers": 1}
    # BC's notification of our own write is stamped before the customer's lastModifiedDateTime as our
    # write read it back: an echo, dropped at the webhook without reading anything; nothing is written back.
    assert spent == {"DV GET accounts": 1, "BC PATCH customers": 1}
    delivered = [
        entry for d in e2e.bc.webhooks.deliveries if d["outcome"] == "delivered"
        for entry in d["body"]["value"] if bc_id in entry["resource"]
    ]  # fmt: skip
    assert delivered, "BC never notified our write: the test proves nothing"
    [last, *_] = e2e.rt.journal.history("CUSTOMER", "bc", bc_id)
    assert last.source == "dv" and last.outcome == "modified", "the echo was queued and handled"


def test_a_bc_change_after_an_unnoticed_dataverse_edit_is_merged_after_a_refused_write(e2e: E2EStack) -> None:
    bc_id, dv_id = _new_coupled_customer(e2e, phoneNumber="555-0600")
    deliveries = len(e2e.dv.webhooks.deliveries())
    # An edit of a field no mapping reads: no notification (filtering attributes), but a new ETag.
    e2e.dv_update("accounts", dv_id, {"description": "noted by sales"})
    e2e.settle()
    assert len(e2e.dv.webhooks.deliveries()) == deliveries, "the unmapped edit was announced: no test"
    before = e2e.service_requests()

    e2e.bc.change("customers", bc_id, {"phoneNumber": "555-0601"})
    wait_for(lambda: e2e.dv.get("accounts", dv_id)["telephone1"] == "555-0601", "the change in Dataverse")
    e2e.settle()

    spent = diff(e2e.service_requests(), before)
    print(f"\nrequests for a BC change whose account changed unseen: {spent}")
    # The write with the stored ETag is refused (412); the account is read and merged with the
    # customer already read (not read a second time).
    assert spent == {"BC GET customers": 1, "DV PATCH accounts": 2, "DV GET accounts": 1}
    account = e2e.dv_get("accounts", dv_id)
    assert account is not None and account["description"] == "noted by sales"
    coupling = e2e.coupling(CUSTOMER, "bc", bc_id)
    assert coupling is not None and coupling.last_result == "modified", coupling
    assert coupling.dv_etag == account["@odata.etag"]
    assert coupling.snapshot == _fresh_snapshot(e2e, bc_id, dv_id)


def test_an_echo_that_reaches_the_processor_costs_one_read_and_no_write(e2e: E2EStack) -> None:
    bc_id, _ = _new_coupled_customer(e2e)
    before = e2e.service_requests()
    result = e2e.sync(CUSTOMER, "bc", bc_id)
    spent = diff(e2e.service_requests(), before)
    print(f"\nrequests for an echo that reached the processor: {spent}")
    assert str(result.outcome) == "unchanged" and "echo" in result.reason
    assert spent == {"BC GET customers": 1}


def test_the_journal_counts_only_the_requests_of_its_own_record(e2e: E2EStack) -> None:
    pairs = [_new_coupled_customer(e2e), _new_coupled_customer(e2e)]
    # Both writes are slowed down, so the two records are processed at the same time.
    e2e.dv.injector.add({"action": "latency", "seconds": 0.3, "method": "PATCH", "path_contains": "/accounts",
                         "times": 2})  # fmt: skip
    for bc_id, _ in pairs:
        e2e.bc.change("customers", bc_id, {"phoneNumber": "555-0700"})  # one notification, two entries
    for _, dv_id in pairs:
        wait_for(partial(_has_phone, e2e, dv_id, "555-0700"), "the changes in Dataverse")
    e2e.settle()
    counted = [e2e.rt.journal.history(CUSTOMER, "bc", bc_id)[0] for bc_id, _ in pairs]
    assert [e.outcome for e in counted] == ["modified", "modified"]
    # Each record cost exactly: read BC, write Dataverse (with the stored ETag).
    assert [e.api_requests for e in counted] == [2, 2]
