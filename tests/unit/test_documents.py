"""Documents with lines decided as one unit (shared/sync/documents.py), with the default SALES ORDER
mapping: what a new, changed, extended or shortened document writes on each side, and when the
whole document waits or fails because of one line."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.mapping import load_mapping_set, parse_mapping_set
from shared.mapping.lookups import StaticLookups
from shared.mapping.queries import select_fields
from shared.sync.documents import (
    LineState,
    document_snapshot,
    reconcile_document,
    side_state,
    stored_state,
)
from shared.sync.reconcile import Outcome, take_snapshot

MS = load_mapping_set()
ORDER = MS.entity("SALES ORDER")
LINES = ORDER.line_mapping()
ACCOUNT, PRODUCT, PRODUCT2, UOM = (f"00000000-0000-0000-0000-00000000000{n}" for n in range(1, 5))
LOOKUPS = (
    StaticLookups()
    .couple("CUSTOMER", "C10000", ACCOUNT)
    .couple("ITEM-PRODUCT", "1000", PRODUCT)
    .couple("ITEM-PRODUCT", "1001", PRODUCT2)
    .couple("UNIT", "PCS", UOM)
)


def _blank(mapping: Any, side: str) -> dict[str, Any]:
    """A record with every field the mapping reads, empty as that side shows it."""
    return {name: (None if side == "dv" else "") for name in select_fields(MS, mapping, side)}  # type: ignore[arg-type]


def _dv_line(n: int, quantity: float, product: str = PRODUCT) -> dict[str, Any]:
    return _blank(LINES, "dv") | {
        "salesorderdetailid": f"dddddddd-0000-0000-0000-00000000000{n}", "_productid_value": product,
        "_uomid_value": UOM, "quantity": quantity, "priceperunit": 10.0, "manualdiscountamount": 0,
        "quantityshipped": None, "bcs_bclinenumber": None, "ispriceoverridden": True,
    }  # fmt: skip


def _dv_order(*lines: dict[str, Any]) -> dict[str, Any]:
    return _blank(ORDER, "dv") | {
        "salesorderid": "aaaaaaaa-0000-0000-0000-000000000001", "statecode": 1, "_customerid_value": ACCOUNT,
        "ordernumber": "ORD-1", "modifiedon": "2026-01-01T00:00:00Z", "order_details": list(lines),
    }  # fmt: skip


def _bc_line(n: int, quantity: float, item: str = "1000", shipped: float = 0) -> dict[str, Any]:
    return _blank(LINES, "bc") | {
        "id": f"bbbbbbbb-0000-0000-0000-00000000000{n}", "lineType": "Item", "lineObjectNumber": item,
        "unitOfMeasureCode": "PCS", "quantity": quantity, "unitPrice": 10.0, "discountAmount": 0,
        "shippedQuantity": shipped, "sequence": n * 10000,
    }  # fmt: skip


def _bc_order(*lines: dict[str, Any]) -> dict[str, Any]:
    return _blank(ORDER, "bc") | {
        "id": "cccccccc-0000-0000-0000-000000000001", "number": "S-ORD101001", "customerNumber": "C10000",
        "externalDocumentNumber": "ORD-1", "currencyCode": "", "discountAmount": 0,
        "lastModifiedDateTime": "2026-01-01T00:00:00Z", "salesOrderLines": list(lines),
    }  # fmt: skip


def _coupled(bc: dict[str, Any], dv: dict[str, Any]) -> dict[str, Any]:
    """The snapshot after a settled sync of this pair, its lines coupled by position."""
    states = [
        LineState(b["id"], d["salesorderdetailid"], take_snapshot(MS, LINES, b, d))
        for b, d in zip(bc["salesOrderLines"], dv["order_details"], strict=True)
    ]
    return document_snapshot(take_snapshot(MS, ORDER, bc, dv), states)


def _settled_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    bc = _bc_order(_bc_line(1, 2), _bc_line(2, 3))
    dv = _dv_order(_dv_line(1, 2), _dv_line(2, 3))
    for d, b in zip(dv["order_details"], bc["salesOrderLines"], strict=True):
        d["bcs_bclinenumber"], d["quantityshipped"] = b["sequence"], 0
    dv["bcs_bcnumber"] = bc["number"]
    return bc, dv


def test_a_new_submitted_order_is_one_bc_create_with_every_line() -> None:
    plan = reconcile_document(
        MS, ORDER, snapshot=None, bc=None, dv=_dv_order(_dv_line(1, 2), _dv_line(2, 3)), lookups=LOOKUPS
    )
    assert plan.outcome is Outcome.INSERTED
    assert plan.header.bc_write is not None and plan.header.bc_write.kind == "create"
    assert plan.header.bc_write.body["customerNumber"] == "C10000"
    bodies = [lp.plan.bc_write.body for lp in plan.lines if lp.plan.bc_write]
    shown = [(b["lineObjectNumber"], b["quantity"], b["unitOfMeasureCode"], b["lineType"]) for b in bodies]
    assert shown == [("1000", 2, "PCS", "Item"), ("1000", 3, "PCS", "Item")]
    # Header totals are never written: BC computes them.
    assert not any(k.startswith("total") for k in plan.header.bc_write.body)


def test_a_settled_document_is_unchanged_and_its_state_is_an_echo() -> None:
    bc, dv = _settled_pair()
    snapshot = _coupled(bc, dv)
    plan = reconcile_document(MS, ORDER, snapshot=snapshot, bc=bc, dv=dv, lookups=LOOKUPS)
    assert plan.outcome is Outcome.UNCHANGED and not plan.header.writes and not plan.line_writes
    for side, record in (("bc", bc), ("dv", dv)):
        assert side_state(MS, ORDER, side, record) == stored_state(snapshot, side)  # type: ignore[arg-type]


def test_a_line_changed_in_bc_is_the_only_write_to_dataverse() -> None:
    bc, dv = _settled_pair()
    snapshot = _coupled(bc, dv)
    changed = copy.deepcopy(bc)
    changed["salesOrderLines"][1]["quantity"] = 4
    assert side_state(MS, ORDER, "bc", changed) != stored_state(snapshot, "bc")
    plan = reconcile_document(MS, ORDER, snapshot=snapshot, bc=changed, dv=dv, lookups=LOOKUPS)
    assert plan.outcome is Outcome.MODIFIED
    assert plan.header.writes == ()
    writes = [(lp.position, side, w.kind, w.body) for lp in plan.lines for side in ("bc", "dv")
              if (w := lp.plan.write_on(side))]  # type: ignore[arg-type]  # fmt: skip
    assert writes == [(2, "dv", "update", {"quantity": 4})]
    assert [c.key for c in plan.changes()] == ["line 2.quantity"]


def test_lines_added_and_removed_on_either_side_are_created_and_removed_on_the_other() -> None:
    bc, dv = _settled_pair()
    snapshot = _coupled(bc, dv)
    bc["salesOrderLines"].pop(0)  # removed in BC
    dv["order_details"].append(_dv_line(3, 7, PRODUCT2))  # added in Sales
    plan = reconcile_document(MS, ORDER, snapshot=snapshot, bc=bc, dv=dv, lookups=LOOKUPS)
    kinds = sorted(
        (side, w.kind) for lp in plan.lines for side in ("bc", "dv") if (w := lp.plan.write_on(side))
    )  # type: ignore[arg-type]
    assert kinds == [("bc", "create"), ("dv", "delete")]
    created = next(lp.plan.bc_write for lp in plan.lines if lp.plan.bc_write)
    assert created is not None and (created.body["lineObjectNumber"], created.body["quantity"]) == ("1001", 7)
    assert "1 line created" in plan.reason and "1 line removed" in plan.reason


def test_a_line_whose_product_is_not_coupled_holds_the_whole_document_back_naming_it() -> None:
    unknown = "eeeeeeee-0000-0000-0000-000000000009"
    dv = _dv_order(_dv_line(1, 2), _dv_line(2, 1, unknown))
    plan = reconcile_document(MS, ORDER, snapshot=None, bc=None, dv=dv, lookups=LOOKUPS)
    assert plan.outcome is Outcome.DEFERRED  # ITEM-PRODUCT can couple it: the engine syncs it first
    assert plan.reason == f"the document waits: line 2: waiting for ITEM-PRODUCT {unknown} to be coupled"
    assert [(m.mapping, m.value) for m in plan.missing] == [("ITEM-PRODUCT", unknown)]


def test_an_order_whose_customer_is_not_coupled_waits_and_says_so() -> None:
    dv = _dv_order(_dv_line(1, 2))
    dv["_customerid_value"] = "eeeeeeee-0000-0000-0000-00000000000a"
    plan = reconcile_document(MS, ORDER, snapshot=None, bc=None, dv=dv, lookups=LOOKUPS)
    assert plan.outcome is Outcome.DEFERRED
    assert plan.reason == f"the document waits: waiting for CUSTOMER {dv['_customerid_value']} to be coupled"


def test_a_draft_order_is_out_of_scope() -> None:
    dv = _dv_order(_dv_line(1, 2))
    dv["statecode"] = 0
    plan = reconcile_document(MS, ORDER, snapshot=None, bc=None, dv=dv, lookups=LOOKUPS)
    assert plan.outcome is Outcome.SKIPPED


def test_a_bc_order_is_not_created_in_sales() -> None:
    plan = reconcile_document(
        MS, ORDER, snapshot=None, bc=_bc_order(_bc_line(1, 2)), dv=None, lookups=LOOKUPS
    )
    assert plan.outcome is Outcome.SKIPPED and "creates records to_bc only" in plan.reason


def test_a_document_mapping_refuses_header_totals() -> None:
    text = (
        "version: 1\nmappings:\n- name: O\n  bc: {entity_set: salesOrders}\n"
        "  dataverse: {table: salesorder, entity_set: salesorders}\n"
        "  fields: [{bc: totalAmountIncludingTax, dv: totalamount, type: number}]\n"
        "  lines:\n    bc: {entity_set: salesOrderLines}\n"
        "    dataverse: {table: salesorderdetail, entity_set: salesorderdetails, navigation: order_details,"
        " parent: salesorderid}\n    fields: [{bc: quantity, dv: quantity, type: number}]\n"
    )
    with pytest.raises(Exception, match="never written"):
        parse_mapping_set(text)


def test_a_document_that_fails_in_bulk_is_requeued_after_the_one_requeue_policys_first_step() -> None:
    # As bulk.py requeues a record that failed in bulk (`requeue_delay(1)`), not after a delay of its own.
    from types import SimpleNamespace

    from shared.sync import bulk_documents

    queued: list[tuple[list[Any], int]] = []

    def fail(message: Any) -> Any:
        raise RuntimeError("the write failed")

    def enqueue(messages: list[Any], delay: int) -> None:
        queued.append((messages, delay))

    engine = SimpleNamespace(sync_record=fail, enqueue=enqueue)
    mapping = SimpleNamespace(name="SALESORDER")
    outcome = bulk_documents._one(engine, mapping, "bc", "b1", dry_run=False)  # type: ignore[arg-type]
    assert outcome == "failed"
    [(messages, delay)] = queued
    assert [m.id for m in messages] == ["b1"] and messages[0].reason == "retry after bulk failure"
    assert 1 <= delay <= 2  # requeue_delay(1): 1.5 s with full jitter, rounded up
