"""Start-up refuses bad configuration: one `StartupError` naming each bad setting, and the mapping
file's name, line and problem, for every variant found by the attack in issue 13."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from shared.startup import BINDING_SETTINGS, StartupError, check_startup

GUID = "f64eba74-dacd-4854-a584-1834f68cfc3a"
VALID = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "DATAVERSE_WEBHOOK_SECRET": "s" * 20,
    "BC_API_URL": "https://api.businesscentral.dynamics.com/v2.0/contoso/production/api/v2.0",
    "BC_COMPANY_IDS": GUID,
    "BC_WEBHOOK_CLIENT_STATE": "c" * 20,
    **BINDING_SETTINGS,
}
OTHER = ("DATAVERSE_STATIC_TOKEN", "BC_STATIC_TOKEN", "AzureWebJobsStorage__accountName", "AUTH_JWKS_URL",
         "AUTH_ISSUER", "AUTH_AUDIENCE",  # another test may leave them in the environment
         "DATAVERSE_WEBHOOK_AUTH_TYPE", "DATAVERSE_WEBHOOK_SECRET_NAME", "MAPPINGS_FILE")  # fmt: skip

MINIMAL = """\
version: 1
settings:
  ownership: {model: team, team_id: e0000000-0000-0000-0000-000000000001}
mappings:
  - name: CURRENCY
    bc: {entity_set: currencies, key: code}
    dataverse: {table: transactioncurrency, entity_set: transactioncurrencies}
    direction: to_dataverse
    fields:
      - {bc: code, dv: isocurrencycode, direction: to_dataverse}
  - name: PAYMENT TERMS
    kind: option_set
    bc: {entity_set: paymentTerms, key: id, code_field: code}
    dataverse_column: paymenttermscode
    value_map:
      "30 DAYS": 1
  - name: CUSTOMER
    bc: {entity_set: customers, key: number}
    dataverse: {table: account, entity_set: accounts}
    fields:
      - {bc: displayName, dv: name}
      - {bc: currencyCode, dv: transactioncurrencyid, lookup: CURRENCY}
