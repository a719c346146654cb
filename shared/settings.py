"""Every app setting, validated once, with one error that names each bad setting.

Names are the Function App setting names, so `local.settings.json` `Values` and Azure app settings
both work unchanged (`fill_environ_from_settings_file` loads the former, for the CLI and dev host).
`local.settings.example.json` documents each one.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ServiceError

LOOPBACK_HOSTS = {"localhost"}


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

    # --- Business Central ----------------------------------------------------------------------
    bc_api_url: str = Field(
        validation_alias="BC_API_URL",
        description="e.g. https://api.businesscentral.dynamics.com/v2.0/<tenant>/<environment>/api/v2.0",
    )
    bc_company_ids: Annotated[list[str], NoDecode] = Field(
        validation_alias="BC_COMPANY_IDS", min_length=1, description="comma-separated BC company ids (GUIDs)"
    )
    bc_static_token: str | None = Field(default=None, validation_alias="BC_STATIC_TOKEN")
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

    @field_validator("bc_company_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dataverse_url", "bc_api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an absolute http(s) URL")
        if parts.scheme == "http" and not is_loopback_url(value):
            raise ValueError("plain http is only allowed for loopback (the local sandboxes); use https")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if not (self.storage_connection_string or self.storage_account_name):
            raise ValueError(
                "AzureWebJobsStorage: set a connection string (UseDevelopmentStorage=true for Azurite) "
                "or AzureWebJobsStorage__accountName for a managed identity"
            )
        for name, token, url in (
            ("DATAVERSE_STATIC_TOKEN", self.dataverse_static_token, self.dataverse_url),
            ("BC_STATIC_TOKEN", self.bc_static_token, self.bc_api_url),
        ):
            if token and not is_loopback_url(url):
                raise ValueError(f"{name}: for the local sandboxes only; remove it to use azure-identity")
        return self

    def missing_auth_settings(self) -> list[str]:
        """The caller-token settings not set: the admin/data API stays closed until they are."""
        wanted = (("AUTH_ISSUER", self.auth_issuer), ("AUTH_AUDIENCE", self.auth_audience),
                  ("AUTH_JWKS_URL", self.auth_jwks_url))  # fmt: skip
        return [name for name, value in wanted if not value]

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
            if name == "configuration" and ":" in msg:
                name, msg = (part.strip() for part in msg.split(":", 1))
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
