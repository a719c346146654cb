"""'Open in Business Central' links against the BC sandbox: the web client's address is derived from the
API URL online, or taken from BC_WEB_CLIENT_URL on-premises; the company is named as BC names it, and the
link opens the card of the record (the sandbox's stand-in of the web client answers it)."""

from __future__ import annotations

import httpx
import pytest

from shared.mapping.lookups import web_client_link
from shared.settings import load_settings
from shared.sync.gateways import BusinessCentralGateway, web_client_base
from tests.integration.bc.conftest import Bc

pytestmark = pytest.mark.integration

COMPANY = "?company=CRONUS%20USA%2C%20Inc."


def test_online_the_link_is_derived_from_the_api_url_and_opens_the_card(bc: Bc) -> None:
    [customer_id] = bc.sandbox.seed("customers", [{"number": "L'10", "displayName": "Link Test"}])
    with bc.client() as client:
        gateway = BusinessCentralGateway(client, bc.company)
        base = gateway.web_client()
    assert base == f"{bc.url}/contoso/production/{COMPANY}"
    link = web_client_link(base, 21, "L'10")
    card = httpx.get(link, timeout=10)
    assert card.status_code == 200 and "Link Test" in card.text
    assert bc.sandbox.get("customers", customer_id)["number"] == "L'10"
    missing = httpx.get(web_client_link(base, 21, "NOPE"), timeout=10)
    assert missing.status_code == 404 and "does not exist" in missing.text


def test_on_premises_the_link_starts_with_bc_web_client_url(bc: Bc, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true", "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
        "DATAVERSE_WEBHOOK_SECRET": "s" * 20, "BC_API_URL": "https://bc.contoso.local:7048/BC/api/v2.0",
        "BC_COMPANY_IDS": bc.company, "BC_WEBHOOK_CLIENT_STATE": "c" * 20,
        "BC_WEB_CLIENT_URL": "https://bc.contoso.local/BC/",
    }  # fmt: skip
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    # An on-premises API URL names no tenant and environment: without the setting there is no link.
    assert web_client_base(settings.bc_api_url) is None
    with bc.client() as client:
        gateway = BusinessCentralGateway(client, bc.company, settings.bc_web_client_url)
        base = gateway.web_client()
    assert base == f"https://bc.contoso.local/BC/{COMPANY}"
    assert web_client_link(base, 30, "1896-S") == (
        f"https://bc.contoso.local/BC/{COMPANY}&page=30&filter='No.'%20IS%20'1896-S'"
    )
