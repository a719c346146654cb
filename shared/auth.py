"""Who may call the service's HTTP endpoints.

Two independent mechanisms, one per kind of caller:

- **Webhook secrets.** Dataverse and Business Central cannot present Entra ID tokens to us; they prove
  themselves with a shared secret (Dataverse: WebhookKey / HttpHeader / HttpQueryString, see
  https://learn.microsoft.com/power-apps/developer/data-platform/register-web-hook; BC: the subscription's
  `clientState`). Secrets are compared in constant time and never appear in an error reason or a log
  line. A bearer token is never a substitute.
- **Caller tokens and app roles.** The admin/data API accepts Entra ID access tokens (RS256 JWTs),
  checked against the tenant's JWKS, and authorizes by the token's `roles` claim.

`WebhookAuthError` and `Unauthorized` map to 401, `Forbidden` to 403; their `reason` is safe to return.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol
from xml.sax.saxutils import quoteattr

import httpx
import jwt
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWKError,
)

from shared.errors import ServiceError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Webhook secrets
# ---------------------------------------------------------------------------------------------------

DataverseAuthType = Literal["webhook_key", "http_header", "http_query_string"]

# `serviceendpoint.authvalue` is at most 2048 characters:
# https://learn.microsoft.com/power-apps/developer/data-platform/reference/entities/serviceendpoint
AUTHVALUE_MAX_LENGTH = 2048


class WebhookAuthError(ServiceError):
    """A webhook call did not prove it comes from the registered sender (answer 401 with `reason`)."""

    http_status = 401

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def secrets_equal(expected: str, got: str | None) -> bool:
    """Constant-time comparison; an empty expected secret matches nothing (fail closed)."""
    if not expected or got is None:
        return False
    try:
        received = got.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows `"\ud800"`) cannot be UTF-8, so it cannot be our secret:
        # a refusal (401), not an exception that the intake would answer 503 with a stack trace.
        return False
    return hmac.compare_digest(expected.encode("utf-8"), received)


def check_client_state(expected: str, got: str | None) -> bool:
    """Whether a BC notification entry carries the `clientState` we subscribed with."""
    return secrets_equal(expected, got)


def check_dataverse_webhook_auth(
    auth_type: DataverseAuthType,
    expected: Mapping[str, str] | str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> None:
    """Raise `WebhookAuthError` unless the request carries the secret(s) the endpoint was registered with.

    `expected` is the plain key for `webhook_key`; for `http_header` / `http_query_string` it is the
    name -> value mapping, or the `authvalue` XML it was registered with. Header names are compared
    case-insensitively (HTTP), query parameter names exactly. Every configured entry must match.
    """
    if auth_type == "webhook_key":
        if not isinstance(expected, str):
            raise TypeError("webhook_key auth expects the key as a string")
        if not secrets_equal(expected, query.get("code")):
            raise WebhookAuthError(_failure("the `code` query parameter", query.get("code") is None))
        return

    if auth_type not in ("http_header", "http_query_string"):
        raise ValueError(f"unknown Dataverse webhook auth type {auth_type!r}")
    wanted = parse_authvalue(expected) if isinstance(expected, str) else dict(expected)
    if not wanted:
        raise WebhookAuthError("no webhook secret is configured for this endpoint; every call is refused")

    if auth_type == "http_header":
        received = {name.lower(): value for name, value in headers.items()}
        wanted = {name.lower(): value for name, value in wanted.items()}
        kind = "header"
    else:
        received = dict(query.items())
        kind = "query parameter"

    # Compare every entry (no early exit) so the time taken does not say which one failed first.
    failures = [
        _failure(f"{kind} `{name}`", received.get(name) is None)
        for name, value in wanted.items()
        if not secrets_equal(value, received.get(name))
    ]
    if failures:
        raise WebhookAuthError("; ".join(failures))


def _failure(what: str, missing: bool) -> str:
    return f"{what} is missing" if missing else f"{what} does not match the registered value"


def parse_authvalue(authvalue: str) -> dict[str, str]:
    """Parse Dataverse's HttpHeader / HttpQueryString `authvalue`: `<settings><setting name= value=/>…`.

    The XML form is community-sourced (not in Microsoft's docs). Raises `ValueError` naming the problem.
    The input is our own configuration, never a request body.
    """
    try:
        root = ET.fromstring(authvalue)
    except ET.ParseError as exc:
        raise ValueError(f"authvalue is not valid XML: {exc}") from None
    if root.tag != "settings":
        raise ValueError(f"authvalue must have a <settings> root element, not <{root.tag}>")
    values: dict[str, str] = {}
    for setting in root:
        name, value = setting.get("name"), setting.get("value")
        if setting.tag != "setting" or not name or value is None:
            raise ValueError('authvalue entries must look like <setting name="X" value="Y" />')
        if name in values:
            raise ValueError(f"authvalue names `{name}` twice")
        values[name] = value
    if not values:
        raise ValueError("authvalue holds no <setting> entries")
    return values


def build_authvalue(values: Mapping[str, str]) -> str:
    """The `authvalue` XML that registers HttpHeader / HttpQueryString secrets (inverse of the parser)."""
    if not values:
        raise ValueError("authvalue needs at least one name/value pair")
    if any(not name for name in values):
        raise ValueError("authvalue names must not be empty")
    settings = "".join(f"<setting name={quoteattr(k)} value={quoteattr(v)} />" for k, v in values.items())
    xml = f"<settings>{settings}</settings>"
    if len(xml) > AUTHVALUE_MAX_LENGTH:
        raise ValueError(
            f"authvalue is {len(xml)} characters; Dataverse stores at most {AUTHVALUE_MAX_LENGTH}: "
            "use fewer or shorter secrets"
        )
    return xml


# ---------------------------------------------------------------------------------------------------
# Caller tokens
# ---------------------------------------------------------------------------------------------------

# Entra ID signs access tokens with RS256. Anything else (`none`, HS* with the public key as the HMAC
# secret, ...) is refused before the key is even looked up.
ACCEPTED_ALGORITHM = "RS256"

# On a token with an unknown `kid` (keys rotate), re-read the JWKS, but at most this often, so a flood
# of forged kids cannot turn into a flood of requests to the identity provider.
UNKNOWN_KID_REFRESH_INTERVAL = 60.0

# Entra ID access tokens live 60-90 minutes (configurable token lifetimes stop at one day). A token
# valid for longer was not minted for this API the usual way; `exp: 1e308` would never expire.
MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600


class Unauthorized(ServiceError):
    """No valid caller token (answer 401 with `reason` and `WWW-Authenticate: Bearer`)."""

    http_status = 401

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Forbidden(ServiceError):
    """A valid caller without the app role the operation needs (answer 403 with `reason`)."""

    http_status = 403

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class JwksUnavailable(ServiceError):
    """The signing keys could not be fetched and none are cached: a 503, not the caller's fault."""

    http_status = 503
    retriable = True


class JwksSource(Protocol):
    def signing_key(self, kid: str) -> Any | None:
        """The public key object for `kid`, or None when no such signing key is published."""


def _rsa_signing_keys(jwks: Mapping[str, Any]) -> dict[str, Any]:
    """kid -> RSA public key for the usable signing keys of a JWKS document; the rest are skipped."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError("JWKS document has no `keys` list")
    found: dict[str, Any] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            found[kid] = jwt.PyJWK(entry, algorithm=ACCEPTED_ALGORITHM).key
        except (PyJWKError, InvalidKeyError):
            log.warning("skipping unusable JWKS key %s", kid)
    return found


class StaticJwksSource:
    """A fixed JWKS document (tests, or keys pinned in configuration)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = _rsa_signing_keys(jwks)

    def signing_key(self, kid: str) -> Any | None:
        return self._keys.get(kid)


class HttpJwksSource:
    """The JWKS at a configured URL, cached for `ttl` seconds.

    The URL comes from configuration only: a token's `jku`/`x5u` header is never followed. An unknown
    `kid` triggers a refresh at most once per `UNKNOWN_KID_REFRESH_INTERVAL`. When a refresh fails the
    keys already cached stay in use; with none cached, `JwksUnavailable` is raised.
    """

    def __init__(
        self,
        url: str,
        ttl: float = 3600,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._ttl = ttl
        self._client = client or httpx.Client(timeout=10.0)
        self._clock = clock
        self._keys: dict[str, Any] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def signing_key(self, kid: str) -> Any | None:
        with self._lock:
            now = self._clock()
            stale = self._keys is None or now - self._fetched_at >= self._ttl
            unknown = self._keys is not None and kid not in self._keys
            if (stale or unknown) and now - self._attempted_at >= UNKNOWN_KID_REFRESH_INTERVAL:
                self._refresh(now)
            if self._keys is None:
                raise JwksUnavailable(f"could not fetch signing keys from {self._url}; retry later")
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        # Attempts are rate-limited, successes set the cache age: a failing identity provider is
        # retried at the same bounded rate as an unknown kid, and the old keys stay in use meanwhile.
        self._attempted_at = now
        try:
            response = self._client.get(self._url)
            response.raise_for_status()
            self._keys = _rsa_signing_keys(response.json())
            self._fetched_at = now
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS refresh from %s failed: %s", self._url, exc)


@dataclass(frozen=True)
class Principal:
    subject: str
    name: str
    roles: frozenset[str]
    claims: Mapping[str, Any] = field(repr=False)


class TokenValidator:
    """Validates `Authorization: Bearer <jwt>` against one issuer, one audience and a JWKS."""

    def __init__(
        self,
        jwks: JwksSource,
        *,
        issuer: str,
        audience: str,
        leeway: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._clock = clock

    def validate(self, authorization_header: str | None) -> Principal:
        token = _bearer_token(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise Unauthorized("the bearer token is not a well-formed JWT") from None
        if header.get("alg") != ACCEPTED_ALGORITHM:
            raise Unauthorized(f"token algorithm {header.get('alg')!r} is not accepted; tokens must be RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token names no signing key (`kid`)")
        key = self._jwks.signing_key(kid)
        if key is None:
            raise Unauthorized("the token is signed with a key the identity provider does not publish")
        claims = self._verified_claims(token, key)
        self._check_lifetime(claims)
        return _principal(claims)

    def _verified_claims(self, token: str, key: Any) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[ACCEPTED_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                # Lifetime is checked by `_check_lifetime` against the injected clock.
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except InvalidSignatureError:
            raise Unauthorized("the token signature is invalid") from None
        except InvalidAudienceError:
            raise Unauthorized("the token was issued for another audience (`aud`)") from None
        except InvalidIssuerError:
            raise Unauthorized("the token was issued by another issuer (`iss`)") from None
        except MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token lacks the `{exc.claim}` claim") from None
        except InvalidTokenError:
            raise Unauthorized("the bearer token is not a valid JWT") from None

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp, nbf = _time_claim(claims, "exp"), _time_claim(claims, "nbf")
        if exp is None or exp <= now - self._leeway:
            raise Unauthorized("the token has expired; get a new one")
        if exp > now + MAX_TOKEN_LIFETIME_SECONDS + self._leeway:
            raise Unauthorized("the token's `exp` is more than 24 hours ahead; use an Entra ID access token")
        if nbf is not None and nbf > now + self._leeway:
            raise Unauthorized("the token is not valid yet (`nbf` is in the future)")


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise Unauthorized(f"the token's `{name}` claim must be a number of seconds")
    return float(value)


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise Unauthorized("missing Authorization header; send `Authorization: Bearer <Entra ID token>`")
    parts = authorization_header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthorized("malformed Authorization header; expected `Bearer <token>`")
    return parts[1]


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims["sub"]
    if not isinstance(subject, str):
        raise Unauthorized("the token's `sub` claim must be a string")
    raw_roles = claims.get("roles", [])
    if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
        raise Unauthorized("the token's `roles` claim must be a list of strings")
    # User tokens carry a display name; app-only (client credentials) tokens only the app id.
    name = next(
        (
            claims[c]
            for c in ("name", "preferred_username", "upn", "azp", "appid")
            if isinstance(claims.get(c), str)
        ),
        subject,
    )
    return Principal(subject=subject, name=name, roles=frozenset(raw_roles), claims=claims)


# ---------------------------------------------------------------------------------------------------
# App roles
# ---------------------------------------------------------------------------------------------------


class Role(StrEnum):
    INTEGRATION_ADMINISTRATOR = "integration_administrator"
    INTEGRATION_USER = "integration_user"
    PRODUCT_AVAILABILITY_USER = "product_availability_user"


@dataclass(frozen=True)
class RoleNames:
    """The `roles` claim values (Entra app role values) that stand for each `Role`."""

    integration_administrator: str = "Integration.Administrator"
    integration_user: str = "Integration.User"
    product_availability_user: str = "ProductAvailability.User"

    def claim_value(self, role: Role) -> str:
        return {
            Role.INTEGRATION_ADMINISTRATOR: self.integration_administrator,
            Role.INTEGRATION_USER: self.integration_user,
            Role.PRODUCT_AVAILABILITY_USER: self.product_availability_user,
        }[role]


# Which held roles satisfy a required one: an administrator may also do what the read-only roles may.
_GRANTED_BY: dict[Role, tuple[Role, ...]] = {
    Role.INTEGRATION_ADMINISTRATOR: (Role.INTEGRATION_ADMINISTRATOR,),
    Role.INTEGRATION_USER: (Role.INTEGRATION_USER, Role.INTEGRATION_ADMINISTRATOR),
    Role.PRODUCT_AVAILABILITY_USER: (Role.PRODUCT_AVAILABILITY_USER, Role.INTEGRATION_ADMINISTRATOR),
}


def authorize(principal: Principal, required: Role, names: RoleNames) -> None:
    """Raise `Forbidden` unless `principal` holds `required` or a role that includes it."""
    accepted = [names.claim_value(role) for role in _GRANTED_BY[required]]
    if principal.roles.isdisjoint(accepted):
        raise Forbidden(
            f"this operation needs the app role {' or '.join(repr(a) for a in accepted)}; "
            "ask an administrator to assign it to you in Entra ID"
        )
