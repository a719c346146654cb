"""Every app setting, validated once, with one error that names each bad setting.

Names are the Function App setting names, so `local.settings.json` `Values` and Azure app settings
both work unchanged (`fill_environ_from_settings_file` loads the former, for the CLI and dev host).
`local.settings.example.json` documents each one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import os
import re
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ServiceError
from shared.ncrontab import ScheduleError, parse_fields

LOOPBACK_HOSTS = {"localhost"}
# Azure queue names: 3-63 characters, lowercase letters, digits and single hyphens, starting and
# ending with a letter or digit (the `-poison` suffix is added to it, so leave room for 7 more).
QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
POISON_SUFFIX_LENGTH = len("-poison")
# An HTTP header / query parameter name (RFC 9110 token): what Dataverse can send the secret under.
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Service protection per user, whatever number of callers share it (docs/architecture.md#request-budget):
# BC online runs 5 requests of a user at once (more wait in a queue), Dataverse 52 (more get 429).
BC_MAX_CONCURRENT_PER_USER = 5
DATAVERSE_MAX_CONCURRENT_PER_USER = 52
BC_ONLINE_SCOPE = "https://api.businesscentral.dynamics.com/.default"


class SettingsError(ServiceError, RuntimeError):
    """Start-up configuration is invalid; `problems` maps each setting name to what is expected."""

    # Not retriable: nothing changes until someone fixes the app settings.
    http_status = 503

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {name}: {why}" for name, why in problems.items())
        super().__init__(f"invalid configuration ({len(problems)} setting(s)):\n{lines}")

    def public_message(self) -> str:
        return f"the service is not configured: {self.problems}"


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    # uuid.UUID also takes 32 bare hex digits and `{...}`; BC ids are always the dashed form.
    return len(text) == 36


def storage_connection_string_problem(value: str) -> str | None:
    """What is wrong with an `AzureWebJobsStorage` connection string, or None; checked without a
    network call, so a typo is reported at start instead of as an SDK traceback on first use."""
    if not value.strip():
        return "empty; set a connection string (UseDevelopmentStorage=true for Azurite)"
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    for client in (QueueServiceClient, TableServiceClient):
        try:
            client.from_connection_string(value)
        except ValueError as exc:
            return (
                f"not a usable storage connection string ({exc}); copy it from the storage account's "
                "Access keys page, or use UseDevelopmentStorage=true for Azurite"
            )
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    key = parts.get("AccountKey")
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            return "AccountKey is not base64; copy the key again from the storage account's Access keys page"
    return None


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, case_sensitive=True)

    # --- storage -------------------------------------------------------------------------------
    storage_connection_string: str | None = Field(
        default=None, validation_alias=AliasChoices("AzureWebJobsStorage")
    )
    storage_account_name: str | None = Field(
        default=None, validation_alias=AliasChoices("AzureWebJobsStorage__accountName")
    )
    sync_queue: str = Field(default="sync-requests", validation_alias="SYNC_QUEUE_NAME")

    # --- Dataverse -----------------------------------------------------------------------------
    dataverse_url: str = Field(
        validation_alias="DATAVERSE_URL",
        description="the environment URL, e.g. https://contoso.crm.dynamics.com",
    )
    dataverse_static_token: str | None = Field(default=None, validation_alias="DATAVERSE_STATIC_TOKEN")
    dataverse_webhook_auth_type: Literal["webhook_key", "http_header", "http_query_string"] = Field(
        default="webhook_key", validation_alias="DATAVERSE_WEBHOOK_AUTH_TYPE"
    )
    dataverse_webhook_secret: str = Field(
        validation_alias="DATAVERSE_WEBHOOK_SECRET",
        min_length=16,
        description="a random secret of 16+ characters",
    )
    dataverse_webhook_secret_name: str = Field(
        default="x-bcsync-key", validation_alias="DATAVERSE_WEBHOOK_SECRET_NAME"
    )
    dataverse_integration_user_id: str | None = Field(
        default=None, validation_alias="DATAVERSE_INTEGRATION_USER_ID"
    )
    # `entra`: Dataverse online, a token from azure-identity (managed identity / service principal).
    # `oauth`: Dynamics 365 Sales on-premises (Internet-facing deployment): the client credentials
    # grant at the customer's AD FS (or Entra ID) authority, for the resource DATAVERSE_SCOPE.
    dataverse_auth_mode: Literal["entra", "oauth"] = Field(
        default="entra", validation_alias="DATAVERSE_AUTH_MODE"
    )
    dataverse_authority: str | None = Field(default=None, validation_alias="DATAVERSE_AUTHORITY")
    dataverse_scope: str | None = Field(default=None, validation_alias="DATAVERSE_SCOPE")
    dataverse_client_id: str | None = Field(default=None, validation_alias="DATAVERSE_CLIENT_ID")
    dataverse_client_secret: SecretStr | None = Field(
        default=None, validation_alias="DATAVERSE_CLIENT_SECRET"
    )

    # --- Business Central ----------------------------------------------------------------------
    bc_api_url: str = Field(
        validation_alias="BC_API_URL",
        description="e.g. https://api.businesscentral.dynamics.com/v2.0/<tenant>/<environment>/api/v2.0",
    )
    bc_company_ids: Annotated[list[str], NoDecode] = Field(
        validation_alias="BC_COMPANY_IDS", min_length=1, description="comma-separated BC company ids (GUIDs)"
    )
    bc_static_token: str | None = Field(default=None, validation_alias="BC_STATIC_TOKEN")
    bc_web_client_url: str | None = Field(
        default=None,
        validation_alias="BC_WEB_CLIENT_URL",
        description="the BC web client's base URL for 'Open in Business Central' links, e.g. "
        "https://bc.contoso.local/BC/ (on-premises); empty: derived from BC_API_URL",
    )
    # `entra`: BC online (scope https://api.businesscentral.dynamics.com/.default, azure-identity).
    # `oauth`: BC on-premises with the customer's Entra ID / AD FS authority and BC_SCOPE.
    # `basic`: BC on-premises, a user name and its web service access key (HTTPS only).
    bc_auth_mode: Literal["entra", "oauth", "basic"] = Field(default="entra", validation_alias="BC_AUTH_MODE")
    bc_authority: str | None = Field(default=None, validation_alias="BC_AUTHORITY")
    bc_scope: str | None = Field(default=None, validation_alias="BC_SCOPE")
    bc_client_id: str | None = Field(default=None, validation_alias="BC_CLIENT_ID")
    bc_client_secret: SecretStr | None = Field(default=None, validation_alias="BC_CLIENT_SECRET")
    bc_username: str | None = Field(default=None, validation_alias="BC_USERNAME")
    bc_web_service_access_key: SecretStr | None = Field(
        default=None, validation_alias="BC_WEB_SERVICE_ACCESS_KEY"
    )
    bc_webhook_client_state: str = Field(
        validation_alias="BC_WEBHOOK_CLIENT_STATE",
        min_length=16,
        description="a random secret of 16+ characters",
    )

    # --- credentials for real services (azure-identity EnvironmentCredential names) -------------
    azure_tenant_id: str | None = Field(default=None, validation_alias="AZURE_TENANT_ID")
    azure_client_id: str | None = Field(default=None, validation_alias="AZURE_CLIENT_ID")

    # --- the service itself --------------------------------------------------------------------
    public_url: str = Field(default="http://127.0.0.1:7071", validation_alias="SERVICE_PUBLIC_URL")
    mappings_file: str = Field(default="mappings/default.yaml", validation_alias="MAPPINGS_FILE")
    delta_poll_schedule: str = Field(default="0 */2 * * * *", validation_alias="DELTA_POLL_SCHEDULE")
    full_resync_schedule: str = Field(default="0 0 2 * * *", validation_alias="FULL_RESYNC_SCHEDULE")
    subscription_upkeep_schedule: str = Field(
        default="0 0 */12 * * *", validation_alias="SUBSCRIPTION_UPKEEP_SCHEDULE"
    )
    statistics_schedule: str = Field(default="0 */30 * * * *", validation_alias="STATISTICS_SCHEDULE")
    # How often the delta poll queues the sweep of BC's ids that finds deletions no notification
    # reported (contacts and salespeople have no webhooks); 0 = at every poll.
    bc_sweep_minutes: float = Field(default=10.0, ge=0, validation_alias="BC_SWEEP_MINUTES")
    # The most instances the deployment may run at once (Flex Consumption `maximumInstanceCount`,
    # `functionAppScaleLimit` on the other plans): each instance sends at most its share of BC's
    # concurrent requests per user. The request budget is shared through storage whatever this is.
    scale_out_max_instances: int = Field(default=1, ge=1, validation_alias="SCALE_OUT_MAX_INSTANCES")

    # --- callers of the admin/data API (Entra ID) ----------------------------------------------
    auth_issuer: str | None = Field(default=None, validation_alias="AUTH_ISSUER")
    auth_audience: str | None = Field(default=None, validation_alias="AUTH_AUDIENCE")
    auth_jwks_url: str | None = Field(default=None, validation_alias="AUTH_JWKS_URL")
    # `roles` claim values (Entra app role values) of the integration solution's three roles.
    role_administrator: str = Field(
        default="Integration.Administrator", validation_alias="ROLE_ADMINISTRATOR"
    )
    role_user: str = Field(default="Integration.User", validation_alias="ROLE_USER")
    role_availability: str = Field(default="ProductAvailability.User", validation_alias="ROLE_AVAILABILITY")

    # --- OpenTelemetry (shared/telemetry.py): the first one set picks the exporter; none = off ----
    applicationinsights_connection_string: str | None = Field(
        default=None, validation_alias="APPLICATIONINSIGHTS_CONNECTION_STRING"
    )
    # `Authorization=AAD`: the managed identity sends telemetry (local authentication off).
    applicationinsights_authentication_string: str | None = Field(
        default=None, validation_alias="APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
    )
    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # JSON lines of spans, logs and metrics (the local stack's exporter).
    telemetry_file: str | None = Field(default=None, validation_alias="TELEMETRY_FILE")

    @field_validator("bc_company_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bc_company_ids")
    @classmethod
    def _company_guids(cls, value: list[str]) -> list[str]:
        # Notifications name the company by id; a name or a typo here drops every BC notification.
        bad = [item for item in value if not _is_guid(item)]
        if bad:
            raise ValueError(
                f"not a company id (GUID): {', '.join(repr(b) for b in bad)}; use the `id` of "
                "GET .../api/v2.0/companies (`bcsync setup` lists them), not the company name"
            )
        return value

    @field_validator(
        "delta_poll_schedule", "full_resync_schedule", "subscription_upkeep_schedule", "statistics_schedule"
    )
    @classmethod
    def _schedule(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty; give an NCRONTAB schedule of 6 fields, e.g. '0 */2 * * * *'")
        try:
            parse_fields(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("bc_authority", "dataverse_authority")
    @classmethod
    def _authority_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "expected the authority's absolute https URL: "
                "https://login.microsoftonline.com/<tenant id>/v2.0 (Entra ID) or https://<AD FS host>/adfs"
            )
        if parts.scheme == "http" and not is_loopback_url(value):
            raise ValueError(
                "the client secret is sent to the authority: use https (plain http only for loopback)"
            )
        return value.rstrip("/")

    @field_validator("auth_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if not value:
            return value  # not set: the admin API stays closed (503 naming it), see missing_auth_settings
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an absolute https URL of the tenant's signing keys (JWKS)")
        if parts.scheme == "http" and not is_loopback_url(value):
            # Keys fetched over plain http could be swapped in transit, and then any token passes.
            raise ValueError("signing keys must be fetched over https; plain http only for loopback")
        return value

    @field_validator("sync_queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not QUEUE_NAME.match(value) or len(value) + POISON_SUFFIX_LENGTH > 63:
            raise ValueError(
                f"{value!r} is not a valid queue name: use 3-56 characters (room for '-poison'), "
                "lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
            )
        return value

    @field_validator("storage_connection_string")
    @classmethod
    def _connection_string(cls, value: str | None) -> str | None:
        if value is None:
            return value
        problem = storage_connection_string_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("dataverse_webhook_secret_name")
    @classmethod
    def _secret_name(cls, value: str, info: ValidationInfo) -> str:
        # The name only matters for the schemes that send the secret under it; there it must be
        # usable as a header / query parameter, or every webhook call is refused.
        if info.data.get("dataverse_webhook_auth_type") in ("http_header", "http_query_string"):
            if not value.strip():
                raise ValueError(
                    f"empty, but DATAVERSE_WEBHOOK_AUTH_TYPE={info.data['dataverse_webhook_auth_type']} "
                    "sends the secret under this name; set it (e.g. x-bcsync-key)"
                )
            if not TOKEN.match(value):
                raise ValueError(
                    f"{value!r} cannot be a header or query parameter name; use e.g. x-bcsync-key"
                )
        return value

    @field_validator("dataverse_url", "bc_api_url", "public_url", "bc_web_client_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.field_name == "bc_web_client_url" and not value:
            return None  # optional: derived from BC_API_URL
        if value is None:
            raise ValueError("expected an absolute http(s) URL")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an absolute http(s) URL")
        if parts.scheme == "http" and not is_loopback_url(value):
            raise ValueError("plain http is only allowed for loopback (the local sandboxes); use https")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        # Every cross-setting problem at once, one per line as `NAME: why` (split by load_settings).
        problems = []
        if not (self.storage_connection_string or self.storage_account_name):
            problems.append(
                "AzureWebJobsStorage: set a connection string (UseDevelopmentStorage=true for Azurite) "
                "or AzureWebJobsStorage__accountName for a managed identity"
            )
        for name, token, url in (
            ("DATAVERSE_STATIC_TOKEN", self.dataverse_static_token, self.dataverse_url),
            ("BC_STATIC_TOKEN", self.bc_static_token, self.bc_api_url),
        ):
            if token and not is_loopback_url(url):
                problems.append(f"{name}: for the local sandboxes only; remove it to use azure-identity")
        problems.extend(self._sign_in_problems())
        if self.scale_out_max_instances > BC_MAX_CONCURRENT_PER_USER:
            problems.append(
                f"SCALE_OUT_MAX_INSTANCES: {self.scale_out_max_instances} instances with one BC request "
                f"each would exceed BC's {BC_MAX_CONCURRENT_PER_USER} concurrent requests per user; "
                f"bound the deployment to at most {BC_MAX_CONCURRENT_PER_USER} instances "
                "(maximumInstanceCount / functionAppScaleLimit) and set the same number here"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _sign_in_problems(self) -> list[str]:
        """`NAME: why` for each setting the chosen sign-in modes need and do not have."""
        problems = []
        needed: list[tuple[str, object]] = []
        if self.bc_auth_mode == "oauth":
            needed += [
                ("BC_AUTHORITY", self.bc_authority),
                ("BC_SCOPE", self.bc_scope),
                ("BC_CLIENT_ID", self.bc_client_id),
                ("BC_CLIENT_SECRET", self.bc_client_secret),
            ]
        if self.bc_auth_mode == "basic":
            needed += [
                ("BC_USERNAME", self.bc_username),
                ("BC_WEB_SERVICE_ACCESS_KEY", self.bc_web_service_access_key),
            ]
            if urlsplit(self.bc_api_url).scheme != "https":
                problems.append(
                    "BC_API_URL: BC_AUTH_MODE=basic sends the web service access key with every request, so "
                    f"it is refused over plain http ({self.bc_api_url}); use BC's https address (the server "
                    "instance's SSL certificate)"
                )
        if self.dataverse_auth_mode == "oauth":
            needed += [("DATAVERSE_AUTHORITY", self.dataverse_authority),
                       ("DATAVERSE_CLIENT_ID", self.dataverse_client_id),
                       ("DATAVERSE_CLIENT_SECRET", self.dataverse_client_secret)]  # fmt: skip
        for name, value in needed:
            if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
                mode = "BC_AUTH_MODE" if name.startswith("BC_") else "DATAVERSE_AUTH_MODE"
                chosen = self.bc_auth_mode if name.startswith("BC_") else self.dataverse_auth_mode
                problems.append(f"{name}: required with {mode}={chosen}")
        static = (
            ("BC_STATIC_TOKEN", self.bc_auth_mode, self.bc_static_token),
            ("DATAVERSE_STATIC_TOKEN", self.dataverse_auth_mode, self.dataverse_static_token),
        )
        for name, mode, token in static:
            if token and mode != "entra":
                problems.append(
                    f"{name}: a sandbox token cannot be combined with the {mode} sign-in; remove one"
                )
        return problems

    @property
    def bc_token_scope(self) -> str:
        return self.bc_scope or BC_ONLINE_SCOPE

    @property
    def dataverse_token_scope(self) -> str:
        if self.dataverse_auth_mode == "oauth":
            return self.dataverse_scope or self.dataverse_url
        return self.dataverse_scope or f"{self.dataverse_url}/.default"

    def missing_auth_settings(self) -> list[str]:
        """The caller-token settings not set: the admin/data API stays closed until they are."""
        wanted = (("AUTH_ISSUER", self.auth_issuer), ("AUTH_AUDIENCE", self.auth_audience),
                  ("AUTH_JWKS_URL", self.auth_jwks_url))  # fmt: skip
        return [name for name, value in wanted if not value]

    @property
    def bc_concurrency_per_instance(self) -> int:
        """BC requests one instance may have in flight: its share of BC's per-user limit."""
        return max(1, BC_MAX_CONCURRENT_PER_USER // self.scale_out_max_instances)

    @property
    def dataverse_concurrency_per_instance(self) -> int:
        return max(1, DATAVERSE_MAX_CONCURRENT_PER_USER // self.scale_out_max_instances)

    @property
    def dataverse_api_url(self) -> str:
        return f"{self.dataverse_url}/api/data/v9.2/"


_ALIASES = {
    name: (field.validation_alias if isinstance(field.validation_alias, str) else name)
    for name, field in Settings.model_fields.items()
}


_DESCRIPTIONS = {
    _ALIASES[name]: field.description for name, field in Settings.model_fields.items() if field.description
}


def _setting_name(loc: tuple[object, ...]) -> str:
    if not loc:
        return "configuration"
    first = str(loc[0])
    return _ALIASES.get(first, first)


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings from the environment; raise `SettingsError` naming every problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            name = _setting_name(tuple(err["loc"]))
            if err["type"] == "missing":
                hint = _DESCRIPTIONS.get(name)
                msg = f"required but not set ({hint})" if hint else "required but not set"
            if name == "configuration":
                # The cross checks give `NAME: why` lines (see Settings._cross_checks).
                for line in msg.splitlines():
                    key, _, why = line.partition(":")
                    if why:
                        problems[key.strip()] = why.strip()
                    else:
                        problems[name] = line
                continue
            problems[name] = msg
        raise SettingsError(problems) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (validated once, cached)."""
    return load_settings()


def fill_environ_from_settings_file(
    path: str | Path, environ: MutableMapping[str, str] | None = None
) -> bool:
    """Set each non-empty `Values` entry of a `local.settings.json` that the environment does not set.

    What Core Tools does before start-up, for the CLI and the dev host; the environment wins, so an
    app setting given on the command line overrides the file. Empty values are skipped: the example
    file lists every setting with "" for "not set", and an empty string would replace a default
    (e.g. an empty SYNC_QUEUE_NAME). Returns False when the file does not exist.
    """
    target = os.environ if environ is None else environ
    path = Path(path)
    if not path.exists():
        return False
    values = json.loads(path.read_text()).get("Values", {})
    for name, value in values.items():
        if name not in target and value not in (None, ""):
            target[name] = str(value)
    return True
