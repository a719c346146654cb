"""`DataverseSandbox`: the store, users, limits, webhooks and counters of one sandbox instance.

Tests reach it as `app.state.sandbox` to seed and inspect data without HTTP; the `/_sandbox/...`
routes call the same methods.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from devstack.dataverse import config as defaults
from devstack.dataverse.api import WebApi
from devstack.dataverse.config import DataverseSandboxConfig, SandboxUser
from devstack.dataverse.customization import SYSTEM_ADMINISTRATOR, SYSTEM_ADMINISTRATOR_ROLE_ID
from devstack.dataverse.schema import build_tables
from devstack.dataverse.store import Caller, Store, TableData
from devstack.dataverse.webhooks import WebhookDispatcher, check_loopback_url
from devstack.sandbox_common.counters import RequestCounters
from devstack.sandbox_common.faults import FaultInjector
from devstack.sandbox_common.limits import ConcurrencyGate, SlidingWindowLimiter

SDK_MESSAGES = {
    "Create": "9ebdbb1b-ea3e-db11-86a7-000a3a5473e8",
    "Update": "20bebb1b-ea3e-db11-86a7-000a3a5473e8",
    "Delete": "20bdbb1b-ea3e-db11-86a7-000a3a5473e8",
}
# Tables whose Create/Update/Delete can fire a webhook step (an sdkmessagefilter row each).
FILTERED_TABLES = (
    "account",
    "contact",
    "product",
    "systemuser",
    "transactioncurrency",
    "uom",
    "uomschedule",
    "pricelevel",
    "quote",
    "quotedetail",
    "salesorder",
    "salesorderdetail",
    "invoice",
    "invoicedetail",
    "opportunity",
)


class DataverseSandbox:
    def __init__(self, config: DataverseSandboxConfig | None = None) -> None:
        self.config = config or DataverseSandboxConfig()
        self._clock_offset = dt.timedelta()
        self._clock_lock = threading.Lock()
        self.store = Store(self.now)
        self.users: dict[str, SandboxUser] = {}
        self.counters = RequestCounters()
        self.injector = FaultInjector()
        self.request_limiter = SlidingWindowLimiter(self.config.max_requests, self.config.window_seconds)
        # Execution time is a second limiter over the same window, counting milliseconds.
        self.execution_limiter = SlidingWindowLimiter(
            int(self.config.max_execution_ms), self.config.window_seconds
        )
        self.gate = ConcurrencyGate(self.config.max_concurrent)
        self.webhooks = WebhookDispatcher(
            self.store,
            self.counters,
            org_name=self.config.org_name,
            domain=self.config.domain,
            organization_id=self.config.organization_id,
            timeout=self.config.webhook_timeout_seconds,
            max_payload_bytes=self.config.webhook_max_payload_bytes,
            workers=self.config.webhook_workers,
            business_unit_of=self._business_unit_of,
        )
        self.store.on_commit = self.webhooks.on_commit
        self.store.validators["serviceendpoint"] = lambda row: check_loopback_url(row.get("url"))
        self.api = WebApi(
            self.store,
            max_page_size=self.config.max_page_size,
            token_expiry=lambda: dt.timedelta(days=self.config.change_tracking_expiry_days),
            whoami=self.whoami,
            bulk_delete_delay=lambda: self.config.bulk_delete_delay_seconds,
            solution_import_delay=lambda: self.config.solution_import_delay_seconds,
        )
        self._seed_defaults()

    # --- clock ------------------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        with self._clock_lock:
            return dt.datetime.now(dt.UTC) + self._clock_offset

    def advance_clock(self, seconds: float) -> dt.datetime:
        """Move the sandbox's clock (timestamps, delta-token expiry); limits keep real time."""
        with self._clock_lock:
            self._clock_offset += dt.timedelta(seconds=seconds)
        return self.now()

    # --- users ------------------------------------------------------------------------------------

    def user_for_token(self, token: str) -> SandboxUser | None:
        return self.users.get(token)

    def add_user(self, user: SandboxUser) -> dict[str, Any]:
        """Accept `Bearer <user.token>` as this user and create (or replace) its systemuser row."""
        self.users[user.token] = user
        system = self.caller(self.users.get("integration-user") or user)
        with self.store.transaction():
            if self.store.get("systemusers", user.systemuserid) is not None:
                self.store.delete("systemusers", user.systemuserid, system)
            self.store.seed("systemusers", [user.as_row()], system)
        row = self.store.get("systemusers", user.systemuserid)
        assert row is not None
        return row

    def caller(self, user: SandboxUser, correlation_id: str = "") -> Caller:
        return Caller(user.systemuserid, user.businessunitid, correlation_id)

    def user_by_object_id(self, object_id: str) -> SandboxUser | None:
        wanted = object_id.lower()
        return next(
            (u for u in self.users.values() if (u.azureactivedirectoryobjectid or "").lower() == wanted), None
        )

    def whoami(self, caller: Caller) -> dict[str, Any]:
        return {
            "BusinessUnitId": caller.business_unit_id,
            "UserId": caller.user_id,
            "OrganizationId": self.config.organization_id,
        }

    def _business_unit_of(self, user_id: str) -> str:
        row = self.store.get("systemusers", user_id)
        return str(row.get("_businessunitid_value")) if row else self.config.business_unit_id

    # --- data -------------------------------------------------------------------------------------

    def seed(
        self, entity_set: str, records: Sequence[Mapping[str, Any]], *, as_user: str = "integration-user"
    ) -> list[str]:
        """Insert rows fast (no webhooks); returns their ids. Rows may use `@odata.bind` or `_x_value`."""
        user = self.users.get(as_user)
        if user is None:
            raise ValueError(f"unknown user token {as_user!r}; add it with add_user() first")
        return self.store.seed(entity_set, list(records), self.caller(user))

    def rows(self, entity_set: str) -> list[dict[str, Any]]:
        with self.store.lock:
            return list(self.store.table(entity_set).rows.values())

    def get(self, entity_set: str, record_id: str) -> dict[str, Any] | None:
        return self.store.get(entity_set, record_id)

    def set_change_tracking(self, entity_set: str, enabled: bool) -> None:
        """A table with or without "Track changes", as an environment may have it (custom tables start
        without it; the Web API can only turn it on). For tests; `reset` restores the defaults."""
        with self.store.lock:
            data = self.store.table(entity_set)
            data.table = replace(data.table, change_tracking=enabled)

    def set_limits(self, **limits: float) -> dict[str, float]:
        """Change service-protection limits at runtime: max_requests, window_seconds,
        max_execution_ms, max_concurrent. Counting windows restart."""
        known = {"max_requests", "window_seconds", "max_execution_ms", "max_concurrent"}
        unknown = set(limits) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        for name, value in limits.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limit '{name}' must be a positive number")
            setattr(self.config, name, value)
        self.request_limiter.max_requests = int(self.config.max_requests)
        self.request_limiter.window_seconds = self.config.window_seconds
        self.execution_limiter.max_requests = int(self.config.max_execution_ms)
        self.execution_limiter.window_seconds = self.config.window_seconds
        self.gate.max_concurrent = int(self.config.max_concurrent)
        self.request_limiter.reset()
        self.execution_limiter.reset()
        return self.limits()

    def limits(self) -> dict[str, float]:
        return {
            "max_requests": self.config.max_requests,
            "window_seconds": self.config.window_seconds,
            "max_execution_ms": self.config.max_execution_ms,
            "max_concurrent": self.config.max_concurrent,
        }

    def reset(self) -> None:
        """Empty every table, forget deliveries, faults, counters and limit windows; re-seed defaults."""
        self.webhooks.flush(timeout=5)
        with self.store.lock:
            # Back to the built-in tables: what solutions and metadata writes added is gone.
            self.store.tables = {s: TableData(t) for s, t in build_tables().items()}
        self.webhooks.clear()
        self.injector.clear()
        self.api.bulk_delete.clear()
        self.api.customizer.clear()
        self.counters.reset()
        self.request_limiter.reset()
        self.execution_limiter.reset()
        self._seed_defaults()

    def _seed_customization(self, system: Caller) -> None:
        """What every environment has: the default publisher and solution, and the System
        Administrator role, held by the administrator user (`admin-user`)."""
        publisher_id = "d21aab71-79e7-11dd-8874-00188b01e34f"
        self.store.seed(
            "publishers",
            [{"publisherid": publisher_id, "uniquename": f"DefaultPublisher{self.config.org_name}",
              "friendlyname": f"Default Publisher for {self.config.org_name}", "customizationprefix": "new",
              "customizationoptionvalueprefix": 10000}],
            system,
        )  # fmt: skip
        self.store.seed(
            "solutions",
            [{"solutionid": "fd140aaf-4df4-11dd-bd17-0019b9312238", "uniquename": "Default",
              "friendlyname": "Default Solution", "version": "1.0", "ismanaged": False, "isvisible": False,
              "_publisherid_value": publisher_id}],
            system,
        )  # fmt: skip
        self.store.seed(
            "roles",
            [{"roleid": SYSTEM_ADMINISTRATOR_ROLE_ID, "name": SYSTEM_ADMINISTRATOR,
              "_businessunitid_value": self.config.business_unit_id}],
            system,
        )  # fmt: skip
        admins = [u for u in self.config.users if u.systemuserid == defaults.ADMIN_USER_ID]
        self.store.seed(
            "systemuserrolescollection",
            [{"systemuserid": u.systemuserid, "roleid": SYSTEM_ADMINISTRATOR_ROLE_ID} for u in admins],
            system,
        )

    # --- customization ----------------------------------------------------------------------------

    def import_solution(self, data: bytes) -> None:
        """Import a solution zip now, as an administrator's `ImportSolution` does (for test set-ups)."""
        import base64

        admin = Caller(defaults.ADMIN_USER_ID, self.config.business_unit_id)
        body = {"CustomizationFile": base64.b64encode(data).decode()}
        self.api.customizer.import_now(body, admin)

    def assign_role(self, user_id: str, role_name: str) -> None:
        """Give a user a role by name (as `POST systemusers(<id>)/systemuserroles_association/$ref`)."""
        roles = [r for r in self.rows("roles") if r.get("name") == role_name]
        if not roles:
            raise ValueError(
                f"no security role named {role_name!r}: import the solution that defines it first"
            )
        admin = Caller(defaults.ADMIN_USER_ID, self.config.business_unit_id)
        self.api.customizer.assign_role(user_id, str(roles[0]["roleid"]), admin)

    def close(self) -> None:
        self.webhooks.stop()

    def _seed_defaults(self) -> None:
        self.users = {}
        for user in self.config.users:
            self.users[user.token] = user
        first = self.config.users[0] if self.config.users else None
        system = Caller(
            first.systemuserid if first else defaults.INTEGRATION_USER_ID, self.config.business_unit_id
        )
        self.store.seed(
            "businessunits",
            [{"businessunitid": self.config.business_unit_id, "name": self.config.org_name}],
            system,
        )
        self.store.seed("systemusers", [u.as_row() for u in self.config.users], system)
        self.store.seed(
            "sdkmessages", [{"sdkmessageid": i, "name": n} for n, i in SDK_MESSAGES.items()], system
        )
        self.store.seed(
            "sdkmessagefilters",
            [
                {
                    "name": f"{message} of {table}",
                    "primaryobjecttypecode": table,
                    "secondaryobjecttypecode": "none",
                    "_sdkmessageid_value": message_id,
                }
                for message, message_id in SDK_MESSAGES.items()
                for table in FILTERED_TABLES
            ],
            system,
        )
        self._seed_customization(system)
        organization = {"organizationid": self.config.organization_id, "name": self.config.org_name}
        if not self.config.seed_reference_data:
            self.store.seed("organizations", [organization], system)
            return
        self.store.seed(
            "organizations", [{**organization, "_basecurrencyid_value": defaults.USD_CURRENCY_ID}], system
        )
        self.store.seed(
            "transactioncurrencies",
            [
                {
                    "transactioncurrencyid": defaults.USD_CURRENCY_ID,
                    "currencyname": "US Dollar",
                    "isocurrencycode": "USD",
                    "currencysymbol": "$",
                    "exchangerate": 1.0,
                    "currencyprecision": 2,
                },
                {
                    "transactioncurrencyid": defaults.EUR_CURRENCY_ID,
                    "currencyname": "Euro",
                    "isocurrencycode": "EUR",
                    "currencysymbol": "€",
                    "exchangerate": 0.92,
                    "currencyprecision": 2,
                },
            ],
            system,
        )
        self.store.seed(
            "uomschedules",
            [
                {
                    "uomscheduleid": defaults.DEFAULT_UOM_SCHEDULE_ID,
                    "name": "Default Unit",
                    "baseuomname": "Primary Unit",
                }
            ],
            system,
        )
        self.store.seed(
            "uoms",
            [
                {
                    "uomid": defaults.PRIMARY_UNIT_ID,
                    "name": "Primary Unit",
                    "quantity": 1.0,
                    "isschedulebaseuom": True,
                    "_uomscheduleid_value": defaults.DEFAULT_UOM_SCHEDULE_ID,
                    "_baseuom_value": defaults.PRIMARY_UNIT_ID,
                }
            ],
            system,
        )
        self.store.seed(
            "pricelevels",
            [
                {
                    "pricelevelid": defaults.DEFAULT_PRICE_LEVEL_ID,
                    "name": "Default",
                    "_transactioncurrencyid_value": defaults.USD_CURRENCY_ID,
                }
            ],
            system,
        )
