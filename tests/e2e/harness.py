"""The end-to-end harness: one local stack (Azurite, both sandboxes, the dev host running
function_app) plus the waits and probes the e2e tests share.

Changes "by a person" go over HTTP with the sandboxes' ordinary user token (`Bearer sales-user`), so
they reach the service exactly as a user's change would: as a webhook, then a queue message, then
the processor. Waits poll with a deadline; nothing sleeps longer than it must.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from devstack.bc.config import BcSandboxConfig
from devstack.serve import free_port
from devstack.stack import REPO, Stack, StackPorts, start_stack
from shared.feeds.registration import ensure_bc_subscriptions, ensure_dataverse_webhooks
from shared.messages import SyncMessage
from shared.runtime import Runtime, get_runtime
from shared.store.couplings import Coupling
from shared.sync.engine import Engine
from tests.support import sales_solution

T = TypeVar("T")

# Timers must fire only when a test invokes them: a delta poll or a nightly resync firing on its
# own in the middle of a test would make the test's request and write counts meaningless.
NEVER = "0 0 0 1 1 *"  # NCRONTAB: once a year, on 1 January at midnight
QUIET_TIMERS = {
    "DELTA_POLL_SCHEDULE": NEVER,
    "FULL_RESYNC_SCHEDULE": NEVER,
    "SUBSCRIPTION_UPKEEP_SCHEDULE": NEVER,
    "STATISTICS_SCHEDULE": NEVER,
}
HOST_JSON = {"extensions": {"queues": {"maxPollingInterval": "00:00:00.2", "visibilityTimeout": "00:00:01"}}}
SALES_USER = {"Authorization": "Bearer sales-user"}
STARTUP_TIMEOUT = 30.0


class WaitTimeout(AssertionError):
    pass


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def mapping_file(folder: Path, name: str, **policies: Mapping[str, str]) -> dict[str, str]:
    """The environment for a stack running `mappings/default.yaml` with some mappings' policies
    changed, e.g. `mapping_file(tmp, "propagate", CUSTOMER={"deletion": "propagate"})`."""
    mappings = yaml.safe_load((REPO / "mappings" / "default.yaml").read_text())
    for m in mappings["mappings"]:
        m.update(policies.get(m["name"], {}))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(mappings, sort_keys=False))
    return {"MAPPINGS_FILE": str(path)}


def writes(sandbox: Any) -> dict[str, int]:
    """The writes a sandbox has received so far (its counters' non-GET `{"METHOD entitySet": n}`),
    whoever sent them: the service, a person, the test."""
    requests = sandbox.counters.snapshot()["requests"]
    return {k: v for k, v in requests.items() if not k.startswith("GET ") and v}


def diff(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


@dataclass
class E2EStack:
    stack: Stack
    bc_http: httpx.Client  # BC API of the default company, as the ordinary user
    dv_http: httpx.Client  # Dataverse Web API, as the ordinary user
    control: httpx.Client  # the sandboxes' `/_sandbox/` routes (no token)

    # ------------------------------------------------------------------------ what is running
    @property
    def rt(self) -> Runtime:
        return get_runtime()

    @property
    def engine(self) -> Engine:
        return self.rt.engine

    @property
    def bc(self) -> Any:  # devstack.bc.sandbox.BcSandbox
        return self.stack.bc_app.state.sandbox

    @property
    def dv(self) -> Any:  # devstack.dataverse.sandbox.DataverseSandbox
        return self.stack.dataverse_app.state.sandbox

    @property
    def bc_url(self) -> str:
        assert self.stack.bc is not None
        return self.stack.bc.url

    @property
    def company_id(self) -> str:
        return self.rt.company_id

    # ------------------------------------------------------------------- a person's changes
    def bc_create(self, entity_set: str, body: Mapping[str, Any]) -> dict[str, Any]:
        response = self.bc_http.post(entity_set, json=dict(body))
        assert response.status_code == 201, response.text
        return dict(response.json())

    # A person's edits: `If-Match: *` (BC requires the header), so a test's own edit never loses a
    # race against the service's writes; the service's conditional writes are what is under test.
    def bc_update(self, entity_set: str, record_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        response = self.bc_http.patch(
            f"{entity_set}({record_id})", json=dict(changes), headers={"If-Match": "*"}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def bc_delete(self, entity_set: str, record_id: str) -> None:
        response = self.bc_http.delete(f"{entity_set}({record_id})", headers={"If-Match": "*"})
        assert response.status_code == 204, response.text

    def bc_get(self, entity_set: str, record_id: str) -> dict[str, Any] | None:
        response = self.bc_http.get(f"{entity_set}({record_id})")
        return dict(response.json()) if response.status_code == 200 else None

    def bc_find(self, entity_set: str, filter_: str) -> list[dict[str, Any]]:
        response = self.bc_http.get(entity_set, params={"$filter": filter_})
        assert response.status_code == 200, response.text
        return list(response.json()["value"])

    def dv_create(self, entity_set: str, body: Mapping[str, Any]) -> dict[str, Any]:
        response = self.dv_http.post(entity_set, json=dict(body), headers={"Prefer": "return=representation"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def dv_update(self, entity_set: str, record_id: str, changes: Mapping[str, Any]) -> None:
        """A person's edit in Sales: a form saves the changed columns without a version check
        (`If-Match: *` only stops the PATCH from creating a record), so it never loses a race
        against the service's own writes, just as in Dataverse."""
        response = self.dv_http.patch(
            f"{entity_set}({record_id})", json=dict(changes), headers={"If-Match": "*"}
        )
        assert response.status_code == 204, response.text

    def dv_get(self, entity_set: str, record_id: str) -> dict[str, Any] | None:
        response = self.dv_http.get(f"{entity_set}({record_id})")
        return dict(response.json()) if response.status_code == 200 else None

    def dv_find(self, entity_set: str, filter_: str) -> list[dict[str, Any]]:
        response = self.dv_http.get(entity_set, params={"$filter": filter_})
        assert response.status_code == 200, response.text
        return list(response.json()["value"])

    # ------------------------------------------------------------------------- the service
    def coupling(self, mapping: str, side: str, record_id: str) -> Coupling | None:
        return self.rt.couplings.get(mapping, side, record_id)  # type: ignore[arg-type]

    def wait_coupled(self, mapping: str, side: str, record_id: str, timeout: float = 20.0) -> Coupling:
        def coupled() -> Coupling | None:
            c = self.coupling(mapping, side, record_id)
            return c if c is not None and c.state == "coupled" and c.bc_id and c.dv_id else None

        return wait_for(coupled, f"{mapping} {side}:{record_id} to be coupled", timeout)

    def coupled_bc_customer(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], Coupling]:
        """A customer created in BC, once the service coupled it and everything settled."""
        customer = self.bc_create("customers", body)
        coupling = self.wait_coupled("CUSTOMER", "bc", customer["id"])
        self.settle()
        return customer, coupling

    def sync(self, mapping: str, side: str, record_id: str, *, force: bool = False) -> Any:
        message = SyncMessage(mapping=mapping, side=side, id=record_id, reason="e2e test")  # type: ignore[arg-type]
        return self.engine.sync_record(message, force=force)

    def queue_depth(self) -> int:
        queue = self.rt.storage.queue(self.rt.storage.sync_queue_name)
        return int(queue.get_queue_properties().approximate_message_count or 0)

    def settle(self, timeout: float = 30.0, quiet: float = 0.4) -> None:
        """Wait until every notification is delivered, the queue is empty and no function has run
        for `quiet` seconds (a processed message can cause more notifications). BC's notifications
        go out when their coalescing window closes, as they would in BC; forcing them out early
        (`flush_webhooks`) would race the service's own bookkeeping after a write."""
        deadline = time.monotonic() + timeout
        while True:
            idle = self.control.post(f"{self.bc_url}/_sandbox/webhooks/wait", params={"timeout": timeout})
            assert idle.status_code == 200 and idle.json()["idle"], idle.text
            self.dv.webhooks.flush(timeout=timeout)
            before = self._last_invocation()
            time.sleep(quiet)
            if self.queue_depth() == 0 and self._last_invocation() == before and self.stack.host.running == 0:
                return
            if time.monotonic() > deadline:
                last = list(self.stack.host.invocations)[-200:]
                recent = Counter(f"{i.function} {i.outcome}" for i in last)
                raise WaitTimeout(
                    f"the stack did not settle within {timeout:.0f} s (queue {self.queue_depth()}; "
                    f"the last 200 invocations: {dict(recent)})"
                )

    def _last_invocation(self) -> float | None:
        # The host keeps the last 10,000 invocations, so their count stops growing: compare the newest.
        invocations = self.stack.host.invocations
        return invocations[-1].started if invocations else None

    def service_requests(self) -> dict[str, int]:
        """What the service's API clients have sent so far, by `"BC|DV METHOD kind"`."""
        stats = {f"BC {k}": v for k, v in self.rt.bc.stats.requests.items()}
        stats.update({f"DV {k}": v for k, v in self.rt.dataverse.stats.requests.items()})
        return stats

    def requests_in_this_thread(self) -> dict[str, int]:
        """What the service's clients sent from the calling thread (a test calling `shared` directly),
        leaving out what the dev host's functions send meanwhile."""
        stats = {f"BC {k}": v for k, v in self.rt.bc.stats.this_thread.items()}
        stats.update({f"DV {k}": v for k, v in self.rt.dataverse.stats.this_thread.items()})
        return stats

    def failures(self, since: int = 0) -> list[str]:
        """Function invocations that failed or were poisoned (from index `since`)."""
        return [
            f"{i.function}: {i.outcome} {i.error[:300]}"
            for i in list(self.stack.host.invocations)[since:]
            if i.outcome != "succeeded"
        ]


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _create_price_list(rt: Any) -> None:
    """The Sales price list of BC's item prices (settings.price_list), as `bcsync setup` creates it."""
    from shared.ops.setup import SetupReport, ensure_price_list

    if rt.mappings.settings.price_list is None:
        return
    usd = rt.dataverse.query(
        "transactioncurrencies", select=["transactioncurrencyid"], filter="isocurrencycode eq 'USD'"
    )
    report = SetupReport()
    assert ensure_price_list(
        rt.dataverse, rt.mappings, rt.settings, str(next(iter(usd))["transactioncurrencyid"]), report
    ), report


