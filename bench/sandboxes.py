"""Both sandboxes in their own process, so a benchmark measures the service's memory, not theirs.

`python -m bench.sandboxes --bc-port P --dv-port Q [--customers N] [--invoices N --lines L]` prints
`ready` when it listens. Dataverse has the Sales solution installed (as `bcsync setup` leaves it)
unless `--without-solution` (for a bench that runs set-up itself). With `--invoices`: 100 customers
(one more, blocked for shipping, so out of CUSTOMER's scope: its invoices cannot be coupled), 20
items, and N posted invoices of L lines, every 100th of the blocked customer.
"""

from __future__ import annotations

import argparse
import sys
import threading

from devstack import bc, dataverse, sales_solution
from devstack.bc.config import BcSandboxConfig
from devstack.serve import serve_in_thread


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bc-port", type=int, required=True)
    parser.add_argument("--dv-port", type=int, required=True)
    parser.add_argument("--customers", type=int, default=0)
    parser.add_argument("--invoices", type=int, default=0)
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--coalesce", type=float, default=30.0, help="BC notification window, seconds")
    parser.add_argument(
        "--bc-users", default="", help="more BC users, comma-separated: each token is also the user name"
    )
    parser.add_argument(
        "--bc-queue", type=int, default=None,
        help="BC's queue of requests beyond 5 concurrent per user (95 as in BC; 0: a 6th gets 429 at once)",
    )  # fmt: skip
    parser.add_argument(
        "--bc-retry-delays", default="",
        help="BC's delays before its 5 notification retries, seconds, comma-separated (BC: 60,60,600,...)",
    )  # fmt: skip
    parser.add_argument("--without-solution", action="store_true", help="no Sales solution in Dataverse")
    args = parser.parse_args()
    config = BcSandboxConfig(coalesce_seconds=args.coalesce)
    if args.bc_retry_delays:
        config.retry_delays_seconds = tuple(float(s) for s in args.bc_retry_delays.split(","))
    config.users.update({token: token.upper() for token in args.bc_users.split(",") if token})
    if args.bc_queue is not None:
        config.max_queue = args.bc_queue
    bc_app = bc.create_app(config)
    if args.customers:
        bc_app.state.sandbox.seed_customers(args.customers)
    if args.invoices:
        _seed_invoices(bc_app.state.sandbox, args.invoices, args.lines)
    dv_app = dataverse.create_app()
    if not args.without_solution:
        sales_solution.install(dv_app.state.sandbox)  # Dataverse as `bcsync setup` leaves it
    servers = [serve_in_thread(bc_app, args.bc_port), serve_in_thread(dv_app, args.dv_port)]
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        for server in servers:
            server.stop()
    return 0


def _seed_invoices(sandbox: bc.BcSandbox, invoices: int, lines: int) -> None:
    store, company = sandbox.store, sandbox.company_id
    customers = [store.get(company, "customers", i)["number"] for i in sandbox.seed_customers(100)]
    [blocked] = sandbox.seed("customers", [{"displayName": "Blocked Customer", "blocked": "Ship"}])
    items = [f"B{n:04d}" for n in range(20)]
    sandbox.seed("items", [
        {"number": n, "displayName": f"Bench item {n}", "unitPrice": 10 + i, "baseUnitOfMeasureCode": "PCS"}
        for i, n in enumerate(items)
    ])  # fmt: skip
    uncoupled = store.get(company, "customers", blocked)["number"]
    customers = [uncoupled if n % 100 == 99 else customers[n % 100] for n in range(100)]
    sandbox.seed_posted_invoices(customers, items, invoices, lines)


if __name__ == "__main__":
    threading.current_thread().name = "sandboxes"
    sys.exit(main())
