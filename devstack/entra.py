"""A local stand-in for Entra ID's signing keys, so that `make run` opens the admin API and the
operator page (`/api/manage/ui`) to a person: a fresh RSA key each run, its JWKS served on loopback,
and one Integration Administrator access token signed with it for the operator to paste. Never part
of a deployment (Azure uses the tenant's real keys, `infra/`)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.serve import ServerHandle, serve_in_thread

TENANT = "00000000-0000-4000-8000-00000000c0de"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
AUDIENCE = "api://bc-dataverse-sync"
TOKEN_HOURS = 12


@dataclass
class LocalEntra:
    server: ServerHandle
    key: rsa.RSAPrivateKey
    kid: str

    @property
    def settings(self) -> dict[str, str]:
        return {
            "AUTH_ISSUER": ISSUER,
            "AUTH_AUDIENCE": AUDIENCE,
            "AUTH_JWKS_URL": f"{self.server.url}/discovery/v2.0/keys",
        }

    def token(self, role: str = "Integration.Administrator", name: str = "Local Operator") -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "local-operator", "name": name, "roles": [role],
                  "iat": now - 60, "nbf": now - 60, "exp": now + TOKEN_HOURS * 3600}  # fmt: skip
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self) -> None:
        self.server.stop()


def start_local_entra() -> LocalEntra:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = uuid.uuid4().hex
    document = {"keys": [{**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}]}

    async def keys(request: Any) -> JSONResponse:
        return JSONResponse(document)

    return LocalEntra(serve_in_thread(Starlette(routes=[Route("/discovery/v2.0/keys", keys)])), key, kid)
