"""What the engine does for the Sales side: the status column (written only when it changes), coupling
by a BC number typed into an uncoupled record (refused, saying why), uncoupling when it is cleared."""

from __future__ import annotations

from shared.mapping.loader import parse_mapping_set
from shared.sync.reconcile import Outcome
from tests.unit.test_engine import Harness

MAPPING_TEXT = """
version: 1
settings: {ownership: {model: team, team_id: 00000000-0000-0000-0000-0000000000aa}}
mappings:
  - name: CUSTOMER
    bc: {entity_set: customers, key: number}
    dataverse:
      table: account
      entity_set: accounts
      couple_by_column: bcs_bcnumber
      status_column: bcs_bccouplingstatus
    fields:
      - {bc: displayName, dv: name, match_priority: 2}
      - {bc: city, dv: address1_city}
      - {key: bc_number, bc: number, dv: bcs_bcnumber, direction: to_dataverse}
      - {key: bc_link, bc: number, dv: bcs_bcurl, direction: to_dataverse, bc_card_page: 21}
"""
MAPPINGS = parse_mapping_set(MAPPING_TEXT)
CUSTOMER = MAPPINGS.entity("CUSTOMER")
WEB = "https://businesscentral.dynamics.com/contoso/production/?company=CRONUS%20USA"


def _account(h: Harness, **values: object) -> str:
    row = {"name": "Lead", "address1_city": None, "bcs_bcnumber": None, "bcs_bcurl": None,
           "bcs_bccouplingstatus": None, **values}  # fmt: skip
    return str(h.dv.seed(CUSTOMER, row)["accountid"])


def test_a_typed_number_couples_the_record_and_syncs_it_from_bc() -> None:
    h = Harness(MAPPINGS)
    bc_id = h.bc.seed(CUSTOMER, {"number": "C7", "displayName": "Adatum", "city": "Atlanta"})["id"]
    dv_id = _account(h, bcs_bcnumber="C7")

    result = h.sync("dv", dv_id)

    assert result.outcome == Outcome.MODIFIED, result
    coupling = h.couplings.get("CUSTOMER", "dv", dv_id)
    assert coupling is not None and coupling.bc_id == bc_id
    row = h.dv.rows("accounts")[dv_id]
    assert (row["name"], row["address1_city"]) == ("Adatum", "Atlanta")  # BC's values won
    assert row["bcs_bcurl"] == f"{WEB}&page=21&filter='No.'%20IS%20'C7'"
    assert h.bc.rows("customers")[bc_id]["displayName"] == "Adatum"  # BC untouched


def test_an_unknown_number_is_refused_in_the_status_column_once() -> None:
    h = Harness(MAPPINGS)
    dv_id = _account(h, bcs_bcnumber="NOPE")

    first = h.sync("dv", dv_id)
    assert first.outcome == Outcome.FAILED and "no BC customers has number 'NOPE'" in first.error
    assert h.dv.rows("accounts")[dv_id]["bcs_bccouplingstatus"] == first.error
    assert h.requests() == {"GET customers": 1, "GET accounts": 1, "PATCH accounts": 1}
    h.sync("dv", dv_id)
    assert h.requests() == {"GET customers": 1, "GET accounts": 1}  # the same refusal: not written again
    assert not h.bc.rows("customers")  # nothing created in BC


def test_a_number_coupled_elsewhere_is_refused_and_correcting_it_clears_the_status() -> None:
    h = Harness(MAPPINGS)
    h.bc.seed(CUSTOMER, {"number": "C1", "displayName": "Adatum"})
    other = h.bc.seed(CUSTOMER, {"number": "C2", "displayName": "Trey"})["id"]
    first = _account(h, bcs_bcnumber="C1")
    assert h.sync("dv", first).outcome == Outcome.MODIFIED
    twin = _account(h, name="Twin", bcs_bcnumber="C1")

    refused = h.sync("dv", twin)
    assert (
        refused.outcome == Outcome.FAILED and f"already coupled to Dataverse account {first}" in refused.error
    )
    assert h.dv.rows("accounts")[twin]["bcs_bccouplingstatus"] == refused.error

    h.dv.rows("accounts")[twin]["bcs_bcnumber"] = "C2"
    fixed = h.sync("dv", twin)
    assert fixed.outcome == Outcome.MODIFIED and h.couplings.get("CUSTOMER", "bc", other) is not None
    assert h.dv.rows("accounts")[twin]["bcs_bccouplingstatus"] is None


def test_clearing_the_number_uncouples_and_removes_the_link() -> None:
    h = Harness(MAPPINGS)
    bc_id = h.bc.seed(CUSTOMER, {"number": "C1", "displayName": "Adatum"})["id"]
    dv_id = _account(h, bcs_bcnumber="C1")
    h.sync("dv", dv_id)
    assert h.dv.rows("accounts")[dv_id]["bcs_bcurl"]

    h.dv.rows("accounts")[dv_id]["bcs_bcnumber"] = None
    result = h.sync("dv", dv_id)

    assert result.outcome == Outcome.UNCOUPLED and "its number was cleared" in result.reason
    assert h.couplings.get("CUSTOMER", "bc", bc_id) is None
    assert h.dv.rows("accounts")[dv_id]["bcs_bcurl"] is None
    assert bc_id in h.bc.rows("customers")


def test_routine_syncs_write_no_status() -> None:
    h = Harness(MAPPINGS)
    bc_id = h.bc.seed(CUSTOMER, {"number": "C1", "displayName": "Adatum", "city": "Atlanta"})["id"]
    h.sync("bc", bc_id)
    h.bc.rows("customers")[bc_id]["city"] = "Savannah"
    h.sync("bc", bc_id)
    assert h.requests() == {"GET customers": 1, "PATCH accounts": 1}  # the change only, no status write
