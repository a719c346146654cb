"""Micro-benchmark of the BC client against the sandbox on loopback (real limits, real HTTP).

    python -m bench.bench_bc_client [--customers 100000] [--updates 1000]

Prints, for each measure, the API requests the client sent and the seconds it took.
"""

from __future__ import annotations

import argparse
import time

from devstack.bc import DEFAULT_COMPANY_ID, BcSandboxConfig, create_app
from devstack.serve import serve_in_thread
from shared.connectors.business_central import BusinessCentralClient
from shared.connectors.credentials import StaticTokenCredential


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=1000)
    args = parser.parse_args()

    app = create_app(BcSandboxConfig(sample_data=False))
    sandbox = app.state.sandbox
    server = serve_in_thread(app)
    try:
        started = time.perf_counter()
        sandbox.seed_customers(args.customers)
        print(f"seed {args.customers:,} customers (in process): {time.perf_counter() - started:.2f} s")

        base = f"{server.url}/v2.0/contoso/production/api/v2.0"
        with BusinessCentralClient(base, StaticTokenCredential("integration-user")) as client:
            started = time.perf_counter()
            rows = list(client.query(DEFAULT_COMPANY_ID, "customers"))
            report(f"read {len(rows):,} customers", client, time.perf_counter() - started)

            client.stats.reset()
            started = time.perf_counter()
            for n, row in enumerate(rows[: args.updates]):
                client.update(
                    DEFAULT_COMPANY_ID,
                    "customers",
                    row["id"],
                    {"city": f"Bench {n}"},
                    etag=row["@odata.etag"],
                )
            report(f"{args.updates:,} single-record updates", client, time.perf_counter() - started)
        print(f"sandbox counters: {sandbox.counters.snapshot()}")
    finally:
        server.stop()


def report(what: str, client: BusinessCentralClient, seconds: float) -> None:
    stats = client.stats
    print(
        f"{what}: {stats.total} requests, {seconds:.2f} s "
        f"(retries {stats.retries}, throttled {stats.throttled})"
    )


if __name__ == "__main__":
    main()
