"""`bcsync setup` in each on-premises sign-in mode, against the sandboxes in that mode.

- BC on-premises with OAuth at the customer's own authority: an Entra ID tenant and AD FS, each a
  token endpoint of the identity sandbox (`devstack.identity`) answering as they do.
- BC on-premises with basic authentication (a user name and its web service access key), over
  HTTPS only: the BC sandbox serves a throwaway loopback certificate the client trusts through
  `SSL_CERT_FILE`, as a customer's internal CA would be trusted.
- Dynamics 365 Sales on-premises (Internet-facing deployment) with OAuth through AD FS.

Each works, and each wrong authority, scope, client secret or key fails with a message naming the
setting to fix; a secret never appears in what set-up reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import bc, dataverse
from devstack.bc import DEFAULT_COMPANY_ID
from devstack.bc.config import BcSandboxConfig
from devstack.identity import IdentitySandbox
from devstack.serve import ServerHandle, serve_in_thread
from shared import runtime
from shared.ops.setup import SetupReport, run_setup
from shared.settings import SettingsError, load_settings
from shared.startup import check_bc_companies, reset_company_check
from tests.support.tls import write_loopback_certificate

pytestmark = pytest.mark.integration

CLIENT_ID = "5d2c5a4e-0000-4000-8000-00000000c11e"
CLIENT_SECRET = "the-integration-apps-secret-0123456789"
ACCESS_KEY = "bc-web-service-access-key-0123456789"
BC_RESOURCE = "https://bc.contoso.example/BC"
DV_RESOURCE = "https://crm.contoso.example"


@dataclass
class OnPrem:
    identity: IdentitySandbox
    idp: ServerHandle
    bc: ServerHandle  # https
    dv: ServerHandle
    bc_sandbox: bc.BcSandbox
    dv_sandbox: dataverse.DataverseSandbox
    cert: Path

    @property
    def bc_api_url(self) -> str:
        return f"{self.bc.url}/api/v2.0"

    def entra_authority(self, tenant: str = "contoso-onprem") -> str:
        return f"{self.idp.url}/{tenant}/v2.0"

    @property
    def adfs_authority(self) -> str:
        return f"{self.idp.url}/adfs"


@pytest.fixture(scope="module")
def onprem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnPrem]:
    cert, key = write_loopback_certificate(tmp_path_factory.mktemp("tls"))
    bc_app = bc.create_app(
        BcSandboxConfig.for_tests(web_service_keys={"SYNC-SERVICE": (ACCESS_KEY, "INTEGRATION")})
    )
    dv_app = dataverse.create_app()
    bc_sandbox, dv_sandbox = bc_app.state.sandbox, dv_app.state.sandbox
    identity = IdentitySandbox()
    identity.register_client(CLIENT_ID, CLIENT_SECRET)
    # A token for BC's resource is the integration user in BC; one for the CRM's, in Dataverse.
    identity.register_resource(
        BC_RESOURCE, lambda token, _: bc_sandbox.config.users.update({token: "INTEGRATION"})
    )
    identity.register_resource(
        DV_RESOURCE, lambda token, _: dv_sandbox.users.update({token: dv_sandbox.users["integration-user"]})
    )
    servers = [
        serve_in_thread(identity.app()),
        serve_in_thread(bc_app, ssl_certfile=str(cert), ssl_keyfile=str(key)),
        serve_in_thread(dv_app),
    ]
    try:
        yield OnPrem(identity, *servers, bc_sandbox, dv_sandbox, cert)  # type: ignore[arg-type]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def settings_env(
    onprem: OnPrem, storage_connection_string: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    """The online settings with static sandbox tokens; each test switches one side to on-premises."""
    monkeypatch.setenv("SSL_CERT_FILE", str(onprem.cert))  # httpx trusts the BC sandbox's certificate
    for name, value in {
        "AzureWebJobsStorage": storage_connection_string,
        "DATAVERSE_URL": onprem.dv.url,
        "DATAVERSE_STATIC_TOKEN": "integration-user",
        "DATAVERSE_WEBHOOK_SECRET": "onprem-webhook-secret-0123456789",
        "BC_API_URL": onprem.bc_api_url,
        "BC_COMPANY_IDS": str(DEFAULT_COMPANY_ID),
        "BC_STATIC_TOKEN": "integration-user",
        "BC_WEBHOOK_CLIENT_STATE": "onprem-client-state-0123456789",
        "SERVICE_PUBLIC_URL": "http://127.0.0.1:9",
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "BC_AUTH_MODE",
        "DATAVERSE_AUTH_MODE",
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
        "MAPPINGS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    runtime.reset()
    yield monkeypatch
    monkeypatch.undo()
    runtime.reset()


def _environment(env: pytest.MonkeyPatch, **values: str | None) -> None:
    """Set the settings given (None: removed)."""
    for name, value in values.items():
        if value is None:
            env.delenv(name, raising=False)
        else:
            env.setenv(name, value)


# BC on-premises with basic authentication and a web service access key (a test adds the URL).
BASIC = {
    "BC_STATIC_TOKEN": None,
    "BC_AUTH_MODE": "basic",
    "BC_USERNAME": "SYNC-SERVICE",
    "BC_WEB_SERVICE_ACCESS_KEY": ACCESS_KEY,
}


def _setup(env: pytest.MonkeyPatch, **values: str | None) -> SetupReport:
    _environment(env, **values)
    runtime.reset()
    return run_setup(runtime.get_runtime(), None, couple_salespeople=False)


def _check(report: SetupReport, name: str) -> tuple[bool, str, str]:
    check = next(c for c in report.checks if c.name == name)
    return check.ok, check.detail, check.fix or ""


def _bc_oauth(onprem: OnPrem, authority: str, **overrides: str) -> dict[str, str]:
    values = {
        "BC_STATIC_TOKEN": None,
        "BC_AUTH_MODE": "oauth",
        "BC_AUTHORITY": authority,
        "BC_SCOPE": f"{BC_RESOURCE}/.default",
        "BC_CLIENT_ID": CLIENT_ID,
        "BC_CLIENT_SECRET": CLIENT_SECRET,
    }
    values.update(overrides)
    return values  # type: ignore[return-value]


def _no_secret_in(report: SetupReport) -> None:
    text = json.dumps([[c.name, c.detail, c.fix] for c in report.checks])
    assert CLIENT_SECRET not in text and ACCESS_KEY not in text and "wrong-secret" not in text


@pytest.mark.parametrize("authority_kind", ["entra", "adfs"])
def test_bc_on_premises_signs_in_with_oauth_at_the_customers_authority(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch, authority_kind: str
) -> None:
    authority = onprem.entra_authority() if authority_kind == "entra" else onprem.adfs_authority
    issued = onprem.identity.issued
    report = _setup(settings_env, **_bc_oauth(onprem, authority))

    ok, detail, _ = _check(report, "Business Central connection")
    assert ok, detail
    assert _check(report, f"BC company {DEFAULT_COMPANY_ID}")[0]
    # A token per client (set-up's check client, the runtime's), each cached for its later requests.
    assert issued < onprem.identity.issued <= issued + 2


def test_bc_oauth_with_a_wrong_authority_scope_or_secret_says_which(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    entra, adfs = onprem.entra_authority(), onprem.adfs_authority
    cases = {
        "unknown tenant": (
            _bc_oauth(onprem, onprem.entra_authority("fabrikam")),
            "BC_AUTHORITY",
            "AADSTS90002",
        ),
        "not an authority": (_bc_oauth(onprem, f"{onprem.idp.url}/nothing-here"), "BC_AUTHORITY", "OpenID"),
        "Entra: unknown resource": (
            _bc_oauth(onprem, entra, BC_SCOPE="api://not-bc/.default"),
            "BC_SCOPE",
            "AADSTS500011",
        ),
        "AD FS: unknown resource": (
            _bc_oauth(onprem, adfs, BC_SCOPE="https://not-bc.example"),
            "BC_SCOPE",
            "invalid_resource",
        ),
        "Entra: wrong secret": (
            _bc_oauth(onprem, entra, BC_CLIENT_SECRET="wrong-secret"),
            "BC_CLIENT_SECRET",
            "AADSTS7000215",
        ),
        "AD FS: wrong secret": (
            _bc_oauth(onprem, adfs, BC_CLIENT_SECRET="wrong-secret"),
            "BC_CLIENT_SECRET",
            "MSIS9622",
        ),
        "unknown client": (
            _bc_oauth(onprem, onprem.entra_authority(), BC_CLIENT_ID="00000000-0000-4000-8000-000000000000"),
            "BC_CLIENT_ID",
            "AADSTS700016",
        ),
    }
    for case, (values, setting, said) in cases.items():
        report = _setup(settings_env, **values)
        ok, detail, fix = _check(report, "Business Central connection")
        assert not ok, case
        assert detail.startswith(f"could not sign in to Business Central: {setting}"), (case, detail)
        assert said in detail and setting in fix, (case, detail, fix)
        assert _check(report, "Dataverse connection")[0], case  # the other side is checked on its own
        _no_secret_in(report)


def test_a_token_for_another_resource_is_refused_by_bc_and_set_up_points_at_the_scope(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    # The authority knows the CRM's resource, so it issues a token, but BC refuses its audience.
    report = _setup(settings_env, **_bc_oauth(onprem, onprem.adfs_authority, BC_SCOPE=DV_RESOURCE))
    ok, detail, fix = _check(report, "Business Central connection")
    assert not ok and "(401)" in detail and "BC_SCOPE" in fix


def test_bc_basic_authentication_with_a_web_service_access_key_over_https(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    assert onprem.bc_api_url.startswith("https://")
    report = _setup(settings_env, **BASIC)
    ok, detail, _ = _check(report, "Business Central connection")
    assert ok, detail
    assert _check(report, f"BC company {DEFAULT_COMPANY_ID}")[0]

    report = _setup(settings_env, **{**BASIC, "BC_WEB_SERVICE_ACCESS_KEY": "wrong-secret-key"})
    ok, detail, fix = _check(report, "Business Central connection")
    assert not ok and "web service access key (401)" in detail
    assert "BC_USERNAME / BC_WEB_SERVICE_ACCESS_KEY" in fix
    _no_secret_in(report)


def test_healths_company_check_signs_in_as_the_service_does(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    # GET /api/health asks BC for its companies with the integration user's credential of the
    # configured sign-in mode, not with an Azure credential an on-premises BC does not take.
    _environment(settings_env, **BASIC)
    reset_company_check()
    try:
        check = check_bc_companies(load_settings(), seconds=10)
    finally:
        reset_company_check()
    assert check.status == "ok", check.detail


def test_basic_authentication_is_refused_over_plain_http(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    _environment(settings_env, **BASIC, BC_API_URL="http://127.0.0.1:7048/BC/api/v2.0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "refused over plain http" in info.value.problems["BC_API_URL"]
    assert ACCESS_KEY not in str(info.value)


def test_dynamics_365_sales_on_premises_signs_in_through_ad_fs(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    adfs = {
        "DATAVERSE_STATIC_TOKEN": None,
        "DATAVERSE_AUTH_MODE": "oauth",
        "DATAVERSE_AUTHORITY": onprem.adfs_authority,
        "DATAVERSE_SCOPE": DV_RESOURCE,
        "DATAVERSE_CLIENT_ID": CLIENT_ID,
        "DATAVERSE_CLIENT_SECRET": CLIENT_SECRET,
    }
    report = _setup(settings_env, **adfs)
    ok, detail, _ = _check(report, "Dataverse connection")
    assert ok, detail
    assert all(c.ok for c in report.checks if c.name.startswith("Dataverse read")), report.checks

    for values, setting, said in (
        ({"DATAVERSE_AUTHORITY": f"{onprem.idp.url}/adfs-typo"}, "DATAVERSE_AUTHORITY", "OpenID"),
        ({"DATAVERSE_SCOPE": "https://crm-typo.contoso.example"}, "DATAVERSE_SCOPE", "invalid_resource"),
        ({"DATAVERSE_CLIENT_SECRET": "wrong-secret"}, "DATAVERSE_CLIENT_SECRET", "MSIS9622"),
    ):
        report = _setup(settings_env, **{**adfs, **values})
        ok, detail, fix = _check(report, "Dataverse connection")
        assert not ok and detail.startswith(f"could not sign in to Dataverse: {setting}"), detail
        assert said in detail and setting in fix, (detail, fix)
        _no_secret_in(report)


def test_each_mode_names_the_settings_it_needs(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.delenv("BC_STATIC_TOKEN")
    settings_env.delenv("DATAVERSE_STATIC_TOKEN")
    settings_env.setenv("BC_AUTH_MODE", "oauth")
    settings_env.setenv("DATAVERSE_AUTH_MODE", "oauth")
    with pytest.raises(SettingsError) as info:
        load_settings()
    for name in (
        "BC_AUTHORITY",
        "BC_SCOPE",
        "BC_CLIENT_ID",
        "BC_CLIENT_SECRET",
        "DATAVERSE_AUTHORITY",
        "DATAVERSE_CLIENT_ID",
        "DATAVERSE_CLIENT_SECRET",
    ):
        assert "required with" in info.value.problems[name], name


def test_set_up_against_sales_on_premises_says_bulk_writes_go_as_batches(
    onprem: OnPrem, settings_env: pytest.MonkeyPatch
) -> None:
    """Dynamics 365 Sales on-premises 9.1 has no CreateMultiple / UpsertMultiple / UpdateMultiple:
    set-up asks (one request, nothing written) and reports the path the bulk writes take."""
    adfs = {
        "DATAVERSE_STATIC_TOKEN": None,
        "DATAVERSE_AUTH_MODE": "oauth",
        "DATAVERSE_AUTHORITY": onprem.adfs_authority,
        "DATAVERSE_SCOPE": DV_RESOURCE,
        "DATAVERSE_CLIENT_ID": CLIENT_ID,
        "DATAVERSE_CLIENT_SECRET": CLIENT_SECRET,
    }
    settings_env.setattr(onprem.dv_sandbox.config, "bulk_messages", False)
    accounts = len(onprem.dv_sandbox.rows("accounts"))
    ok, detail, _ = _check(_setup(settings_env, **adfs), "Dataverse bulk writes")
    assert ok and "no CreateMultiple / UpsertMultiple / UpdateMultiple" in detail, detail
    assert "$batch of single writes" in detail and "1 request per 1,000 records" in detail

    settings_env.setattr(onprem.dv_sandbox.config, "bulk_messages", True)
    ok, detail, _ = _check(_setup(settings_env, **adfs), "Dataverse bulk writes")
    assert ok and detail.startswith("CreateMultiple / UpsertMultiple / UpdateMultiple"), detail
    assert len(onprem.dv_sandbox.rows("accounts")) == accounts  # the probes wrote nothing
