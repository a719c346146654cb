"""The pure decisions of the quote and order flows: which BC order a won quote made, how its lines pair
with the Sales order's, when a Sales order is closed as Fulfilled; the mapping options that turn them on."""

from __future__ import annotations

from typing import Any

import pytest

from shared.mapping import load_mapping_set, parse_mapping_set
from shared.mapping.loader import DEFAULT_MAPPING_FILE
from shared.mapping.queries import select_fields
from shared.mapping.schema import FromQuoteSection, FulfilSection
from shared.sync.quote_orders import (
    availability_updates,
    fulfil_request,
    is_won,
    item_lookup_field,
    made_order_marker,
    pair_lines,
    pick_made_order,
    quote_of,
    should_fulfil,
)

MS = load_mapping_set()
ORDER = MS.entity("SALES ORDER")
FQ = FromQuoteSection(quote_mapping="SALES QUOTE")
FULFIL = FulfilSection()


def test_the_default_sales_order_is_made_from_won_quotes_and_closed_when_shipped() -> None:
    assert ORDER.from_quote is not None and ORDER.from_quote.quote_mapping == "SALES QUOTE"
    assert ORDER.fulfil is not None and ORDER.fulfil.bc_field == "fullyShipped"
    # What the decisions read is selected: the order's quote, BC's shipped flag, the order's state.
    assert "_quoteid_value" in select_fields(MS, ORDER, "dv")
    assert "statecode" in select_fields(MS, ORDER, "dv")
    assert "fullyShipped" in select_fields(MS, ORDER, "bc")


def test_from_quote_must_name_a_document_mapping() -> None:
    text = DEFAULT_MAPPING_FILE.read_text(encoding="utf-8")
    assert "from_quote: {quote_mapping: SALES QUOTE}" in text
    with pytest.raises(ValueError, match="from_quote needs a document mapping"):
        parse_mapping_set(
            text.replace("from_quote: {quote_mapping: SALES QUOTE}", "from_quote: {quote_mapping: CUSTOMER}")
        )


def test_quote_of_and_won() -> None:
    assert quote_of(FQ, {"_quoteid_value": "q1"}) == "q1"
    assert quote_of(FQ, {"_quoteid_value": None}) is None
    assert is_won(FQ, {"statecode": 2})
    assert not is_won(FQ, {"statecode": 1}) and not is_won(FQ, {"statecode": 3})


def test_the_made_order_is_found_by_what_bc_copies_from_the_quote() -> None:
    snapshot = {"bc": {"customerNumber": "C1", "externalDocumentNumber": "QUO-1", "validUntilDate": "x"}}
    marker = made_order_marker(snapshot)
    assert marker == {"customerNumber": "C1", "externalDocumentNumber": "QUO-1"}
    assert made_order_marker({"bc": {"customerNumber": "C1", "externalDocumentNumber": ""}}) == {
        "customerNumber": "C1"
    }
    assert made_order_marker(None) == {}
    a = {"id": "a", "number": "S-ORD101001", **marker}
    b = {"id": "b", "number": "S-ORD101002", **marker}
    other = {"id": "c", "number": "S-ORD101003", "customerNumber": "C1", "externalDocumentNumber": "QUO-2"}
    assert pick_made_order(marker, [a, b, other], coupled=set()) == b  # the newest
    assert pick_made_order(marker, [a, b, other], coupled={"b"}) == a  # b belongs to another Sales order
    assert pick_made_order(marker, [other], coupled=set()) is None
    assert pick_made_order({}, [a], coupled=set()) is None  # nothing to recognise it by: never guessed


def test_lines_pair_by_line_number_then_in_order() -> None:
    bc = [{"id": "b1", "sequence": 10000}, {"id": "b2", "sequence": 20000}, {"id": "b3", "sequence": 30000}]
    # The Sales order's details in another order, numbered from the quote: paired by number.
    dv = [{"lineitemnumber": 30000}, {"lineitemnumber": 10000}, {"lineitemnumber": 20000}]
    assert [(i, line["id"]) for i, line in pair_lines(bc, dv)] == [(0, "b3"), (1, "b1"), (2, "b2")]
    # Unnumbered details take the BC lines left, in order.
    dv = [{"lineitemnumber": None}, {"lineitemnumber": 20000}, {}]
    assert [(i, line["id"]) for i, line in pair_lines(bc, dv)] == [(0, "b1"), (1, "b2"), (2, "b3")]
    # More details than BC lines: the extra detail stays unpaired (a new line for BC).
    assert [(i, line["id"]) for i, line in pair_lines(bc[:1], [{}, {}])] == [(0, "b1")]
    # A number no BC line has, and two details claiming the same number.
    dv = [{"lineitemnumber": 10000}, {"lineitemnumber": 10000}, {"lineitemnumber": 99}]
    assert [(i, line["id"]) for i, line in pair_lines(bc, dv)] == [(0, "b1"), (1, "b2"), (2, "b3")]
    assert pair_lines([], [{}]) == []


