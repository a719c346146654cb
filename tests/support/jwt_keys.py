"""A local stand-in for Entra ID: RSA key pairs, their JWKS document and signed access tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

TEST_ISSUER = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
TEST_AUDIENCE = "api://bc-dataverse-sync"
# A fixed "now" so token lifetimes never depend on the machine's clock.
NOW = 1_750_000_000


@dataclass(frozen=True)
class KeyPair:
    kid: str
    private_key: rsa.RSAPrivateKey

    @property
    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig"}


@cache
def key_pair(kid: str) -> KeyPair:
    """One RSA-2048 key pair per kid, generated once per test session."""
    return KeyPair(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def jwks_document(*pairs: KeyPair) -> dict[str, Any]:
    return {"keys": [pair.public_jwk for pair in pairs]}


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a valid user token for the test issuer and audience; `None` values drop a claim."""
    base: dict[str, Any] = {
        "iss": TEST_ISSUER,
        "aud": TEST_AUDIENCE,
        "sub": "user-subject-1",
        "name": "Alex Admin",
        "roles": ["Integration.Administrator"],
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(pair: KeyPair, payload: dict[str, Any], *, kid: str | None = None) -> str:
    """An RS256 token signed by `pair`; `kid` overrides the header's key id."""
    return jwt.encode(payload, pair.private_key, algorithm="RS256", headers={"kid": kid or pair.kid})


def unsigned(payload: dict[str, Any], *, kid: str) -> str:
    """An `alg: none` token: no signature at all."""
    return _compact({"alg": "none", "typ": "JWT", "kid": kid}, payload, b"")


def hs256_with_public_key(pair: KeyPair, payload: dict[str, Any]) -> str:
    """The algorithm-confusion attack: HMAC-signed with the *public* key (PEM) as the secret."""
    secret = pair.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": pair.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return _compact(header, payload, hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def _compact(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
