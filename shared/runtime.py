"""Process-wide wiring: settings -> storage, stores, API clients and mappings, built once.

Functions call `get_runtime()`; tests and the dev stack call `reset()` after changing settings.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from shared import telemetry
from shared.connectors.retry import RequestBudget, RetryPolicy
from shared.messages import AnyMessage
from shared.settings import Settings, get_settings
from shared.store import tables
from shared.store.couplings import CouplingStore
from shared.store.journal import Journal
from shared.store.statistics_hashes import StatisticsHashStore
from shared.store.storage import Storage, get_storage
from shared.store.subscriptions import SubscriptionStore
from shared.store.watermarks import WatermarkStore

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.connectors.business_central import BusinessCentralClient
    from shared.connectors.dataverse import DataverseClient
    from shared.mapping.schema import MappingSet
    from shared.sync.engine import Engine

log = logging.getLogger(__name__)

BC_SCOPE = "https://api.businesscentral.dynamics.com/.default"
# Per request, as the clients default to; set-up's checks pass a shorter one.
CLIENT_TIMEOUT_SECONDS = 30.0

Service = Literal["dataverse", "bc"]


@dataclass
class Runtime:
    settings: Settings
    storage: Storage

    @cached_property
    def couplings(self) -> CouplingStore:
        return CouplingStore(self.storage.table(tables.COUPLINGS))

    @cached_property
    def journal(self) -> Journal:
        return Journal(self.storage.table(tables.JOURNAL))

    @cached_property
    def watermarks(self) -> WatermarkStore:
        return WatermarkStore(self.storage.table(tables.WATERMARKS))

    @cached_property
    def subscriptions(self) -> SubscriptionStore:
        return SubscriptionStore(self.storage.table(tables.SUBSCRIPTIONS))

    @cached_property
    def statistics_hashes(self) -> StatisticsHashStore:
        return StatisticsHashStore(self.storage.table(tables.WATERMARKS))

    @cached_property
    def mappings(self) -> MappingSet:
        from shared.mapping.loader import load_mapping_set

        return load_mapping_set(self.settings.mappings_file)

    @property
    def company_id(self) -> str:
        """The BC company synchronized with this Dataverse environment (the first configured)."""
        return self.settings.bc_company_ids[0]

    @cached_property
    def _azure_credential(self) -> TokenCredential:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def integration_credential(self, service: Service) -> TokenCredential:
        """The integration user's credential for `service`: its static token (sandboxes only, refused
        by settings for non-loopback URLs) or the process's Azure credential (managed identity or
        client secret)."""
        s = self.settings
        token = s.dataverse_static_token if service == "dataverse" else s.bc_static_token
        if token:
            from shared.connectors.credentials import StaticTokenCredential

            return StaticTokenCredential(token)
        return self._azure_credential

    @cached_property
    def dataverse(self) -> DataverseClient:
        return dataverse_client(self.settings, self.integration_credential("dataverse"), budget=_budget("dv"))

    @cached_property
    def bc(self) -> BusinessCentralClient:
        return bc_client(self.settings, self.integration_credential("bc"), budget=_budget("bc"))

    @cached_property
    def engine(self) -> Engine:
        from shared.sync.engine import Engine
        from shared.sync.gateways import BusinessCentralGateway, DataverseGateway

        return Engine(
            mappings=self.mappings,
            bc=BusinessCentralGateway(self.bc, self.company_id),
            dv=DataverseGateway(self.dataverse),
            couplings=self.couplings,
            journal=self.journal,
            enqueue=self._enqueue,
        )

    def _enqueue(self, messages: Sequence[AnyMessage], delay: int) -> None:
        if messages:
            self.storage.enqueue(messages, delay_seconds=delay)

    def known_integration_user_id(self) -> str | None:
        """`integration_user_id`, or None when WhoAmI cannot be asked now: a caller filtering
        echoes then lets them through, and the snapshot comparison catches them (1 read, no write)."""
        try:
            return self.integration_user_id
        except Exception:
            log.warning("could not learn the integration user id (WhoAmI); echoes are caught by snapshots")
            return None

    @cached_property
    def integration_user_id(self) -> str:
        """The Dataverse systemuserid we write as: configured, or asked once with WhoAmI."""
        configured = self.settings.dataverse_integration_user_id
        return (configured or self.dataverse.whoami().user_id).lower()


# The one place API clients are built from settings: the runtime's (with the request budget), and
# set-up's (its quick connection checks, and the administrator's clients that register webhooks).
def dataverse_client(
    settings: Settings,
    credential: TokenCredential,
    *,
    policy: RetryPolicy | None = None,
    timeout: float = CLIENT_TIMEOUT_SECONDS,
    budget: RequestBudget | None = None,
) -> DataverseClient:
    from shared.connectors.dataverse import DataverseClient

    return DataverseClient(
        settings.dataverse_api_url,
        credential,
        scope=f"{settings.dataverse_url}/.default",
        policy=policy,
        timeout=timeout,
        budget=budget,
    )


def bc_client(
    settings: Settings,
    credential: TokenCredential,
    *,
    policy: RetryPolicy | None = None,
    timeout: float = CLIENT_TIMEOUT_SECONDS,
    budget: RequestBudget | None = None,
) -> BusinessCentralClient:
    from shared.connectors.business_central import BusinessCentralClient

    return BusinessCentralClient(
        settings.bc_api_url, credential, scope=BC_SCOPE, policy=policy, timeout=timeout, budget=budget
    )


def _budget(side: str) -> RequestBudget:
    # Both services allow 6,000 requests per 5 minutes per user; keep a little headroom for the
    # operator's own calls made with the same identity.
    budget = RequestBudget(max_requests=5_800, window_seconds=300)
    telemetry.observe("bcsync.api.budget_left", lambda: [(budget.left(), {"side": side})])
    return budget


_lock = threading.Lock()


@functools.cache
def _build() -> Runtime:
    settings = get_settings()
    telemetry.configure(settings)
    return Runtime(settings, get_storage())


def get_runtime() -> Runtime:
    with _lock:
        return _build()


def reset() -> None:
    """Forget cached settings, storage, clients and mappings (after the environment changed)."""
    from shared.store.storage import get_storage as storage_cache

    with _lock:
        _build.cache_clear()
        get_settings.cache_clear()
        storage_cache.cache_clear()
        telemetry.shutdown()
