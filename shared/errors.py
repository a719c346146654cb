"""The one root of the service's own exceptions.

Every exception class defined in `shared/` derives from `ServiceError`, so a caller that answers
over HTTP (the admin API) can turn any of them into a response from two class attributes instead of
one `except` clause per type:

- `http_status`: the HTTP status to answer with. 500 (the default) means "not the caller's fault":
  the admin API logs it and answers with a generic message, so internals stay in the log.
- `retriable`: the same request may succeed later (throttling, an identity provider that is down);
  the answer carries `Retry-After` (`retry_after` seconds, 30 when the error has no hint).

The attribute is `http_status`, not `status`, because `ApiError.status` already means the status
the *remote* API answered (0 when none arrived), and code and tests rely on that: a Dataverse 400
is answered 502 by this service, not 400.

Classes keep their former built-in bases (ValueError, LookupError, RuntimeError) alongside this one
where callers catch those.
"""

from __future__ import annotations

# `Retry-After` of a retriable error that carries no hint of its own.
DEFAULT_RETRY_AFTER_SECONDS = 30


class ServiceError(Exception):
    """Base of every exception raised by `shared/` on purpose."""

    http_status: int = 500
    retriable: bool = False
    # Seconds before a retry may succeed, when the error knows (e.g. a 429's Retry-After).
    retry_after: float | None = None

    def public_message(self) -> str:
        """What the caller is told; subclasses phrase it as what to do or what went wrong."""
        return str(self)

    def retry_after_header(self) -> str:
        """The `Retry-After` value (whole seconds) for a retriable error."""
        return str(int(self.retry_after)) if self.retry_after else str(DEFAULT_RETRY_AFTER_SECONDS)
