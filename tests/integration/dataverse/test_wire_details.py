"""Small wire details that clients match on: error codes and absolute context URLs.

Sources: https://learn.microsoft.com/troubleshoot/power-platform/power-apps/dataverse/web-api-client-errors
(segment not found) and https://learn.microsoft.com/power-apps/developer/data-platform/api-limits (429s).
"""

from __future__ import annotations

import httpx
import pytest

from devstack.dataverse import DataverseSandbox

pytestmark = pytest.mark.integration


def test_unknown_segment_uses_the_documented_code(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    response = http.get("Account")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "0x8006088a",
        "message": "Resource not found for the segment 'Account'.",
    }
    action = http.post("accounts/Microsoft.Dynamics.CRM.NoSuchAction", json={})
    assert action.status_code == 404 and action.json()["error"]["code"] == "0x8006088a"


def test_whoami_context_is_absolute(http: httpx.Client, sandbox: DataverseSandbox, base_url: str) -> None:
    body = http.get("WhoAmI").json()
    assert body["@odata.context"] == f"{base_url}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"


def test_injected_429_carries_the_service_protection_code(
    http: httpx.Client, sandbox: DataverseSandbox
) -> None:
    sandbox.injector.add({"action": "status", "status": 429, "retry_after": 3, "path_contains": "accounts"})
    response = http.get("accounts")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error"] == {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    }
    sandbox.injector.add({"action": "status", "status": 503, "path_contains": "accounts"})
    assert http.get("accounts").json()["error"]["code"] == ""
