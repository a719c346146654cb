"""Stock from item ledger entries: what a delta poll's stock refresh costs (requests, seconds).

N items coupled to products; then nothing posted, 10 items moved, and M items moved (more than the
1,000 above which the whole item table is read in pages). `python -m bench.stock [--items 20000
--moved 5000]`. The sandboxes run in this process (the numbers that matter are requests, and the
bench seeds items and posts ledger entries straight into the BC sandbox).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.service import SandboxPorts, service_settings
from devstack import bc, dataverse, sales_solution
from devstack.azurite import start_azurite
from devstack.serve import serve_in_thread


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--moved", type=int, default=5_000)
    args = parser.parse_args()
    azurite = start_azurite()
    bc_app, dv_app = bc.create_app(), dataverse.create_app()
    sales_solution.install(dv_app.state.sandbox)  # Dataverse as `bcsync setup` leaves it
    servers = [serve_in_thread(bc_app), serve_in_thread(dv_app)]
    sandbox = bc_app.state.sandbox
    try:
        os.environ.update(
            service_settings(azurite.connection_string, SandboxPorts(bc=servers[0].port, dv=servers[1].port))
        )
        from shared.runtime import get_runtime
        from shared.sales.stock import refresh_stock
        from shared.sync import bulk

        numbers = [f"B{n:06d}" for n in range(args.items)]
        sandbox.seed("items", ({"number": n, "displayName": f"Bench item {n}", "baseUnitOfMeasureCode": "PCS"}
                               for n in numbers))  # fmt: skip
        rt = get_runtime()
        rt.storage.ensure()
        bulk.run_full_resync(rt.engine, "UNIT OF MEASURE")
        run = bulk.run_full_resync(rt.engine, "ITEM-PRODUCT")
        print(f"machine: {os.cpu_count()} cores; {args.items:,} items coupled to products ({run.counts})")
        refresh_stock(rt)  # the cursor's baseline

        def measure(label: str, moved: list[str]) -> None:
            if moved:
                sandbox.post_item_entries([{"itemNumber": n, "quantity": 3} for n in moved])
            rt.bc.stats.reset()
            rt.dataverse.stats.reset()
            started = time.perf_counter()
            report = refresh_stock(rt)
            elapsed = time.perf_counter() - started
            requests = {**{f"BC {k}": v for k, v in rt.bc.stats.requests.items()},
                        **{f"DV {k}": v for k, v in rt.dataverse.stats.requests.items()}}  # fmt: skip
            print(f"{label}: {elapsed:.2f} s, {sum(requests.values())} requests {requests}, "
                  f"entries {report.entries}, items {report.items}, {report.counts}")  # fmt: skip

        measure("nothing posted", [])
        measure("10 items moved", numbers[:10])
        measure(f"{args.moved:,} items moved", numbers[: args.moved])
        quantities = [p["quantityonhand"] for p in dv_app.state.sandbox.rows("products")]
        print(f"products with quantityonhand 6 / 3: {quantities.count(6)} / {quantities.count(3)}")
    finally:
        for server in servers:
            server.stop()
        azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
