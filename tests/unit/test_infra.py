"""infra/ sets every app setting the code reads (issue 19, point 2): the settings declared in
`shared/settings.py` and the `%NAME%` binding settings, each either set by the template or left out
for a stated reason; and what the template sets passes the service's own settings validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices

from shared.settings import Settings, load_settings
from shared.startup import BINDING_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "resources.bicep"

# Declared settings a deployment in Azure leaves unset, and why.
NOT_IN_AZURE = {
    "AzureWebJobsStorage": "identity-based connection: AzureWebJobsStorage__accountName instead (no keys)",
    "DATAVERSE_STATIC_TOKEN": "accepted only for loopback sandboxes",
    "BC_STATIC_TOKEN": "accepted only for loopback sandboxes",
    "AZURE_TENANT_ID": "a service principal's; the system-assigned managed identity needs none",
    "AZURE_CLIENT_ID": "a service principal's; the system-assigned managed identity needs none",
    **{
        name: "on-premises sign-in only (BC_AUTH_MODE / DATAVERSE_AUTH_MODE oauth or basic, docs/deploy.md); "
        "the template deploys the online mode"
        for name in (
            "BC_AUTHORITY",
            "BC_SCOPE",
            "BC_CLIENT_ID",
            "BC_CLIENT_SECRET",
            "BC_USERNAME",
            "BC_WEB_SERVICE_ACCESS_KEY",
            "DATAVERSE_AUTHORITY",
            "DATAVERSE_SCOPE",
            "DATAVERSE_CLIENT_ID",
            "DATAVERSE_CLIENT_SECRET",
        )
    },
}
# What the platform reads, not the code's settings.
PLATFORM = {"APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}
# Values the template takes from its parameters, as an operator would give them.
SAMPLES = {
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "BC_API_URL": "https://api.businesscentral.dynamics.com/v2.0/tenant/production/api/v2.0",
    "BC_COMPANY_IDS": "f64eba74-dacd-4854-a584-1834f68cfc3a",
    "DATAVERSE_WEBHOOK_SECRET": "a-secret-from-key-vault-0123456789",
    "BC_WEBHOOK_CLIENT_STATE": "a-client-state-from-key-vault-0123456789",
    "DATAVERSE_INTEGRATION_USER_ID": "",
    "AzureWebJobsStorage__accountName": "stbcsyncabc",
    "SERVICE_PUBLIC_URL": "https://func-bcsync-abc.azurewebsites.net",
    "SCALE_OUT_MAX_INSTANCES": "3",
    "AUTH_ISSUER": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
    "AUTH_AUDIENCE": "api://bc-dataverse-sync",
    "AUTH_JWKS_URL": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/discovery/v2.0/keys",
}


def template_settings() -> dict[str, str | None]:
    """The app settings block of the template: NAME -> its literal value, or None when it is set
    from an expression (a parameter, another resource's property)."""
    text = TEMPLATE.read_text()
    block = re.search(r"name: 'appsettings'.*?properties: \{\n(.*?)\n  \}\n\}", text, re.S)
    assert block, "no appsettings resource in infra/resources.bicep"
    settings: dict[str, str | None] = {}
    for line in block.group(1).splitlines():
        match = re.fullmatch(r"\s*(\w+): (.+?)(\s*//.*)?", line)
        if match:
            value = match.group(2)
            settings[match.group(1)] = value[1:-1] if re.fullmatch(r"'[^'$]*'", value) else None
    return settings


def declared_settings() -> set[str]:
    names: set[str] = set(BINDING_SETTINGS)
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(alias if isinstance(alias, str) else name)
    return names


def test_the_template_sets_every_setting_the_code_reads() -> None:
    template = set(template_settings())
    missing = declared_settings() - set(NOT_IN_AZURE) - template
    assert not missing, f"infra/resources.bicep does not set {sorted(missing)}"
    unknown = template - declared_settings() - PLATFORM
    assert not unknown, f"infra/resources.bicep sets {sorted(unknown)}, which nothing reads"
    assert not set(NOT_IN_AZURE) & template


def test_every_binding_expression_of_the_functions_is_a_declared_setting() -> None:
    """The `%NAME%` expressions and `connection=` names of the triggers are app settings the host
    resolves: each must be in BINDING_SETTINGS (so the template test above covers it) or, for the
    storage connection, set identity-based by the template."""
    sources = [ROOT / "function_app.py", *sorted((ROOT / "sync_functions").glob("*.py"))]
    text = "\n".join(path.read_text() for path in sources)
    expressions = set(re.findall(r"%(\w+)%", text))
    assert {"SYNC_QUEUE_NAME", "DELTA_POLL_SCHEDULE"} <= expressions  # the scan finds them
    assert not expressions - set(BINDING_SETTINGS), "add these to shared.startup.BINDING_SETTINGS"
    for connection in set(re.findall(r"connection=\"(\w+)\"", text)):
        assert f"{connection}__accountName" in template_settings(), connection


def test_the_timer_schedules_are_the_codes_defaults() -> None:
    settings = template_settings()
    for name, default in BINDING_SETTINGS.items():
        assert settings[name] == default, name


def test_what_the_template_sets_passes_the_settings_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    template = {name: value for name, value in template_settings().items() if name not in PLATFORM}
    expressions = {name for name, value in template.items() if value is None}
    assert expressions <= set(SAMPLES), f"give these a sample value: {sorted(expressions - set(SAMPLES))}"
    values = {name: SAMPLES[name] if value is None else value for name, value in template.items()}
    for name in declared_settings():
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.storage_account_name == "stbcsyncabc" and not settings.missing_auth_settings()


def test_the_instance_bound_is_the_one_the_code_divides_bcs_concurrency_by() -> None:
    """`maximumInstanceCount` bounds scale-out and is what SCALE_OUT_MAX_INSTANCES says, within BC's
    5 concurrent requests per user (one each at least), so the instances together stay within it."""
    text = TEMPLATE.read_text()
    assert "scaleAndConcurrency: { maximumInstanceCount: maximumInstanceCount" in text
    assert "SCALE_OUT_MAX_INSTANCES: string(maximumInstanceCount)" in text
    bound = re.search(r"@maxValue\((\d+)\)\nparam maximumInstanceCount int = (\d+)", text)
    assert bound, "maximumInstanceCount has no @maxValue"
    from shared.settings import BC_MAX_CONCURRENT_PER_USER

    assert int(bound.group(1)) == BC_MAX_CONCURRENT_PER_USER and int(bound.group(2)) <= int(bound.group(1))
