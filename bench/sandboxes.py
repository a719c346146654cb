"""Both sandboxes in their own process, so a benchmark measures the service's memory, not theirs.

`python -m bench.sandboxes --bc-port P --dv-port Q [--customers N]` prints `ready` when it listens.
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
    parser.add_argument("--coalesce", type=float, default=30.0, help="BC notification window, seconds")
    args = parser.parse_args()
    bc_app = bc.create_app(BcSandboxConfig(coalesce_seconds=args.coalesce))
    if args.customers:
        bc_app.state.sandbox.seed_customers(args.customers)
    dv_app = dataverse.create_app()
    sales_solution.install(dv_app.state.sandbox)  # Dataverse as `bcsync setup` leaves it
    servers = [serve_in_thread(bc_app, args.bc_port), serve_in_thread(dv_app, args.dv_port)]
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "sandboxes"
    sys.exit(main())
