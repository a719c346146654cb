"""Process-wide wiring: settings -> storage, stores, API clients and mappings, built once.

Functions call `get_runtime()`; tests and the dev stack call `reset()` after changing settings.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import httpx

from shared import telemetry
from shared.companies import (
    COMPANY_ENTITY_SET,
    COMPANY_EXTERNAL_ID,
    COMPANY_PRIMARY_KEY,
    home_company,
    key_prefix,
    same_company,
)
from shared.connectors.retry import Budget, RequestBudget, RetryPolicy
from shared.errors import ServiceError
from shared.messages import AnyMessage
from shared.settings import Settings, get_settings
from shared.store import tables
from shared.store.company_registry import CompanyRegistry
from shared.store.couplings import CouplingStore
from shared.store.journal import Journal
from shared.store.request_budget import SharedRequestBudget
from shared.store.statistics_hashes import StatisticsHashStore
from shared.store.storage import Storage, get_storage
from shared.store.subscriptions import SubscriptionStore
from shared.store.watermarks import WatermarkStore
from shared.sync.echoes import ECHOES

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.connectors.business_central import BusinessCentralClient
    from shared.connectors.dataverse import DataverseClient
    from shared.mapping.schema import MappingSet
    from shared.sync.engine import Engine

log = logging.getLogger(__name__)

# Per request, as the clients default to; set-up's checks pass a shorter one.
CLIENT_TIMEOUT_SECONDS = 30.0

Service = Literal["dataverse", "bc"]


# How long the list of Dataverse `bcbi_company` rows is trusted before it is asked again.
COMPANY_ROWS_SECONDS = 600.0


class CompanyNotConfiguredError(ServiceError):
    """A company that is not in `BC_COMPANY_IDS` was asked for."""

    http_status = 400


class UnknownCompanyError(ServiceError):
    """A configured BC company has no `bcbi_company` row in Dataverse (set-up creates it)."""

    http_status = 409


@dataclass
class Runtime:
    """The process's wiring. `get_runtime()` gives the home company's; `for_company(id)` another
    company's view: the same settings, clients and request budget, its own storage scope (keys,
    queued messages stamped with the company), BC company and Dataverse company tag."""

    settings: Settings
    storage: Storage
    company: str | None = None  # None: the home company
    parent: Runtime | None = field(default=None, repr=False)

    @property
    def root(self) -> Runtime:
        return self.parent or self

    @property
    def companies(self) -> list[str]:
        """The BC companies synchronized with this Dataverse environment (`BC_COMPANY_IDS`)."""
        return list(self.settings.bc_company_ids)

    @property
    def multi_company(self) -> bool:
        return len(self.settings.bc_company_ids) > 1

    @cached_property
    def home_company(self) -> str:
        """The company untagged Dataverse rows and unprefixed storage keys belong to (`shared.companies`):
        with one company that company; with several, the one set-up pinned, else the first."""
        if self.parent is not None:
            return self.parent.home_company
        if not self.multi_company:
            return self.companies[0]
        return home_company(self.companies, self.pinned_home_company())

    def pinned_home_company(self) -> str | None:
        return self.company_registry.pinned_home()

    @property
    def company_id(self) -> str:
        """The BC company this view synchronizes."""
        return self.company or self.home_company

    @property
    def scope(self) -> str:
        """This company's storage key prefix: "" for the home company."""
        return key_prefix(self.company_id, self.home_company) if self.multi_company else ""

    def for_company(self, company: str) -> Runtime:
        """The view of `company` (which must be configured). With one company: this runtime."""
        root = self.root
        configured = next((c for c in root.companies if same_company(c, company)), None)
        if configured is None:
            raise CompanyNotConfiguredError(
                f"BC company {company!r:.60} is not in BC_COMPANY_IDS ({', '.join(root.companies)})"
            )
        if not root.multi_company:
            return root
        with _lock:
            views = root.__dict__.setdefault("_views", {})
            view = views.get(configured.lower())
            if view is None:
                storage = dataclasses.replace(root.storage, company=configured)
                view = views[configured.lower()] = Runtime(root.settings, storage, configured, root)
        return view

    @cached_property
    def couplings(self) -> CouplingStore:
        # Its writes tell the BC webhook which notifications are echoes (shared/sync/echoes.py).
        return CouplingStore(self.storage.table(tables.COUPLINGS), self.scope, ECHOES)

    @cached_property
    def journal(self) -> Journal:
        return Journal(self.storage.table(tables.JOURNAL), self.scope)

    @cached_property
    def watermarks(self) -> WatermarkStore:
        return WatermarkStore(self.storage.table(tables.WATERMARKS), self.scope)

    @cached_property
    def subscriptions(self) -> SubscriptionStore:
        return SubscriptionStore(self.storage.table(tables.SUBSCRIPTIONS))

    @cached_property
    def statistics_hashes(self) -> StatisticsHashStore:
        return StatisticsHashStore(self.storage.table(tables.WATERMARKS), self.scope)

    @cached_property
    def company_registry(self) -> CompanyRegistry:
        """The companies set-up brought in and the pinned home company: one registry for all of them."""
        return CompanyRegistry(self.storage.table(tables.WATERMARKS))

    @cached_property
    def mappings(self) -> MappingSet:
        if self.parent is not None:
            return self.parent.mappings
        from shared.mapping.loader import load_mapping_set

        return load_mapping_set(self.settings.mappings_file)

    # -- Dataverse company rows ------------------------------------------------------------------
    def dataverse_companies(self, *, refresh: bool = False) -> dict[str, str]:
        """BC company id (lower case) -> its `bcbi_company` row id, asked at most every 10 minutes."""
        root = self.root
        cached = root.__dict__.get("_dv_companies")
        if cached is not None and not refresh and time.monotonic() - cached[0] < COMPANY_ROWS_SECONDS:
            return dict(cached[1])
        rows = root.dataverse.query(COMPANY_ENTITY_SET, select=[COMPANY_PRIMARY_KEY, COMPANY_EXTERNAL_ID])
        found = {
            str(r.get(COMPANY_EXTERNAL_ID) or "").lower(): str(r[COMPANY_PRIMARY_KEY])
            for r in rows
            if r.get(COMPANY_EXTERNAL_ID)
        }
        root.__dict__["_dv_companies"] = (time.monotonic(), found)
        return dict(found)

    def dataverse_company_row(self) -> str:
        """This company's `bcbi_company` row id (asked again once when not found)."""
        key = self.company_id.lower()
        row = self.dataverse_companies().get(key) or self.dataverse_companies(refresh=True).get(key)
        if row is None:
            raise UnknownCompanyError(
                f"BC company {self.company_id} has no row in Dataverse's {COMPANY_ENTITY_SET} "
                f"(bcbi_externalid = the company id); run `bcsync setup`, which creates it"
            )
        return row

    @cached_property
    def _azure_credential(self) -> TokenCredential:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def integration_credential(self, service: Service) -> TokenCredential | httpx.Auth:
        """The integration user's credential for `service`, by its sign-in mode: its static token
        (sandboxes only, refused by settings for non-loopback URLs), the client credentials grant at
        the customer's authority (`oauth`, on-premises), BC's web service access key (`basic`), or
        the process's Azure credential (managed identity or client secret)."""
        return integration_credential(self.settings, service, lambda: self._azure_credential)

    @cached_property
    def dataverse(self) -> DataverseClient:
        if self.parent is not None:
            return self.parent.dataverse  # one client, one request budget per process
        return dataverse_client(
            self.settings,
            self.integration_credential("dataverse"),
            budget=self.request_budget("dataverse"),
            max_concurrent=self.settings.dataverse_concurrency_per_instance,
        )

    @cached_property
    def bc(self) -> BusinessCentralClient:
        if self.parent is not None:
            return self.parent.bc
        return bc_client(
            self.settings,
            self.integration_credential("bc"),
            budget=self.request_budget("bc"),
            max_concurrent=self.settings.bc_concurrency_per_instance,
        )

    def request_budget(self, service: Service) -> SharedRequestBudget:
        """The integration user's allowance on `service`, shared by every instance through storage;
        an instance's share in memory while storage cannot be asked."""
        share = max(1, REQUESTS_PER_WINDOW // self.settings.scale_out_max_instances)
        budget = SharedRequestBudget(
            self.storage.table(tables.REQUEST_BUDGET),
            service,
            max_requests=REQUESTS_PER_WINDOW,
            window_seconds=WINDOW_SECONDS,
            fallback=RequestBudget(max_requests=share, window_seconds=WINDOW_SECONDS),
        )
        side = "dv" if service == "dataverse" else "bc"
        telemetry.observe("bcsync.api.budget_left", lambda: [(budget.left(), {"side": side})])
        return budget

    @cached_property
    def engine(self) -> Engine:
        from shared.sync.engine import Engine
        from shared.sync.gateways import BusinessCentralGateway, CompanyTag, DataverseGateway

        tag = (
            CompanyTag(self.dataverse_company_row, same_company(self.company_id, self.home_company))
            if self.multi_company
            else None
        )
        return Engine(
            mappings=self.mappings,
            bc=BusinessCentralGateway(self.bc, self.company_id, self.settings.bc_web_client_url),
            dv=DataverseGateway(self.dataverse, tag),
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
        if self.parent is not None:
            return self.parent.integration_user_id
        configured = self.settings.dataverse_integration_user_id
        return (configured or self.dataverse.whoami().user_id).lower()


def integration_credential(
    settings: Settings, service: Service, azure_credential: Callable[[], TokenCredential] | None = None
) -> TokenCredential | httpx.Auth:
    """See `Runtime.integration_credential`; `azure_credential` gives the process's Azure credential
    (a new `DefaultAzureCredential` when not given)."""
    from shared.connectors.credentials import ClientCredentialsGrant, OAuthSettings, StaticTokenCredential

    s = settings
    token = s.dataverse_static_token if service == "dataverse" else s.bc_static_token
    if token:
        return StaticTokenCredential(token)
    if service == "bc" and s.bc_auth_mode == "basic":
        assert s.bc_username and s.bc_web_service_access_key  # checked by the settings
        return httpx.BasicAuth(s.bc_username, s.bc_web_service_access_key.get_secret_value())
    mode = s.bc_auth_mode if service == "bc" else s.dataverse_auth_mode
    if mode == "oauth":
        authority = s.bc_authority if service == "bc" else s.dataverse_authority
        client_id = s.bc_client_id if service == "bc" else s.dataverse_client_id
        secret = s.bc_client_secret if service == "bc" else s.dataverse_client_secret
        assert authority and client_id and secret  # checked by the settings
        prefix = "BC" if service == "bc" else "DATAVERSE"
        return ClientCredentialsGrant(OAuthSettings(prefix, authority, client_id, secret.get_secret_value()))
    if azure_credential is not None:
        return azure_credential()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


# The one place API clients are built from settings: the runtime's (with the request budget), and
# set-up's (its quick connection checks, and the administrator's clients that register webhooks).
def dataverse_client(
    settings: Settings,
    credential: TokenCredential | httpx.Auth,
    *,
    policy: RetryPolicy | None = None,
    timeout: float = CLIENT_TIMEOUT_SECONDS,
    budget: Budget | None = None,
    max_concurrent: int | None = None,
) -> DataverseClient:
    from shared.connectors.dataverse import DataverseClient

    return DataverseClient(
        settings.dataverse_api_url,
        credential,
        scope=settings.dataverse_token_scope,
        policy=policy,
        timeout=timeout,
        budget=budget,
        max_concurrent=max_concurrent,
    )


def bc_client(
    settings: Settings,
    credential: TokenCredential | httpx.Auth,
    *,
    policy: RetryPolicy | None = None,
    timeout: float = CLIENT_TIMEOUT_SECONDS,
    budget: Budget | None = None,
    max_concurrent: int | None = None,
) -> BusinessCentralClient:
    from shared.connectors.business_central import BusinessCentralClient

    return BusinessCentralClient(
        settings.bc_api_url,
        credential,
        scope=settings.bc_token_scope,
        policy=policy,
        timeout=timeout,
        budget=budget,
        max_concurrent=max_concurrent,
    )


# Both services allow 6,000 requests per 5 minutes per user; keep a little headroom for the
# operator's own calls made with the same identity.
REQUESTS_PER_WINDOW = 5_800
WINDOW_SECONDS = 300.0


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
