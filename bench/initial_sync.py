"""Initial sync of N customers into an empty Dataverse (target in docs/architecture.md#request-budget:
100,000 in under 3 minutes, under 400 API requests, peak RSS under 300 MB).

The sandboxes run in a child process and Azurite in its own, so the peak RSS printed is the
service's. `python -m bench.initial_sync [--customers 100000]`
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import sys
import time

from bench.service import sandboxes, service_settings
from devstack.azurite import start_azurite


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    with contextlib.ExitStack() as running:
        azurite = start_azurite()
        running.callback(azurite.stop)
        ports = running.enter_context(sandboxes("--customers", str(args.customers)))
        os.environ.update(service_settings(azurite.connection_string, ports))
        from shared.runtime import get_runtime
        from shared.sync import bulk

        rt = get_runtime()
        rt.storage.ensure()
        engine = rt.engine
        # Dependencies first, as the nightly resync does (a handful of requests).
        bulk.match_coupling(engine, "SALESPEOPLE", dry_run=False)
        bulk.run_full_resync(engine, "CURRENCY")
        rt.bc.stats.reset()
        rt.dataverse.stats.reset()
        rss_before = _peak_rss_mb()
        started = time.perf_counter()
        run = bulk.run_full_resync(engine, "CUSTOMER")
        elapsed = time.perf_counter() - started
        requests = {**{f"BC {k}": v for k, v in rt.bc.stats.requests.items()},
                    **{f"DV {k}": v for k, v in rt.dataverse.stats.requests.items()}}  # fmt: skip
        print(f"machine: {os.cpu_count()} cores")
        print(f"initial sync of {args.customers:,} customers into an empty Dataverse")
        print(f"  outcome: {run.status} {run.counts}")
        print(f"  wall time: {elapsed:.1f} s  ({args.customers / elapsed:,.0f} records/s)")
        retries = rt.bc.stats.retries + rt.dataverse.stats.retries
        throttled = rt.bc.stats.throttled + rt.dataverse.stats.throttled
        print(f"  API requests: {sum(requests.values())}  (retries {retries}, throttled {throttled})")
        for kind, count in sorted(requests.items()):
            print(f"    {kind}: {count}")
        print(f"  peak RSS of the service process: {_peak_rss_mb():.0f} MB (before: {rss_before:.0f} MB)")
        if run.counts.get("failed"):
            since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
            failed = [
                e
                for e in rt.journal.between(since, dt.datetime.now(dt.UTC), "CUSTOMER")
                if e.outcome == "failed"
            ]
            for entry in failed[:5]:
                print(f"  failed: BC {entry.bc_id}: {entry.error or entry.reason}")
        started = time.perf_counter()
        rt.bc.stats.reset()
        rt.dataverse.stats.reset()
        second = bulk.run_full_resync(engine, "CUSTOMER")
        writes = sum(v for k, v in rt.dataverse.stats.requests.items() if not k.startswith("GET"))
        print(
            f"second full resync: {time.perf_counter() - started:.1f} s, {second.counts}, "
            f"API requests {rt.bc.stats.total + rt.dataverse.stats.total}, writes {writes}"
        )
    return 0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
