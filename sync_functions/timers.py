"""Timers: delta poll, nightly full resync, subscription upkeep. Schedules are app settings.

The real host runs each timer as a singleton and flags a late run with `past_due`; every job here
is also safe to run twice at once (watermarks and couplings are ETag-guarded)."""

import logging

import azure.functions as func

from shared.ops.jobs import run_delta_poll, run_nightly_resync, run_subscription_upkeep

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(schedule="%DELTA_POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
def delta_poll(timer: func.TimerRequest) -> None:
    run_delta_poll(past_due=timer.past_due)


@bp.timer_trigger(schedule="%FULL_RESYNC_SCHEDULE%", arg_name="timer", run_on_startup=False)
def full_resync(timer: func.TimerRequest) -> None:
    run_nightly_resync(past_due=timer.past_due)


# At start-up too: a subscription that expired while the app was stopped is re-created at once.
@bp.timer_trigger(schedule="%SUBSCRIPTION_UPKEEP_SCHEDULE%", arg_name="timer", run_on_startup=True)
def subscription_upkeep(timer: func.TimerRequest) -> None:
    run_subscription_upkeep(past_due=timer.past_due)
