"""Typed API errors shared by the Dataverse and Business Central clients.

The split follows singer-sdk: a `RetriableApiError` may succeed if sent again later (throttling,
5xx, timeouts); a `FatalApiError` will fail the same way until something changes (data, config,
a concurrent writer). The engine decides what to do from the type alone.
"""

from __future__ import annotations

from shared.errors import ServiceError


class ApiError(ServiceError):
    """An error answered by (or on the way to) a remote API.

    `code` and `message` are the server's own (`{"error": {"code", "message"}}`), so an operator
    can look them up; `status` is the HTTP status, 0 when no response arrived.
    """

    # The remote service refused: a bad gateway from our caller's point of view, whatever `status` was.
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        service: str = "",
        method: str = "",
        url: str = "",
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.service = service
        self.method = method
        self.url = url
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"{self.service} " if self.service else ""
        status = f"{self.status} " if self.status else ""
        code = f"[{self.code}] " if self.code else ""
        return f"{where}{status}{code}{self.message}".strip()

    def public_message(self) -> str:
        return f"{self.service or 'a remote service'} refused the request: {self}"


class RetriableApiError(ApiError):
    """Sending the same request later may succeed. `retry_after` is the server's hint in seconds."""

    http_status = 503
    retriable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int = 0,
        code: str = "",
        service: str = "",
        method: str = "",
        url: str = "",
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code=code, service=service, method=method, url=url)

    def public_message(self) -> str:
        return f"{self.service or 'a remote service'} is unavailable right now: {self}"


class ThrottledError(RetriableApiError):
    """429 (or BC's 503 queue timeout): the service-protection limit was hit."""


class TransientError(RetriableApiError):
    """5xx, timeouts, dropped connections."""


class FatalApiError(ApiError):
    """The request will fail again until data or configuration changes."""


class AuthenticationError(FatalApiError):
    """401/403: bad credentials or a missing privilege or role."""


class NotFoundError(FatalApiError):
    """404 (or BC's `*_NotFound` / `Internal_RecordNotFound` codes)."""


class ConcurrencyError(FatalApiError):
    """The record changed since it was read: Dataverse 412 on `If-Match`, BC 409 `Request_EntityChanged`.

    Also raised for Dataverse 412 on `If-None-Match: *` (record already exists). The remedy is
    always the same: read again and decide again.
    """


class AlreadyExistsError(FatalApiError):
    """A create collided with an existing record (same id or key)."""


class ValidationError(FatalApiError):
    """400-class answer about the data itself (length, required field, bad value)."""


class AmbiguousWriteError(RetriableApiError):
    """A non-idempotent write was sent but no answer came back: it may or may not have happened.

    Never retried blindly by the transport; the caller must re-read before writing again.
    """
