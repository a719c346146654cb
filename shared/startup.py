"""What must hold before the service starts: valid settings, the app settings the bindings read,
and a mapping file that loads. One function, `check_startup`, used by `function_app.py` at import
(as the Functions host indexes the app), by the dev host, and, as a report, by `GET /api/health`.

Checked without a network call, so it is quick and the same everywhere. What needs the network is
reported by health instead: storage (`shared/ops/health.py`) and the BC companies
(`check_bc_companies`, degraded rather than fatal: BC may just be unreachable for a moment).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from shared.errors import ServiceError
from shared.mapping.loader import MappingFileError, load_mapping_set
from shared.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

# App settings the function bindings read as `%NAME%` expressions. The host resolves those from app
# settings only, so the defaults in Settings do not apply there: an unset one disables the timer
# (or the queue trigger), which the host merely logs.
BINDING_SETTINGS = {
    "SYNC_QUEUE_NAME": "sync-requests",
    "DELTA_POLL_SCHEDULE": "0 */2 * * * *",
    "FULL_RESYNC_SCHEDULE": "0 0 2 * * *",
    "SUBSCRIPTION_UPKEEP_SCHEDULE": "0 0 */12 * * *",
    "STATISTICS_SCHEDULE": "0 */30 * * * *",
}
DEFAULT_MAPPINGS_FILE = "mappings/default.yaml"
BC_CHECK_SECONDS = 3.0


class StartupError(ServiceError, RuntimeError):
    """The service cannot start; the message lists every problem and how to fix it."""

    http_status = 503

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"bc-dataverse-sync cannot start: {len(problems)} problem(s) in its configuration:\n{lines}\n"
            "Fix the app settings (local.settings.json `Values` locally, the Function App's "
            "configuration in Azure; see local.settings.example.json) or the mapping file, then start again."
        )


@dataclass
class StartupReport:
    settings_problems: dict[str, str] = field(default_factory=dict)
    mapping_file: str = DEFAULT_MAPPINGS_FILE
    mapping_problems: list[str] = field(default_factory=list)
    settings: Settings | None = None

    @property
    def problems(self) -> list[str]:
        return [f"{name}: {why}" for name, why in self.settings_problems.items()] + self.mapping_problems

    @property
    def ok(self) -> bool:
        return not self.problems


def startup_report() -> StartupReport:
    """Every start-up problem at once: settings, binding app settings, the mapping file (all read
    from the environment, where the host puts the app settings)."""
    env = os.environ
    report = StartupReport()
    try:
        report.settings = load_settings()
    except SettingsError as exc:
        report.settings_problems.update(exc.problems)
    for name, example in BINDING_SETTINGS.items():
        if name not in report.settings_problems and not env.get(name, "").strip():
            report.settings_problems[name] = (
                f"not set; the function bindings read it as %{name}%, which the Functions host takes "
                f"from app settings only (no default applies): set it, e.g. to {example!r}"
            )
    # The mapping file is checked even when settings are broken, so one start shows every problem.
    fallback = env.get("MAPPINGS_FILE") or DEFAULT_MAPPINGS_FILE
    report.mapping_file = report.settings.mappings_file if report.settings else fallback
    report.mapping_problems = mapping_problems(report.mapping_file)
    return report


def check_startup() -> Settings:
    """Return the validated settings, or raise `StartupError` naming every problem."""
    report = startup_report()
    if not report.ok or report.settings is None:
        raise StartupError(report.problems)
    return report.settings


_mapping_cache: dict[tuple[str, int, int], list[str]] = {}
_mapping_lock = threading.Lock()


def mapping_problems(path: str | Path) -> list[str]:
    """The mapping file's problems as `file:line: path: reason` lines (empty when it loads).

    Cached by modification time and size: health calls this on every request."""
    try:
        stat = Path(path).stat()
        key: tuple[str, int, int] | None = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # a missing file: load_mapping_set says so
    with _mapping_lock:
        if key is not None and key in _mapping_cache:
            return _mapping_cache[key]
    try:
        load_mapping_set(path)
        found: list[str] = []
    except MappingFileError as exc:
        found = [
            f"{exc.file}:{p.line}: {p.path + ': ' if p.path else ''}{p.message}"
            if p.line
            else f"{exc.file}: {p.path + ': ' if p.path else ''}{p.message}"
            for p in exc.problems
        ]
    if key is not None:
        with _mapping_lock:
            _mapping_cache.clear()  # one file in use; an edited file replaces the entry
            _mapping_cache[key] = found
    return found


# ---------------------------------------------------------------------------- BC companies
T = TypeVar("T")


class DeadlineExceeded(TimeoutError, ServiceError):
    pass


def within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`, or `DeadlineExceeded` after `seconds`, whatever the SDK underneath does (a client's
    own timeouts cover a socket, not DNS, credential acquisition or its retries). The work goes on
    in a daemon thread and its late answer is dropped."""
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="deadline", daemon=True).start()
    if not done.wait(seconds):
        raise DeadlineExceeded(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]
    return outcome[0]


@dataclass(frozen=True)
class CompanyCheck:
    status: str  # "ok" | "unknown_companies" | "unreachable"
    detail: str
    checked_at: float


_company_check: CompanyCheck | None = None
# An answer from BC is kept this long; an unreachable BC is asked again sooner.
COMPANY_CHECK_TTL = {"ok": 600.0, "unknown_companies": 600.0, "unreachable": 30.0}


def check_bc_companies(settings: Settings, *, seconds: float = BC_CHECK_SECONDS) -> CompanyCheck:
    """Whether every `BC_COMPANY_IDS` entry exists in BC, asked once within `seconds`.

    Degraded, not fatal: an unknown company drops that company's notifications, but BC being
    unreachable at start is no reason to refuse to start."""
    global _company_check
    cached = _company_check
    if cached is not None and time.monotonic() - cached.checked_at < COMPANY_CHECK_TTL[cached.status]:
        return cached

    def ask() -> set[str]:
        from shared.connectors.retry import RetryPolicy
        from shared.runtime import bc_client, integration_credential

        # The settings given, not the process-wide runtime's: health passes the ones it just checked.
        # The integration user's credential of the configured sign-in mode, built as the runtime does.
        credential = integration_credential(settings, "bc")
        policy = RetryPolicy(max_attempts=1, max_total_seconds=seconds)
        client = bc_client(settings, credential, policy=policy, timeout=seconds)
        try:
            return {str(c.get("id", "")).lower() for c in client.companies()}
        finally:
            client.close()

    try:
        known = within(seconds, ask)
    except Exception as exc:
        result = CompanyCheck(
            "unreachable",
            f"could not list BC companies ({type(exc).__name__}: {str(exc)[:200]}); not checked",
            time.monotonic(),
        )
    else:
        unknown = [c for c in settings.bc_company_ids if c.lower() not in known]
        result = (
            CompanyCheck(
                "unknown_companies",
                f"BC_COMPANY_IDS names companies BC does not have: {', '.join(unknown)}; their "
                "notifications are dropped (`bcsync setup` lists the companies that exist)",
                time.monotonic(),
            )
            if unknown
            else CompanyCheck("ok", f"{len(settings.bc_company_ids)} company(ies) found", time.monotonic())
        )
    if result.status != "ok":
        log.warning("BC companies: %s", result.detail)
    _company_check = result
    return result


def reset_company_check() -> None:
    global _company_check
    _company_check = None