@pytest.mark.parametrize(
    ("bc", "dv", "expected"),
    [
        ({"fullyShipped": True}, {"statecode": 1}, True),
        ({"fullyShipped": True}, {"statecode": 0}, True),
        ({"fullyShipped": False}, {"statecode": 1}, False),  # partly shipped: the quantities come back only
        ({}, {"statecode": 1}, False),
        ({"fullyShipped": True}, {"statecode": 3}, False),  # fulfilled already
        ({"fullyShipped": True}, {"statecode": 2}, False),  # cancelled in Sales
        ({"fullyShipped": True}, None, False),
        (None, {"statecode": 1}, False),
    ],
)
def test_a_sales_order_is_fulfilled_once_bc_shipped_it_all_and_it_is_open(
    bc: dict[str, Any] | None, dv: dict[str, Any] | None, expected: bool
) -> None:
    assert should_fulfil(FULFIL, bc, dv) is expected


def test_the_fulfil_request_names_the_order_and_bc_number() -> None:
    body = fulfil_request(ORDER, FULFIL, "o1", "S-ORD1")
    assert body == {
        "OrderClose": {
            "salesorderid@odata.bind": "/salesorders(o1)",
            "subject": "Shipped in Business Central (order S-ORD1)",
        },
        "Status": 100001,
    }
    assert fulfil_request(ORDER, FULFIL, "o1", None)["OrderClose"]["subject"] == "Shipped in Business Central"


QUOTE = MS.entity("SALES QUOTE")


def test_quote_lines_show_availability_by_their_product_lookup() -> None:
    assert QUOTE.lines is not None and QUOTE.lines.availability is not None
    assert QUOTE.lines.availability.column == "bcs_availablequantity"
    assert item_lookup_field(QUOTE, {"ITEM-PRODUCT"}) == "_productid_value"
    assert item_lookup_field(QUOTE, {"OTHER"}) is None
    assert ORDER.lines is not None and ORDER.lines.availability is None  # orders do not show it


def test_availability_updates_write_only_lines_whose_figure_changed() -> None:
    lines = [
        {"id": "l1", "_productid_value": "p1", "shown": None},  # new: shown
        {"id": "l2", "_productid_value": "p1", "shown": 12.0},  # unchanged: not written
        {"id": "l3", "_productid_value": "p2", "shown": 5.0},  # stock moved
        {"id": "l4", "_productid_value": "p3", "shown": 7.0},  # product not coupled: emptied
        {"id": "l5", "_productid_value": None, "shown": None},  # write-in line: nothing
        {"id": "l6", "_productid_value": "p4", "shown": None},  # coupled, BC did not answer: nothing
    ]
    updates = availability_updates(
        lines, line_key="id", product_column="_productid_value", column="shown",
        item_of_product={"p1": "i1", "p2": "i2", "p4": "i4"}, inventory={"i1": 12.0, "i2": 3.0},
    )  # fmt: skip
    assert updates == [("l1", 12.0), ("l3", 3.0), ("l4", None)]


def test_a_document_whose_lines_another_worker_is_writing_waits_then_proceeds() -> None:
    import datetime as dt

    from shared.messages import SyncMessage
    from shared.store.couplings import Coupling
    from shared.sync.engine import PENDING_CREATE_GRACE, WRITING_LINES, RequeueError
    from shared.timestamps import iso_ms
    from tests.unit.test_engine import Harness

    h = Harness(MS)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    h.engine.clock = lambda: now
    claim = Coupling("SALES ORDER", "b1", "d1", snapshot={"bc": {}, "dv": {}}, pending_since=iso_ms(now))
    claim.last_result = WRITING_LINES
    h.couplings.create(claim)
    message = SyncMessage(mapping="SALES ORDER", side="dv", id="d1")
    with pytest.raises(RequeueError, match="another worker is writing"):
        h.engine.sync_record(message)
    # A claim older than the grace is a worker that died: the sync goes on and reads the document.
    read: list[str] = []
    h.dv.get_document = lambda mapping, record_id, select: read.append(record_id)  # type: ignore[attr-defined]
    h.bc.get_document = lambda mapping, record_id, select: read.append(record_id)  # type: ignore[attr-defined]
    h.engine.clock = lambda: now + PENDING_CREATE_GRACE + dt.timedelta(seconds=1)
    h.engine.sync_record(message)
    assert read[:1] == ["d1"]