"""
CURRENCY_DIRECTION = "    direction: to_dataverse\n"


def _extra_after_currency_direction(line: str) -> str:
    return MINIMAL.replace(CURRENCY_DIRECTION, CURRENCY_DIRECTION + line, 1)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in OTHER:
        monkeypatch.delenv(key, raising=False)
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    monkeypatch.setenv("MAPPINGS_FILE", str(good))
    return monkeypatch


def startup_error() -> StartupError:
    with pytest.raises(StartupError) as info:
        check_startup()
    return info.value


def test_valid_configuration_starts(env: pytest.MonkeyPatch) -> None:
    assert check_startup().bc_company_ids == [GUID]


# ------------------------------------------------------------------------------ mapping files
# name -> (file content, or None for a missing file; the line the message must name; what it says)
BROKEN_MAPPINGS: dict[str, tuple[str | bytes | None, int | None, str]] = {
    "missing file": (None, None, "cannot read the file: No such file"),
    "YAML syntax error": (MINIMAL.replace("key: code}", "key: code", 1), 7, "not valid YAML"),
    "empty file": ("", 1, "the file is empty"),
    "unknown key": (_extra_after_currency_direction("    colour: red\n"), 9, "colour: unknown key"),
    "undefined lookup": (MINIMAL.replace("lookup: CURRENCY", "lookup: CURRENCIES"), 22, "CURRENCIES"),
    "duplicate mapping name": (MINIMAL.replace("name: CUSTOMER", "name: CURRENCY"), 17, "must be unique"),
    "depends_on cycle": (
        _extra_after_currency_direction("    depends_on: [CUSTOMER]\n").replace(
            "    bc: {entity_set: customers", "    depends_on: [CURRENCY]\n    bc: {entity_set: customers"
        ),
        9,
        "form a cycle",
    ),
    "duplicate key": (_extra_after_currency_direction("    direction: to_bc\n"), 9, "given twice"),
    "bad enum": (MINIMAL.replace(CURRENCY_DIRECTION, "    direction: sideways\n", 1), 8, "'to_dataverse'"),
    "non-integer value_map": (MINIMAL.replace('"30 DAYS": 1', '"30 DAYS": net thirty'), 16, "integer"),
    "top-level list": ("- mappings\n- settings\n", 1, "must be a mapping with `version`"),
    # byte 0x0a is a newline, so the first undecodable byte (0x80) is on line 2
    "binary garbage": (bytes(range(256)) * 4, 2, "not UTF-8"),
    "control characters": ("version: 1\nmappings: \x07\x00\x01\n", 2, "control character U+0007"),
}


@pytest.mark.parametrize("variant", list(BROKEN_MAPPINGS))
def test_a_broken_mapping_file_stops_start_up_naming_file_line_and_problem(
    env: pytest.MonkeyPatch, tmp_path: Path, variant: str
) -> None:
    content, line, what = BROKEN_MAPPINGS[variant]
    path = tmp_path / "broken.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    env.setenv("MAPPINGS_FILE", str(path))
    error = startup_error()
    assert len(error.problems) == 1, error.problems
    (problem,) = error.problems
    where = f"{path}:{line}:" if line else f"{path}:"
    assert problem.startswith(where), problem
    assert what in problem
    assert str(path) in str(error) and what in str(error)


# ------------------------------------------------------------------------------------ settings
BAD_SETTINGS: dict[str, tuple[dict[str, str], str, str]] = {
    "schedule in words": ({"DELTA_POLL_SCHEDULE": "every two minutes"}, "DELTA_POLL_SCHEDULE", "6 fields"),
    "5-field cron": ({"FULL_RESYNC_SCHEDULE": "0 2 * * *"}, "FULL_RESYNC_SCHEDULE", "6 fields"),
    "schedule out of range": ({"STATISTICS_SCHEDULE": "0 */30 25 * * *"}, "STATISTICS_SCHEDULE", "0-23"),
    "empty schedule": ({"SUBSCRIPTION_UPKEEP_SCHEDULE": ""}, "SUBSCRIPTION_UPKEEP_SCHEDULE", "empty"),
    "blank schedule": ({"DELTA_POLL_SCHEDULE": "   "}, "DELTA_POLL_SCHEDULE", "empty"),
    "unset schedule": ({"FULL_RESYNC_SCHEDULE": "<unset>"}, "FULL_RESYNC_SCHEDULE", "%FULL_RESYNC_SCHEDULE%"),
    "unset queue name": ({"SYNC_QUEUE_NAME": "<unset>"}, "SYNC_QUEUE_NAME", "not set"),
    "company name": ({"BC_COMPANY_IDS": f"{GUID}, CRONUS USA"}, "BC_COMPANY_IDS", "'CRONUS USA'"),
    "company id typo": ({"BC_COMPANY_IDS": GUID[:-1]}, "BC_COMPANY_IDS", "not a company id"),
    "JWKS over http": ({"AUTH_JWKS_URL": "http://login.example.com/keys"}, "AUTH_JWKS_URL", "https"),
    "relative JWKS": ({"AUTH_JWKS_URL": "/discovery/v2.0/keys"}, "AUTH_JWKS_URL", "absolute https"),
    "header without name": (
        {"DATAVERSE_WEBHOOK_AUTH_TYPE": "http_header", "DATAVERSE_WEBHOOK_SECRET_NAME": ""},
        "DATAVERSE_WEBHOOK_SECRET_NAME",
        "http_header",
    ),
    "query without name": (
        {"DATAVERSE_WEBHOOK_AUTH_TYPE": "http_query_string", "DATAVERSE_WEBHOOK_SECRET_NAME": " "},
        "DATAVERSE_WEBHOOK_SECRET_NAME",
        "http_query_string",
    ),
    "header name with spaces": (
        {"DATAVERSE_WEBHOOK_AUTH_TYPE": "http_header", "DATAVERSE_WEBHOOK_SECRET_NAME": "my key"},
        "DATAVERSE_WEBHOOK_SECRET_NAME",
        "header or query parameter name",
    ),
    "garbage storage": ({"AzureWebJobsStorage": "garbage"}, "AzureWebJobsStorage", "connection string"),
    "storage without key": ({"AzureWebJobsStorage": "AccountName=x"}, "AzureWebJobsStorage", "connection"),
    "storage key not base64": (
        {"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=not*base64"},
        "AzureWebJobsStorage",
        "AccountKey is not base64",
    ),
    "queue name uppercase": ({"SYNC_QUEUE_NAME": "Sync_Requests"}, "SYNC_QUEUE_NAME", "lowercase"),
    "queue name too short": ({"SYNC_QUEUE_NAME": "ab"}, "SYNC_QUEUE_NAME", "3-56"),
    "queue name double hyphen": ({"SYNC_QUEUE_NAME": "sync--requests"}, "SYNC_QUEUE_NAME", "single hyphens"),
    "queue name too long": ({"SYNC_QUEUE_NAME": "q" * 60}, "SYNC_QUEUE_NAME", "room for '-poison'"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_a_bad_setting_stops_start_up_naming_it(env: pytest.MonkeyPatch, case: str) -> None:
    values, name, what = BAD_SETTINGS[case]
    for key, value in values.items():
        if value == "<unset>":
            env.delenv(key)
        else:
            env.setenv(key, value)
    error = startup_error()
    assert [p for p in error.problems if p.startswith(f"{name}: ")], error.problems
    (problem,) = [p for p in error.problems if p.startswith(f"{name}: ")]
    assert what in problem
    assert "Traceback" not in str(error)


def test_every_problem_is_in_one_message(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("mappings: [\n")
    env.setenv("MAPPINGS_FILE", str(broken))
    env.setenv("BC_COMPANY_IDS", "CRONUS")
    env.setenv("DELTA_POLL_SCHEDULE", "* * * * *")
    env.setenv("AUTH_JWKS_URL", "http://example.com/keys")
    error = startup_error()
    names = [p.split(":", 1)[0] for p in error.problems]
    assert names[:3] == ["BC_COMPANY_IDS", "DELTA_POLL_SCHEDULE", "AUTH_JWKS_URL"] or set(names) >= {
        "BC_COMPANY_IDS", "DELTA_POLL_SCHEDULE", "AUTH_JWKS_URL"}  # fmt: skip
    assert any(p.startswith(f"{broken}:2:") for p in error.problems), error.problems


def test_jwks_over_http_is_allowed_for_loopback_only(env: pytest.MonkeyPatch) -> None:
    # The tests serve their signing keys on 127.0.0.1; an empty value keeps the admin API closed.
    env.setenv("AUTH_JWKS_URL", "http://127.0.0.1:8123/discovery/v2.0/keys")
    assert check_startup().auth_jwks_url
    env.setenv("AUTH_JWKS_URL", "")
    assert check_startup().missing_auth_settings() == ["AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL"]


def test_function_app_refuses_to_load_with_a_broken_configuration(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(textwrap.dedent("version: 1\nmappings: {}\nmappings: {}\n"))
    env.setenv("MAPPINGS_FILE", str(broken))
    sys.modules.pop("function_app", None)
    try:
        with pytest.raises(StartupError, match="given twice"):
            importlib.import_module("function_app")
        assert "function_app" not in sys.modules
    finally:
        sys.modules.pop("function_app", None)
