"""What `GET /api/health` reports: settings, mapping file, storage, BC companies, the version.

Never "healthy" while the service cannot work, and always answers within about 5 s: storage is
probed with its own clients (short connect/read timeouts, no retries) under a hard deadline,
because the shared clients retry for over a minute when storage stalls (issue 13: 58 s, "healthy").

- `unhealthy` (503): a start-up problem (settings, binding app settings, mapping file) or storage
  not answering within the deadline; webhooks cannot store anything then.
- `degraded` (200): a `BC_COMPANY_IDS` company that BC does not have, or BC not answering within
  a few seconds; the service runs, but notifications of that company are dropped.
- `healthy` (200): otherwise.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shared import __version__
from shared.settings import Settings, storage_connection_string_problem
from shared.startup import (
    BC_CHECK_SECONDS,
    CompanyCheck,
    DeadlineExceeded,
    check_bc_companies,
    startup_report,
    within,
)

# The whole storage probe (connect, two requests) must end within this; the answer follows at once.
STORAGE_DEADLINE_SECONDS = 4.0
STORAGE_CONNECT_SECONDS = 2.0


def check_health(
    *, storage_seconds: float = STORAGE_DEADLINE_SECONDS, bc_seconds: float = BC_CHECK_SECONDS
) -> tuple[int, dict[str, Any]]:
    """Return (HTTP status, report)."""
    report: dict[str, Any] = {"version": __version__}
    startup = startup_report()
    report["configuration"] = (
        "ok" if not startup.settings_problems else {"problems": dict(startup.settings_problems)}
    )
    report["mapping"] = (
        "ok"
        if not startup.mapping_problems
        else {"file": startup.mapping_file, "problems": list(startup.mapping_problems)}
    )
    healthy = startup.ok

    # BC is asked in parallel with storage, so the answer waits for the slower of the two only.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-bc")
    companies: Future[CompanyCheck] | None = None
    if startup.settings is not None:
        companies = pool.submit(check_bc_companies, startup.settings, seconds=bc_seconds)
    pool.shutdown(wait=False)

    try:
        within(storage_seconds, lambda: _probe_storage(startup.settings))
        report["storage"] = "reachable"
    except DeadlineExceeded:
        report["storage"] = f"unreachable: no answer within {storage_seconds:g} s"
        healthy = False
    except Exception as exc:  # any failure here is the answer, not a crash
        report["storage"] = f"unreachable: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        healthy = False

    degraded = False
    if companies is None:
        report["bc_companies"] = "not checked (settings invalid)"
    else:
        try:
            check = companies.result(timeout=bc_seconds + 0.5)
            report["bc_companies"] = (
                check.status if check.status == "ok" else f"{check.status}: {check.detail}"
            )
            degraded = check.status != "ok"
        except FutureTimeout:
            report["bc_companies"] = f"unreachable: no answer within {bc_seconds:g} s"
            degraded = True
    report["status"] = "unhealthy" if not healthy else "degraded" if degraded else "healthy"
    return (200 if healthy else 503), report


def _probe_storage(settings: Settings | None) -> None:
    """One queue request and one table request on clients of our own with short timeouts, no retries."""
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    from shared.store.storage import QUEUE_API_VERSION

    options: dict[str, Any] = {
        "connection_timeout": STORAGE_CONNECT_SECONDS,
        "read_timeout": STORAGE_DEADLINE_SECONDS,
        "retry_total": 0,
    }
    queue_name = settings.sync_queue if settings else os.environ.get("SYNC_QUEUE_NAME") or "sync-requests"
    connection_string = (
        settings.storage_connection_string if settings else os.environ.get("AzureWebJobsStorage")
    )
    account = (
        settings.storage_account_name if settings else os.environ.get("AzureWebJobsStorage__accountName")
    )
    if connection_string:
        problem = storage_connection_string_problem(connection_string)
        if problem:
            raise ValueError(problem)
        queues = QueueServiceClient.from_connection_string(
            connection_string, api_version=QUEUE_API_VERSION, **options
        )
        tables = TableServiceClient.from_connection_string(connection_string, **options)
    elif account:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        queues = QueueServiceClient(
            f"https://{account}.queue.core.windows.net", credential=credential, **options
        )
        tables = TableServiceClient(
            f"https://{account}.table.core.windows.net", credential=credential, **options
        )
    else:
        raise ValueError("AzureWebJobsStorage is not set")
    with queues, tables:
        queues.get_queue_client(queue_name).get_queue_properties()
        next(iter(tables.list_tables(results_per_page=1)), None)
