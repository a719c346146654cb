"""Bearer tokens for the API clients, from any azure-identity `TokenCredential`."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import httpx
from azure.core.credentials import AccessToken, TokenCredential

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
