"""One full local stack for the operations tests: Azurite, both sandboxes and the dev host running
`function_app` on free loopback ports, plus a JWKS server standing in for Entra ID.

`ops` resets both sandboxes and the service's tables before each test, so every test starts from
systems with only the sandboxes' seed data (no registrations, no couplings).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.dataverse import SandboxUser
from devstack.serve import ServerHandle, free_port, serve_in_thread
from devstack.stack import Stack, StackPorts, start_stack
from shared import runtime
from shared.runtime import Runtime
from shared.store.tables import TABLES
from tests.support import sales_solution
from tests.support.jwt_keys import TEST_AUDIENCE, TEST_ISSUER, claims, jwks_document, key_pair, sign

ADMIN_TOKEN = "admin-user"  # a Dataverse System Administrator / BC SUPER user in the sandboxes
ROLES = {
    "admin": "Integration.Administrator",
    "user": "Integration.User",
    "availability": "ProductAvailability.User",
}
# Dataverse users for the BC sandbox's salespeople (JO, PS, OF): JO and OF can be coupled by e-mail,
# PS's namesake is disabled.
SALES_USERS = (
    SandboxUser("jim", "5a1e5000-0000-4000-8000-0000000000a1", "Jim Olive", "Jim.Olive@contoso.example"),
    SandboxUser("otis", "5a1e5000-0000-4000-8000-0000000000a3", "Otis Falls", "otis.falls@contoso.example"),
    SandboxUser(
        "peter",
        "5a1e5000-0000-4000-8000-0000000000a2",
        "Peter Saddow",
        "peter.saddow@contoso.example",
        isdisabled=True,
    ),
)


@dataclass
class OpsStack:
    stack: Stack
    jwks: ServerHandle

    @property
    def base_url(self) -> str:
        assert self.stack.host_server is not None
        return self.stack.host_server.url

    @property
    def dv(self) -> Any:  # devstack.dataverse.DataverseSandbox
        return self.stack.dataverse_app.state.sandbox

    @property
    def bc(self) -> Any:  # devstack.bc.BcSandbox
        return self.stack.bc_app.state.sandbox

    @property
    def rt(self) -> Runtime:
        return runtime.get_runtime()

    def token(self, *roles: str, **overrides: Any) -> str:
        """A signed Entra-like access token, valid now, with the given app roles (keys of ROLES)."""
        now = int(time.time())
        payload = claims(roles=[ROLES.get(r, r) for r in roles], iat=now - 60, nbf=now - 60, exp=now + 3600)
        payload.update(overrides)
        return sign(key_pair("ops-signing-key"), {k: v for k, v in payload.items() if v is not None})

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.base_url}/api/{path}", headers=headers, timeout=30, **kwargs)

    def settle(self, timeout: float = 30.0, quiet: float = 0.4) -> None:
        """Wait until Dataverse has sent its notifications and the dev host has run nothing for `quiet`
        seconds: a message still in flight when a test ends would otherwise land in the next test's
        freshly cleared tables (seen as one coupling too many on a busy machine). BC's notifications
        wait out their coalescing window; the sandbox's reset drops the pending ones."""
        deadline = time.monotonic() + timeout
        while True:
            self.dv.webhooks.flush(timeout=timeout)
            before = self._last_invocation()
            time.sleep(quiet)
            queue = self.rt.storage.queue(self.rt.storage.sync_queue_name)
            depth = int(queue.get_queue_properties().approximate_message_count or 0)
            if depth == 0 and self._last_invocation() == before and self.stack.host.running == 0:
                return
            assert time.monotonic() < deadline, f"the dev host did not settle within {timeout:.0f} s"

    def _last_invocation(self) -> float | None:
        invocations = self.stack.host.invocations
        return invocations[-1].started if invocations else None

    def reset(self, *, with_solution: bool = True) -> None:
        """Both sandboxes as seeded; Dataverse with the Sales-side solution installed as set-up leaves
        it, unless `with_solution` is False (an environment set-up has not touched).

        A notification already on its way when the sandboxes are reset is still handled, after the
        tables were cleared (a coupled customer then looks new and is created again): so the reset is
        done again until the dev host ran nothing during it."""
        for _ in range(3):
            self.settle()
            before = self._last_invocation()
            self._reset_once(with_solution)
            self.settle()
            if self._last_invocation() == before:
                return
        raise AssertionError("the dev host kept running functions through three resets")

    def _reset_once(self, with_solution: bool) -> None:
        self.dv.reset()
        self.bc.reset()
        for user in (
            SandboxUser(ADMIN_TOKEN, "ad300000-0000-4000-8000-000000000001", "Dana Admin"),
            *SALES_USERS,
        ):
            self.dv.add_user(user)
        if with_solution:
            sales_solution.install(self.dv)
        storage = self.rt.storage
        for name in TABLES:
            table = storage.table(name)
            for row in table.list_entities(select=["PartitionKey", "RowKey"]):
                table.delete_entity(row["PartitionKey"], row["RowKey"])
        for queue in (storage.sync_queue_name, storage.poison_queue_name):
            storage.queue(queue).clear_messages()
        runtime.reset()


