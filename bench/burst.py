"""Bursts (issue 20): many records changed at once in Sales, and a sustained rate on each side.

Three processes, as in production: the service (dev host + function app) here, both sandboxes in
a child process (`bench.service.sandboxes`, the real service-protection limits), Azurite in its own.

- Burst (default): N accounts created in Sales by one user with `CreateMultiple` (1,000 per request),
  so Dataverse sends N webhooks to the dev host. Prints the time until all N are in BC and coupled,
  the service's API requests per side, 429 answers, its storage requests (Azurite's work and much
  of the service process's), and the service process's peak RSS.
- Sustained (`--rate R --seconds S`): N customers coupled first (a full resync), then changes at R
  per second *on each side* for S seconds (`--side dv|bc|both`), made by people in another process,
  each side on its own half of the pairs (a pair changed on both sides within the service's latency
  would be a conflict left to an operator, not a measure): in Sales as `UpdateMultiple` every
  200 ms, in BC as single PATCHes in parallel, spread over several BC users (one user alone may send
  6,000 requests per 5 minutes). Prints p50/p95/p99 from the change to the journal entry of its write
  on the other side (for BC it includes BC's 50 ms notification window), API requests per change,
  429s, and changes lost (a final value missing on the other side), each explained.

    python -m bench.burst [--accounts 10000] [--quick]
    python -m bench.burst --rate 100 --seconds 300 [--side both] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import multiprocessing
import os
import resource
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import httpx

from bench.latency import percentile
from bench.service import StorageRequests, sandboxes, service_settings
from devstack.azurite import start_azurite
from devstack.serve import free_port
from devstack.stack import start_dev_host

NEVER = "0 0 0 1 1 *"
SENDERS = [f"bench-sender-{n}" for n in range(8)]  # BC users making the BC-side changes
# A change made by a person: side, BC id, Dataverse id, when, the phone number set
Change = tuple[str, str, str, dt.datetime, str]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=10_000, help="burst: accounts created in Sales")
    parser.add_argument("--rate", type=float, default=0.0, help="sustained: changes per second")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--side", choices=("dv", "bc", "both"), default="both")
    parser.add_argument("--customers", type=int, default=2000, help="sustained: coupled pairs changed")
    parser.add_argument("--quick", action="store_true", help="a small run: 1,000 accounts, or 30 s")
    args = parser.parse_args()
    if args.quick:
        args.accounts, args.seconds = min(args.accounts, 1000), min(args.seconds, 30.0)
    logging.basicConfig(level=logging.ERROR)
    sustained = args.rate > 0
    with contextlib.ExitStack() as running:
        azurite = start_azurite()
        running.callback(azurite.stop)
        storage = running.enter_context(StorageRequests())
        flags = ["--coalesce", "0.05", "--bc-users", ",".join(SENDERS)]
        if sustained:
            flags += ["--customers", str(args.customers)]
        ports = running.enter_context(sandboxes(*flags))
        host_port = free_port()
        os.environ.update(service_settings(
            azurite.connection_string, ports, SERVICE_PUBLIC_URL=f"http://127.0.0.1:{host_port}",
            SYNC_QUEUE_NAME="sync-requests", DELTA_POLL_SCHEDULE=NEVER, FULL_RESYNC_SCHEDULE=NEVER,
            SUBSCRIPTION_UPKEEP_SCHEDULE=NEVER, STATISTICS_SCHEDULE=NEVER,
        ))  # fmt: skip
        from shared.feeds.registration import ensure_bc_subscriptions, ensure_dataverse_webhooks
        from shared.runtime import get_runtime
        from shared.sync import bulk

        rt = get_runtime()
        rt.storage.ensure()
        host, server = start_dev_host(
            host_port, host_json_overrides={"extensions": {"queues": {"maxPollingInterval": "00:00:00.1"}}}
        )
        running.callback(host.stop)
        running.callback(server.stop)
        ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings)
        ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings)
        bulk.run_full_resync(rt.engine, "CURRENCY")
        if sustained:
            bulk.run_full_resync(rt.engine, "CUSTOMER")
        _settle(rt)
        print(f"machine: {os.cpu_count()} cores, load average {_load()} at the start")
        if sustained:
            return _sustained(rt, ports, args, storage)
        return _burst(rt, ports, args.accounts, storage)


# ------------------------------------------------------------------------------------- burst
def _burst(rt: Any, ports: Any, count: int, storage: StorageRequests) -> int:
    sales = httpx.Client(
        base_url=f"http://127.0.0.1:{ports.dv}/api/data/v9.2/",
        headers={"Authorization": "Bearer sales-user"}, timeout=120,
    )  # fmt: skip
    _reset(rt, storage)
    rss_before = _peak_rss_mb()
    tag = uuid.uuid4().hex[:6].upper()
    started = time.monotonic()
    for start in range(0, count, 1000):
        targets = [
            {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"Burst {tag} {n:05d}",
             "customertypecode": 3, "telephone1": f"555-{n:05d}"}
            for n in range(start, min(count, start + 1000))
        ]  # fmt: skip
        sales.post(
            "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets}
        ).raise_for_status()
    created = time.monotonic() - started
    deadline = time.monotonic() + max(600.0, count / 5)
    # Polled as a BC user would count them (one `$count` request of another user than the service's),
    # not by scanning the couplings every 2 s: a scan of 10,000 rows is Azurite work the service
    # would be measured with. The couplings are checked once BC has them all.
    bc_count = f"{_bc_company(ports)}/customers/$count?$filter=startswith(displayName,'Burst {tag}')"
    person = {"Authorization": f"Bearer {SENDERS[0]}"}
    coupled = 0
    while time.monotonic() < deadline:
        if int(httpx.get(bc_count, headers=person, timeout=30).text) >= count:
            coupled = sum(1 for c in rt.couplings.each("CUSTOMER") if c.state == "coupled" and c.bc_id)
            if coupled >= count:
                break
        time.sleep(1)
    elapsed = time.monotonic() - started
    _settle(rt)
    in_bc = list(
        rt.engine.bc.query_set("customers", select=["id"], filter=f"startswith(displayName,'Burst {tag}')")
    )
    print(f"burst: {count:,} accounts created in Sales with CreateMultiple in {created:.1f} s")
    print(f"  all in BC and coupled: {coupled:,} of {count:,} after {elapsed:.1f} s "
          f"(load average {_load()}); "
          f"{len(in_bc):,} BC customers (duplicates: {max(0, len(in_bc) - count)})")  # fmt: skip
    _print_requests(rt, count, "account", storage)
    print(f"  peak RSS of the service process: {_peak_rss_mb():.0f} MB (before: {rss_before:.0f} MB)")
    return 0 if coupled >= count and len(in_bc) == count else 1


def _bc_company(ports: Any) -> str:
    from devstack.bc import DEFAULT_COMPANY_ID
    from devstack.stack import BC_ENVIRONMENT, BC_TENANT

    return f"http://127.0.0.1:{ports.bc}/v2.0/{BC_TENANT}/{BC_ENVIRONMENT}/api/v2.0/companies({DEFAULT_COMPANY_ID})"


# --------------------------------------------------------------------------------- sustained
def _sustained(rt: Any, ports: Any, args: argparse.Namespace, storage: StorageRequests) -> int:
    pairs = [(c.bc_id, c.dv_id) for c in rt.couplings.each("CUSTOMER") if c.state == "coupled" and c.bc_id]
    sides = ["dv", "bc"] if args.side == "both" else [args.side]
    _reset(rt, storage)
    total = int(args.rate * args.seconds * len(sides))
    began = time.perf_counter()
    # The people are another process, as they are in production: in this one they would share the
    # service's interpreter lock and lag behind their own schedule when the service is busy.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as people:
        changes, lag = people.submit(
            _make_changes, ports.dv, _bc_company(ports), pairs, sides, args.rate, args.seconds
        ).result()
    sent = time.perf_counter() - began
    # A service that fell behind drains its backlog here (about 50 changes/s on the 2-core machine).
    drained = _settle(rt, timeout=max(300.0, total / 20))
    settled = time.perf_counter() - began
    latencies, lost, conflicts = _latencies_and_lost(rt, changes, pairs, began)
    print(f"sustained: {args.rate:g} changes/s on each of {'+'.join(sides)} for {args.seconds:g} s "
          f"({total} changes sent in {sent:.1f} s, the people lagging {lag:.1f} s at most; "
          + (f"queue empty after {settled:.0f} s" if drained else f"queue NOT empty after {settled:.0f} s")
          + f"; load average {_load()})")  # fmt: skip
    ms = {p: percentile(latencies, p) * 1000 for p in (50, 95, 99)} if latencies else {}
    print("  change -> written on the other side: "
          + (", ".join(f"p{p} {v:.0f} ms" for p, v in ms.items()) if ms else "no samples")
          + f" ({len(latencies)} of {total} changes seen written)")  # fmt: skip
    _print_requests(rt, total, "change", storage)
    print(f"  lost: {lost} (records whose last value is not on the other side, not in conflict)")
    print(f"  conflicts: {conflicts} (changed on both sides before either was synchronized; the policy "
          "leaves them to an operator)")  # fmt: skip
    return 0 if lost == 0 else 1


def _make_changes(
    dv_port: int, bc_company: str, pairs: list[tuple[str, str]], sides: list[str], rate: float, seconds: float
) -> tuple[list[Change], float]:
    """Every 100 ms, one side's share of the changes: in Sales one `UpdateMultiple`, in BC single
    PATCHes sent in parallel by several users. Returns the changes and how far behind schedule the
    people fell at most."""
    bc_people = [httpx.Client(headers={"Authorization": f"Bearer {u}"}, timeout=30) for u in SENDERS]
    sales = httpx.Client(
        base_url=f"http://127.0.0.1:{dv_port}/api/data/v9.2/",
        headers={"Authorization": "Bearer sales-user"}, timeout=30,
    )  # fmt: skip
    total = int(rate * seconds * len(sides))
    per_tick = max(1, round(rate * len(sides) / 10))
    changes: list[Change] = []
    began = time.perf_counter()
    lag = 0.0
    n = tick = 0
    made = dict.fromkeys(sides, 0)
    with ThreadPoolExecutor(max_workers=len(bc_people)) as pool:
        while n < total:
            lag = max(lag, time.perf_counter() - (began + tick * 0.1))
            time.sleep(max(0.0, began + tick * 0.1 - time.perf_counter()))
            side = sides[tick % len(sides)]
            # Each side changes its own half of the pairs: a pair changed on both sides within the
            # service's latency would be a conflict the policy leaves to an operator, not a measure.
            mine = pairs[sides.index(side) :: len(sides)]
            batch = [
                (*mine[(made[side] + i) % len(mine)], f"+1 555 {n + i:07d}")
                for i in range(min(per_tick, total - n))
            ]
            made[side] += len(batch)
            n += len(batch)
            when = dt.datetime.now(dt.UTC)
            if side == "dv":
                targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid": dv, "telephone1": v}
                           for _, dv, v in batch]  # fmt: skip
                sales.post(
                    "accounts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets}
                ).raise_for_status()
            else:

                def patch(i: int, bc: str, value: str) -> None:
                    bc_people[i % len(bc_people)].patch(
                        f"{bc_company}/customers({bc})",
                        json={"phoneNumber": value},
                        headers={"If-Match": "*"},
                    ).raise_for_status()

                list(pool.map(patch, range(len(batch)), [b for b, _, _ in batch], [v for _, _, v in batch]))
            changes.extend((side, bc, dv, when, v) for bc, dv, v in batch)
            tick += 1
    return changes, lag


def _latencies_and_lost(
    rt: Any, changes: list[Change], pairs: list[tuple[str, str]], began: float
) -> tuple[list[float], int, int]:
    """Per change, the first journal entry of a write from its side after it (a change overtaken by
    a later one of the same record before it was read is written with it: that write counts for both).
    Lost: pairs whose two phone numbers differ at the end, unless the pair is in conflict (counted apart)."""
    start = changes[0][3] - dt.timedelta(seconds=5) if changes else dt.datetime.now(dt.UTC)
    written: dict[tuple[str, str], list[dt.datetime]] = {}
    for e in rt.journal.between(start, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1), "CUSTOMER"):
        if e.outcome in ("modified", "conflict") and e.source in ("bc", "dv"):
            key = (e.source, e.bc_id if e.source == "bc" else e.dv_id)
            written.setdefault(key, []).append(e.at)
    for times in written.values():
        times.sort()
    out: list[float] = []
    for side, bc, dv, when, _ in changes:
        times = written.get((side, bc if side == "bc" else dv), [])
        after = next((t for t in times if t >= when), None)
        if after is not None:
            out.append((after - when).total_seconds())
    lost = 0
    by_bc = {bc: dv for bc, dv in pairs}
    touched = {c[1] for c in changes}
    select = ["id", "phoneNumber"]
    bc_values = {
        str(r["id"]): r.get("phoneNumber") for r in rt.engine.bc.query_set("customers", select=select)
    }
    customer = rt.mappings.entity("CUSTOMER")
    dv_values = {
        str(r["accountid"]): r.get("telephone1")
        for page in rt.engine.dv.query_pages(customer, select=["accountid", "telephone1"], filter=None)
        for r in page
    }
    conflicts = 0
    for bc in touched:
        if bc_values.get(bc) != dv_values.get(by_bc[bc]):
            coupling = rt.couplings.get("CUSTOMER", "bc", bc)
            # Changed on both sides before either was synchronized: a conflict the mapping's policy
            # leaves to an operator (journaled with both values), not a lost change.
            if coupling is not None and coupling.last_result == "conflict":
                conflicts += 1
                continue
            lost += 1
            if lost <= 3:
                dv = by_bc[bc]
                _explain(rt, changes, bc, dv, bc_values.get(bc), dv_values.get(dv), start)
    return out, lost, conflicts


def _explain(
    rt: Any,
    changes: list[Change],
    bc: str,
    dv: str,
    in_bc: Any,
    in_dv: Any,
    start: dt.datetime,
) -> None:
    """What a pair left different went through: the changes made, the journal's entries, the final values."""
    print(f"  pair left different: BC {bc} / Dataverse {dv}: BC has {in_bc!r}, Dataverse has {in_dv!r}")
    for side, b, _, when, value in changes:
        if b == bc:
            print(f"    changed on {side} at {when.time()} to {value!r}")
    for e in rt.journal.between(start, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1), "CUSTOMER"):
        if e.bc_id == bc or e.dv_id == dv:
            print(f"    journal {e.at.time()} {e.outcome} source={e.source} {e.direction} {e.reason} "
                  f"{e.error} {e.changes}")  # fmt: skip


