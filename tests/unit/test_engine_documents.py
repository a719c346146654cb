"""The engine's document path (a header with lines, one unit) on in-memory gateways: what a new
document, an echo and a changed line cost, and that new lines land under their own document.

docs/architecture.md (*Documents with lines*) states the costs these pin: both sides read with their
lines in one request each, a new document in one deep insert, a change as one atomic line batch.
"""

from __future__ import annotations

from typing import Any

from shared.mapping.loader import parse_mapping_set
from shared.mapping.values import dataverse_id_for
from shared.messages import SyncMessage
from shared.sync.gateways import LineWrite, dataverse_parent_bind
from shared.sync.reconcile import Outcome
from tests.unit.test_engine import Harness

MAPPING_TEXT = """
version: 1
settings: {ownership: {model: team, team_id: 00000000-0000-0000-0000-0000000000aa}}
mappings:
  - name: ORDER
    bc: {entity_set: salesOrders, key: number}
    dataverse: {table: salesorder, entity_set: salesorders}
    fields:
      - {bc: number, dv: name, direction: to_dataverse}
      - {bc: externalDocumentNumber, dv: ordernumber}
    lines:
      bc: {entity_set: salesOrderLines}
      dataverse:
        table: salesorderdetail
        entity_set: salesorderdetails
        navigation: order_details
        parent: salesorderid
      fields:
        - {bc: description, dv: productdescription}
        - {bc: quantity, dv: quantity, type: number, decimals: 5}
"""
MAPPINGS = parse_mapping_set(MAPPING_TEXT)
ORDER = MAPPINGS.entity("ORDER")


def _sync(h: Harness, side: str, record_id: str) -> Any:
    h.bc.requests.clear()
    h.dv.requests.clear()
    return h.engine.sync_record(SyncMessage(mapping="ORDER", side=side, id=record_id))


def _bc_order(h: Harness) -> str:
    lines = [{"description": "Bike", "quantity": 2}, {"description": "Lamp", "quantity": 1}]
    order = h.bc.create_document(ORDER, {"externalDocumentNumber": "PO-1"}, lines, select=[], record_id=None)
    return str(order["id"])


def _synced_order(h: Harness) -> tuple[str, str]:
    bc_id = _bc_order(h)
    result = _sync(h, "bc", bc_id)
    assert result.outcome == Outcome.INSERTED, result
    return bc_id, str(result.dv_id)


def _edit_line(side: dict[str, Any], description_key: str, description: str, **changes: Any) -> None:
    """A person's edit of one line: its values and its ETag change."""
    line = next(r for r in side.values() if r[description_key] == description)
    line.update(changes)
    line["@odata.etag"] = f'W/"edited-{description}"'


def test_a_new_bc_document_is_one_read_and_one_deep_insert_under_deterministic_ids() -> None:
    h = Harness(MAPPINGS)
    bc_id = _bc_order(h)

    result = _sync(h, "bc", bc_id)

    assert result.outcome == Outcome.INSERTED, result
    assert h.requests() == {"GET salesOrders": 1, "POST salesorders": 1}
    assert result.dv_id == dataverse_id_for(ORDER, bc_id)
    header = h.dv.rows("salesorders")[result.dv_id]
    assert (header["name"], header["ordernumber"]) == ("D1001", "PO-1")
    lines = sorted(h.dv.rows("salesorderdetails").values(), key=lambda r: r["productdescription"])
    assert [(r["productdescription"], r["quantity"]) for r in lines] == [("Bike", 2), ("Lamp", 1)]
    assert {r["_salesorderid_value"] for r in lines} == {result.dv_id}
    coupling = h.couplings.get("ORDER", "bc", bc_id)
    assert coupling is not None and coupling.dv_id == result.dv_id


def test_a_document_echo_costs_one_read_of_it_with_its_lines() -> None:
    h = Harness(MAPPINGS)
    bc_id, _ = _synced_order(h)

    result = _sync(h, "bc", bc_id)

    assert result.outcome == Outcome.UNCHANGED and "echo" in result.reason
    assert h.requests() == {"GET salesOrders": 1}


def test_a_line_changed_in_bc_costs_two_reads_and_one_line_batch() -> None:
    h = Harness(MAPPINGS)
    bc_id, _ = _synced_order(h)
    _edit_line(h.bc.rows("salesOrderLines"), "description", "Lamp", quantity=3)

    result = _sync(h, "bc", bc_id)

    assert result.outcome == Outcome.MODIFIED, result
    assert h.requests() == {"GET salesOrders": 1, "GET salesorders": 1, "$batch salesorderdetails": 1}
    quantities = {r["productdescription"]: r["quantity"] for r in h.dv.rows("salesorderdetails").values()}
    assert quantities == {"Bike": 2, "Lamp": 3}
    assert _sync(h, "bc", bc_id).outcome == Outcome.UNCHANGED  # the new state is the snapshot


def test_a_line_added_in_sales_is_created_in_bc_under_its_document() -> None:
    h = Harness(MAPPINGS)
    bc_id, dv_id = _synced_order(h)
    new_line = {"salesorderdetailid": "11111111-1111-4111-8111-111111111111", "productdescription": "Helmet",
                "quantity": 1, **dataverse_parent_bind(ORDER, dv_id)}  # fmt: skip
    h.dv.write_lines(ORDER, [LineWrite("create", None, new_line, parent_id=dv_id)])  # a Sales user's edit

    result = _sync(h, "dv", dv_id)

    assert result.outcome == Outcome.MODIFIED, result
    assert h.requests() == {"GET salesorders": 1, "GET salesOrders": 1, "$batch salesOrderLines": 1}
    helmet = next(r for r in h.bc.rows("salesOrderLines").values() if r["description"] == "Helmet")
    assert helmet["documentId"] == bc_id and helmet["quantity"] == 1
    assert _sync(h, "bc", bc_id).outcome == Outcome.UNCHANGED


def test_a_line_added_in_bc_is_created_in_sales_under_its_document() -> None:
    h = Harness(MAPPINGS)
    bc_id, dv_id = _synced_order(h)
    h.bc.write_lines(
        ORDER, [LineWrite("create", None, {"description": "Helmet", "quantity": 1}, parent_id=bc_id)]
    )

    result = _sync(h, "bc", bc_id)

    assert result.outcome == Outcome.MODIFIED, result
    assert h.requests() == {"GET salesOrders": 1, "GET salesorders": 1, "$batch salesorderdetails": 1}
    helmet = next(r for r in h.dv.rows("salesorderdetails").values() if r["productdescription"] == "Helmet")
    assert helmet["_salesorderid_value"] == dv_id
    assert _sync(h, "dv", dv_id).outcome == Outcome.UNCHANGED
