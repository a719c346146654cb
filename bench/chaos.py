"""Chaos run: random edits on both sides under injected faults, two dev hosts, a SIGKILL; then proof.

`python -m bench.chaos [--seed 1] [--edits 400] [--seconds 90] [--customers 30]` (`make chaos`).

What runs, each in its own process, on free loopback ports: Azurite, both sandboxes (a child
process, `bench.service.sandboxes`), and TWO dev hosts (`_host`) consuming the same sync queue
in the same storage. Host A is the one BC and Dataverse call (`SERVICE_PUBLIC_URL`); both poll the
queue and run the timers. This process is the operator and the people:

1. seeds BC customers, runs the service's own set-up (`run_setup`: checks, webhook registration)
   and initial sync (`bulk.run_full_resync`), as `devstack up`'s demo does;
2. for `--seconds` (at most `--edits` edits) an ordinary user edits both sides over the APIs (BC
   PATCH/POST, Dataverse PATCH/POST, and deletes of a pair on both sides), always `If-Match: *`
   like a person's form; a person whose save fails saves again (a create is looked up by its
   unique name first, so the person never creates twice). Meanwhile a fault thread keeps adding
   one-shot fault rules to both sandboxes (429 with Retry-After, 500/503, timeouts, dropped
   connections, latency, commit-then-fail with an error or a dropped connection): the person's
   and the service's requests meet them alike;
3. half-way, host A is killed with SIGKILL and started again on the same port at once;
4. faults off; wait for quiet (webhooks delivered, queue empty including invisible messages, the
   sandboxes' request counters still), run a delta poll on host A, wait for quiet again;
5. compare every coupled pair field by field through the mapping (`read` each side, `translate`
   BC's value to Dataverse's, `same`), and check every edit: the last edit of each field on each
   side is the value found there, unless a later edit on the other side replaced it.

Counts printed: converged pairs, conflicts (a field changed on both sides since the last sync:
left as is by the mapping's policy `none`), diverged pairs, duplicates (two accounts with one BC
number, or a created name found twice on a side), lost updates (including a created record that
never got a counterpart, and a pair deleted on both sides that is still coupled), poison messages.
Exit status 1 on any divergence, duplicate or loss.

The hosts use a 20 s processing lease (`DEVHOST_PROCESSING_LEASE_SECONDS`) instead of the Functions
host's 10 minutes, renewed at half time while a function runs as the host does, so messages the
killed host held come back within the run and none that a live host works on is delivered twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.service import sandboxes, service_settings
from devstack.azurite import start_azurite
from devstack.serve import free_port
from devstack.stack import INTEGRATION_TOKEN, REPO

MAPPING = "CUSTOMER"
MASTER_KEY = "chaos-master-key-0123456789"
NEVER = "0 0 0 1 1 *"
SALES = {"Authorization": "Bearer sales-user"}
INTEGRATION = {"Authorization": f"Bearer {INTEGRATION_TOKEN}"}
LEASE_SECONDS = 20
# BC fields a person edits, with their Dataverse columns (plain text in mappings/default.yaml) and
# value makers that stay within the shorter side's length.
EDITABLE = {
    "displayName": ("name", lambda n: f"Chaos Name {n}"),
    "addressLine1": ("address1_line1", lambda n: f"{n} Chaos Road"),
    "city": ("address1_city", lambda n: f"City {n}"),
    "phoneNumber": ("telephone1", lambda n: f"+1 555 {n:07d}"),
    "email": ("emailaddress1", lambda n: f"e{n}@chaos.example"),
    "website": ("websiteurl", lambda n: f"https://w{n}.chaos.example"),
}
log = logging.getLogger("chaos")


# --------------------------------------------------------------------------- child processes
def _host_main(argv: list[str]) -> int:
    """One dev host with the app settings of the environment, serving until stdin closes."""
    from devstack.stack import start_dev_host

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"host:{args.port} %(levelname)s %(name)s %(message)s")
    os.environ["DEVHOST_PROCESSING_LEASE_SECONDS"] = str(LEASE_SECONDS)  # see the module docstring
    queues = {"maxPollingInterval": "00:00:00.5", "visibilityTimeout": "00:00:01"}
    host, server = start_dev_host(
        args.port, host_json_overrides={"extensions": {"queues": queues}}, master_key=MASTER_KEY
    )
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        host.stop()
        server.stop()
    return 0


def _child(args: list[str], env: dict[str, str], what: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.chaos", *args],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # blocks until ready or exit; both are bounded
    if line != "ready":
        process.kill()
        raise RuntimeError(f"{what} did not start (exit {process.wait(timeout=10)})")
    return process


def _end(process: subprocess.Popen[str] | None) -> None:
    """Stop a child this run started: close its stdin, then kill it by its handle if it lingers."""
    if process is None or process.poll() is not None:
        return
    if process.stdin:
        process.stdin.close()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# ------------------------------------------------------------------------------------ person
@dataclass
class Edit:
    at: float  # monotonic time the person's save succeeded
    side: str  # "bc" | "dv"
    record_id: str
    field: str  # BC field name (EDITABLE key)
    value: str


@dataclass
class Report:
    seed: int
    edits: int = 0
    edits_by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    faults_injected: int = 0
    host_restart_seconds: float = 0.0
    pairs: int = 0
    converged: int = 0
    conflicts: int = 0
    diverged: int = 0
    duplicates: int = 0
    lost: int = 0
    poison: int = 0
    failed_couplings: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.diverged or self.duplicates or self.lost)


class Person:
    """An ordinary user of BC and Sales: saves again when a save fails, never creates twice."""

    def __init__(self, bc: httpx.Client, dv: httpx.Client, deadline: float) -> None:
        self.bc, self.dv, self.deadline = bc, dv, deadline
        self.failed_saves = 0

    def _send(self, client: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response | None:
        """One attempt; None when the answer says nothing about the outcome (fault, throttle)."""
        try:
            response = client.request(method, url, **kw)
        except httpx.TransportError:
            return None
        if response.status_code == 429 or response.status_code >= 500:
            return None
        return response

    def save(
        self, client: httpx.Client, method: str, url: str, ok: tuple[int, ...], **kw: Any
    ) -> httpx.Response:
        for attempt in range(20):
            response = self._send(client, method, url, **kw)
            if response is not None and response.status_code in ok:
                return response
            if response is not None:  # a definite refusal: a bug in this run, not chaos
                raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:300]}")
            self.failed_saves += 1
            if time.monotonic() > self.deadline:
                break
            time.sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"{method} {url}: no answer after 20 attempts")

    def find(self, client: httpx.Client, url: str, name_field: str, name: str) -> dict[str, Any] | None:
        filter_ = f"{name_field} eq '{name}'"
        response = self.save(client, "GET", url, (200,), params={"$filter": filter_})
        rows = response.json()["value"]
        return rows[0] if rows else None

    def create(self, client: httpx.Client, url: str, body: dict[str, Any], name_field: str) -> dict[str, Any]:
        """POST once; after a failed POST look the unique name up before posting again, as a person
        who refreshes the list would (a commit-then-fail created it)."""
        headers = {"Prefer": "return=representation"}
        for _ in range(20):
            response = self._send(client, "POST", url, json=body, headers=headers)
            if response is not None and response.status_code == 201:
                return dict(response.json())
            if response is not None:
                raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:300]}")
            self.failed_saves += 1
            found = self.find(client, url, name_field, body[name_field])
            if found is not None:
                return found
            time.sleep(0.3)
        raise RuntimeError(f"POST {url}: no answer after 20 attempts")


# ---------------------------------------------------------------------------------- the run
def run(seed: int, edits: int, seconds: float, customers: int) -> Report:
    rng = random.Random(seed)
    report = Report(seed=seed)
    stack = ExitStack()
    azurite = start_azurite()
    host_a = host_b = None
    # A short notification window keeps the run short; BC's 5 retries (then the subscription is
    # deleted), compressed, outlast a host restart. Set-up imports the Sales solution itself.
    flags = ["--coalesce", "0.3", "--bc-retry-delays", "1,1,2,4,8", "--without-solution"]
    try:
        ports = stack.enter_context(sandboxes(*flags))
        bc_port, dv_port = ports.bc, ports.dv
        port_a, port_b = free_port(), free_port()
        from devstack.bc import DEFAULT_COMPANY_ID

        env = {
            **os.environ,
            **service_settings(
                azurite.connection_string, ports, SYNC_QUEUE_NAME="sync-requests",
                DATAVERSE_WEBHOOK_SECRET="chaos-webhook-secret-0123456789",
                BC_WEBHOOK_CLIENT_STATE="chaos-client-state-0123456789",
                SERVICE_PUBLIC_URL=f"http://127.0.0.1:{port_a}",
                # The delta poll runs on both hosts during the run: the net for notifications lost
                # while host A is down (Dataverse retries a webhook once, BC a few times).
                DELTA_POLL_SCHEDULE="*/15 * * * * *", FULL_RESYNC_SCHEDULE=NEVER,
                SUBSCRIPTION_UPKEEP_SCHEDULE=NEVER, STATISTICS_SCHEDULE=NEVER,
            ),
        }  # fmt: skip
        bc_api = env["BC_API_URL"]
        os.environ.update(env)
        control = httpx.Client(timeout=60)
        bc_root, dv_root = f"http://127.0.0.1:{bc_port}", f"http://127.0.0.1:{dv_port}"
        control.post(
            f"{bc_root}/_sandbox/seed", json={"entity_set": "customers", "count": customers, "seed": seed}
        ).raise_for_status()
        host_a = _child(["_host", "--port", str(port_a)], env, "host A")
        host_b = _child(["_host", "--port", str(port_b)], env, "host B")
        time.sleep(1.0)  # the hosts' start-up subscription upkeep, before set-up registers
        pairs = _setup(report)

        company = f"{bc_api}/companies({DEFAULT_COMPANY_ID})/"
        bc = httpx.Client(base_url=company, headers=SALES, timeout=15)
        dv = httpx.Client(base_url=f"{dv_root}/api/data/v9.2/", headers=SALES, timeout=15)
        log_edits: list[Edit] = []
        created: dict[str, list[tuple[str, str]]] = {"bc": [], "dv": []}  # (id, name)
        deleted: list[tuple[str, str]] = []
        stop_faults = threading.Event()
        faults = threading.Thread(
            target=_inject_faults,
            args=(control, (bc_root, dv_root), random.Random(seed + 1), stop_faults, report),
            daemon=True,
        )
        began = time.monotonic()
        faults.start()
        try:
            person = Person(bc, dv, began + seconds + 120)
            _edit(rng, person, edits, seconds, pairs, log_edits, created, deleted, report, port_a, env, began,
                  host_a_ref := [host_a])  # fmt: skip
            host_a = host_a_ref[0]
        finally:
            stop_faults.set()
            faults.join(timeout=10)
            for root in (bc_root, dv_root):
                control.delete(f"{root}/_sandbox/faults")
        report.seconds = round(time.monotonic() - began, 1)
        _wait_quiet(control, bc_root, dv_root, timeout=240)
        control.post(
            f"http://127.0.0.1:{port_a}/admin/functions/delta_poll", headers={"x-functions-key": MASTER_KEY}
        ).raise_for_status()
        _wait_quiet(control, bc_root, dv_root, timeout=240)
        _compare(report, log_edits, created, deleted)
    finally:
        for process in (host_a, host_b):
            _end(process)
        stack.close()  # the sandboxes, after the hosts that talk to them
        azurite.stop()
    return report


def _setup(report: Report) -> list[tuple[str, str]]:
    """The operator's set-up and initial sync; returns the coupled (BC id, Dataverse id) pairs."""
    from shared.connectors.credentials import StaticTokenCredential
    from shared.ops.setup import AdminCredentials, run_setup
    from shared.runtime import get_runtime, reset
    from shared.sync import bulk

    reset()
    rt = get_runtime()
    # Dataverse's System Administrator imports the Sales solution; the BC sandbox lets the integration
    # user create subscriptions.
    admin = AdminCredentials(
        dataverse=StaticTokenCredential("admin-user"), bc=StaticTokenCredential(INTEGRATION_TOKEN)
    )
    setup = run_setup(rt, admin)
    if setup.failed:
        raise RuntimeError(f"set-up failed: {setup.failed}")
    for name in rt.mappings.sync_order():
        if name != "SALESPEOPLE":
            bulk.run_full_resync(rt.engine, name)
    pairs = [
        (c.bc_id, c.dv_id) for c in rt.couplings.each(MAPPING) if c.state == "coupled" and c.bc_id and c.dv_id
    ]
    report.details.append(f"initial sync: {len(pairs)} coupled customers")
    return pairs  # type: ignore[return-value]


