"""What BC's notifications cost the service as BC really sends them (issue 11).

1. A bare `collection` (BC sends it without a `$filter` when any change in the burst is a delete):
   1,500 changes and 10 deletes in a set of 100,000 coupled customers. The service sweeps BC's ids
   and times (`shared.sync.bulk.sweep_bc`) and handles each deletion by the mapping's policy.
2. Echoes under real stamps: the service writes 200 Dataverse changes to BC; BC notifies each
   (stamped before the record's own time, so no stamp equals what the write read back) and the
   service recognises them by value.

CUSTOMER runs with `deletion: propagate`. The sandboxes run in a child process, Azurite in its
own, the coupling of the 100,000 customers (a full resync) in another; the peak RSS printed is that
of the process that swept.

    python -m bench.bare_collection [--customers 100000] [--changes 1500] [--deletes 10] [--echoes 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.service import sandboxes, service_settings
from devstack.azurite import start_azurite
from devstack.serve import free_port
from devstack.stack import REPO

CUSTOMER = "CUSTOMER"
CLIENT_STATE = "bench-client-state-0123456789"
SALES = {"Authorization": "Bearer sales-user"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=1500)
    parser.add_argument("--deletes", type=int, default=10)
    parser.add_argument("--echoes", type=int, default=200)
    parser.add_argument("--phase", choices=["all", "couple", "measure"], default="all")
    args = parser.parse_args()
    if args.phase == "couple":
        return _couple()
    if args.phase == "measure":
        return _measure(args)

    azurite = start_azurite()
    try:
        with sandboxes("--customers", str(args.customers), "--coalesce", "1") as ports:
            # CUSTOMER with `deletion: propagate`, so each deletion does its work (under the default
            # `none` it is a visible failure the operator resolves).
            mappings = yaml.safe_load((REPO / "mappings" / "default.yaml").read_text())
            next(m for m in mappings["mappings"] if m["name"] == CUSTOMER)["deletion"] = "propagate"
            mapping_file = Path(tempfile.mkdtemp()) / "propagate.yaml"
            mapping_file.write_text(yaml.safe_dump(mappings, sort_keys=False))
            os.environ.update(
                service_settings(
                    azurite.connection_string, ports, BC_WEBHOOK_CLIENT_STATE=CLIENT_STATE,
                    MAPPINGS_FILE=str(mapping_file),
                )
            )  # fmt: skip
            base = [sys.executable, "-m", "bench.bare_collection"]
            started = time.perf_counter()
            if subprocess.call([*base, "--phase", "couple"], cwd=REPO) != 0:
                return 1
            print(f"(coupling {args.customers:,} customers took {time.perf_counter() - started:.0f} s)")
            rest = ["--changes", str(args.changes), "--deletes", str(args.deletes),
                    "--echoes", str(args.echoes)]  # fmt: skip
            return subprocess.call([*base, "--phase", "measure", *rest], cwd=REPO)
    finally:
        azurite.stop()


def _couple() -> int:
    from shared.runtime import get_runtime
    from shared.sync import bulk

    rt = get_runtime()
    rt.storage.ensure()
    bulk.match_coupling(rt.engine, "SALESPEOPLE", dry_run=False)
    bulk.run_full_resync(rt.engine, "CURRENCY")
    run = bulk.run_full_resync(rt.engine, CUSTOMER)
    print(f"coupling: {run.status} {run.counts}")
    return 0 if run.status == "succeeded" else 1


def _measure(args: argparse.Namespace) -> int:
    from shared.messages import AnyMessage, SyncMessage
    from shared.runtime import get_runtime
    from shared.sync import bulk

    rt = get_runtime()
    engine = rt.engine
    api = f"{rt.settings.bc_api_url}/companies({rt.company_id})"
    bc = httpx.Client(base_url=api + "/", headers=SALES, timeout=60)
    ids = [r["id"] for page in rt.bc.query_pages(rt.company_id, "customers", select=["id"]) for r in page]
    changed, doomed = ids[: args.changes], ids[args.changes : args.changes + args.deletes]
    # A person's burst in BC (the sandbox would notify it as one bare collection: deletes are in it).
    for record_id in changed:
        bc.patch(
            f"customers({record_id})", json={"city": "Bare"}, headers={"If-Match": "*"}
        ).raise_for_status()
    for record_id in doomed:
        bc.delete(f"customers({record_id})", headers={"If-Match": "*"}).raise_for_status()

    # The two reads the sweep starts with, timed on their own (not counted below).
    started = time.perf_counter()
    marks = sum(1 for _ in engine.couplings.bc_marks(CUSTOMER))
    couplings_read = time.perf_counter() - started
    started = time.perf_counter()
    pages = sum(
        1 for _ in rt.bc.query_pages(rt.company_id, "customers", select=["id", "lastModifiedDateTime"])
    )
    ids_read = time.perf_counter() - started

    queued: list[AnyMessage] = []
    engine.enqueue = lambda messages, delay: queued.extend(messages)  # type: ignore[method-assign]
    rt.bc.stats.reset()
    rt.dataverse.stats.reset()
    rss_before = _peak_rss_mb()
    started = time.perf_counter()
    counts = bulk.sweep_bc(engine, CUSTOMER)
    outcomes: dict[str, int] = {}
    for message in queued:  # the deletions, each a message the processor handles on its own
        assert isinstance(message, SyncMessage)
        result = engine.sync_record(message)
        outcome = str(result.outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "failed":
            print(f"  deletion failed: {result.reason}")
    elapsed = time.perf_counter() - started
    requests = _requests(rt)
    print(f"machine: {os.cpu_count()} cores")
    print(f"bare BC collection: {args.changes:,} changes + {args.deletes} deletes in {len(ids):,} customers")
    print(f"  sweep: {dict(counts)}; deletions ({len(queued)} messages): {outcomes}")
    print(f"  wall time: {elapsed:.1f} s")
    print(f"    read on their own: the couplings' {marks:,} BC ids and times {couplings_read:.1f} s, "
          f"BC's ids and times {pages} pages {ids_read:.1f} s")  # fmt: skip
    print(f"  API requests: {sum(requests.values())}")
    for kind, count in sorted(requests.items()):
        print(f"    {kind}: {count}")
    print(
        f"  peak RSS of the sweeping process: {_peak_rss_mb():.0f} MB (before the sweep: {rss_before:.0f} MB)"
    )
    synced = sum(
        1
        for page in rt.dataverse.query_pages(
            "accounts", select=["address1_city"], filter="address1_city eq 'Bare'"
        )
        for _ in page
    )
    print(f"  accounts with the change: {synced:,} of {args.changes:,}")
    return _echoes(rt, ids[args.changes + args.deletes :][: args.echoes]) if args.echoes else 0


def _echoes(rt: Any, ids: list[str]) -> int:
    """Our own writes to BC come back as notifications stamped as BC stamps them."""
    from devstack.serve import serve_in_thread
    from shared.feeds.intake import BcIntakeConfig, handle_bc_webhook
    from shared.feeds.registration import resource_path
    from shared.messages import SyncMessage

    bodies: list[bytes] = []
    lock = threading.Lock()

    async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            event = await receive()
            body, more = body + event.get("body", b""), event.get("more_body", False)
        token = [v for k, v in _query(scope) if k == "validationToken"]
        if not token:
            with lock:
                bodies.append(body)
        answer = token[0].encode() if token else b""
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": answer})

    server = serve_in_thread(receiver, free_port())
    try:
        rt.bc.create_subscription(
            server.url + "/hook", resource_path(rt.company_id, "customers"), CLIENT_STATE
        )
        engine = rt.engine
        dv = httpx.Client(base_url=f"{rt.settings.dataverse_url}/api/data/v9.2/", headers=SALES, timeout=60)
        couplings = [engine.couplings.get(CUSTOMER, "bc", i) for i in ids]
        for n, c in enumerate(couplings):
            dv.patch(f"accounts({c.dv_id})", json={"telephone1": f"555-{n:04d}"}, headers={"If-Match": "*"})
        for c in couplings:  # the service writes each Dataverse change to BC
            engine.sync_record(SyncMessage(mapping=CUSTOMER, side="dv", id=str(c.dv_id), reason="bench"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(len(json.loads(b)["value"]) for b in list(bodies)) < len(
            ids
        ):
            time.sleep(0.2)
        entries = [e for b in bodies for e in json.loads(b)["value"]]
        config = BcIntakeConfig(CLIENT_STATE, [rt.company_id])
        rt.bc.stats.reset()
        rt.dataverse.stats.reset()
        started = time.perf_counter()
        outcomes: dict[str, int] = {}
        for body in bodies:
            answer = handle_bc_webhook({}, body, config=config, mappings=rt.mappings)
            for message in answer.messages:
                assert isinstance(message, SyncMessage)
                outcome = str(engine.sync_record(message).outcome)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        elapsed = time.perf_counter() - started
        requests = _requests(rt)
        stamps_equal = sum(
            1
            for e in entries
            if e["lastModifiedDateTime"] == _record_time(rt, e["resource"].rsplit("(", 1)[1][:-1])
        )
        writes = sum(v for k, v in requests.items() if " GET " not in k)
        print(f"echoes of {len(ids)} of our BC writes, as BC stamps them ({len(entries)} entries, "
              f"{stamps_equal} stamps equal to the record's time)")  # fmt: skip
        print(f"  outcomes: {outcomes}; {elapsed:.2f} s")
        total = sum(requests.values())
        per_echo = total / max(1, len(entries))
        print(f"  API requests: {total} ({per_echo:.2f} per echo), writes {writes}: {requests}")
    finally:
        server.stop()
    return 0


def _record_time(rt: Any, record_id: str) -> str:
    record = rt.bc.get(rt.company_id, "customers", record_id, select=["lastModifiedDateTime"])
    return str(record["lastModifiedDateTime"]) if record else ""


def _query(scope: dict[str, Any]) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(scope.get("query_string", b"").decode())


def _requests(rt: Any) -> dict[str, int]:
    return {**{f"BC {k}": v for k, v in rt.bc.stats.requests.items()},
            **{f"DV {k}": v for k, v in rt.dataverse.stats.requests.items()}}  # fmt: skip


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
