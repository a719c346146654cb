import pytest

from shared.settings import SettingsError, load_settings

VALID = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com/",
    "DATAVERSE_WEBHOOK_SECRET": "s" * 20,
    "BC_API_URL": "https://api.businesscentral.dynamics.com/v2.0/contoso/production/api/v2.0",
    "BC_COMPANY_IDS": "f64eba74-dacd-4854-a584-1834f68cfc3a, 7dbba574-5f69-4167-a43e-fb975045de15",
    "BC_WEBHOOK_CLIENT_STATE": "c" * 20,
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in (*VALID, "DATAVERSE_STATIC_TOKEN", "BC_STATIC_TOKEN", "AzureWebJobsStorage__accountName"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def _set(env: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for key, value in values.items():
        env.setenv(key, value)


def test_valid_settings_are_parsed(env: pytest.MonkeyPatch) -> None:
    _set(env, VALID)
    settings = load_settings()
    assert settings.dataverse_url == "https://contoso.crm.dynamics.com"
    assert settings.dataverse_api_url == "https://contoso.crm.dynamics.com/api/data/v9.2/"
    assert settings.bc_company_ids == [
        "f64eba74-dacd-4854-a584-1834f68cfc3a",
        "7dbba574-5f69-4167-a43e-fb975045de15",
    ]
    assert settings.delta_poll_schedule == "0 */2 * * * *"


def test_every_missing_setting_is_named_in_one_error(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings()
    problems = info.value.problems
    assert set(problems) >= {
        "DATAVERSE_URL",
        "DATAVERSE_WEBHOOK_SECRET",
        "BC_API_URL",
        "BC_COMPANY_IDS",
        "BC_WEBHOOK_CLIENT_STATE",
    }
    assert "required but not set" in problems["DATAVERSE_URL"]
    assert "DATAVERSE_URL" in str(info.value) and "BC_API_URL" in str(info.value)


def test_bad_values_name_the_setting_and_what_is_expected(env: pytest.MonkeyPatch) -> None:
    _set(env, {**VALID, "DATAVERSE_URL": "contoso", "DATAVERSE_WEBHOOK_SECRET": "short"})
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "absolute http(s) URL" in info.value.problems["DATAVERSE_URL"]
    assert "16" in info.value.problems["DATAVERSE_WEBHOOK_SECRET"]


def test_plain_http_is_refused_for_remote_hosts(env: pytest.MonkeyPatch) -> None:
    _set(env, {**VALID, "BC_API_URL": "http://bc.example.com/v2.0"})
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "https" in info.value.problems["BC_API_URL"]


def test_static_tokens_only_for_loopback_sandboxes(env: pytest.MonkeyPatch) -> None:
    _set(env, {**VALID, "BC_STATIC_TOKEN": "integration-user"})
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "sandboxes only" in info.value.problems["BC_STATIC_TOKEN"]
    _set(env, {"BC_API_URL": "http://127.0.0.1:7082/v2.0/contoso/production/api/v2.0"})
    assert load_settings().bc_static_token == "integration-user"


def test_storage_is_required(env: pytest.MonkeyPatch) -> None:
    _set(env, {k: v for k, v in VALID.items() if k != "AzureWebJobsStorage"})
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "AzureWebJobsStorage" in info.value.problems


def test_each_instance_keeps_its_share_of_bcs_five_concurrent_requests(env: pytest.MonkeyPatch) -> None:
    env.delenv("SCALE_OUT_MAX_INSTANCES", raising=False)
    _set(env, VALID)
    single = load_settings()
    assert (single.bc_concurrency_per_instance, single.dataverse_concurrency_per_instance) == (5, 52)
    _set(env, {"SCALE_OUT_MAX_INSTANCES": "3"})
    three = load_settings()
    assert (three.bc_concurrency_per_instance, three.dataverse_concurrency_per_instance) == (1, 17)
    _set(env, {"SCALE_OUT_MAX_INSTANCES": "6"})
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "at most 5 instances" in info.value.problems["SCALE_OUT_MAX_INSTANCES"]
