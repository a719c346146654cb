"""Notification-to-write latency and API requests per change at a steady rate (DESIGN.md §6).

The whole local stack runs in this process (Azurite apart). Customers are coupled first with a
full resync; then an ordinary BC user changes one customer every 1/rate seconds, and a watcher
sees when the Dataverse account holds the new value. Latency is measured from the change in BC to
the value in Dataverse, so it *includes* BC's notification window (50 ms here; 30 s in real BC):
it is an upper bound of "notification received -> counterpart written".

Also reported: API requests per change (what the service sent to BC and Dataverse, divided by the
number of changes), echoes dropped without a request, and 429 answers (the sandboxes run the real
service-protection limits: 6,000 requests per 5 minutes per user).

`python -m bench.latency [--rate 20] [--seconds 60]`
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

from devstack.bc.config import BcSandboxConfig
from devstack.serve import free_port
from devstack.stack import StackPorts, start_stack


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--customers", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ports = StackPorts(*(free_port() for _ in range(6)))
    stack = start_stack(
        ports,
        bc_config=BcSandboxConfig(coalesce_seconds=0.05),
        host_json_overrides={"extensions": {"queues": {"maxPollingInterval": "00:00:00.1"}}},
    )
    try:
        from shared import bulk
        from shared.registration import ensure_bc_subscriptions, ensure_dataverse_webhooks
        from shared.runtime import get_runtime

        rt = get_runtime()
        bc_sandbox, dv_sandbox = stack.bc_app.state.sandbox, stack.dataverse_app.state.sandbox
        ids = bc_sandbox.seed_customers(args.customers)
        ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings)
        ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings)
        bulk.run_full_resync(rt.engine, "CURRENCY")
        bulk.run_full_resync(rt.engine, "CUSTOMER")
        dv_of = {bc_id: rt.couplings.get("CUSTOMER", "bc", bc_id).dv_id for bc_id in ids}  # type: ignore[union-attr]
        time.sleep(1)  # let the initial sync's echoes drain
        rt.bc.stats.reset()
        rt.dataverse.stats.reset()
        dv_webhooks_before = len(dv_sandbox.webhooks.deliveries())

        pending: dict[str, tuple[str, float]] = {}
        latencies: list[float] = []
        lock = threading.Lock()
        done = threading.Event()

        def watch() -> None:
            while not (done.is_set() and not pending):
                with lock:
                    items = list(pending.items())
                for bc_id, (phone, started) in items:
                    row = dv_sandbox.get("accounts", dv_of[bc_id])
                    if row is not None and row.get("telephone1") == phone:
                        with lock:
                            latencies.append(time.perf_counter() - started)
                            pending.pop(bc_id, None)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        total = int(args.rate * args.seconds)
        began = time.perf_counter()
        for n in range(total):
            target = began + n / args.rate
            time.sleep(max(0.0, target - time.perf_counter()))
            bc_id = ids[n % len(ids)]
            with lock:
                if bc_id in pending:
                    continue  # still in flight: pick it again later rather than measure two at once
            phone = f"+1 555 {n:07d}"
            with lock:
                pending[bc_id] = (phone, time.perf_counter())
            bc_sandbox.change("customers", bc_id, {"phoneNumber": phone})
        done.set()
        watcher.join(timeout=60)
        time.sleep(1)
        requests = rt.bc.stats.total + rt.dataverse.stats.total
        throttled = rt.bc.stats.throttled + rt.dataverse.stats.throttled
        echoes = len(dv_sandbox.webhooks.deliveries()) - dv_webhooks_before
        ms = {p: percentile(latencies, p) * 1000 for p in (50, 95, 99)} if latencies else {}
        lines = [
            f"machine: {os.cpu_count()} cores",
            f"steady load: {args.rate:g} BC changes/s for {args.seconds:g} s "
            f"({len(latencies)} measured, {len(pending)} never arrived)",
            "  change in BC -> value in Dataverse (includes the 50 ms BC notification window): "
            + (", ".join(f"p{p} {v:.0f} ms" for p, v in ms.items()) if ms else "no samples"),
            f"  API requests: {requests} for {len(latencies)} changes = "
            f"{requests / max(1, len(latencies)):.2f} per change",
            f"    BC: {dict(rt.bc.stats.requests)}",
            f"    Dataverse: {dict(rt.dataverse.stats.requests)}",
            f"  echoes (our own Dataverse writes notified back): {echoes}, dropped with 0 API requests",
            f"  429 answers: BC {rt.bc.stats.throttled}, Dataverse {rt.dataverse.stats.throttled} "
            f"({100 * throttled / max(1, requests):.2f}% of requests)",
        ]
        print("\n".join(lines))
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