def _jwks_app() -> Starlette:
    document = jwks_document(key_pair("ops-signing-key"))

    async def keys(request: Any) -> JSONResponse:
        return JSONResponse(document)

    return Starlette(routes=[Route("/discovery/v2.0/keys", keys)])


@pytest.fixture(scope="module")
def ops_stack() -> Iterator[OpsStack]:
    """Per module, not per session: the stack sets process-wide app settings and the runtime is
    process-wide, so it must be gone before another module's stack (an e2e one sharing the xdist
    worker) starts."""
    saved = dict(os.environ)
    jwks = serve_in_thread(_jwks_app())
    os.environ.update(
        {
            "AUTH_ISSUER": TEST_ISSUER,
            "AUTH_AUDIENCE": TEST_AUDIENCE,
            "AUTH_JWKS_URL": f"{jwks.url}/discovery/v2.0/keys",
            "STATISTICS_SCHEDULE": "0 0 0 1 1 *",  # the tests push on demand
            # Never mid-test: a poll would sync what a test leaves unsynced on purpose (a dry run's
            # change), and no test here depends on the timer.
            "DELTA_POLL_SCHEDULE": "0 0 0 1 1 *",
            "DATAVERSE_WEBHOOK_SECRET": "ops-tests-webhook-secret-" + uuid.uuid4().hex[:8],
            "BC_WEBHOOK_CLIENT_STATE": "ops-tests-client-state-" + uuid.uuid4().hex[:8],
        }
    )
    ports = StackPorts(*(free_port() for _ in range(6)))
    host_json = {"extensions": {"queues": {"maxPollingInterval": "00:00:00.5"}}}
    stack = start_stack(ports, with_host=True, host_json_overrides=host_json)
    stack.bc_app.state.sandbox.config.users[ADMIN_TOKEN] = "ADMIN"
    try:
        yield OpsStack(stack, jwks)
    finally:
        stack.stop()
        jwks.stop()
        os.environ.clear()
        os.environ.update(saved)
        runtime.reset()


@pytest.fixture
def ops(ops_stack: OpsStack) -> OpsStack:
    ops_stack.reset()
    return ops_stack


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------- scenarios
ACCOUNT_ID = "acc00000-0000-4000-8000-000000000001"


def bc_customer(ops: OpsStack, name: str) -> dict[str, Any]:
    """A customer of the BC sandbox's default company by display name."""
    for record in ops.rt.bc.query(ops.rt.company_id, "customers"):
        if record["displayName"] == name:
            return dict(record)
    raise AssertionError(f"no BC customer {name!r}")


def seed_account(ops: OpsStack, name: str, account_id: str = ACCOUNT_ID, **columns: Any) -> str:
    ops.dv.seed("accounts", [{"accountid": account_id, "name": name, "customertypecode": 3, **columns}])
    return account_id


@pytest.fixture
def salespeople_coupled(ops: OpsStack) -> OpsStack:
    """Salespeople coupled by e-mail (as `bcsync setup` does), so customers can get their owner."""
    from shared.ops.setup import run_setup

    report = run_setup(ops.rt, None)
    assert {sp.code for sp in report.salespeople if sp.status == "coupled"} == {"JO", "OF"}
    return ops


@pytest.fixture
def adatum_coupled(salespeople_coupled: OpsStack) -> tuple[OpsStack, str, str]:
    """BC customer Adatum coupled with a Dataverse account by hand and synchronized from BC."""
    from shared.ops import operations

    ops = salespeople_coupled
    bc_id = bc_customer(ops, "Adatum Corporation")["id"]
    dv_id = seed_account(ops, "Adatum (CRM)")
    result = operations.couple(ops.rt, "CUSTOMER", bc_id, dv_id, sync_from="bc")
    assert result.outcome == "modified", result
    return ops, bc_id, dv_id
