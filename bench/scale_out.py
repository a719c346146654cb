"""Scale-out: three dev hosts (three processes, as three Functions instances) on one queue, against
the sandboxes' real per-user limits.

Three BC users change coupled customers at a steady total rate (`--rate`, 30 changes/s) for
`--seconds` (300); BC notifies host 1, every host takes messages from the one queue. The service's
integration user has 6,000 requests per 5 minutes on each side and 5 concurrent BC requests, counted
by the sandboxes across all three hosts; by default BC's queue of requests beyond 5 is switched off
(`--bc-queue 0`), so a 6th concurrent request is answered 429 at once, which is stricter than BC
(it queues up to 95 more). A change costs each side one request, so 30 changes/s is more than the
integration user's 19.3 requests/s on either side: the shared request budget paces the hosts and
the backlog drains after the load stops. The delta poll runs every 2 minutes as deployed (the
other timers are quiet): it catches a change whose notification the intake could not accept.

Reported: changes lost (a customer whose Dataverse phone is not its last BC phone once the queue
has drained, or a message in the poison queue), the integration user's requests and 429 answers on
each side, the most BC requests it had open at once (running or queued), requests per change, and
the time until the backlog drained.

`python -m bench.scale_out [--rate 30] [--seconds 300] [--hosts 3]`
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx

from bench.service import sandboxes, service_settings
from devstack.azurite import start_azurite
from devstack.serve import free_port
from devstack.stack import REPO

NEVER = "0 0 0 1 1 *"  # timers other than the delta poll stay quiet during the measurement
# The delta poll runs as deployed (every 2 minutes): it is the safety net for a notification the
# intake could not accept (BC then retries only after 1, 1, 10, 100 and 1,000 minutes).
DELTA_POLL = "0 */2 * * * *"
SENDERS = ("sender-1", "sender-2", "sender-3")  # BC users: each stays far within its own limits


def host_main(port: int) -> int:
    """One instance: the dev host with the function app, until stdin closes."""
    from devstack.stack import start_dev_host

    logging.basicConfig(level=logging.ERROR)
    host, server = start_dev_host(
        port, host_json_overrides={"extensions": {"queues": {"maxPollingInterval": "00:00:00.2"}}}
    )
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        host.stop()
        server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=30.0, help="changes per second, all senders")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--bc-queue", type=int, default=0, help="BC's queue beyond 5 concurrent (BC: 95)")
    parser.add_argument("--drain-seconds", type=float, default=900.0)
    parser.add_argument("--host", type=int, help=argparse.SUPPRESS)  # internal: run one host on this port
    args = parser.parse_args()
    if args.host:
        return host_main(args.host)
    logging.basicConfig(level=logging.ERROR)
    stack = ExitStack()
    azurite = start_azurite()
    host_ports = [free_port() for _ in range(args.hosts)]
    children: list[subprocess.Popen[str]] = []
    flags = ["--customers", str(args.customers), "--coalesce", "0.05", "--bc-users", ",".join(SENDERS),
             "--bc-queue", str(args.bc_queue)]  # fmt: skip
    try:
        ports = stack.enter_context(sandboxes(*flags))
        env = service_settings(
            azurite.connection_string, ports, SYNC_QUEUE_NAME="sync-requests",
            SERVICE_PUBLIC_URL=f"http://127.0.0.1:{host_ports[0]}", SCALE_OUT_MAX_INSTANCES=str(args.hosts),
            DELTA_POLL_SCHEDULE=DELTA_POLL, FULL_RESYNC_SCHEDULE=NEVER, SUBSCRIPTION_UPKEEP_SCHEDULE=NEVER,
            STATISTICS_SCHEDULE=NEVER,
        )  # fmt: skip
        bc_url, dv_url = env["BC_API_URL"], env["DATAVERSE_URL"]
        os.environ.update(env)
        from devstack.bc import DEFAULT_COMPANY_ID
        from shared.feeds.registration import ensure_bc_subscriptions, ensure_dataverse_webhooks
        from shared.runtime import get_runtime
        from shared.sync import bulk

        rt = get_runtime()
        rt.storage.ensure()
        for port in host_ports:
            children.append(_child(["bench.scale_out", "--host", str(port)], {**os.environ, **env}))
        ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings)
        ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings)
        bulk.run_full_resync(rt.engine, "CURRENCY")
        bulk.run_full_resync(rt.engine, "CUSTOMER")
        integration_dv = rt.integration_user_id
        company = f"{bc_url}/companies({DEFAULT_COMPANY_ID})"
        reader = httpx.Client(headers={"Authorization": "Bearer sales-user"}, timeout=60)
        customers = reader.get(
            f"{company}/customers", params={"$select": "id,number", "$top": str(args.customers)}
        ).json()["value"]
        ids = {c["id"]: c["number"] for c in customers if c["number"].startswith("C1")}
        time.sleep(5)  # the initial sync's echoes drain
        for url in (bc_url, dv_url):
            httpx.post(f"{_origin(url)}/_sandbox/stats/reset").raise_for_status()

        last_phone: dict[str, str] = {}
        lock = threading.Lock()
        total = int(args.rate * args.seconds)
        began = time.perf_counter()
        sender_errors: list[str] = []

        def send(k: int) -> None:
            client = httpx.Client(headers={"Authorization": f"Bearer {SENDERS[k]}"}, timeout=60)
            order = list(ids)
            for n in range(k, total, len(SENDERS)):
                time.sleep(max(0.0, began + n / args.rate - time.perf_counter()))
                bc_id = order[n % len(order)]
                phone = f"+1 555 {n:07d}"
                response = client.patch(
                    f"{company}/customers({bc_id})", json={"phoneNumber": phone}, headers={"If-Match": "*"}
                )
                if response.status_code >= 400:
                    sender_errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                with lock:
                    last_phone[ids[bc_id]] = phone

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(SENDERS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        load_seconds = time.perf_counter() - began
        lost = _wait_for_drain(reader, dv_url, last_phone, began + args.seconds + args.drain_seconds)
        drained = time.perf_counter() - began
        poison_queue = rt.storage.queue(rt.storage.poison_queue_name)
        poison = poison_queue.get_queue_properties().approximate_message_count
        backlog = rt.storage.queue().get_queue_properties().approximate_message_count
        bc_stats = httpx.get(f"{_origin(bc_url)}/_sandbox/stats").json()
        dv_stats = httpx.get(f"{_origin(dv_url)}/_sandbox/stats").json()
        bc_user = bc_stats["users"].get("INTEGRATION", {"requests": 0, "throttled": 0, "peak_concurrent": 0})
        dv_user = dv_stats["users"].get(integration_dv, {"requests": 0, "throttled": 0, "peak_concurrent": 0})
        requests = bc_user["requests"] + dv_user["requests"]
        throttled = bc_user["throttled"] + dv_user["throttled"]
        changes = total - len(sender_errors)
        print("\n".join([
            f"machine: {os.cpu_count()} cores; {args.hosts} dev hosts (one process each) on one queue, "
            "sandboxes and Azurite in their own processes",
            f"load: {args.rate:g} BC changes/s for {args.seconds:g} s by {len(SENDERS)} BC users "
            f"({changes} changes to {len(last_phone)} customers, sending took {load_seconds:.0f} s"
            + (f", {len(sender_errors)} refused: {sender_errors[0]}" if sender_errors else "") + ")",
            f"  lost: {len(lost)} (customers whose Dataverse phone is not their last BC phone"
            f"{': ' + ', '.join(lost[:5]) if lost else ''}); poison queue: {poison} messages; "
            f"sync queue still holding {backlog}",
            f"  backlog drained {drained:.0f} s after the load began"
            + (" (not drained: the deadline)" if lost else ""),
            f"  integration user, BC: {bc_user['requests']} requests, {bc_user['throttled']} answered "
            f"429/503, at most {bc_user['peak_concurrent']} open at once (limit 5; BC queue beyond 5: "
            f"{args.bc_queue})",
            f"  integration user, Dataverse: {dv_user['requests']} requests, {dv_user['throttled']} "
            f"answered 429, at most {dv_user['peak_concurrent']} open at once (limit 52)",
            f"  429 answers: {throttled} of {requests} requests ({100 * throttled / max(1, requests):.2f}%); "
            f"{requests / max(1, changes):.2f} requests per change",
            f"  BC throttling by reason: {bc_stats['throttled']}; Dataverse: {dv_stats['throttled']}",
            f"  BC notifications to the service: {bc_stats['webhooks']} (a refused one is retried by BC "
            "after 1, 1, 10, ... minutes; the delta poll every 2 minutes catches it first)",
            f"  machine load average at the end: {os.getloadavg()[0]:.1f} (1 min)",
        ]))  # fmt: skip
        return 0 if not lost and not poison and bc_user["peak_concurrent"] <= 5 else 1
    finally:
        for child in reversed(children):
            if child.stdin:
                child.stdin.close()
        for child in reversed(children):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        stack.close()  # the sandboxes, after the hosts that talk to them
        azurite.stop()


def _child(module_args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", *module_args], cwd=REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{' '.join(module_args)} did not start")
    return child


def _origin(url: str) -> str:
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.host}:{parts.port}"


def _wait_for_drain(
    reader: httpx.Client, dv_url: str, last_phone: dict[str, str], deadline: float
) -> list[str]:
    """Customer numbers whose Dataverse phone is not their last BC phone, once none are left or at
    the deadline (one Dataverse read every 5 s, by an ordinary user)."""
    wrong: list[str] = list(last_phone)
    while time.perf_counter() < deadline:
        rows: dict[str, Any] = {}
        url: str | None = f"{dv_url}/api/data/v9.2/accounts?$select=accountnumber,telephone1"
        while url:
            page = reader.get(url, headers={"Prefer": "odata.maxpagesize=5000"}).json()
            rows.update({r["accountnumber"]: r["telephone1"] for r in page["value"]})
            url = page.get("@odata.nextLink")
        wrong = [number for number, phone in last_phone.items() if rows.get(number) != phone]
        if not wrong:
            break
        time.sleep(5)
    return wrong


if __name__ == "__main__":
    raise SystemExit(main())