FAULTS: list[dict[str, Any]] = [
    {"action": "status", "status": 429, "retry_after": 1},
    {"action": "status", "status": 503},
    {"action": "status", "status": 500},
    {"action": "timeout", "seconds": 2},
    {"action": "drop"},
    {"action": "latency", "seconds": 1},
    {"action": "commit_then_fail", "status": 500},
    {"action": "commit_then_fail", "status": 0},
]


def _inject_faults(
    control: httpx.Client, roots: tuple[str, str], rng: random.Random, stop: threading.Event, report: Report
) -> None:
    """Keep one-shot fault rules coming on both sandboxes until `stop` (bounded by it)."""
    while not stop.wait(0.5):
        rule = {**rng.choice(FAULTS), "times": 1}
        method = rng.choice([None, None, "GET", "PATCH", "POST"])
        if method:
            rule["method"] = method
        try:
            control.post(f"{rng.choice(roots)}/_sandbox/faults", json=rule).raise_for_status()
            report.faults_injected += 1
        except httpx.HTTPError as exc:
            log.warning("could not add a fault rule: %s", exc)


def _edit(
    rng: random.Random, person: Person, edits: int, seconds: float, pairs: list[tuple[str, str]],
    log_edits: list[Edit], created: dict[str, list[tuple[str, str]]], deleted: list[tuple[str, str]],
    report: Report, port_a: int, env: dict[str, str], began: float, host_a: list[Any],
) -> None:  # fmt: skip
    live = list(pairs)
    records = {"bc": [b for b, _ in pairs], "dv": [d for _, d in pairs]}
    kinds: Counter[str] = Counter()
    killed = False
    for n in range(edits):
        now = time.monotonic()
        if now - began > seconds:
            break
        time.sleep(max(0.0, began + n * seconds / edits - now))
        if not killed and (n >= edits // 2 or time.monotonic() - began > seconds / 2):
            killed = True
            host_a[0] = _kill_and_restart(host_a[0], port_a, env, report)
        roll = rng.random()
        token = rng.randrange(10**7)
        if roll < 0.84:
            side = "bc" if roll < 0.42 else "dv"
            record = rng.choice(records[side])
            bc_field = rng.choice(list(EDITABLE))
            dv_field, make = EDITABLE[bc_field]
            value = make(token)
            if side == "bc":
                person.save(person.bc, "PATCH", f"customers({record})", (200,), json={bc_field: value},
                            headers={"If-Match": "*"})  # fmt: skip
            else:
                person.save(person.dv, "PATCH", f"accounts({record})", (204,), json={dv_field: value},
                            headers={"If-Match": "*"})  # fmt: skip
            log_edits.append(Edit(time.monotonic(), side, record, bc_field, value))
            kinds[f"{side} update"] += 1
        elif roll < 0.92:
            name = f"Chaos New {report.seed}-{n}"
            phone = EDITABLE["phoneNumber"][1](token)
            made = person.create(
                person.bc, "customers", {"displayName": name, "phoneNumber": phone}, "displayName"
            )
            records["bc"].append(made["id"])
            created["bc"].append((made["id"], name))
            log_edits += [Edit(time.monotonic(), "bc", made["id"], "displayName", name),
                          Edit(time.monotonic(), "bc", made["id"], "phoneNumber", phone)]  # fmt: skip
            kinds["bc create"] += 1
        elif roll < 0.98:
            name = f"Chaos New {report.seed}-{n}"
            phone = EDITABLE["phoneNumber"][1](token)
            body = {"name": name, "telephone1": phone, "customertypecode": 3}
            made = person.create(person.dv, "accounts", body, "name")
            records["dv"].append(made["accountid"])
            created["dv"].append((made["accountid"], name))
            log_edits += [Edit(time.monotonic(), "dv", made["accountid"], "displayName", name),
                          Edit(time.monotonic(), "dv", made["accountid"], "phoneNumber", phone)]  # fmt: skip
            kinds["dv create"] += 1
        elif len(live) > 2:
            # The deletion policy of CUSTOMER is `none`: a person deletes a pair on both sides.
            bc_id, dv_id = live.pop(rng.randrange(len(live)))
            person.save(person.bc, "DELETE", f"customers({bc_id})", (204, 404), headers={"If-Match": "*"})
            person.save(person.dv, "DELETE", f"accounts({dv_id})", (204, 404), headers={"If-Match": "*"})
            records["bc"].remove(bc_id)
            records["dv"].remove(dv_id)
            deleted.append((bc_id, dv_id))
            kinds["pair delete"] += 1
    report.edits = sum(kinds.values())
    report.edits_by_kind = dict(kinds)
    report.details.append(f"the person's saves that failed and were saved again: {person.failed_saves}")


def _kill_and_restart(host: subprocess.Popen[str], port: int, env: dict[str, str], report: Report) -> Any:
    os.kill(host.pid, signal.SIGKILL)  # our own child, by its PID
    host.wait(timeout=10)
    began = time.monotonic()
    restarted = _child(["_host", "--port", str(port)], env, "host A (restart)")
    report.host_restart_seconds = round(time.monotonic() - began, 2)
    return restarted


def _wait_quiet(control: httpx.Client, bc_root: str, dv_root: str, timeout: float) -> None:
    """Until notifications are delivered, the queue (invisible messages included) is empty and
    neither sandbox received a request for two consecutive seconds."""
    from shared.runtime import get_runtime

    rt = get_runtime()
    queue = rt.storage.queue(rt.storage.sync_queue_name)
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] | None = None
    still = 0
    while time.monotonic() < deadline:
        control.post(f"{bc_root}/_sandbox/webhooks/wait", params={"timeout": 10})
        control.post(f"{dv_root}/_sandbox/webhooks/flush", json={"timeout": 10})
        depth = int(queue.get_queue_properties().approximate_message_count or 0)
        counts = tuple(
            sum(control.get(f"{root}/_sandbox/stats").json()["requests"].values())
            for root in (bc_root, dv_root)
        )
        now = (depth, *counts)
        still = still + 1 if depth == 0 and now == last else 0
        if still >= 2:
            return
        last = now
        time.sleep(1.0)
    raise TimeoutError(f"the stack did not become quiet within {timeout:.0f} s (queue {last})")


