"""Opportunities both ways (issue 17, OPPORTUNITY): open opportunities linked to their coupled
contact. BC sends no webhooks for opportunities, so the delta poll brings BC's; Sales' come by
webhook. API v2.0 cannot close (win or lose) an opportunity in BC: closing is not synchronized."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.messages import SyncMessage
from shared.sync.engine import MAX_DEFERRALS
from tests.e2e.harness import E2EStack, diff, wait_for

pytestmark = pytest.mark.e2e

OPP = "OPPORTUNITY"


def _coupled_person(e2e: E2EStack) -> tuple[dict[str, Any], str, str]:
    """A BC person contact of a coupled customer's company, coupled by CONTACT: (BC contact, its
    Dataverse contact id, the customer's account id)."""
    customer = e2e.bc_create("customers", {"displayName": f"Opp Cust {uuid.uuid4().hex[:6]}"})
    account = str(e2e.wait_coupled("CUSTOMER", "bc", customer["id"]).dv_id)
    e2e.stack.host.invoke_timer("delta_poll")  # baselines (or catches up): the next poll sees what follows
    e2e.settle()
    company = e2e.bc.company_contact(customer["id"])
    person = e2e.bc_create(
        "contacts",
        {
            "type": "Person",
            "displayName": f"Ona Opp {uuid.uuid4().hex[:4]}",
            "companyNumber": company["number"],
        },
    )
    e2e.stack.host.invoke_timer("delta_poll")  # contacts have no webhooks
    contact = str(e2e.wait_coupled("CONTACT", "bc", person["id"]).dv_id)
    e2e.settle()
    return person, contact, account


def test_an_opportunity_created_in_bc_appears_in_sales_linked_to_its_contact(e2e: E2EStack) -> None:
    person, contact_id, account_id = _coupled_person(e2e)
    e2e.stack.host.invoke_timer("delta_poll")  # baselines (or catch up)
    e2e.settle()
    opp = e2e.bc_create("opportunities", {"contactNumber": person["number"], "description": "New tables"})
    e2e.control.post(
        f"{e2e.bc_url}/_sandbox/opportunities/{opp['id']}/estimate",
        json={"estimatedValue": 2500, "estimatedClosingDate": "2027-03-31"},
    ).raise_for_status()
    before = e2e.service_requests()
    e2e.stack.host.invoke_timer("delta_poll")  # opportunities have no webhooks: the poll brings it
    coupling = e2e.wait_coupled(OPP, "bc", opp["id"])
    e2e.settle()
    spent = diff(e2e.service_requests(), before)
    print(f"BC opportunity created: {spent}")
    row = e2e.dv_get("opportunities", str(coupling.dv_id))
    assert row is not None
    assert (row["name"], row["_parentcontactid_value"], row["statecode"]) == ("New tables", contact_id, 0)
    assert (row["estimatedvalue"], row["estimatedclosedate"]) == (2500, "2027-03-31")
    contact = e2e.dv_get("contacts", contact_id)
    assert (
        contact is not None and contact["_parentcustomerid_value"] == account_id
    )  # the account, via its contact

    # A rename in Sales reaches BC (Dataverse webhook); an estimate of the salesperson stays in Sales.
    before = e2e.service_requests()
    e2e.dv_update(
        "opportunities", str(coupling.dv_id), {"name": "New tables and chairs", "estimatedvalue": 3100}
    )
    wait_for(
        lambda: (e2e.bc_get("opportunities", opp["id"]) or {}).get("description") == "New tables and chairs",
        "the new name in BC",
    )
    e2e.settle()
    spent = diff(e2e.service_requests(), before)
    print(f"Sales opportunity renamed: {spent}")
    assert sum(v for k, v in spent.items() if k.startswith("BC PATCH")) == 1, spent
    assert (e2e.dv_get("opportunities", str(coupling.dv_id)) or {})["estimatedvalue"] == 3100
    assert not e2e.failures()