@contextlib.contextmanager
def running_stack(
    environment: Mapping[str, str] | None = None, *, with_solution: bool = True
) -> Iterator[E2EStack]:
    """Start the stack on free ports, register the webhooks, yield; stop and restore the
    process's environment afterwards (the runtime is process-wide: one stack at a time)."""
    saved = dict(os.environ)
    stack = start_stack(
        StackPorts(*_distinct_ports(6)),
        bc_config=BcSandboxConfig.for_tests(),
        host_json_overrides=HOST_JSON,
        environment={**QUIET_TIMERS, **(environment or {})},
    )
    try:
        # subscription_upkeep runs on start-up; registering while it runs would race it.
        wait_for(
            lambda: any(i.function == "subscription_upkeep" for i in stack.host.invocations),
            "the start-up subscription upkeep",
            STARTUP_TIMEOUT,
        )
        rt = get_runtime()
        if with_solution:  # as `bcsync setup` leaves it (without: as a fresh environment)
            sales_solution.install(stack.dataverse_app.state.sandbox)
            _create_price_list(rt)
        dv_report = ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings)
        bc_report = ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings, rt.subscriptions)
        assert not dv_report.failed and not bc_report.failed, (dv_report, bc_report)
        first_company = stack.env["BC_COMPANY_IDS"].split(",")[0].strip()
        bc_base = f"{stack.env['BC_API_URL']}/companies({first_company})/"
        dv_base = f"{stack.env['DATAVERSE_URL']}/api/data/v9.2/"
        with (
            httpx.Client(base_url=bc_base, headers=SALES_USER, timeout=30) as bc_http,
            httpx.Client(base_url=dv_base, headers=SALES_USER, timeout=30) as dv_http,
            httpx.Client(timeout=120) as control,
        ):
            yield E2EStack(stack, bc_http, dv_http, control)
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)
        from shared import runtime

        runtime.reset()


def sales_lines(product: str, uom: str, quantities: Iterable[float]) -> list[dict[str, Any]]:
    """Sales document lines for a deep insert through the Web API: the product at 20.00 (its price
    overridden, so no price list is needed) in `uom`, one line per quantity."""
    return [
        {"productid@odata.bind": f"/products({product})", "uomid@odata.bind": f"/uoms({uom})",
         "quantity": q, "priceperunit": 20.0, "ispriceoverridden": True}
        for q in quantities
    ]  # fmt: skip