# ----------------------------------------------------------------------------------- compare
def _compare(
    report: Report,
    log_edits: list[Edit],
    created: dict[str, list[tuple[str, str]]],
    deleted: list[tuple[str, str]],
) -> None:
    from shared.mapping.values import read, same, translate
    from shared.runtime import get_runtime

    rt = get_runtime()
    ms = rt.mappings
    mapping = ms.entity(MAPPING)
    fields = [f for f in mapping.fields if f.bc and f.dv and not f.create_only and f.constant is None]
    edits: dict[tuple[str, str, str], list[Edit]] = defaultdict(list)
    for e in log_edits:
        edits[(e.side, e.record_id, e.field)].append(e)
    integration = httpx.Client(headers=INTEGRATION, timeout=30)
    bc_base = f"{os.environ['BC_API_URL']}/companies({os.environ['BC_COMPANY_IDS']})/"
    dv_base = f"{os.environ['DATAVERSE_URL']}/api/data/v9.2/"

    def get(url: str) -> dict[str, Any] | None:
        response = integration.get(url)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    couplings = [c for c in rt.couplings.each(MAPPING)]
    report.failed_couplings = sum(1 for c in couplings if c.last_result == "failed")
    coupled_bc = {c.bc_id: c for c in couplings if c.bc_id}
    coupled_dv = {c.dv_id: c for c in couplings if c.dv_id}
    for c in couplings:
        if c.state != "coupled" or not (c.bc_id and c.dv_id):
            report.diverged += 1
            report.details.append(
                f"diverged: coupling {c.bc_id}/{c.dv_id} left {c.state}: {c.last_error[:200]}"
            )
            continue
        report.pairs += 1
        bc, dv = get(f"{bc_base}customers({c.bc_id})"), get(f"{dv_base}accounts({c.dv_id})")
        if bc is None or dv is None:
            report.diverged += 1
            report.details.append(f"diverged: pair {c.bc_id}/{c.dv_id} has a side missing")
            continue
        lookups = rt.engine.resolver.lookups_for(mapping, bc, dv)
        snapshot = c.snapshot or {"bc": {}, "dv": {}}
        differing, conflicting = [], []
        for f in fields:
            bv, dvv = read(ms, f, "bc", bc), read(ms, f, "dv", dv)
            if bv is None and f.not_null:
                continue  # by design never emptied on Dataverse (the owner)
            if same(ms, f, "dv", translate(ms, mapping, f, "dv", bv, lookups), dvv):
                continue
            # A conflict by policy: both sides moved away from the last synced values.
            both_moved = not same(ms, f, "bc", snapshot["bc"].get(f.key), bv) and not same(
                ms, f, "dv", snapshot["dv"].get(f.key), dvv
            )
            # Or the service journaled the pair as a conflict (it then stores the values as read).
            reported = c.last_result == "conflict" and f.direction == "bidirectional"
            if (both_moved or reported) and (f.conflict or mapping.conflict) == "none":
                conflicting.append(f.key)
            else:
                differing.append(f"{f.key}: BC {bv!r} / Dataverse {dvv!r}")
        if differing:
            report.diverged += 1
            report.details.append(
                f"diverged: pair {c.bc_id}/{c.dv_id} ({c.last_result}): {'; '.join(differing)}"
            )
        elif conflicting:
            report.conflicts += 1
        else:
            report.converged += 1
        for bc_field, (dv_field, _make) in EDITABLE.items():
            found = {"bc": bc.get(bc_field), "dv": dv.get(dv_field)}
            ids = {"bc": c.bc_id, "dv": c.dv_id}
            for side, other in (("bc", "dv"), ("dv", "bc")):
                mine = edits.get((side, ids[side], bc_field))
                if not mine:
                    continue
                last = mine[-1]
                allowed = {last.value} | {
                    e.value for e in edits.get((other, ids[other], bc_field), []) if e.at > last.at
                }
                if (found[side] or "").strip() not in allowed:
                    report.lost += 1
                    report.details.append(
                        f"lost: {side} {ids[side]} {bc_field}: last edit {last.value!r}, "
                        f"found {found[side]!r}"
                    )
    # Creates: each must have its counterpart; deletes of both sides: the coupling must be gone.
    for side, made in created.items():
        index = coupled_bc if side == "bc" else coupled_dv
        for record_id, name in made:
            if record_id not in index:
                report.lost += 1
                report.details.append(f"lost: {side} create {record_id} ({name}) has no counterpart")
    for bc_id, dv_id in deleted:
        if bc_id in coupled_bc or dv_id in coupled_dv:
            report.lost += 1
            report.details.append(f"lost: pair {bc_id}/{dv_id} deleted on both sides is still coupled")
    _duplicates(report, integration, bc_base, dv_base, created)
    report.poison = _poison_count(rt)


