"""Properties of reconcile on the default CUSTOMER mapping, over random edits on either side.

- Idempotent: applying a plan's writes and reconciling again with the plan's snapshot gives no writes.
- The expected snapshot is what the records read back as after the writes.
- A change on one side reaches the other side whenever the field's direction allows it.
- A record rebuilt from the snapshot (`presumed_record`) decides exactly as the unchanged record it
  stands in for, so the engine may write with the stored ETag instead of reading first.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.mapping import StaticLookups, load_mapping_set
from shared.mapping.schema import EntityMapping, FieldMapping
from shared.mapping.values import read, same, translate
from shared.sync.reconcile import Outcome, Write, presumed_record, reconcile, take_snapshot

MS = load_mapping_set()
CUSTOMER = MS.entity("CUSTOMER")

USD, EUR = "a0000000-0000-0000-0000-0000000000d1", "a0000000-0000-0000-0000-0000000000e1"
JO_USER, PS_USER = "b0000000-0000-0000-0000-0000000000a1", "b0000000-0000-0000-0000-0000000000a2"
T30, T1M = "c0000000-0000-0000-0000-000000000001", "c0000000-0000-0000-0000-000000000003"
FOB = "d0000000-0000-0000-0000-000000000001"
ZERO = "00000000-0000-0000-0000-000000000000"

LOOKUPS = (
    StaticLookups()
    .couple("CURRENCY", "USD", USD)
    .couple("CURRENCY", "EUR", EUR)
    .couple("SALESPEOPLE", "JO", JO_USER)
    .couple("SALESPEOPLE", "PS", PS_USER)
    .add_reference("PAYMENT TERMS", [{"id": T30, "code": "30 DAYS"}, {"id": T1M, "code": "1M(8D)"}])
    .add_reference("SHIPMENT METHOD", [{"id": FOB, "code": "FOB"}])
)

BC = {
    "id": "11111111-1111-1111-1111-111111111111", "number": "C0001", "displayName": "Adatum",
    "addressLine1": "1 Main St", "addressLine2": "", "postalCode": "30301", "city": "Atlanta",
    "country": "US", "state": "GA", "email": "ann@adatum.example", "website": "", "phoneNumber": "",
    "currencyCode": "", "paymentTermsId": T30, "shipmentMethodId": ZERO, "creditLimit": 1000,
    "salespersonCode": "JO", "blocked": " ",
    "lastModifiedDateTime": "2024-05-01T10:00:00Z",
}  # fmt: skip
DV = {
    "accountid": "22222222-2222-2222-2222-222222222222", "accountnumber": "C0001", "name": "Adatum",
    "address1_line1": "1 Main St", "address1_line2": None, "address1_postalcode": "30301",
    "address1_city": "Atlanta", "address1_country": "US", "address1_stateorprovince": "GA",
    "emailaddress1": "ann@adatum.example", "websiteurl": None, "telephone1": None,
    "_transactioncurrencyid_value": USD, "paymenttermscode": 1, "address1_freighttermscode": None,
    "creditlimit": 1000.0, "customertypecode": 3, "statecode": 0, "_ownerid_value": JO_USER,
    "modifiedon": "2024-05-01T10:00:00Z", "bcs_bcnumber": "C0001", "bcs_bcurl": None,
}  # fmt: skip
BASE = take_snapshot(MS, CUSTOMER, BC, DV)

TEXT_BC = st.sampled_from(["", "Alpha", "Beta", "  Gamma ", "x" * 40])
TEXT_DV = st.sampled_from([None, "Alpha", "Beta", "Delta", "y" * 300])
BC_VALUES: dict[str, Any] = {
    "number": st.sampled_from(["C0001", "C0002"]),
    "currencyCode": st.sampled_from(["", "EUR"]),
    "paymentTermsId": st.sampled_from([T30, T1M, ZERO]),
    "shipmentMethodId": st.sampled_from([ZERO, FOB]),
    "creditLimit": st.sampled_from([0, 1000, 2500.5, 3.14159]),
    "salespersonCode": st.sampled_from(["JO", "PS"]),
}
DV_VALUES: dict[str, Any] = {
    "accountnumber": st.sampled_from(["C0001", "C0009", None]),
    "_transactioncurrencyid_value": st.sampled_from([USD, EUR]),
    "paymenttermscode": st.sampled_from([1, 2, None]),
    "address1_freighttermscode": st.sampled_from([1, None]),
    "creditlimit": st.sampled_from([0, 1000.0, 7]),
    "_ownerid_value": st.sampled_from([JO_USER, PS_USER]),
}
TEXT_FIELDS = [f for f in CUSTOMER.fields if f.bc is not None and f.dv is not None and f.bc not in BC_VALUES]


def edits(side: str) -> st.SearchStrategy[dict[str, Any]]:
    choices: dict[str, Any] = {}
    for f in TEXT_FIELDS:
        choices[f.bc if side == "bc" else f.dv] = TEXT_BC if side == "bc" else TEXT_DV  # type: ignore[index]
    choices.update(BC_VALUES if side == "bc" else DV_VALUES)
    return st.fixed_dictionaries({}, optional=choices)


POLICIES = st.sampled_from(["none", "bc_wins", "dataverse_wins", "newest_wins"])
STAMPS = st.sampled_from(["2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"])


def apply(mapping: EntityMapping, side: str, record: dict[str, Any], write: Write | None) -> dict[str, Any]:
    """What the service stores after `write`: a minimal server for BC fields and Dataverse binds."""
    result = dict(record)
    if write is None:
        return result
    if side == "bc":
        result.update(write.body)
        return result
    for name, value in write.body.items():
        if name.endswith("@odata.bind"):
            nav = name.removesuffix("@odata.bind")
            f = next(f for f in mapping.fields if f.dv is not None and (f.dv_navigation or f.dv) == nav)
            result[f"_{f.dv}_value"] = None if value is None else value[value.index("(") + 1 : -1]
        else:
            result[name] = value
    return result


def converged(f: FieldMapping, bc: dict[str, Any], dv: dict[str, Any], target: str) -> bool:
    source = "bc" if target == "dv" else "dv"
    value = translate(MS, CUSTOMER, f, target, read(MS, f, source, bc if source == "bc" else dv), LOOKUPS)  # type: ignore[arg-type]
    return same(MS, f, target, value, read(MS, f, target, dv if target == "dv" else bc))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(bc_edit=edits("bc"), dv_edit=edits("dv"), policy=POLICIES, bc_stamp=STAMPS, dv_stamp=STAMPS)
def test_reconcile_is_idempotent(
    bc_edit: dict[str, Any], dv_edit: dict[str, Any], policy: str, bc_stamp: str, dv_stamp: str
) -> None:
    mapping = CUSTOMER.model_copy(update={"conflict": policy})
    bc = {**BC, **bc_edit, "lastModifiedDateTime": bc_stamp}
    dv = {**DV, **dv_edit, "modifiedon": dv_stamp}
    plan = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=dv, lookups=LOOKUPS)
    assert plan.outcome in (Outcome.UNCHANGED, Outcome.MODIFIED, Outcome.CONFLICT)
    bc2, dv2 = apply(mapping, "bc", bc, plan.bc_write), apply(mapping, "dv", dv, plan.dv_write)
    assert plan.snapshot is not None
    if plan.outcome is not Outcome.CONFLICT:
        assert take_snapshot(MS, mapping, bc2, dv2) == plan.snapshot
        for f in mapping.fields:
            if f.has_constant or f.create_only or (f.key == "owner" and not bc2["salespersonCode"]):
                continue
            assert converged(f, bc2, dv2, "dv") or converged(f, bc2, dv2, "bc"), f.key
    again = reconcile(MS, mapping, snapshot=plan.snapshot, bc=bc2, dv=dv2, lookups=LOOKUPS)
    assert again.writes == ()
    assert again.outcome is (Outcome.CONFLICT if plan.conflicts else Outcome.UNCHANGED)
    assert [c.key for c in again.conflicts] == [c.key for c in plan.conflicts]


@settings(max_examples=200, deadline=None)
@given(bc_edit=edits("bc"))
def test_a_bc_change_reaches_dataverse_where_the_direction_allows(bc_edit: dict[str, Any]) -> None:
    bc = {**BC, **bc_edit}
    plan = reconcile(MS, CUSTOMER, snapshot=BASE, bc=bc, dv=DV, lookups=LOOKUPS)
    assert plan.bc_write is None
    dv2 = apply(CUSTOMER, "dv", DV, plan.dv_write)
    for f in CUSTOMER.fields:
        if f.bc in bc_edit and f.writes_to("dv"):
            assert converged(f, bc, dv2, "dv"), f.key


@settings(max_examples=200, deadline=None)
@given(dv_edit=edits("dv"))
def test_a_dataverse_change_reaches_bc_where_the_direction_allows(dv_edit: dict[str, Any]) -> None:
    dv = {**DV, **dv_edit}
    plan = reconcile(MS, CUSTOMER, snapshot=BASE, bc=BC, dv=dv, lookups=LOOKUPS)
    bc2 = apply(CUSTOMER, "bc", BC, plan.bc_write)
    for f in CUSTOMER.fields:
        if f.dv is None or f.has_constant:
            continue
        name = f"_{f.dv}_value" if f"_{f.dv}_value" in dv_edit else f.dv
        if name not in dv_edit:
            continue
        if f.writes_to("bc"):
            assert converged(f, bc2, dv, "bc"), f.key
        else:
            # One-way to Dataverse: BC is untouched and Dataverse gets the BC value back.
            assert plan.bc_write is None or f.bc not in plan.bc_write.body
            assert converged(f, bc2, apply(CUSTOMER, "dv", dv, plan.dv_write), "dv"), f.key


def _presumed(side: str, record: dict[str, Any]) -> dict[str, Any]:
    key = "id" if side == "bc" else "accountid"
    modified = "lastModifiedDateTime" if side == "bc" else "modifiedon"
    presumed = presumed_record(
        MS, CUSTOMER, side, BASE, record_id=record[key], etag='W/"1"', modified=record[modified],  # type: ignore[arg-type]
        key=record.get("number"),
    )  # fmt: skip
    assert presumed is not None
    return presumed


@settings(max_examples=200, deadline=None)
@given(bc_edit=edits("bc"), policy=POLICIES)
def test_a_presumed_dataverse_record_decides_as_the_unchanged_one(
    bc_edit: dict[str, Any], policy: str
) -> None:
    mapping = CUSTOMER.model_copy(update={"conflict": policy})
    bc = {**BC, **bc_edit}
    read_first = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=DV, lookups=LOOKUPS)
    presumed = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=_presumed("dv", DV), lookups=LOOKUPS)
    assert (presumed.outcome, presumed.bc_write, presumed.dv_write) == (
        read_first.outcome, read_first.bc_write, read_first.dv_write,
    )  # fmt: skip
    assert presumed.snapshot == read_first.snapshot


@settings(max_examples=200, deadline=None)
@given(dv_edit=edits("dv"), policy=POLICIES)
def test_a_presumed_bc_record_decides_as_the_unchanged_one(dv_edit: dict[str, Any], policy: str) -> None:
    mapping = CUSTOMER.model_copy(update={"conflict": policy})
    dv = {**DV, **dv_edit}
    read_first = reconcile(MS, mapping, snapshot=BASE, bc=BC, dv=dv, lookups=LOOKUPS)
    presumed = reconcile(MS, mapping, snapshot=BASE, bc=_presumed("bc", BC), dv=dv, lookups=LOOKUPS)
    assert (presumed.outcome, presumed.bc_write, presumed.dv_write) == (
        read_first.outcome, read_first.bc_write, read_first.dv_write,
    )  # fmt: skip
    assert presumed.snapshot == read_first.snapshot


FIELD_TIMES = st.sampled_from(
    [dt.datetime(2024, 5, 2, 0, 0, s, tzinfo=dt.UTC) for s in (0, 1, 2)] + [None]  # None: no time kept
)


@settings(max_examples=300, deadline=None)
@given(
    bc_edit=edits("bc"), dv_edit=edits("dv"), bc_stamp=STAMPS, dv_stamp=STAMPS,
    times=st.dictionaries(st.sampled_from([f.key for f in TEXT_FIELDS]), st.tuples(FIELD_TIMES, FIELD_TIMES)),
)  # fmt: skip
def test_newest_wins_keeps_per_field_the_value_that_appeared_last(
    bc_edit: dict[str, Any], dv_edit: dict[str, Any], bc_stamp: str, dv_stamp: str,
    times: dict[str, tuple[dt.datetime | None, dt.datetime | None]],
) -> None:  # fmt: skip
    """Per field that changed on both sides: the side whose value appeared later wins (its own time, or
    its record's modified time when none is kept; a tie goes to BC), whatever the other fields do."""
    mapping = CUSTOMER.model_copy(update={"conflict": "newest_wins"})
    bc = {**BC, **bc_edit, "lastModifiedDateTime": bc_stamp}
    dv = {**DV, **dv_edit, "modifiedon": dv_stamp}
    changed_at = {
        side: {key: pair[i] for key, pair in times.items() if pair[i] is not None}
        for i, side in enumerate(("bc", "dv"))
    }
    plan = reconcile(MS, mapping, snapshot=BASE, bc=bc, dv=dv, lookups=LOOKUPS, changed_at=changed_at)
    assert plan.conflicts == ()
    resolved = {c.key: c for c in plan.resolved}
    for f in TEXT_FIELDS:
        if f.bc not in bc_edit or f.dv not in dv_edit or f.key not in resolved:
            continue
        bc_time = changed_at["bc"].get(f.key) or dt.datetime.fromisoformat(bc_stamp)
        dv_time = changed_at["dv"].get(f.key) or dt.datetime.fromisoformat(dv_stamp)
        winner = "dv" if dv_time > bc_time else "bc"
        assert resolved[f.key].winner == winner, f.key
        target_write = plan.bc_write if winner == "dv" else plan.dv_write
        loser_write = plan.dv_write if winner == "dv" else plan.bc_write
        assert target_write is not None and (f.bc if winner == "dv" else f.dv) in target_write.body
        assert loser_write is None or (f.dv if winner == "dv" else f.bc) not in loser_write.body
    bc2, dv2 = apply(mapping, "bc", bc, plan.bc_write), apply(mapping, "dv", dv, plan.dv_write)
    again = reconcile(
        MS, mapping, snapshot=plan.snapshot, bc=bc2, dv=dv2, lookups=LOOKUPS, changed_at=changed_at
    )
    assert again.writes == ()
