"""What the timers do, with their logging; each returns a report for tests and the admin API."""

from __future__ import annotations

import logging

from shared import telemetry
from shared.feeds.poll import PollReport, delta_poll
from shared.feeds.registration import RegistrationReport, ensure_bc_subscriptions, ensure_dataverse_webhooks
from shared.ops import operations as ops
from shared.runtime import Runtime, get_runtime
from shared.sales.stock import refresh_stock
from shared.sync.bulk import request_full_resync

log = logging.getLogger(__name__)

# How often the delta poll counts the coupled records of each mapping for `bcsync.couplings`: a scan of
# the coupling table's ids (about one storage request per 1,000 pairs), too costly for every poll.
COUPLINGS_METRIC_SECONDS = 900.0


def run_delta_poll(past_due: bool = False) -> PollReport:
    rt = get_runtime()
    # The root span of the trace of each change the poll queues (shared/telemetry.py).
    with telemetry.span("delta poll", {"bcsync.past_due": past_due}):
        return _delta_poll(rt, past_due)


def _delta_poll(rt: Runtime, past_due: bool) -> PollReport:
    report = delta_poll(rt)
    log.info("delta poll%s: %s", " (past due)" if past_due else "", report)
    # Stock moves touch no item record (BC's inventory is a FlowField): the item ledger tells.
    for company in rt.companies:
        stock = refresh_stock(rt.for_company(company))
        log.info("stock from item ledger entries (company %s): %s", company, stock)
    if telemetry.enabled():
        record_queue_metrics(rt)
        if telemetry.due("bcsync.couplings", COUPLINGS_METRIC_SECONDS):
            record_couplings_metrics(rt)
    return report


def record_couplings_metrics(rt: Runtime) -> None:
    """Coupled records per mapping (and company) as metrics; they read every pair's ids, so at most
    every COUPLINGS_METRIC_SECONDS (`status` records them too whenever it is computed)."""
    for company in rt.companies:
        view = rt.for_company(company)
        for m in view.mappings.entities():
            try:
                ops.record_couplings_metric(view, m.name, ops.coupled_count(view, m.name))
            except Exception:
                log.warning("coupled records of %s could not be counted", m.name, exc_info=True)


def record_queue_metrics(rt: Runtime) -> None:
    """Queue depth, the age of its oldest message and the poison count as metrics (three storage
    requests, at each delta poll when telemetry is on)."""
    for name, metric in ((rt.storage.sync_queue_name, "bcsync.queue.depth"),
                         (rt.storage.poison_queue_name, "bcsync.poison.count")):  # fmt: skip
        queue = rt.storage.queue(name)
        try:
            telemetry.gauge(metric, int(queue.get_queue_properties().approximate_message_count or 0))
            if metric == "bcsync.queue.depth":
                oldest = next(iter(queue.peek_messages(max_messages=1)), None)
                age = telemetry.seconds_since(oldest.inserted_on) if oldest and oldest.inserted_on else 0.0
                telemetry.gauge("bcsync.queue.oldest_age", age)
        except Exception:
            log.warning("queue metrics of %s could not be read", name, exc_info=True)


def run_nightly_resync(past_due: bool = False) -> list[str]:
    rt = get_runtime()
    runs = [
        request_full_resync(rt.for_company(company).storage, name)
        for company in rt.companies
        for name in rt.mappings.sync_order()
    ]
    log.info("full resync%s queued for %d mappings", " (past due)" if past_due else "", len(runs))
    return runs


def run_subscription_upkeep(past_due: bool = False) -> RegistrationReport:
    rt = get_runtime()
    report = ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings, rt.subscriptions)
    try:
        report.merge(ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings, rt.subscriptions))
    except Exception as exc:  # the integration user may lack the privilege; setup registers it then
        report.failed.append(f"Dataverse webhook check: {exc}")
    log.info("subscription upkeep%s: %s", " (past due)" if past_due else "", report)
    return report
