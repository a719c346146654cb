"""Both sandboxes in their own process, so a benchmark measures the service's memory, not theirs.

`python -m bench.sandboxes --bc-port P --dv-port Q [--customers N]` prints `ready` when it listens.
"""

from __future__ import annotations

import argparse
import sys
import threading

from devstack import bc, dataverse
from devstack.bc.config import BcSandboxConfig
from devstack.serve import serve_in_thread


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bc-port", type=int, required=True)
    parser.add_argument("--dv-port", type=int, required=True)
    parser.add_argument("--customers", type=int, default=0)
    parser.add_argument("--coalesce", type=float, default=30.0, help="BC notification window, seconds")
    parser.add_argument(
        "--bc-users", default="", help="more BC users, comma-separated: each token is also the user name"
    )
    parser.add_argument(
        "--bc-queue", type=int, default=None,
        help="BC's queue of requests beyond 5 concurrent per user (95 as in BC; 0: a 6th gets 429 at once)",
    )  # fmt: skip
    args = parser.parse_args()
    config = BcSandboxConfig(coalesce_seconds=args.coalesce)
    config.users.update({token: token.upper() for token in args.bc_users.split(",") if token})
    if args.bc_queue is not None:
        config.max_queue = args.bc_queue
    bc_app = bc.create_app(config)
    if args.customers:
        bc_app.state.sandbox.seed_customers(args.customers)
    servers = [serve_in_thread(bc_app, args.bc_port), serve_in_thread(dataverse.create_app(), args.dv_port)]
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