# ----------------------------------------------------------------------------------- helpers
def _print_requests(rt: Any, changes: int, unit: str, storage: StorageRequests) -> None:
    bc, dv = rt.bc.stats, rt.dataverse.stats
    total = bc.total + dv.total
    throttled = bc.throttled + dv.throttled
    print(f"  API requests: BC {bc.total}, Dataverse {dv.total} ({total / max(1, changes):.3f} per {unit})")
    print(f"    BC: {dict(bc.requests)}")
    print(f"    Dataverse: {dict(dv.requests)}")
    print(f"  429 answers: BC {bc.throttled}, Dataverse {dv.throttled} "
          f"({100 * throttled / max(1, total):.2f}% of requests)")  # fmt: skip
    top = ", ".join(f"{k} {v}" for k, v in storage.counts.most_common(6))
    per = storage.total / max(1, changes)
    print(f"  storage requests of the service: {storage.total} ({per:.1f} per {unit}; {top})")


def _reset(rt: Any, storage: StorageRequests) -> None:
    rt.bc.stats.reset()
    rt.dataverse.stats.reset()
    storage.reset()


def _settle(rt: Any, timeout: float = 60.0) -> bool:
    """Until the queue stays empty for 2 s (the initial sync's echoes, the burst's tail); whether it did."""
    queue = rt.storage.queue()
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if int(queue.get_queue_properties().approximate_message_count or 0) == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:
                return True
        else:
            quiet_since = None
        time.sleep(0.5)
    return False


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
