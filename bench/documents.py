"""Sales documents: what a 50-line order costs per side, and an initial sync of posted invoices.

1. A submitted Sales order of 50 lines becomes a BC order; then one line changed in BC, the echo of
   that change, and 5 lines changed in Sales: API requests per side for each.
2. An initial sync of N posted invoices of L lines into an empty Dataverse on the bulk path (every
   100th invoice is of a customer out of CUSTOMER's scope: skipped, counted, listed); requests, wall
   time, peak RSS of the service process (the sandboxes run in a child process).

`python -m bench.documents [--invoices 10000 --lines 10 --order-lines 50]`
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from typing import Any

from bench.service import sandboxes, service_settings
from devstack.azurite import start_azurite


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--order-lines", type=int, default=50)
    args = parser.parse_args()
    with contextlib.ExitStack() as running:
        azurite = start_azurite()
        running.callback(azurite.stop)
        seeding = time.perf_counter()
        ports = running.enter_context(sandboxes("--invoices", str(args.invoices), "--lines", str(args.lines)))
        print(f"machine: {os.cpu_count()} cores; BC seeded in {time.perf_counter() - seeding:.0f} s")
        os.environ.update(service_settings(azurite.connection_string, ports))
        from shared.runtime import get_runtime
        from shared.sync import bulk

        rt = get_runtime()
        rt.storage.ensure()
        engine = rt.engine
        bulk.match_coupling(engine, "SALESPEOPLE", dry_run=False)
        for name in ("CURRENCY", "UNIT OF MEASURE", "UNIT", "CUSTOMER", "ITEM-PRODUCT"):
            bulk.run_full_resync(engine, name)
        order_cost(rt, args.order_lines)
        initial_sync(rt, args.invoices, args.lines)
    return 0


def _requests(rt: Any) -> dict[str, int]:
    return {**{f"BC {k}": v for k, v in rt.bc.stats.requests.items()},
            **{f"DV {k}": v for k, v in rt.dataverse.stats.requests.items()}}  # fmt: skip


def _reset(rt: Any) -> None:
    rt.bc.stats.reset()
    rt.dataverse.stats.reset()


def _show(label: str, rt: Any, result: Any) -> None:
    requests = _requests(rt)
    bc = sum(v for k, v in requests.items() if k.startswith("BC "))
    dv = sum(v for k, v in requests.items() if k.startswith("DV "))
    print(f"  {label}: {result.outcome}; BC {bc}, Dataverse {dv} requests {requests}")


def order_cost(rt: Any, lines: int) -> None:
    """A submitted order of `lines` lines through the one-record path, then changes on each side."""
    from shared.messages import SyncMessage

    engine, dv, bc = rt.engine, rt.dataverse, rt.bc
    [account] = list(dv.query("accounts", select=["accountid"], filter="customertypecode eq 3", page_size=1))[
        :1
    ]
    products = [p["productid"] for p in dv.query("products", select=["productid"], page_size=20)][:20]
    [unit] = list(dv.query("uoms", select=["uomid"], filter="name eq 'PCS'", page_size=1))[:1]
    details = [
        {"productid@odata.bind": f"/products({products[k % len(products)]})",
         "uomid@odata.bind": f"/uoms({unit['uomid']})", "quantity": 1 + k % 4, "priceperunit": 10.0,
         "ispriceoverridden": True}
        for k in range(lines)
    ]  # fmt: skip
    order = dv.create(
        "salesorders",
        {"name": "Bench order", "customerid_account@odata.bind": f"/accounts({account['accountid']})",
         "order_details": details},
        select=["salesorderid"],
    )  # fmt: skip
    order_id = order["salesorderid"]
    dv.update("salesorders", order_id, {"statecode": 1, "statuscode": 3}, etag="*")
    print(f"a submitted Sales order of {lines} lines:")

    def sync(side: str, record_id: str, label: str) -> Any:
        _reset(rt)
        result = engine.sync_record(
            SyncMessage(mapping="SALES ORDER", side=side, id=record_id, reason="bench")
        )  # type: ignore[arg-type]
        _show(label, rt, result)
        return result

    created = sync("dv", order_id, f"created in BC with its {lines} lines")
    document = bc.get(rt.company_id, "salesOrders", created.bc_id, expand=["salesOrderLines"])
    line = document["salesOrderLines"][0]
    bc.update(rt.company_id, "salesOrderLines", line["id"], {"quantity": line["quantity"] + 1}, etag="*")
    sync("bc", created.bc_id, "1 line changed in BC")
    sync("bc", created.bc_id, "the same BC notification again (echo)")
    read = dv.get("salesorders", order_id, ["salesorderid"], expand="order_details($select=quantity)")
    for detail in read["order_details"][:5]:
        dv.update(
            "salesorderdetails", detail["salesorderdetailid"], {"quantity": detail["quantity"] + 2}, etag="*"
        )
    sync("dv", order_id, "5 lines changed in Sales")


def initial_sync(rt: Any, invoices: int, lines: int) -> None:
    from shared.sync import bulk

    _reset(rt)
    before = _peak_rss_mb()
    started = time.perf_counter()
    run = bulk.run_full_resync(rt.engine, "POSTED INVOICE")
    elapsed = time.perf_counter() - started
    requests = _requests(rt)
    print(f"initial sync of {invoices:,} posted invoices with {invoices * lines:,} lines (empty Dataverse):")
    print(f"  outcome: {run.status} {run.counts}")
    print(f"  wall time: {elapsed:.1f} s ({invoices / elapsed:,.0f} invoices/s)")
    print(f"  API requests: {sum(requests.values())} {dict(sorted(requests.items()))}")
    print(f"  peak RSS of the service process: {_peak_rss_mb():.0f} MB (before: {before:.0f} MB)")
    print(f"  run message: {run.message[:300]}")
    _reset(rt)
    started = time.perf_counter()
    second = bulk.run_full_resync(rt.engine, "POSTED INVOICE")
    print(f"second full resync: {time.perf_counter() - started:.1f} s, {second.counts}, "
          f"API requests {rt.bc.stats.total + rt.dataverse.stats.total}")  # fmt: skip


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
