"""Bearer tokens for the API clients, from any azure-identity `TokenCredential`, and the client
credentials grant at a customer's own authority (on-premises BC and Dynamics 365 Sales)."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import httpx
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from shared.errors import ServiceError

# Refresh this long before expiry so a token never expires mid-request.
REFRESH_MARGIN_SECONDS = 300


class StaticTokenCredential:
    """A `TokenCredential` that always returns the same token: the sandboxes map it to a user."""

    def __init__(self, token: str, lifetime_seconds: int = 3600) -> None:
        self._token = token
        self._lifetime = lifetime_seconds

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + self._lifetime)


class BearerTokenAuth(httpx.Auth):
    """httpx auth that asks the credential for `scope` once and caches until near expiry."""

    def __init__(self, credential: TokenCredential, scope: str) -> None:
        self._credential = credential
        self._scope = scope
        self._token: AccessToken | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._token.expires_on - REFRESH_MARGIN_SECONDS <= time.time():
                self._token = self._credential.get_token(self._scope)
            return self._token.token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


class SignInError(ClientAuthenticationError, ServiceError):
    """The authority refused to sign the integration user in; `detail` and `fix` name the setting."""

    def __init__(self, detail: str, fix: str) -> None:
        self.detail = detail
        self.fix = fix
        super().__init__(message=detail)


class AuthorityUnreachable(ServiceRequestError, ServiceError):
    """The authority did not answer (network): may succeed later."""

    def __init__(self, detail: str, fix: str) -> None:
        self.detail = detail
        self.fix = fix
        super().__init__(message=detail)


@dataclass(frozen=True)
class OAuthSettings:
    """Where and as whom the integration user signs in with the client credentials grant; `prefix`
    names the settings (`BC` -> BC_AUTHORITY, BC_SCOPE, BC_CLIENT_ID, BC_CLIENT_SECRET)."""

    prefix: str
    authority: str
    client_id: str
    client_secret: str = field(repr=False)


class ClientCredentialsGrant:
    """A `TokenCredential` signing in with OAuth 2.0 client credentials (RFC 6749 section 4.4) at the
    customer's own authority: an Entra ID tenant (`https://login.microsoftonline.com/<tenant>/v2.0`)
    or AD FS (`https://adfs.contoso.com/adfs`), as on-premises BC and Dynamics 365 Sales (Internet-
    facing deployment) use. The token endpoint comes from the authority's OpenID configuration
    (`<authority>/.well-known/openid-configuration`, which both publish); Entra's v2.0 endpoint
    takes a `scope` (`<resource>/.default`), AD FS and Entra's v1 endpoint a `resource`.

    Refusals become `SignInError` naming the setting to fix (wrong authority, scope/resource, client
    id or secret); the secret never appears in a message or a log line.
    """

    def __init__(self, settings: OAuthSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.Client(timeout=15.0)
        self._token_endpoint: str | None = None
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        scope = scopes[0]
        endpoint = self.token_endpoint()
        form = {
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
        }
        if "/oauth2/v2.0/" in endpoint:
            form["scope"] = scope if scope.endswith("/.default") else f"{scope.rstrip('/')}/.default"
        else:
            form["resource"] = scope.removesuffix("/.default")
        response = self._post(endpoint, form)
        body = _json_object(response)
        token = body.get("access_token")
        if response.status_code == 200 and isinstance(token, str) and token:
            return AccessToken(token, int(time.time()) + int(body.get("expires_in") or 3600))
        raise self._refusal(response.status_code, body, scope)

    def token_endpoint(self) -> str:
        """From the authority's OpenID configuration, asked once."""
        with self._lock:
            if self._token_endpoint is None:
                self._token_endpoint = self._discover()
            return self._token_endpoint

    def _discover(self) -> str:
        p = self.settings.prefix
        url = f"{self.settings.authority.rstrip('/')}/.well-known/openid-configuration"
        fix = (
            f"set {p}_AUTHORITY to the customer's Entra ID tenant (https://login.microsoftonline.com/"
            "<tenant id>/v2.0) or AD FS (https://<AD FS host>/adfs)"
        )
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise AuthorityUnreachable(
                f"cannot reach {p}_AUTHORITY {self.settings.authority}: {exc!r}",
                f"check {p}_AUTHORITY and that this machine can reach it",
            ) from None
        body = _json_object(response)
        endpoint = body.get("token_endpoint")
        if response.status_code != 200 or not isinstance(endpoint, str) or not endpoint:
            why = _oauth_error(body) or f"HTTP {response.status_code}, no token_endpoint"
            raise SignInError(
                f"{p}_AUTHORITY {self.settings.authority} is not an OpenID authority ({url}: {why})", fix
            )
        return endpoint

    def _post(self, endpoint: str, form: dict[str, str]) -> httpx.Response:
        p = self.settings.prefix
        try:
            return self._http.post(endpoint, data=form)
        except httpx.HTTPError as exc:
            raise AuthorityUnreachable(
                f"cannot reach the token endpoint of {p}_AUTHORITY ({endpoint}): {exc!r}",
                f"check {p}_AUTHORITY and that this machine can reach it",
            ) from None

    def _refusal(self, status: int, body: dict[str, Any], scope: str) -> SignInError:
        p = self.settings.prefix
        error = str(body.get("error") or "")
        said = _oauth_error(body) or f"HTTP {status}"
        authority = self.settings.authority
        if _entra_code(body) in _UNKNOWN_TENANT_CODES:
            return SignInError(
                f"{p}_AUTHORITY: {authority} does not know this tenant ({said})",
                f"set {p}_AUTHORITY to the customer's tenant (https://login.microsoftonline.com/<id>/v2.0)",
            )
        if error in ("invalid_scope", "invalid_resource") or _entra_code(body) in _UNKNOWN_RESOURCE_CODES:
            return SignInError(
                f"{p}_SCOPE: {authority} does not issue tokens for {scope!r} ({said})",
                f"set {p}_SCOPE to the resource the integration user calls: its App ID URI with /.default "
                "(Entra ID) or the relying party identifier (AD FS)",
            )
        if error == "invalid_client" and _entra_code(body) not in _UNKNOWN_CLIENT_CODES:
            return SignInError(
                f"{p}_CLIENT_SECRET: {authority} refused the client secret of {self.settings.client_id} "
                f"({said})",
                f"check {p}_CLIENT_SECRET: the secret's value (not its id), not expired, of {p}_CLIENT_ID",
            )
        if error in ("invalid_client", "unauthorized_client", "invalid_request") and (
            _entra_code(body) in _UNKNOWN_CLIENT_CODES or "client" in said.lower()
        ):
            return SignInError(
                f"{p}_CLIENT_ID: {authority} does not know client {self.settings.client_id} ({said})",
                f"set {p}_CLIENT_ID to the application (client) id registered at {p}_AUTHORITY",
            )
        return SignInError(
            f"{authority} refused to sign in {self.settings.client_id} ({said})",
            f"check {p}_AUTHORITY, {p}_SCOPE, {p}_CLIENT_ID and {p}_CLIENT_SECRET",
        )


# Entra ID's AADSTS codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes):
# 500011 resource principal not found, 70011 / 1002012 invalid scope; 700016 application not found in
# the directory; 90002 tenant not found.
_UNKNOWN_RESOURCE_CODES = frozenset({500011, 70011, 1002012})
_UNKNOWN_CLIENT_CODES = frozenset({700016})
_UNKNOWN_TENANT_CODES = frozenset({90002})


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _oauth_error(body: dict[str, Any]) -> str:
    """`error: first line of error_description` of an RFC 6749 error answer, or ''."""
    error = str(body.get("error") or "")
    description = str(body.get("error_description") or "").splitlines()
    return f"{error}: {description[0]}" if error and description else error


def _entra_code(body: dict[str, Any]) -> int | None:
    codes = body.get("error_codes")
    return int(codes[0]) if isinstance(codes, list) and codes and isinstance(codes[0], int) else None
