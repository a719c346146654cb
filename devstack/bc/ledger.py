"""Posting stock: item ledger entries and the item's `inventory` FlowField.

In BC an item's `Inventory` is a FlowField, the sum of `Quantity` over its Item Ledger Entries
(table 27, "Item No." = the item). Posting (a purchase receipt, a sales shipment, an item journal)
inserts ledger entries with the next `Entry No.`; it does not modify the Item record, so the item's
`lastModifiedDateTime` (SystemModifiedAt) and ETag stay as they were and no webhook notification is
sent for the item. API v2.0 reads the FlowField on every GET of `items` (page 30008 "APIV2 - Items",
`inventory`) and exposes the entries read-only as `itemLedgerEntries` (page 30069), which cannot be
subscribed to either.

The sandbox keeps the sum on the stored item (so reads and filters are cheap) and changes it only
here, without a stamp or a change-log entry.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from devstack.bc.entities import ENTITY_SETS, ITEM_ENTRY_TYPES, ITEM_LEDGER_ENTRIES
from devstack.bc.errors import bad_request
from devstack.bc.store import BcStore

LEDGER = ITEM_LEDGER_ENTRIES.name
ENTRY_NUMBER = "itemLedgerEntries.entryNumber"  # the company's counter in `Company.next_number`
# Entry types that take stock out: their quantity is negative (BC posts them with a negative sign).
OUTBOUND = frozenset({"Sale", "Negative Adjmt.", "Consumption", "Assembly Consumption"})


def post_item_entries(
    store: BcStore, company_id: str, entries: Iterable[Mapping[str, Any]], user: str
) -> list[dict[str, Any]]:
    """Post item ledger entries in one transaction: each `{"itemNumber" or "itemId", "quantity",
    "entryType"?, "documentNumber"?, "postingDate"?, "description"?}` gets the next entry number and
    moves its item's `inventory`. Sales and negative adjustments must have a negative quantity,
    purchases and positive adjustments a positive one (as BC's Item Jnl.-Post Line makes them)."""
    posted: list[dict[str, Any]] = []
    with store.quiet(), store.transaction():
        company = store.company(company_id)
        items = company.tables["items"]
        for body in entries:
            item = _item_of(store, company_id, body)
            quantity = float(body.get("quantity") or 0)
            entry_type = str(
                body.get("entryType") or ("Positive Adjmt." if quantity >= 0 else "Negative Adjmt.")
            )
            if entry_type not in ITEM_ENTRY_TYPES:
                raise bad_request(
                    f"'{entry_type}' is not an item ledger entry type: {', '.join(ITEM_ENTRY_TYPES)}."
                )
            if quantity == 0 or (quantity < 0) != (entry_type in OUTBOUND):
                raise bad_request(
                    f"Quantity {quantity} does not fit entry type {entry_type}: "
                    "outbound entries (Sale, Negative Adjmt., Consumption) are negative, the others positive."
                )
            record = ITEM_LEDGER_ENTRIES.template()
            record.update(
                id=str(uuid.uuid4()),
                entryNumber=_next_entry_number(store, company.next_number),
                itemNumber=item["number"],
                postingDate=str(
                    body.get("postingDate") or dt.date.fromtimestamp(store.clock.now_ms() / 1000).isoformat()
                ),
                entryType=entry_type,
                documentNumber=str(body.get("documentNumber") or "").upper(),
                description=str(body.get("description") or item["displayName"])[:100],
                quantity=quantity,
            )
            store._stamp(record, None, user)
            store._put(company, LEDGER, record)
            # The FlowField moves; the item record does not (no stamp, no ETag, no notification).
            moved = {**item, "inventory": round(float(item["inventory"]) + quantity, 5)}
            old = items[item["id"]]
            items[item["id"]] = moved
            store._record_undo(lambda i=item["id"], o=old: items.__setitem__(i, o))
            posted.append(record)
    return posted


def _item_of(store: BcStore, company_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    if body.get("itemId"):
        return store.get(company_id, "items", str(body["itemId"]))
    number = str(body.get("itemNumber") or "")
    item = store.find_by_key(company_id, "items", number) if number else None
    if item is None:
        raise bad_request(
            f"The field Item No. of table Item Journal Line contains a value ({number}) that cannot be found "
            "in the related table (Item).",
            "Application_DialogException",
        )
    return item


def _next_entry_number(store: BcStore, counters: dict[str, int]) -> int:
    """One sequence per company that only grows (BC: the table's last Entry No. + 1, taken under
    a table lock, so entries commit in entry-number order)."""
    number = counters.setdefault(ENTRY_NUMBER, 1)
    counters[ENTRY_NUMBER] = number + 1
    store._record_undo(lambda: counters.__setitem__(ENTRY_NUMBER, number))
    return number


assert LEDGER in ENTITY_SETS
