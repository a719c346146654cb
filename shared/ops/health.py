"""What `GET /api/health` reports: configuration problems, storage reachability, the version."""

from __future__ import annotations

import os
from typing import Any

from shared import __version__
from shared.settings import SettingsError, get_settings


def check_health() -> tuple[int, dict[str, Any]]:
    """Return (HTTP status, report). 200 only when settings are valid and storage answers."""
    report: dict[str, Any] = {"version": __version__, "configuration": "ok", "storage": "unknown"}
    healthy = True
    try:
        get_settings()
    except SettingsError as exc:
        report["configuration"] = {"problems": exc.problems}
        healthy = False
    try:
        from shared.store.storage import get_storage, storage_from_connection_string

        if report["configuration"] == "ok":
            storage = get_storage()
        elif os.environ.get("AzureWebJobsStorage"):
            storage = storage_from_connection_string(os.environ["AzureWebJobsStorage"])
        else:
            raise RuntimeError("AzureWebJobsStorage is not set")
        storage.queue().get_queue_properties(timeout=5)
        next(iter(storage.tables.list_tables(results_per_page=1)), None)
        report["storage"] = "reachable"
    except Exception as exc:  # any failure here is the answer, not a crash
        report["storage"] = f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        healthy = False
    report["status"] = "healthy" if healthy else "unhealthy"
    return (200 if healthy else 503), report
