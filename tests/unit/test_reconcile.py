"""reconcile: a table of cases on the default CUSTOMER mapping (and a few others), one behaviour each."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from shared.mapping import DEFAULT_MAPPING_FILE, StaticLookups, dataverse_id_for, load_mapping_set
from shared.mapping.schema import EntityMapping, FilterClause, MappingSet
from shared.mapping.values import COMPANY_CONTACT_KEY, lookup_space
from shared.sync.reconcile import (
    Candidate,
    Outcome,
    Plan,
    change_times,
    observe,
    presumed_record,
    reconcile,
    take_snapshot,
)

MS = load_mapping_set()
CUSTOMER = MS.entity("CUSTOMER")

BC_ID = "11111111-1111-1111-1111-111111111111"
DV_ID = "22222222-2222-2222-2222-222222222222"
USD, EUR = "a0000000-0000-0000-0000-0000000000d1", "a0000000-0000-0000-0000-0000000000e1"
JO_USER, PS_USER = "b0000000-0000-0000-0000-0000000000a1", "b0000000-0000-0000-0000-0000000000a2"
T30, TCOD, T1M = (f"c0000000-0000-0000-0000-00000000000{i}" for i in (1, 2, 3))
FOB, EXW = "d0000000-0000-0000-0000-000000000001", "d0000000-0000-0000-0000-000000000002"
ZERO = "00000000-0000-0000-0000-000000000000"
TEAM = "e0000000-0000-0000-0000-000000000001"


def lookups() -> StaticLookups:
    return (
        StaticLookups()
        .couple("CURRENCY", "USD", USD)
        .couple("CURRENCY", "EUR", EUR)
        .couple("SALESPEOPLE", "JO", JO_USER)
        .couple("SALESPEOPLE", "PS", PS_USER)
        .add_reference(
            "PAYMENT TERMS",
            [{"id": T30, "code": "30 DAYS"}, {"id": TCOD, "code": "COD"}, {"id": T1M, "code": "1M(8D)"}],
        )
        .add_reference("SHIPMENT METHOD", [{"id": FOB, "code": "FOB"}, {"id": EXW, "code": "EXW"}])
    )


def bc_customer(**changes: Any) -> dict[str, Any]:
    record = {
        "id": BC_ID,
        "number": "C0001",
        "displayName": "Adatum",
        "addressLine1": "1 Main St",
        "addressLine2": "",
        "postalCode": "30301",
        "city": "Atlanta",
        "country": "US",
        "state": "GA",
        "email": "ann@adatum.example",
        "website": "",
        "phoneNumber": "",
        "currencyCode": "",
        "paymentTermsId": T30,
        "shipmentMethodId": ZERO,
        "creditLimit": 1000,
        "salespersonCode": "JO",
        "blocked": " ",
        "lastModifiedDateTime": "2024-05-01T10:00:00Z",
        "@odata.etag": 'W/"JzE7Jw=="',
    }
    record.update(changes)
    return record


def dv_account(**changes: Any) -> dict[str, Any]:
    record = {
        "accountid": DV_ID,
        "accountnumber": "C0001",
        "name": "Adatum",
        "address1_line1": "1 Main St",
        "address1_line2": None,
        "address1_postalcode": "30301",
        "address1_city": "Atlanta",
        "address1_country": "US",
        "address1_stateorprovince": "GA",
        "emailaddress1": "ann@adatum.example",
        "websiteurl": None,
        "telephone1": None,
        "_transactioncurrencyid_value": USD,
        "paymenttermscode": 1,
        "address1_freighttermscode": None,
        "creditlimit": 1000.0,
        "customertypecode": 3,
        "bcs_bcnumber": "C0001",
        "bcs_bcurl": None,
        "statecode": 0,
        "_ownerid_value": JO_USER,
        "modifiedon": "2024-05-01T10:00:00Z",
        "@odata.etag": 'W/"100"',
    }
    record.update(changes)
    return record


BASE = take_snapshot(MS, CUSTOMER, bc_customer(), dv_account())


def run(
    bc: dict[str, Any] | None,
    dv: dict[str, Any] | None,
    *,
    mapping: EntityMapping = CUSTOMER,
    ms: MappingSet = MS,
    snapshot: Any = BASE,
    lookup: StaticLookups | None = None,
    candidates: tuple[Candidate, ...] = (),
) -> Plan:
    return reconcile(
        ms, mapping, snapshot=snapshot, bc=bc, dv=dv, lookups=lookup or lookups(), candidates=candidates
    )


def with_policy(mapping: EntityMapping, **changes: Any) -> EntityMapping:
    return mapping.model_copy(update=changes)


def with_field(mapping: EntityMapping, key: str, **changes: Any) -> EntityMapping:
    fields = [f.model_copy(update=changes) if f.key == key else f for f in mapping.fields]
    return mapping.model_copy(update={"fields": fields})


# -- coupled, both present ---------------------------------------------------------------------------


def test_nothing_changed_is_unchanged_with_no_writes() -> None:
    plan = run(bc_customer(), dv_account())
    assert plan.outcome is Outcome.UNCHANGED
    assert plan.writes == ()
    assert plan.snapshot == BASE


def test_formatting_noise_is_not_a_change() -> None:
    # BC empty string vs Dataverse null, int vs float, upper-case GUIDs.
    plan = run(bc_customer(creditLimit=1000.0), dv_account(_ownerid_value=JO_USER.upper(), creditlimit=1000))
    assert plan.outcome is Outcome.UNCHANGED


def test_bc_change_reaches_dataverse_and_only_that_field_is_written() -> None:
    plan = run(bc_customer(displayName="Adatum Corp"), dv_account())
    assert plan.outcome is Outcome.MODIFIED
    assert plan.bc_write is None
    assert plan.dv_write is not None
    assert plan.dv_write.kind == "update"
    assert plan.dv_write.record_id == DV_ID
    assert plan.dv_write.body == {"name": "Adatum Corp"}
    assert plan.snapshot is not None
    assert plan.snapshot["bc"]["displayName"] == plan.snapshot["dv"]["displayName"] == "Adatum Corp"
    assert [(c.key, c.direction, c.old, c.new) for c in plan.changes] == [
        ("displayName", "to_dataverse", "Adatum", "Adatum Corp")
    ]


def test_dataverse_change_reaches_bc() -> None:
    plan = run(bc_customer(), dv_account(address1_city="Savannah"))
    assert plan.outcome is Outcome.MODIFIED
    assert plan.dv_write is None
    assert plan.bc_write is not None
    assert plan.bc_write.body == {"city": "Savannah"}
    assert plan.bc_write.record_id == BC_ID


def test_both_changed_to_the_same_value_writes_nothing_and_moves_the_base() -> None:
    plan = run(bc_customer(city="Macon"), dv_account(address1_city="Macon"))
    assert plan.outcome is Outcome.UNCHANGED
    assert plan.writes == ()
    assert plan.snapshot is not None
    assert plan.snapshot["bc"]["city"] == plan.snapshot["dv"]["city"] == "Macon"


def test_conflict_under_none_names_both_values_and_still_writes_other_fields() -> None:
    plan = run(bc_customer(city="Macon", email="new@adatum.example"), dv_account(address1_city="Athens"))
    assert plan.outcome is Outcome.CONFLICT
    assert plan.error is not None
    assert "'Macon'" in plan.error and "'Athens'" in plan.error and "city" in plan.error
    assert [c.key for c in plan.conflicts] == ["city"]
    assert plan.dv_write is not None
    assert plan.dv_write.body == {"emailaddress1": "new@adatum.example"}
    assert plan.bc_write is None
    # The conflicting field keeps its old base, so it stays a conflict until someone resolves it.
    assert plan.snapshot is not None
    assert plan.snapshot["bc"]["city"] == plan.snapshot["dv"]["city"] == "Atlanta"
    again = run(
        bc_customer(city="Macon", email="new@adatum.example"),
        dv_account(address1_city="Athens", emailaddress1="new@adatum.example"),
        snapshot=plan.snapshot,
    )
    assert again.outcome is Outcome.CONFLICT
    assert again.writes == ()


@pytest.mark.parametrize(
    ("policy", "bc_stamp", "dv_stamp", "side", "body"),
    [
        ("bc_wins", "2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z", "dv", {"address1_city": "Macon"}),
        ("dataverse_wins", "2024-05-03T00:00:00Z", "2024-05-02T00:00:00Z", "bc", {"city": "Athens"}),
        ("newest_wins", "2024-05-03T00:00:00Z", "2024-05-02T00:00:00Z", "dv", {"address1_city": "Macon"}),
        ("newest_wins", "2024-05-02T00:00:00Z", "2024-05-03T00:00:00.5Z", "bc", {"city": "Athens"}),
        ("newest_wins", "2024-05-02T00:00:00Z", "2024-05-02T00:00:00Z", "dv", {"address1_city": "Macon"}),
    ],
)
def test_conflict_policies(
    policy: str, bc_stamp: str, dv_stamp: str, side: str, body: dict[str, str]
) -> None:
    plan = run(
        bc_customer(city="Macon", lastModifiedDateTime=bc_stamp),
        dv_account(address1_city="Athens", modifiedon=dv_stamp),
        mapping=with_policy(CUSTOMER, conflict=policy),
    )
    assert plan.outcome is Outcome.MODIFIED
    written = plan.dv_write if side == "dv" else plan.bc_write
    assert written is not None and written.body == body
    assert (plan.bc_write if side == "dv" else plan.dv_write) is None
    assert plan.snapshot is not None
    value = body.popitem()[1]
    assert plan.snapshot["bc"]["city"] == plan.snapshot["dv"]["city"] == value


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_newest_wins_decides_per_field_from_when_each_value_was_first_seen() -> None:
    """Issue 12: BC's address edit (10:00) is older than Sales' (10:05); a later BC phone edit (10:10)
    made the whole BC record newer, and BC's older address won. Per field, Sales' address wins and the
    BC phone still flows to Sales."""
    mapping = with_policy(CUSTOMER, conflict="newest_wins")
    seen = observe(MS, mapping, None, "bc", bc_customer(), _at("2024-05-01T10:00:00Z"))
    seen = observe(MS, mapping, seen, "dv", dv_account(), _at("2024-05-01T10:00:00Z"))
    # The service reads BC right after the address edit (the sync then fails or is held up) ...
    edited = bc_customer(city="Macon", lastModifiedDateTime="2024-05-02T10:00:00Z")
    seen = observe(MS, mapping, seen, "bc", edited, _at("2024-05-02T10:00:02Z"))
    # ... Sales edits the address, BC the phone, and the pair is synchronized after both.
    bc = bc_customer(city="Macon", phoneNumber="555-0199", lastModifiedDateTime="2024-05-02T10:10:00Z")
    dv = dv_account(address1_city="Athens", modifiedon="2024-05-02T10:05:00Z")
    seen = observe(MS, mapping, seen, "bc", bc, _at("2024-05-02T10:10:01Z"))
    seen = observe(MS, mapping, seen, "dv", dv, _at("2024-05-02T10:10:01Z"))
    times = change_times(seen)
    assert times["bc"]["city"] == _at("2024-05-02T10:00:00Z")  # the record's time when first seen
    assert times["bc"]["phoneNumber"] == _at("2024-05-02T10:10:00Z")
    assert times["dv"]["city"] == _at("2024-05-02T10:05:00Z")

    plan = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=dv, lookups=lookups(), changed_at=times)
    assert plan.outcome is Outcome.MODIFIED
    assert plan.bc_write is not None and plan.bc_write.body == {"city": "Athens"}
    assert plan.dv_write is not None and plan.dv_write.body == {"telephone1": "555-0199"}
    [decided] = plan.resolved
    assert (decided.key, decided.bc_value, decided.dv_value) == ("city", "Macon", "Athens")
    assert decided.winner == "dv"
    assert "Dataverse is newer" in decided.why and "2024-05-02T10:05:00.000Z" in decided.why

    # Whole-record modified times (no per-field times) would let BC's older address win.
    whole = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=dv, lookups=lookups())
    assert whole.dv_write is not None and whole.dv_write.body["address1_city"] == "Macon"


def test_newest_wins_per_field_tie_goes_to_bc_and_a_missing_time_falls_back_to_the_record() -> None:
    mapping = with_policy(CUSTOMER, conflict="newest_wins")
    bc = bc_customer(city="Macon", lastModifiedDateTime="2024-05-02T00:00:00Z")
    dv = dv_account(address1_city="Athens", modifiedon="2024-05-03T00:00:00Z")
    same_time = {"bc": {"city": _at("2024-05-02T12:00:00Z")}, "dv": {"city": _at("2024-05-02T12:00:00Z")}}
    plan = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=dv, lookups=lookups(), changed_at=same_time)
    assert plan.dv_write is not None and plan.dv_write.body == {"address1_city": "Macon"}
    assert "a tie goes to BC" in plan.resolved[0].why
    # BC's first-seen time (later) against Dataverse's modifiedon (no time kept for it).
    only_bc = {"bc": {"city": _at("2024-05-03T00:00:01Z")}}
    plan = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=dv, lookups=lookups(), changed_at=only_bc)
    assert plan.dv_write is not None and plan.dv_write.body == {"address1_city": "Macon"}
    assert "Dataverse modifiedon" in plan.resolved[0].why and "BC first seen" in plan.resolved[0].why


def test_observe_keeps_the_first_time_a_value_was_seen() -> None:
    seen = observe(MS, CUSTOMER, None, "bc", bc_customer(), _at("2024-05-01T11:00:00Z"))
    # modifiedDateTime 10:00 is earlier than the read: the value is at least that old.
    assert change_times(seen)["bc"]["city"] == _at("2024-05-01T10:00:00Z")
    later = observe(
        MS, CUSTOMER, seen, "bc", bc_customer(phoneNumber="1", lastModifiedDateTime="2024-05-04T00:00:00Z"),
        _at("2024-05-04T00:00:05Z"),
    )  # fmt: skip
    times = change_times(later)["bc"]
    assert times["city"] == _at("2024-05-01T10:00:00Z")  # same value: its time is kept
    assert times["phoneNumber"] == _at("2024-05-04T00:00:00Z")
    assert "dv" not in later and seen["bc"]["phoneNumber"] != later["bc"]["phoneNumber"]  # no mutation
    # A record without a parseable modified time is dated at the read.
    undated = observe(MS, CUSTOMER, None, "dv", dv_account(modifiedon=None), _at("2024-05-05T00:00:00Z"))
    assert change_times(undated)["dv"]["city"] == _at("2024-05-05T00:00:00Z")


def test_a_resolved_conflict_keeps_both_values_and_the_winner() -> None:
    plan = run(bc_customer(city="Macon"), dv_account(address1_city="Athens"),
               mapping=with_policy(CUSTOMER, conflict="bc_wins"))  # fmt: skip
    assert plan.outcome is Outcome.MODIFIED and plan.conflicts == ()
    [c] = plan.resolved
    assert (c.key, c.bc_value, c.dv_value, c.policy, c.winner, c.why) == (
        "city", "Macon", "Athens", "bc_wins", "bc", "bc_wins",
    )  # fmt: skip
    unresolved = run(bc_customer(city="Macon"), dv_account(address1_city="Athens"))
    assert unresolved.resolved == () and unresolved.conflicts[0].winner is None


def test_field_conflict_policy_overrides_the_mapping() -> None:
    mapping = with_field(CUSTOMER, "city", conflict="dataverse_wins")  # mapping policy stays `none`
    plan = run(
        bc_customer(city="Macon", displayName="B"),
        dv_account(address1_city="Athens", name="D"),
        mapping=mapping,
    )
    assert plan.outcome is Outcome.CONFLICT
    assert [c.key for c in plan.conflicts] == ["displayName"]
    assert plan.bc_write is not None and plan.bc_write.body == {"city": "Athens"}


def test_one_way_field_never_flows_against_its_direction_and_is_restored() -> None:
    # creditLimit -> creditlimit is to_dataverse: a Dataverse edit does not reach BC and is put back.
    plan = run(bc_customer(), dv_account(creditlimit=99999))
    assert plan.bc_write is None
    assert plan.dv_write is not None and plan.dv_write.body == {"creditlimit": 1000}
    assert plan.changes[0].reason.startswith("one-way field edited in Dataverse")


def test_one_way_field_flows_in_its_direction_even_when_both_changed() -> None:
    plan = run(bc_customer(creditLimit=5000), dv_account(creditlimit=7000))
    assert plan.outcome is Outcome.MODIFIED
    assert plan.dv_write is not None and plan.dv_write.body == {"creditlimit": 5000}


def test_to_bc_mapping_restores_bc_from_dataverse() -> None:
    salespeople = MS.entity("SALESPEOPLE")
    bc = {
        "id": BC_ID,
        "code": "JO",
        "email": "jo@x.example",
        "displayName": "Jim",
        "phoneNo": "",
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
    }
    dv = {
        "systemuserid": JO_USER,
        "internalemailaddress": "jo@x.example",
        "fullname": "Jim",
        "mobilephone": None,
        "isdisabled": False,
        "islicensed": True,
        "isintegrationuser": False,
        "modifiedon": "2024-01-01T00:00:00Z",
    }
    base = take_snapshot(MS, salespeople, bc, dv)
    edited_in_bc = run({**bc, "email": "other@x.example"}, dv, mapping=salespeople, snapshot=base)
    assert edited_in_bc.dv_write is None
    assert edited_in_bc.bc_write is not None and edited_in_bc.bc_write.body == {"email": "jo@x.example"}
    edited_in_dv = run(bc, {**dv, "fullname": "Jim Olive"}, mapping=salespeople, snapshot=base)
    assert edited_in_dv.bc_write is not None and edited_in_dv.bc_write.body == {"displayName": "Jim Olive"}


def test_text_is_trimmed_and_clamped_to_the_target_length() -> None:
    plan = run(bc_customer(), dv_account(address1_city="  " + "X" * 40 + "  "))
    assert plan.bc_write is not None
    assert plan.bc_write.body == {"city": "X" * 30}  # BC City is Text[30]


def test_field_added_to_the_mapping_after_the_last_sync_is_merged() -> None:
    old = {side: {k: v for k, v in values.items() if k != "website"} for side, values in BASE.items()}
    plan = run(bc_customer(website="adatum.example"), dv_account(), snapshot=old)
    assert plan.dv_write is not None and plan.dv_write.body == {"websiteurl": "adatum.example"}


# -- lookups and option sets ------------------------------------------------------------------------------


def test_currency_lookup_binds_the_coupled_transactioncurrency() -> None:
    plan = run(bc_customer(currencyCode="EUR"), dv_account())
    assert plan.dv_write is not None
    assert plan.dv_write.body == {"transactioncurrencyid@odata.bind": f"/transactioncurrencies({EUR})"}
    assert plan.snapshot is not None and plan.snapshot["dv"]["currencyCode"] == EUR


def test_local_currency_is_blank_in_bc_both_ways() -> None:
    to_bc = run(
        bc_customer(currencyCode="EUR"),
        dv_account(_transactioncurrencyid_value=EUR),
        snapshot=take_snapshot(
            MS, CUSTOMER, bc_customer(currencyCode="EUR"), dv_account(_transactioncurrencyid_value=EUR)
        ),
    )
    assert to_bc.outcome is Outcome.UNCHANGED
    base = take_snapshot(
        MS, CUSTOMER, bc_customer(currencyCode="EUR"), dv_account(_transactioncurrencyid_value=EUR)
    )
    plan = run(bc_customer(currencyCode="EUR"), dv_account(_transactioncurrencyid_value=USD), snapshot=base)
    assert plan.bc_write is not None and plan.bc_write.body == {"currencyCode": ""}


def test_dataverse_lookup_change_reaches_bc_as_the_key() -> None:
    plan = run(bc_customer(), dv_account(_ownerid_value=PS_USER))
    # owner is one-way (BC salesperson -> owner): the Dataverse reassignment is put back.
    assert plan.dv_write is not None and plan.dv_write.body == {
        "ownerid@odata.bind": f"/systemusers({JO_USER})"
    }
    plan = run(bc_customer(), dv_account(_transactioncurrencyid_value=EUR))
    assert plan.bc_write is not None and plan.bc_write.body == {"currencyCode": "EUR"}


def test_salesperson_change_sets_the_owner() -> None:
    plan = run(bc_customer(salespersonCode="PS"), dv_account())
    assert plan.dv_write is not None and plan.dv_write.body == {
        "ownerid@odata.bind": f"/systemusers({PS_USER})"
    }


def test_not_null_never_writes_an_empty_owner() -> None:
    plan = run(bc_customer(salespersonCode=""), dv_account())
    assert plan.outcome is Outcome.UNCHANGED
    assert plan.writes == ()


def test_option_set_through_bc_code_table() -> None:
    plan = run(bc_customer(paymentTermsId=T1M), dv_account())
    assert plan.dv_write is not None and plan.dv_write.body == {"paymenttermscode": 2}
    back = run(bc_customer(), dv_account(paymenttermscode=2))
    assert back.bc_write is not None and back.bc_write.body == {"paymentTermsId": T1M}


def test_clearing_an_option_set_in_bc_clears_it_in_dataverse() -> None:
    plan = run(bc_customer(paymentTermsId=ZERO), dv_account())
    assert plan.dv_write is not None and plan.dv_write.body == {"paymenttermscode": None}
    back = run(bc_customer(), dv_account(paymenttermscode=None))
    assert back.bc_write is not None and back.bc_write.body == {"paymentTermsId": ZERO}


def test_unmapped_bc_option_value_fails_closed_naming_the_code() -> None:
    plan = run(bc_customer(paymentTermsId=TCOD, city="Macon"), dv_account())
    assert plan.outcome is Outcome.FAILED
    assert plan.writes == ()
    assert plan.error is not None and "'COD'" in plan.error and "PAYMENT TERMS" in plan.error
    assert plan.snapshot == BASE


def test_unmapped_dataverse_option_value_fails_closed_naming_the_value() -> None:
    plan = run(bc_customer(), dv_account(paymenttermscode=4))
    assert plan.outcome is Outcome.FAILED
    assert plan.error is not None and "option 4" in plan.error


def test_shipment_method_code_without_bc_record_fails() -> None:
    plan = run(bc_customer(shipmentMethodId="d0000000-0000-0000-0000-00000000ffff"), dv_account())
    assert plan.outcome is Outcome.FAILED
    assert plan.error is not None and "shipmentMethods" in plan.error


def test_missing_resolvable_lookup_defers_and_names_the_dependency() -> None:
    plan = run(bc_customer(currencyCode="GBP", city="Macon"), dv_account())
    assert plan.outcome is Outcome.DEFERRED
    assert plan.writes == ()
    assert [(m.mapping, m.side, m.key_field, m.value, m.field) for m in plan.missing] == [
        ("CURRENCY", "bc", "code", "GBP", "currencyCode")
    ]
    assert plan.snapshot == BASE
    # What the record will fail with when its waits are used up: the lookup's own message.
    assert plan.error is not None and "BC currencies code 'GBP' is not coupled" in plan.error
    assert "sync CURRENCY first" in plan.error


def test_missing_lookup_cleared_when_configured() -> None:
    mapping = with_field(CUSTOMER, "currencyCode", clear_on_failed_lookup=True)
    plan = run(bc_customer(currencyCode="GBP"), dv_account(), mapping=mapping)
    assert plan.outcome is Outcome.MODIFIED
    assert plan.dv_write is not None and plan.dv_write.body == {"transactioncurrencyid@odata.bind": None}
    assert "cleared" in plan.changes[0].reason


def test_missing_lookup_that_syncing_cannot_resolve_fails_with_the_coupling_named() -> None:
    # CURRENCY is to_dataverse: an uncoupled Dataverse currency can never become a BC code by syncing.
    stray = "f0000000-0000-0000-0000-000000000001"
    plan = run(bc_customer(), dv_account(_transactioncurrencyid_value=stray))
    assert plan.outcome is Outcome.FAILED
    assert plan.missing == ()
    assert plan.error is not None and stray in plan.error and "not coupled" in plan.error


def test_uncoupled_salesperson_fails_with_the_ownership_advice() -> None:
    plan = run(bc_customer(salespersonCode="OF"), dv_account())
    assert plan.outcome is Outcome.FAILED
    assert plan.error == (
        "salesperson 'OF' is not coupled to a Dataverse user; couple salespeople or switch to team ownership"
    )


# -- deletions ----------------------------------------------------------------------------------------------


def test_deleted_bc_record_under_policy_none_fails_with_advice() -> None:
    plan = run(None, dv_account())
    assert plan.outcome is Outcome.FAILED
    assert plan.error is not None and DV_ID in plan.error and "deletion" in plan.error
    assert plan.writes == () and not plan.uncouple


def test_deleted_record_remove_coupling() -> None:
    plan = run(bc_customer(), None, mapping=with_policy(CUSTOMER, deletion="remove_coupling"))
    assert plan.outcome is Outcome.UNCOUPLED
    assert plan.uncouple and plan.writes == ()


@pytest.mark.parametrize(("gone", "kept_id"), [("bc", DV_ID), ("dv", BC_ID)])
def test_deleted_record_propagates(gone: str, kept_id: str) -> None:
    mapping = with_policy(CUSTOMER, deletion="propagate")
    plan = run(
        None if gone == "bc" else bc_customer(), None if gone == "dv" else dv_account(), mapping=mapping
    )
    assert plan.outcome is Outcome.DELETED
    assert plan.uncouple
    (write,) = plan.writes
    assert (write.kind, write.record_id) == ("delete", kept_id)
    assert (plan.dv_write if gone == "bc" else plan.bc_write) is write


def test_propagate_does_not_delete_against_the_mapping_direction() -> None:
    currency = with_policy(MS.entity("CURRENCY"), deletion="propagate")
    bc = {
        "id": BC_ID,
        "code": "EUR",
        "symbol": "€",
        "displayName": "Euro",
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
    }
    plan = reconcile(MS, currency, snapshot={"bc": {}, "dv": {}}, bc=bc, dv=None, lookups=lookups())
    assert plan.outcome is Outcome.UNCOUPLED
    assert plan.writes == ()


def test_restore_recreates_a_deleted_dataverse_record_with_its_deterministic_id() -> None:
    plan = run(bc_customer(), None, mapping=with_policy(CUSTOMER, deletion="restore"))
    assert plan.outcome is Outcome.RESTORED
    assert plan.uncouple
    assert plan.dv_write is not None and plan.dv_write.kind == "create"
    new_id = dataverse_id_for("CUSTOMER", BC_ID)
    assert plan.dv_write.record_id == new_id
    assert plan.couple_with == ("dv", new_id)
    assert plan.dv_write.body["accountid"] == new_id
    assert plan.dv_write.body["name"] == "Adatum"


def test_restore_recreates_a_deleted_bc_record() -> None:
    plan = run(None, dv_account(), mapping=with_policy(CUSTOMER, deletion="restore"))
    assert plan.outcome is Outcome.RESTORED
    assert plan.bc_write is not None and plan.bc_write.kind == "create"
    assert plan.bc_write.body["displayName"] == "Adatum"
    assert "number" not in plan.bc_write.body  # number is to_dataverse only: BC assigns it
    assert plan.couple_with is None


def test_restore_against_the_mapping_direction_fails() -> None:
    currency = with_policy(MS.entity("CURRENCY"), deletion="restore")
    dv = {
        "transactioncurrencyid": EUR,
        "isocurrencycode": "EUR",
        "currencysymbol": "€",
        "currencyname": "Euro",
        "modifiedon": "2024-01-01T00:00:00Z",
    }
    plan = reconcile(MS, currency, snapshot={"bc": {}, "dv": {}}, bc=None, dv=dv, lookups=lookups())
    assert plan.outcome is Outcome.FAILED
    assert plan.error is not None and "restore" in plan.error


def test_deleted_on_both_sides_uncouples() -> None:
    plan = run(None, None)
    assert plan.outcome is Outcome.UNCOUPLED and plan.uncouple


# -- uncoupled records ---------------------------------------------------------------------------------------


def test_uncoupled_without_match_creates_in_dataverse() -> None:
    plan = run(bc_customer(), None, snapshot=None)
    assert plan.outcome is Outcome.INSERTED
    assert plan.dv_write is not None and plan.dv_write.kind == "create"
    new_id = dataverse_id_for("CUSTOMER", BC_ID)
    body = plan.dv_write.body
    assert body["accountid"] == new_id
    assert body["customertypecode"] == 3
    assert body["transactioncurrencyid@odata.bind"] == f"/transactioncurrencies({USD})"
    assert body["ownerid@odata.bind"] == f"/systemusers({JO_USER})"
    assert body["paymenttermscode"] == 1
    assert "address1_line2" not in body  # empty values are not sent on create
    assert plan.couple_with == ("dv", new_id)


def test_uncoupled_create_under_team_ownership_sets_the_team() -> None:
    data = yaml.safe_load(DEFAULT_MAPPING_FILE.read_text(encoding="utf-8"))
    data["settings"]["ownership"] = {"model": "team", "team_id": TEAM}
    team_ms = MappingSet.model_validate(data)
    customer = team_ms.entity("CUSTOMER")
    assert "owner" not in [f.key for f in customer.fields]
    assert "SALESPEOPLE" not in team_ms.sync_order()
    plan = run(bc_customer(salespersonCode="OF"), None, ms=team_ms, mapping=customer, snapshot=None)
    assert plan.outcome is Outcome.INSERTED
    assert plan.dv_write is not None
    assert plan.dv_write.body["ownerid@odata.bind"] == f"/teams({TEAM})"


def test_uncoupled_dataverse_record_creates_in_bc_without_an_id() -> None:
    plan = run(None, dv_account(), snapshot=None)
    assert plan.outcome is Outcome.INSERTED
    assert plan.bc_write is not None and plan.bc_write.kind == "create"
    assert plan.bc_write.record_id is None
    assert plan.bc_write.body["displayName"] == "Adatum"
    assert "currencyCode" not in plan.bc_write.body  # the local currency is BC's default, blank
    assert "creditLimit" not in plan.bc_write.body
    assert plan.couple_with is None


def test_uncoupled_with_one_match_couples_and_writes_only_differences() -> None:
    other = dv_account(accountid="33333333-3333-3333-3333-333333333333", address1_city="Old City")
    plan = run(bc_customer(), None, snapshot=None, candidates=(Candidate(other),))
    assert plan.outcome is Outcome.COUPLED
    assert plan.couple_with == ("dv", "33333333-3333-3333-3333-333333333333")
    assert plan.dv_write is not None and plan.dv_write.body == {"address1_city": "Atlanta"}
    assert plan.dv_write.record_id == "33333333-3333-3333-3333-333333333333"


def test_match_ignores_case_and_already_coupled_candidates_and_out_of_scope_ones() -> None:
    coupled = Candidate(dv_account(accountid="44444444-4444-4444-4444-444444444444"), already_coupled=True)
    vendor = Candidate(dv_account(accountid="55555555-5555-5555-5555-555555555555", customertypecode=11))
    match = Candidate(
        dv_account(accountid="66666666-6666-6666-6666-666666666666", accountnumber=None, name="ADATUM")
    )
    plan = run(bc_customer(), None, snapshot=None, candidates=(coupled, vendor, match))
    assert plan.outcome is Outcome.COUPLED
    assert plan.couple_with == ("dv", "66666666-6666-6666-6666-666666666666")


def test_lower_match_priority_wins() -> None:
    by_name = Candidate(dv_account(accountid="77777777-7777-7777-7777-777777777777", accountnumber=None))
    by_number = Candidate(dv_account(accountid="88888888-8888-8888-8888-888888888888", name="Other"))
    plan = run(bc_customer(), None, snapshot=None, candidates=(by_name, by_number))
    assert plan.couple_with == ("dv", "88888888-8888-8888-8888-888888888888")


def test_several_matches_fail_naming_them() -> None:
    a = Candidate(dv_account(accountid="77777777-7777-7777-7777-777777777777"))
    b = Candidate(dv_account(accountid="88888888-8888-8888-8888-888888888888"))
    plan = run(bc_customer(), None, snapshot=None, candidates=(a, b))
    assert plan.outcome is Outcome.FAILED
    assert plan.error is not None
    assert (
        "77777777-7777-7777-7777-777777777777" in plan.error
        and "88888888-8888-8888-8888-888888888888" in plan.error
    )
    assert plan.writes == () and plan.couple_with is None


def test_only_coupled_mapping_skips_unmatched_records_with_a_reason() -> None:
    plan = run(bc_customer(), None, snapshot=None, mapping=with_policy(CUSTOMER, only_coupled=True))
    assert plan.outcome is Outcome.SKIPPED
    assert "only_coupled" in plan.reason
    assert plan.writes == ()


def test_one_way_mapping_does_not_create_against_its_direction() -> None:
    dv = {
        "transactioncurrencyid": EUR,
        "isocurrencycode": "EUR",
        "currencysymbol": "€",
        "currencyname": "Euro",
        "modifiedon": "2024-01-01T00:00:00Z",
    }
    plan = reconcile(MS, MS.entity("CURRENCY"), snapshot=None, bc=None, dv=dv, lookups=lookups())
    assert plan.outcome is Outcome.SKIPPED
    assert "to_dataverse" in plan.reason


def test_out_of_scope_record_is_skipped() -> None:
    assert run(bc_customer(blocked="All"), None, snapshot=None).outcome is Outcome.SKIPPED
    coupled = run(bc_customer(blocked="All", city="Macon"), dv_account())
    assert coupled.outcome is Outcome.SKIPPED and coupled.writes == ()


def test_uncoupled_create_with_unmapped_option_fails() -> None:
    plan = run(bc_customer(paymentTermsId=TCOD), None, snapshot=None)
    assert plan.outcome is Outcome.FAILED
    assert plan.error is not None and "'COD'" in plan.error


def test_uncoupled_create_with_missing_dependency_defers() -> None:
    plan = run(bc_customer(currencyCode="GBP"), None, snapshot=None)
    assert plan.outcome is Outcome.DEFERRED
    assert [m.value for m in plan.missing] == ["GBP"]


def test_currency_creates_with_create_only_defaults_and_matches_on_iso_code() -> None:
    currency = MS.entity("CURRENCY")
    bc = {
        "id": BC_ID,
        "code": "EUR",
        "symbol": "€",
        "displayName": "Euro",
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
    }
    plan = reconcile(MS, currency, snapshot=None, bc=bc, dv=None, lookups=lookups())
    assert plan.dv_write is not None
    assert plan.dv_write.body == {
        "transactioncurrencyid": dataverse_id_for("CURRENCY", BC_ID),
        "isocurrencycode": "EUR",
        "currencysymbol": "€",
        "currencyname": "Euro",
        "exchangerate": 1,
        "currencyprecision": 2,
    }
    assert plan.snapshot is not None and "exchangerate" not in plan.snapshot["dv"]
    existing = {
        "transactioncurrencyid": EUR,
        "isocurrencycode": "eur",
        "currencysymbol": "€",
        "currencyname": "Euro",
        "modifiedon": "2024-01-01T00:00:00Z",
    }
    matched = reconcile(
        MS, currency, snapshot=None, bc=bc, dv=None, lookups=lookups(), candidates=[Candidate(existing)]
    )
    assert matched.outcome is Outcome.COUPLED and matched.couple_with == ("dv", EUR)


def test_contact_company_binds_the_parent_account_and_names_split() -> None:
    contact = MS.entity("CONTACT")
    account = "99999999-9999-9999-9999-999999999999"
    bc = {
        "id": BC_ID,
        "number": "CT000002",
        "type": "Person",
        "displayName": "Ann Marie Smith",
        "companyNumber": "CT000001",  # the customer's company contact, not the customer number
        "email": "ann@adatum.example",
        "addressLine1": "",
        "addressLine2": "",
        "postalCode": "",
        "city": "",
        "country": "",
        "state": "",
        "phoneNumber": "",
        "mobilePhoneNumber": "",
        "website": "",
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
    }
    plan = reconcile(
        MS,
        contact,
        snapshot=None,
        bc=bc,
        dv=None,
        lookups=StaticLookups().couple(lookup_space("CUSTOMER", company_contact=True), "CT000001", account),
    )
    assert plan.dv_write is not None
    body = plan.dv_write.body
    assert body["parentcustomerid_account@odata.bind"] == f"/accounts({account})"
    assert (body["firstname"], body["lastname"]) == ("Ann Marie", "Smith")
    assert "type" not in body
    assert plan.snapshot is not None and plan.snapshot["dv"]["displayName"] == "Ann Marie Smith"
    # The customer's own coupling (by customer number) is not the company contact's.
    by_number = StaticLookups().couple("CUSTOMER", "CT000001", account)
    missing = reconcile(MS, contact, snapshot=None, bc=bc, dv=None, lookups=by_number)
    assert missing.outcome is Outcome.DEFERRED
    assert [(m.mapping, m.key_field, m.value) for m in missing.missing] == [
        ("CUSTOMER", COMPANY_CONTACT_KEY, "CT000001")
    ]


def test_a_dataverse_contact_gets_its_account_s_company_contact_number_in_bc() -> None:
    contact = MS.entity("CONTACT")
    account = "99999999-9999-9999-9999-999999999999"
    dv = {
        "contactid": DV_ID, "fullname": "Ann Smith", "firstname": "Ann", "lastname": "Smith",
        "emailaddress1": "ann@adatum.example", "_parentcustomerid_value": account, "statecode": 0,
        "address1_line1": None, "address1_line2": None, "address1_postalcode": None, "address1_city": None,
        "address1_country": None, "address1_stateorprovince": None, "telephone1": None, "mobilephone": None,
        "websiteurl": None, "modifiedon": "2024-01-01T00:00:00Z", "bcs_bcnumber": None, "bcs_bcurl": None,
    }  # fmt: skip
    lookups = StaticLookups().couple(lookup_space("CUSTOMER", company_contact=True), "CT000001", account)
    plan = reconcile(MS, contact, snapshot=None, bc=None, dv=dv, lookups=lookups)
    assert plan.bc_write is not None and plan.bc_write.kind == "create", plan
    assert plan.bc_write.body["companyNumber"] == "CT000001"
    assert plan.bc_write.body["type"] == "Person"


def test_inventory_is_never_negative_in_dataverse() -> None:
    item = MS.entity("ITEM-PRODUCT")
    bc = {
        "id": BC_ID,
        "number": "1000",
        "displayName": "Desk",
        "unitPrice": 10.005,
        "unitCost": 5,
        "inventory": -3,
        "baseUnitOfMeasureCode": "PCS",
        "blocked": False,
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
    }
    uom = "abababab-abab-abab-abab-abababababab"
    plan = reconcile(
        MS, item, snapshot=None, bc=bc, dv=None, lookups=StaticLookups().couple("UNIT OF MEASURE", "PCS", uom)
    )
    assert plan.dv_write is not None
    body = plan.dv_write.body
    assert body["quantityonhand"] == 0
    assert body["price"] == 10.01
    assert body["producttypecode"] == 1
    assert body["defaultuomscheduleid@odata.bind"] == f"/uomschedules({uom})"


def test_uncoupled_pair_with_both_records_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="Candidate"):
        run(bc_customer(), dv_account(), snapshot=None)


# ------------------------------------------------------------------ a record presumed from the snapshot
def _presume(mapping: EntityMapping, side: str, snapshot: dict[str, Any]) -> dict[str, Any] | None:
    return presumed_record(
        MS, mapping, side, snapshot, record_id=DV_ID if side == "dv" else BC_ID,  # type: ignore[arg-type]
        etag='W/"7"', modified="2024-05-01T10:00:00Z", key="C0001",
    )  # fmt: skip


def test_a_presumed_record_holds_the_snapshot_the_scope_and_the_stored_etag() -> None:
    presumed = _presume(CUSTOMER, "dv", BASE)
    assert presumed is not None
    assert take_snapshot(MS, CUSTOMER, None, presumed)["dv"] == BASE["dv"]
    stored = (presumed["accountid"], presumed["@odata.etag"], presumed["modifiedon"])
    assert stored == (DV_ID, 'W/"7"', "2024-05-01T10:00:00Z")
    assert presumed["statecode"] == 0  # the scope clause, which held at the last sync


def test_no_record_is_presumed_for_a_field_mapped_after_the_last_sync() -> None:
    older = {"bc": BASE["bc"], "dv": {k: v for k, v in BASE["dv"].items() if k != "phoneNumber"}}
    assert _presume(CUSTOMER, "dv", older) is None
    assert _presume(CUSTOMER, "bc", older) is not None  # BC's side of the snapshot is complete


def test_no_record_is_presumed_under_a_scope_clause_that_does_not_say_the_value() -> None:
    ranged = CUSTOMER.model_copy(
        update={
            "bc": CUSTOMER.bc.model_copy(
                update={"filter": [FilterClause(field="creditLimit", op="ge", value=0)]}
            )
        }
    )
    assert _presume(ranged, "bc", BASE) is None
    assert _presume(ranged, "dv", BASE) is not None
