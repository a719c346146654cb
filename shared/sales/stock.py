"""Product availability kept fresh from BC's item ledger entries.

An item's `inventory` in BC is a FlowField: the sum of its Item Ledger Entries' quantities. Posting
stock (a receipt, a shipment, an item journal) inserts ledger entries and does not modify the item,
so neither the item's `lastModifiedDateTime` nor a webhook tells anyone (docs/bc-sandbox.md, "Stock
and item ledger entries"). BC's own connector refreshes `quantityonhand` with a job every 30
minutes; this does it at every delta poll (default every 2 minutes):

1. one read of `itemLedgerEntries` with `entryNumber` above the last one seen (the entry number only
   grows; the cursor is kept in `Watermarks`, PK the mapping, RowKey `bc-ledger`), entry and item
   numbers only, 20,000 per page. Nothing moved: that one request is all.
2. the items those entries touch, read in bulk: `number eq … or …` 50 to a request, or the whole
   item table in pages of 20,000 when more than 1,000 items moved;
3. converged like a BC `collection` (`shared.sync.bulk.converge_bc_records`): the coupled products
   read with one `$batch` and written with `$batch` PATCHes, only where the value differs.

4. the "as of" time: the coupled products of those items get `bcs_quantityasof` = when their quantity
   was read, with `UpdateMultiple` (1 request per 1,000 products), when the table has the column
   (the Sales solution adds it): a salesperson sees how fresh the quantity on hand is.

The cursor moves only after the items were converged, so a failure reads the same entries again
next time. The first run sets the cursor to the newest entry: the full resync brings the current
stock across.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field

from shared.mapping.queries import select_fields
from shared.mapping.schema import EntityMapping, MappingSet
from shared.odata import any_eq, gt
from shared.runtime import Runtime
from shared.store.watermarks import Watermark, WatermarkConflictError
from shared.sync.bulk import converge_bc_records
from shared.sync.gateways import Record

log = logging.getLogger(__name__)

LEDGER_SET = "itemLedgerEntries"
CURSOR_SIDE = "bc-ledger"
# BC fields computed from item ledger entries (FlowFields), by entity set.
LEDGER_FLOWFIELDS = {"items": frozenset({"inventory"})}
ITEMS_PER_FILTER = 50  # `number eq 'X' or …` clauses per request: far inside URL limits
FULL_READ_ABOVE = 1000  # more items than this moved: read the whole item table in pages instead
# When the quantity on hand was read from BC (a column of the Sales solution, solution/Entities/Product).
AS_OF_TABLE = "product"
AS_OF_COLUMN = "bcs_quantityasof"


@dataclass
class StockReport:
    entries: int = 0
    items: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stamped: int = 0  # products whose "as of" time was set


def stock_mappings(ms: MappingSet) -> list[EntityMapping]:
    """Mappings that write a BC ledger FlowField (`inventory`) to Dataverse."""
    found = []
    for m in ms.entities():
        computed = LEDGER_FLOWFIELDS.get(m.bc.entity_set, frozenset())
        if m.writes_to("dv") and any(f.bc in computed and f.dv and f.writes_to("dv") for f in m.fields):
            found.append(m)
    return found


def refresh_stock(rt: Runtime) -> StockReport:
    report = StockReport()
    for m in stock_mappings(rt.mappings):
        try:
            _refresh(rt, m, report)
        except WatermarkConflictError:
            report.skipped.append(f"{m.name}: another instance refreshed stock at the same time")
    return report


def _refresh(rt: Runtime, m: EntityMapping, report: StockReport) -> None:
    mark = rt.watermarks.get(m.name, CURSOR_SIDE)
    if mark is None:
        newest = next(
            iter(rt.bc.query_pages(rt.company_id, LEDGER_SET, select=["entryNumber"],
                                   orderby="entryNumber desc", page_size=1)),
            [],
        )  # fmt: skip
        last = int(newest[0]["entryNumber"]) if newest else 0
        read_at = dt.datetime.now(dt.UTC)
        rt.watermarks.set(Watermark(m.name, CURSOR_SIDE, str(last)))
        report.baselines.append(f"{m.name}: item ledger entries after {last}")
        # The quantities the (initial) full sync brought are current up to here: say so once.
        _stamp_as_of(rt, m, [dv for _, dv in rt.couplings.all_ids(m.name, "bc") if dv], read_at, report)
        return
    seen = int(mark.value or 0)
    numbers: dict[str, None] = {}
    last = seen
    for entry in rt.bc.query(
        rt.company_id, LEDGER_SET, select=["entryNumber", "itemNumber"],
        filter=gt("entryNumber", seen), orderby="entryNumber",
    ):  # fmt: skip
        last = max(last, int(entry["entryNumber"]))
        numbers[str(entry["itemNumber"])] = None
        report.entries += 1
    if not numbers:
        return
    items = _read_items(rt, m, list(numbers))
    report.items += len(items)
    read_at = dt.datetime.now(dt.UTC)
    counts: Counter[str] = converge_bc_records(rt.engine, m, items, correlation_id=f"stock {seen + 1}-{last}")
    report.counts.update({f"{m.name} {k}": v for k, v in counts.items()})
    couplings = (rt.couplings.get(m.name, "bc", str(item["id"])) for item in items)
    _stamp_as_of(rt, m, [c.dv_id for c in couplings if c is not None and c.dv_id], read_at, report)
    rt.watermarks.set(Watermark(m.name, CURSOR_SIDE, str(last), mark.etag))


def _stamp_as_of(
    rt: Runtime, m: EntityMapping, dv_ids: list[str], read_at: dt.datetime, report: StockReport
) -> None:
    """`bcs_quantityasof` on these products (products only: the Sales solution's column)."""
    if m.dataverse.table != AS_OF_TABLE or not dv_ids:
        return
    stamp = read_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    pk = m.dataverse.primary_key
    results = rt.dataverse.update_multiple(
        m.dataverse.entity_set, [{pk: dv_id, AS_OF_COLUMN: stamp} for dv_id in dv_ids]
    )
    report.stamped += sum(1 for r in results if r.ok)
    failed = [r for r in results if not r.ok]
    if failed:
        log.warning("could not set %s on %d products: %s", AS_OF_COLUMN, len(failed), failed[0].error)


def _read_items(rt: Runtime, m: EntityMapping, numbers: list[str]) -> list[Record]:
    select = select_fields(rt.mappings, m, "bc")
    key = "number"  # what an item ledger entry names its item by (`itemNumber`)
    if len(numbers) > FULL_READ_ABOVE:
        wanted = set(numbers)
        return [
            dict(r)
            for r in rt.bc.query(rt.company_id, m.bc.entity_set, select=select)
            if str(r[key]) in wanted
        ]
    items: list[Record] = []
    for start in range(0, len(numbers), ITEMS_PER_FILTER):
        part = numbers[start : start + ITEMS_PER_FILTER]
        items.extend(
            dict(r)
            for r in rt.bc.query(rt.company_id, m.bc.entity_set, select=select, filter=any_eq(key, part))
        )
    return items
