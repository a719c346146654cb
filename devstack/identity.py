"""A sandbox identity provider: token endpoints as Entra ID and AD FS answer the OAuth 2.0 client
credentials grant, for the on-premises sign-in modes (`BC_AUTH_MODE=oauth`, `DATAVERSE_AUTH_MODE=oauth`).

Authorities, each with its OpenID configuration (what the service discovers its token endpoint from):

- Entra ID: `<root>/<tenant>/v2.0` -> `/<tenant>/v2.0/.well-known/openid-configuration`, token endpoint
  `/<tenant>/oauth2/v2.0/token`, which takes `scope=<resource>/.default`. Refusals as Entra answers
  them (https://learn.microsoft.com/entra/identity-platform/reference-error-codes): an unknown
  tenant 400 `invalid_request` AADSTS90002 (the discovery document too), an unknown client 400
  `unauthorized_client` AADSTS700016, a wrong secret 401 `invalid_client` AADSTS7000215, a scope
  without `/.default` 400 `invalid_scope` AADSTS1002012, an unknown resource 400 `invalid_resource`
  AADSTS500011.
- AD FS: `<root>/adfs` -> `/adfs/.well-known/openid-configuration`, token endpoint
  `/adfs/oauth2/token/`, which takes `resource=<relying party identifier>` (MS-OAPX). Refusals are
  RFC 6749 errors: `invalid_client` (unknown client or wrong secret; 401 for the secret),
  `invalid_resource` for a resource that is no relying party (MS-OAPX 2.2.4.1).

A token issued for a resource is handed to that resource's `on_token(token, client_id)`, which lets
the BC or Dataverse sandbox accept it as the integration user; a token for another resource is
then refused by that sandbox with 401, as a wrong audience is.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TokenHook = Callable[[str, str], None]  # (access token, client id)
TOKEN_LIFETIME_SECONDS = 3600


@dataclass
class IdentitySandbox:
    """Registered clients (client id -> secret) and resources (identifier -> hook), per authority."""

    entra_tenants: set[str] = field(default_factory=lambda: {"contoso-onprem"})
    adfs: bool = True
    clients: dict[str, str] = field(default_factory=dict)
    resources: dict[str, TokenHook] = field(default_factory=dict)
    issued: int = 0

    def register_client(self, client_id: str, secret: str) -> None:
        self.clients[client_id] = secret

    def register_resource(self, identifier: str, on_token: TokenHook) -> None:
        self.resources[identifier.rstrip("/")] = on_token

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/adfs/.well-known/openid-configuration", self._adfs_discovery),
                Route("/adfs/oauth2/token/", self._adfs_token, methods=["POST"]),
                Route("/adfs/oauth2/token", self._adfs_token, methods=["POST"]),
                Route("/{tenant}/v2.0/.well-known/openid-configuration", self._entra_discovery),
                Route("/{tenant}/oauth2/v2.0/token", self._entra_token, methods=["POST"]),
            ]
        )

    # --- AD FS ------------------------------------------------------------------------------------

    async def _adfs_discovery(self, request: Request) -> JSONResponse:
        if not self.adfs:
            return JSONResponse({"error": "not_found"}, 404)
        root = _root(request)
        return JSONResponse(
            {
                "issuer": f"{root}/adfs",
                "token_endpoint": f"{root}/adfs/oauth2/token/",
                "jwks_uri": f"{root}/adfs/discovery/keys",
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            }
        )

    async def _adfs_token(self, request: Request) -> JSONResponse:
        form = await _form(request)
        client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(
                400,
                "unsupported_grant_type",
                "MSIS9611: The authorization server does not support the requested 'grant_type'.",
            )
        if client_id not in self.clients:
            return _oauth_error(
                400,
                "invalid_client",
                "MSIS9607: The 'client_id' parameter in the request "
                "is invalid. No registered client is found with this identifier.",
            )
        if not secrets.compare_digest(self.clients[client_id], secret):
            return _oauth_error(
                401,
                "invalid_client",
                "MSIS9622: Client authentication failed. Please "
                "verify the credential provided for client authentication is valid.",
            )
        resource = str(form.get("resource") or "").rstrip("/")
        if resource not in self.resources:
            return _oauth_error(
                400,
                "invalid_resource",
                "MSIS9602: The received 'resource' parameter is "
                f"not a valid relying party identifier: '{resource}'.",
            )
        return self._issue(resource, client_id)

    # --- Entra ID ---------------------------------------------------------------------------------

    async def _entra_discovery(self, request: Request) -> JSONResponse:
        tenant = request.path_params["tenant"]
        if tenant not in self.entra_tenants:
            return _entra_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make "
                "sure you have the correct tenant ID and are signing into the correct cloud.",
            )
        root = _root(request)
        return JSONResponse(
            {
                "issuer": f"{root}/{tenant}/v2.0",
                "token_endpoint": f"{root}/{tenant}/oauth2/v2.0/token",
                "jwks_uri": f"{root}/{tenant}/discovery/v2.0/keys",
            }
        )

    async def _entra_token(self, request: Request) -> JSONResponse:
        tenant = request.path_params["tenant"]
        if tenant not in self.entra_tenants:
            return _entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        form = await _form(request)
        client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials":
            return _entra_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if client_id not in self.clients:
            return _entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        if not secrets.compare_digest(self.clients[client_id], secret):
            return _entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the "
                "secret being sent in the request is the client secret value, not the client "
                f"secret ID, for a secret added to app '{client_id}'.",
            )
        scope = str(form.get("scope") or "")
        if not scope.endswith("/.default"):
            return _entra_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not "
                "valid. Client credential flows must have a scope value with /.default suffixed "
                "to the resource identifier (application ID URI).",
            )
        resource = scope.removesuffix("/.default").rstrip("/")
        if resource not in self.resources:
            return _entra_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} "
                f"was not found in the tenant named {tenant}. This can happen if the application "
                "has not been installed by the administrator of the tenant.",
            )
        return self._issue(resource, client_id)

    def _issue(self, resource: str, client_id: str) -> JSONResponse:
        token = f"idp-{secrets.token_urlsafe(24)}"
        self.resources[resource](token, client_id)
        self.issued += 1
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "access_token": token,
            }
        )


async def _form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (starlette's own parser needs python-multipart)."""
    return dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))


def _root(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status)


def _entra_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    body: dict[str, Any] = {
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {secrets.token_hex(8)}",
        "error_codes": [code],
    }
    return JSONResponse(body, status)
