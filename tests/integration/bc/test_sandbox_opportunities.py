"""The BC sandbox's `opportunities` as page 30070 "APIV2 - Opportunities" serves them: a number from
the series, the contact's names copied, status and values read-only (the API has no Close action),
contact and salesperson frozen once won or lost, no webhooks."""

from __future__ import annotations

import pytest

from tests.integration.bc.conftest import Bc
from tests.integration.bc.test_sandbox_records import assert_error

pytestmark = pytest.mark.integration


def _person(bc: Bc) -> dict[str, str]:
    company = bc.http.post(bc.entity_url("contacts"), json={"type": "Company", "displayName": "Opp Co"})
    assert company.status_code == 201, company.text
    person = bc.http.post(
        bc.entity_url("contacts"),
        json={"type": "Person", "displayName": "Olga Opp", "companyNumber": company.json()["number"]},
    )
    assert person.status_code == 201, person.text
    return dict(person.json())


def test_an_opportunity_gets_a_number_the_contacts_names_and_starts_not_started(bc: Bc) -> None:
    person = _person(bc)
    created = bc.http.post(
        bc.entity_url("opportunities"), json={"contactNumber": person["number"], "description": "New tables"}
    )
    assert created.status_code == 201, created.text
    opp = created.json()
    assert opp["number"].startswith("OP")
    assert (opp["contactName"], opp["contactCompanyName"]) == ("Olga Opp", "Opp Co")
    assert (opp["status"], opp["closed"], opp["dateClosed"]) == ("Not_x0020_Started", False, "0001-01-01")
    assert opp["creationDate"] == bc.sandbox.clock.now().date().isoformat()

    unknown = bc.http.post(bc.entity_url("opportunities"), json={"contactNumber": "CT999999"})
    assert "cannot be found in the related table (Contact)" in assert_error(
        unknown, 400, "Application_DialogException"
    )
    for field, value in (("status", "Won"), ("estimatedValue", 500), ("closed", True)):
        refused = bc.http.patch(
            bc.entity_url("opportunities", opp["id"]), json={field: value}, headers={"If-Match": "*"}
        )
        assert f"Control '{field}' is read-only" in assert_error(refused, 400, "BadRequest")
    assert "opportunities" not in bc.client().webhook_supported_entity_sets(bc.company)


def test_a_won_opportunity_keeps_its_contact_and_salesperson(bc: Bc) -> None:
    person = _person(bc)
    other = _person(bc)
    opp = bc.http.post(bc.entity_url("opportunities"), json={"contactNumber": person["number"]}).json()
    estimate = bc.http.post(
        f"{bc.url}/_sandbox/opportunities/{opp['id']}/estimate",
        json={"estimatedValue": 1200, "estimatedClosingDate": "2027-01-31"},
    )
    assert estimate.status_code == 200, estimate.text
    closed = bc.http.post(f"{bc.url}/_sandbox/opportunities/{opp['id']}/close", json={"won": True})
    assert closed.status_code == 200, closed.text
    read = bc.http.get(bc.entity_url("opportunities", opp["id"])).json()
    assert (read["status"], read["closed"], read["calculatedCurrentValue"]) == ("Won", True, 1200)
    moved = bc.http.patch(
        bc.entity_url("opportunities", opp["id"]),
        json={"contactNumber": other["number"]},
        headers={"If-Match": "*"},
    )
    assert 'The "contactNumber of a Won or Lost Opportunity cannot be changed' in assert_error(
        moved, 400, "Application_DialogException"
    )
    renamed = bc.http.patch(
        bc.entity_url("opportunities", opp["id"]), json={"description": "Won it"}, headers={"If-Match": "*"}
    )
    assert renamed.status_code == 200 and renamed.json()["description"] == "Won it"
    again = bc.http.post(f"{bc.url}/_sandbox/opportunities/{opp['id']}/close", json={"won": False})
    assert again.status_code == 400 and "already closed" in again.text
