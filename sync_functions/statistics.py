"""The customer statistics timer (default every 30 minutes, `STATISTICS_SCHEDULE`). The on-demand
push is `POST /api/manage/statistics/push` and `bcsync statistics`."""

import logging

import azure.functions as func

from shared.runtime import get_runtime
from shared.sales.statistics import push_statistics

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="%STATISTICS_SCHEDULE%", run_on_startup=False)
def customer_statistics(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("customer statistics timer is past due; pushing now")
    push_statistics(get_runtime())
