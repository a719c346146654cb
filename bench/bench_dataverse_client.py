"""Requests and seconds for the Dataverse client against the local sandbox (real service limits).

    python -m bench.bench_dataverse_client [--rows 100000]

1. seed N accounts straight into the sandbox's store (not timed as API work);
2. read them all through `DataverseClient.query_pages` (pages of 5,000);
3. bulk-upsert N accounts through `DataverseClient.upsert_multiple` (1,000 per request);
4. read the changes since the start through `DataverseClient.changes`.
"""

from __future__ import annotations

import argparse
import time
import uuid

from devstack.dataverse import create_app
from devstack.serve import serve_in_thread
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.dataverse import DataverseClient

NAMESPACE = uuid.UUID("2f1c3f4e-0000-4000-8000-00000000be7c")


def account(i: int) -> dict[str, object]:
    return {
        "accountid": str(uuid.uuid5(NAMESPACE, f"customer:{i}")),
        "name": f"Customer {i:06d}",
        "accountnumber": f"C{i:06d}",
        "telephone1": f"+1 555 {i % 10000:04d}",
        "address1_city": "Seattle",
        "creditlimit": float(i % 5000),
        "customertypecode": 3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows

    app = create_app()
    sandbox = app.state.sandbox
    handle = serve_in_thread(app)
    client = DataverseClient(f"{handle.url}/api/data/v9.2/", StaticTokenCredential("integration-user"))
    try:
        started = time.perf_counter()
        sandbox.seed("accounts", [account(i) for i in range(rows)])
        print(f"seed {rows:,} accounts in the store: {time.perf_counter() - started:.2f} s")
        baseline = client.changes("accounts", select=["name"], delta_link=None)
        client.stats.reset()

        started = time.perf_counter()
        count = sum(
            len(page)
            for page in client.query_pages("accounts", select=["name", "accountnumber", "telephone1"])
        )
        print(
            f"read {count:,} accounts: {client.stats.total} requests, {time.perf_counter() - started:.2f} s"
        )
        client.stats.reset()

        started = time.perf_counter()
        updates = [{**account(i), "name": f"Customer {i:06d} (updated)"} for i in range(rows)]
        results = client.upsert_multiple("accounts", updates)
        failed = sum(1 for r in results if not r.ok)
        elapsed = time.perf_counter() - started
        print(
            f"upsert {len(results):,} accounts: {client.stats.total} requests, {elapsed:.2f} s, "
            f"{failed} failed"
        )
        client.stats.reset()

        started = time.perf_counter()
        delta = client.changes("accounts", select=["name"], delta_link=baseline.delta_link)
        elapsed = time.perf_counter() - started
        print(
            f"changes since start: {len(delta.upserted):,} rows, {client.stats.total} requests, "
            f"{elapsed:.2f} s"
        )
        print(
            f"sandbox counters: {sandbox.counters.snapshot()['total']} requests, "
            f"throttled {sandbox.counters.snapshot()['throttled']}"
        )
    finally:
        client.close()
        handle.stop()


if __name__ == "__main__":
    main()