def _all(client: httpx.Client, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    next_url: str | None = url
    for _ in range(100):  # pages; bounded
        if next_url is None:
            break
        response = client.get(next_url, params=params if next_url == url else None)
        response.raise_for_status()
        body = response.json()
        rows += body["value"]
        next_url = body.get("@odata.nextLink")
    return rows


def _duplicates(
    report: Report,
    client: httpx.Client,
    bc_base: str,
    dv_base: str,
    created: dict[str, list[tuple[str, str]]],
) -> None:
    accounts = _all(
        client, f"{dv_base}accounts", {"$select": "accountid,accountnumber,name,_createdby_value"}
    )
    customers = _all(client, f"{bc_base}customers", {"$select": "id,number,displayName"})
    numbers = Counter(a["accountnumber"] for a in accounts if a.get("accountnumber"))
    made = {name for rows in created.values() for _, name in rows}
    names = {
        "Dataverse": Counter(a["name"] for a in accounts),
        "BC": Counter(c["displayName"] for c in customers),
    }
    for number, count in numbers.items():
        if count > 1:
            report.duplicates += count - 1
            report.details.append(f"duplicate: {count} Dataverse accounts with number {number}")
    # Who created each (the person is `sales-user`, the service the integration user) tells a
    # person's double save from a create the service repeated.
    rows = {"Dataverse": [(a["name"], a["accountid"], a.get("_createdby_value")) for a in accounts],
            "BC": [(c["displayName"], c["id"], c.get("number")) for c in customers]}  # fmt: skip
    for where, counter in names.items():
        for name in made:
            if counter[name] > 1:
                report.duplicates += counter[name] - 1
                which = [f"{i} ({by})" for n, i, by in rows[where] if n == name]
                report.details.append(f"duplicate: {counter[name]} {where} records named {name!r}: {which}")


def _poison_count(rt: Any) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        poison = rt.storage.queue(rt.storage.sync_queue_name + "-poison")
        return int(poison.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_host"]:
        return _host_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--edits", type=int, default=400, help="at most this many edits")
    parser.add_argument("--seconds", type=float, default=90.0, help="at most this long editing")
    parser.add_argument("--customers", type=int, default=30, help="BC customers seeded and coupled first")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    report = run(args.seed, args.edits, args.seconds, args.customers)
    if args.json:
        print(json.dumps(asdict(report) | {"ok": report.ok}))
    else:
        _print(report)
    return 0 if report.ok else 1


def _print(r: Report) -> None:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.edits_by_kind.items()))
    print(f"chaos run, seed {r.seed}: {r.edits} edits in {r.seconds:g} s ({kinds})")
    print(f"  faults injected: {r.faults_injected} rules; host A killed (SIGKILL) and serving again "
          f"on its port after {r.host_restart_seconds:g} s")  # fmt: skip
    for line in r.details:
        print(f"  {line}")
    print(f"  pairs compared: {r.pairs}")
    print(f"  converged:      {r.converged}")
    print(f"  conflicts:      {r.conflicts} (fields changed on both sides; policy none leaves them)")
    print(f"  diverged:       {r.diverged}")
    print(f"  duplicates:     {r.duplicates}")
    print(f"  lost updates:   {r.lost}")
    print(f"  poison:         {r.poison}")
    print(f"  failed couplings (journaled as failed): {r.failed_couplings}")
    print("OK" if r.ok else "FAILED: divergence, duplicates or lost updates")


if __name__ == "__main__":
    sys.exit(main())