def test_an_opportunity_created_in_sales_becomes_a_bc_opportunity_of_the_coupled_contact(
    e2e: E2EStack,
) -> None:
    person, contact_id, _ = _coupled_person(e2e)
    created = e2e.dv_create(
        "opportunities",
        {
            "name": "Office fit-out",
            "estimatedvalue": 800,
            "parentcontactid@odata.bind": f"/contacts({contact_id})",
        },
    )
    coupling = e2e.wait_coupled(OPP, "dv", created["opportunityid"])
    e2e.settle()
    opp = e2e.bc_get("opportunities", str(coupling.bc_id))
    assert opp is not None
    assert (opp["number"][:2], opp["contactNumber"], opp["description"]) == (
        "OP",
        person["number"],
        "Office fit-out",
    )
    assert opp["status"] == "Not_x0020_Started"
    assert (e2e.dv_get("opportunities", created["opportunityid"]) or {})["estimatedvalue"] == 800


def test_an_opportunity_won_in_sales_stays_open_in_bc_which_v2_cannot_close(e2e: E2EStack) -> None:
    person, _, _ = _coupled_person(e2e)
    e2e.stack.host.invoke_timer("delta_poll")
    e2e.settle()
    opp = e2e.bc_create("opportunities", {"contactNumber": person["number"], "description": "Won in Sales"})
    e2e.stack.host.invoke_timer("delta_poll")
    coupling = e2e.wait_coupled(OPP, "bc", opp["id"])
    e2e.settle()
    close = {"opportunityid@odata.bind": f"/opportunities({coupling.dv_id})"}
    won = e2e.dv_http.post("WinOpportunity", json={"Status": 3, "OpportunityClose": close})
    assert won.status_code == 204, won.text
    e2e.settle()
    # BC's page 30070 has status read-only and no Close action: the service cannot win it in BC, and
    # does not try (a PATCH of status is refused by BC).
    assert (e2e.bc_get("opportunities", opp["id"]) or {})["status"] == "Not_x0020_Started"
    refused = e2e.bc_http.patch(
        f"opportunities({opp['id']})", json={"status": "Won"}, headers={"If-Match": "*"}
    )
    assert refused.status_code == 400 and "read-only" in refused.text
    assert not e2e.failures()


def test_an_opportunity_whose_contact_is_not_coupled_waits_and_says_so(e2e: E2EStack) -> None:
    customer = e2e.bc_create("customers", {"displayName": f"Opp Co {uuid.uuid4().hex[:6]}"})
    e2e.wait_coupled("CUSTOMER", "bc", customer["id"])
    e2e.settle()
    # A company contact is not a CONTACT (person contacts only): nothing can couple it.
    company = e2e.bc.company_contact(customer["id"])
    e2e.stack.host.invoke_timer("delta_poll")
    e2e.settle()
    opp = e2e.bc_create("opportunities", {"contactNumber": company["number"], "description": "Waits"})
    e2e.stack.host.invoke_timer("delta_poll")

    def deferred() -> Any:
        entries = e2e.rt.journal.history(OPP, "bc", opp["id"])
        return entries if entries and entries[0].outcome == "deferred" else None

    # It waits, saying for what (the engine asks CONTACT to sync the contact first)...
    entries = wait_for(deferred, "the opportunity to wait for its contact", 30)
    assert entries[0].reason == f"waiting for CONTACT {company['number']} to be coupled"
    # ... and when the waits are used up (MAX_DEFERRALS, about 95 s), it fails saying why.
    last = SyncMessage(mapping=OPP, side="bc", id=opp["id"], reason="e2e: last wait", attempt=MAX_DEFERRALS)
    result = e2e.engine.sync_record(last)
    assert result.outcome == "failed", result
    assert f"the opportunity's contact '{company['number']}' is not coupled" in result.error
    assert "it waits until CONTACT couples it" in result.error
    # (A retry queued by an earlier wait may journal one more wait after it: look for the failure.)
    journaled = e2e.rt.journal.history(OPP, "bc", opp["id"])
    assert any(e.outcome == "failed" and e.error == result.error for e in journaled), journaled
    assert not e2e.dv_find("opportunities", "name eq 'Waits'")
