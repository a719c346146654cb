"""The embedded local stack: Azurite, both sandboxes and the dev host, wired together.

`python -m devstack up` runs it in the foreground; end-to-end tests and benchmarks start the same
`Stack` in-process. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.azurite import Azurite, start_azurite
from devstack.serve import ServerHandle, serve_in_thread

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("devstack")

DEFAULT_PORTS = {"host": 7071, "dataverse": 7081, "bc": 7082, "blob": 10000, "queue": 10001, "table": 10002}
# Defaults of the sandboxes (documented in docs/dataverse-sandbox.md and docs/bc-sandbox.md).
BC_TENANT, BC_ENVIRONMENT = "contoso", "production"
INTEGRATION_TOKEN = "integration-user"


@dataclass
class StackPorts:
    host: int = DEFAULT_PORTS["host"]
    dataverse: int = DEFAULT_PORTS["dataverse"]
    bc: int = DEFAULT_PORTS["bc"]
    blob: int = DEFAULT_PORTS["blob"]
    queue: int = DEFAULT_PORTS["queue"]
    table: int = DEFAULT_PORTS["table"]


@dataclass
class Stack:
    """Handles of everything `start_stack` started; `stop()` stops all of it."""

    azurite: Azurite | None = None
    dataverse: ServerHandle | None = None
    bc: ServerHandle | None = None
    host_server: ServerHandle | None = None
    host: Any = None  # devstack.host.DevHost
    dataverse_app: Any = None
    bc_app: Any = None
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.host is not None:
            self.host.stop()
        for server in (self.host_server, self.bc, self.dataverse):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.azurite is not None:
            self.azurite.stop()

    def describe(self) -> list[tuple[str, str]]:
        rows = []
        if self.azurite:
            rows.append(
                (
                    "Azurite (queues/tables)",
                    f"queue :{self.azurite.queue_port}, table :{self.azurite.table_port}",
                )
            )
        if self.dataverse:
            rows.append(("Dataverse sandbox", f"{self.dataverse.url}/api/data/v9.2/"))
        if self.bc:
            rows.append(
                ("Business Central sandbox", f"{self.bc.url}/v2.0/{BC_TENANT}/{BC_ENVIRONMENT}/api/v2.0")
            )
        if self.host_server:
            rows.append(("Dev host (function_app)", f"{self.host_server.url}/api/  (health: /api/health)"))
        return rows


def _sandbox_app(module: str, config: Any = None) -> Any:
    """`devstack.dataverse.create_app(config)` / `devstack.bc.create_app(config)`."""
    return importlib.import_module(module).create_app(config)


def stack_environment(stack: Stack, ports: StackPorts, bc_company_id: str) -> dict[str, str]:
    """App settings for the service when it runs against the embedded stack."""
    assert stack.azurite is not None
    return {
        "AzureWebJobsStorage": stack.azurite.connection_string,
        "DATAVERSE_URL": f"http://127.0.0.1:{ports.dataverse}",
        "DATAVERSE_STATIC_TOKEN": INTEGRATION_TOKEN,
        "DATAVERSE_WEBHOOK_AUTH_TYPE": "webhook_key",
        "DATAVERSE_WEBHOOK_SECRET": os.environ.get("DATAVERSE_WEBHOOK_SECRET") or secrets.token_urlsafe(24),
        "BC_API_URL": f"http://127.0.0.1:{ports.bc}/v2.0/{BC_TENANT}/{BC_ENVIRONMENT}/api/v2.0",
        "BC_COMPANY_IDS": bc_company_id,
        "BC_STATIC_TOKEN": INTEGRATION_TOKEN,
        "BC_WEBHOOK_CLIENT_STATE": os.environ.get("BC_WEBHOOK_CLIENT_STATE") or secrets.token_urlsafe(24),
        "SERVICE_PUBLIC_URL": f"http://127.0.0.1:{ports.host}",
        "MAPPINGS_FILE": os.environ.get("MAPPINGS_FILE") or str(REPO / "mappings" / "default.yaml"),
        "SYNC_QUEUE_NAME": "sync-requests",
        # Timer schedules are binding expressions: the host needs them as app settings.
        "DELTA_POLL_SCHEDULE": os.environ.get("DELTA_POLL_SCHEDULE", "0 */2 * * * *"),
        "FULL_RESYNC_SCHEDULE": os.environ.get("FULL_RESYNC_SCHEDULE", "0 0 2 * * *"),
        "SUBSCRIPTION_UPKEEP_SCHEDULE": os.environ.get("SUBSCRIPTION_UPKEEP_SCHEDULE", "0 0 */12 * * *"),
        "STATISTICS_SCHEDULE": os.environ.get("STATISTICS_SCHEDULE", "0 */30 * * * *"),
    }


def start_stack(
    ports: StackPorts | None = None,
    *,
    with_host: bool = True,
    host_json_overrides: dict[str, Any] | None = None,
    function_key: str | None = None,
    master_key: str | None = None,
    bc_config: Any = None,
    dataverse_config: Any = None,
    environment: dict[str, str] | None = None,
) -> Stack:
    """Start Azurite, the two sandboxes and (optionally) the dev host; set the app settings in
    `os.environ` (plus `environment` overrides) so the function app talks to them. On failure,
    stop what already started."""
    ports = ports or StackPorts()
    stack = Stack()
    try:
        stack.azurite = start_azurite(ports.blob, ports.queue, ports.table)
        stack.dataverse_app = _sandbox_app("devstack.dataverse", dataverse_config)
        stack.dataverse = serve_in_thread(stack.dataverse_app, ports.dataverse)
        stack.bc_app = _sandbox_app("devstack.bc", bc_config)
        stack.bc = serve_in_thread(stack.bc_app, ports.bc)
        company_id = default_bc_company_id(stack.bc_app)
        stack.env = {**stack_environment(stack, ports, company_id), **(environment or {})}
        os.environ.update(stack.env)
        _reset_process_caches()
        if with_host:
            stack.host, stack.host_server = start_dev_host(
                ports.host,
                host_json_overrides=host_json_overrides,
                function_key=function_key,
                master_key=master_key,
            )
    except BaseException:
        stack.stop()
        raise
    return stack


def default_bc_company_id(bc_app: Any) -> str:
    from devstack.bc import DEFAULT_COMPANY_ID

    return str(DEFAULT_COMPANY_ID)


def _reset_process_caches() -> None:
    """Settings and clients are cached per process; a new stack in the same process needs new ones."""
    from shared.settings import get_settings
    from shared.store.storage import get_storage

    get_settings.cache_clear()
    get_storage.cache_clear()
    with contextlib.suppress(ImportError):
        from shared import runtime

        runtime.reset()


def start_dev_host(
    port: int,
    *,
    host_json_overrides: dict[str, Any] | None = None,
    function_key: str | None = None,
    master_key: str | None = None,
) -> tuple[Any, ServerHandle]:
    """Load `function_app.app` and serve it with the dev host on `port`."""
    from devstack.host import DevHost, load_host_json
    from shared.startup import check_startup

    # function_app checks at import too, but a module imports once per process and a test run
    # starts several hosts: check this configuration now (StartupError lists every problem).
    check_startup()
    host_json = load_host_json(REPO / "host.json")
    _deep_merge(host_json, host_json_overrides or {})
    import function_app

    host = DevHost(
        function_app.app,
        storage_connection_string=os.environ["AzureWebJobsStorage"],
        host_json=host_json,
        function_key=function_key,
        master_key=master_key,
    )
    _ensure_storage()
    server = serve_in_thread(host.http_app, port)
    host.start()
    return host, server


# The storage SDK retries an unreachable endpoint for over a minute; a host without storage can do
# nothing, so say so within seconds.
STORAGE_START_SECONDS = 10.0


def _ensure_storage() -> None:
    """Create the queues and tables, or stop start-up naming the setting (StartupError)."""
    from shared.startup import DeadlineExceeded, StartupError, within
    from shared.store.storage import get_storage

    try:
        within(STORAGE_START_SECONDS, get_storage().ensure)
    except DeadlineExceeded:
        problem = f"storage did not answer within {STORAGE_START_SECONDS:g} s"
    except Exception as exc:
        first_line = (str(exc).splitlines() or [""])[0][:200]
        problem = f"storage refused the first requests ({type(exc).__name__}: {first_line})"
    else:
        return
    raise StartupError([
        f"AzureWebJobsStorage: {problem}. Start Azurite (`python -m devstack azurite`) or point the "
        "setting at a reachable storage account."
    ])  # fmt: skip


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
