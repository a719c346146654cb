"""Notification-to-write latency and API requests per change at a steady rate.

Targets: docs/architecture.md#request-budget.

Three processes, as in production: the service (dev host + function app) here, both sandboxes in
a child process (`bench.sandboxes`), Azurite in its own. Customers are coupled first with a full
resync; then an ordinary BC user changes one customer every 1/rate seconds over HTTP. Latency is
from the moment the change was made in BC to the moment the service finished writing it to
Dataverse (the journal entry's time), so it *includes* BC's notification window (50 ms here, 30 s in
real BC): an upper bound of "notification received -> counterpart written".

Also reported: API requests per change (what the service sent to BC and Dataverse, divided by the
number of changes), echoes dropped without a request, and 429 answers (the sandboxes run the real
service-protection limits: 6,000 requests per 5 minutes per user).

`python -m bench.latency [--rate 20] [--seconds 60] [--companies 2]` (`--companies 2`: two BC companies
with one Dataverse, so every message carries its company and Dataverse rows their company tag; the
changes are made in the first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import subprocess
import sys
import time

import httpx

from devstack.azurite import start_azurite
from devstack.serve import free_port
from devstack.stack import BC_ENVIRONMENT, BC_TENANT, INTEGRATION_TOKEN, REPO, start_dev_host


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--companies", type=int, choices=(1, 2), default=1, help="BC companies synchronized")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    azurite = start_azurite()
    bc_port, dv_port, host_port = free_port(), free_port(), free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.sandboxes", "--bc-port", str(bc_port), "--dv-port", str(dv_port),
         "--customers", str(args.customers), "--coalesce", "0.05"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    host = server = None
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("sandboxes did not start")
        from devstack.bc import DEFAULT_COMPANY_ID, SECOND_COMPANY_ID

        bc_url = f"http://127.0.0.1:{bc_port}/v2.0/{BC_TENANT}/{BC_ENVIRONMENT}/api/v2.0"
        os.environ.update({
            "AzureWebJobsStorage": azurite.connection_string, "SYNC_QUEUE_NAME": "sync-requests",
            "DATAVERSE_URL": f"http://127.0.0.1:{dv_port}", "DATAVERSE_STATIC_TOKEN": INTEGRATION_TOKEN,
            "DATAVERSE_WEBHOOK_SECRET": "bench-secret-0123456789",
            "BC_API_URL": bc_url,
            "BC_COMPANY_IDS": ",".join([DEFAULT_COMPANY_ID, SECOND_COMPANY_ID][: args.companies]),
            "BC_STATIC_TOKEN": INTEGRATION_TOKEN,
            "BC_WEBHOOK_CLIENT_STATE": "bench-client-state-0123456789",
            "SERVICE_PUBLIC_URL": f"http://127.0.0.1:{host_port}",
            "MAPPINGS_FILE": str(REPO / "mappings" / "default.yaml"),
            # timers stay quiet during the measurement
            "DELTA_POLL_SCHEDULE": "0 0 0 1 1 *", "FULL_RESYNC_SCHEDULE": "0 0 0 1 1 *",
            "SUBSCRIPTION_UPKEEP_SCHEDULE": "0 0 0 1 1 *", "STATISTICS_SCHEDULE": "0 0 0 1 1 *",
        })  # fmt: skip
        from shared.feeds.registration import ensure_bc_subscriptions, ensure_dataverse_webhooks
        from shared.runtime import get_runtime
        from shared.sync import bulk

        host, server = start_dev_host(
            host_port, host_json_overrides={"extensions": {"queues": {"maxPollingInterval": "00:00:00.1"}}}
        )
        rt = get_runtime()
        if rt.multi_company:
            from shared.ops.companies import bring_in_companies

            # What set-up does: pin the home company, create the Dataverse company rows (and queue
            # the second company's initial sync, which the host runs now).
            bring_in_companies(rt, rt.mappings, dv_ok=True, bc_names={})
            rt = rt.for_company(DEFAULT_COMPANY_ID)
        ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings)
        ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings)
        bulk.run_full_resync(rt.engine, "CURRENCY")
        bulk.run_full_resync(rt.engine, "CUSTOMER")
        company = f"{bc_url}/companies({DEFAULT_COMPANY_ID})"
        sales = httpx.Client(headers={"Authorization": "Bearer sales-user"}, timeout=30)
        customers = sales.get(
            f"{company}/customers", params={"$select": "id,number", "$top": str(args.customers)}
        )
        ids = [c["id"] for c in customers.json()["value"] if c["number"].startswith("C1")]
        time.sleep(2)  # let the initial sync's echoes drain
        rt.bc.stats.reset()
        rt.dataverse.stats.reset()

        changed_at: dict[str, list[dt.datetime]] = {}
        total = int(args.rate * args.seconds)
        began = time.perf_counter()
        for n in range(total):
            time.sleep(max(0.0, began + n / args.rate - time.perf_counter()))
            bc_id = ids[n % len(ids)]
            when = dt.datetime.now(dt.UTC)
            # `If-Match: *` (no read first) keeps the sender, one BC user, within that user's
            # 6,000 requests per 5 minutes for runs longer than 150 s at 20 changes/s.
            sales.patch(
                f"{company}/customers({bc_id})", json={"phoneNumber": f"+1 555 {n:07d}"},
                headers={"If-Match": "*"},
            ).raise_for_status()  # fmt: skip
            changed_at.setdefault(bc_id, []).append(when)
        lag = time.perf_counter() - began - args.seconds
        deadline = time.monotonic() + 120
        latencies: list[float] = []
        while time.monotonic() < deadline:
            latencies = _latencies(rt, changed_at)
            if len(latencies) >= total:
                break
            time.sleep(1)
        requests = rt.bc.stats.total + rt.dataverse.stats.total
        throttled = rt.bc.stats.throttled + rt.dataverse.stats.throttled
        ms = {p: percentile(latencies, p) * 1000 for p in (50, 95, 99)} if latencies else {}
        print("\n".join([
            f"machine: {os.cpu_count()} cores; service, sandboxes and Azurite in separate processes",
            f"steady load: {args.rate:g} BC changes/s for {args.seconds:g} s (sender lagged {lag:.1f} s); "
            f"{len(latencies)} of {total} changes written to Dataverse",
            "  change in BC -> written to Dataverse (includes the 50 ms BC notification window): "
            + (", ".join(f"p{p} {v:.0f} ms" for p, v in ms.items()) if ms else "no samples"),
            f"  API requests by the service: {requests} for {total} changes = "
            f"{requests / total:.2f} per change",
            f"    BC: {dict(rt.bc.stats.requests)}",
            f"    Dataverse: {dict(rt.dataverse.stats.requests)}",
            "  echoes of our own Dataverse writes: dropped at the webhook, 0 API requests",
            f"  429 answers: BC {rt.bc.stats.throttled}, Dataverse {rt.dataverse.stats.throttled} "
            f"({100 * throttled / max(1, requests):.2f}% of requests)",
        ]))  # fmt: skip
    finally:
        if host is not None:
            host.stop()
        if server is not None:
            server.stop()
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)
        azurite.stop()
    return 0


def _latencies(rt: object, changed_at: dict[str, list[dt.datetime]]) -> list[float]:
    """Per change: the journal's first `modified` entry after it, minus the change time."""
    out: list[float] = []
    for bc_id, times in changed_at.items():
        written = sorted(e.at for e in rt.journal.history("CUSTOMER", "bc", bc_id, limit=200)  # type: ignore[attr-defined]
                         if e.outcome == "modified")  # fmt: skip
        for when in times:
            after = [w for w in written if w >= when]
            if after:
                out.append((after[0] - when).total_seconds())
                written.remove(after[0])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
