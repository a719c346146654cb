"""BC's error answers: `{"error": {"code": "<Category_Name>", "message": "…  CorrelationId:  <guid>."}}`.

Codes come from BC's error codes page,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/dynamics-error-codes
(`BadRequest_*`, `Internal_*`, `Application_*`, `Authentication_*`, `Request_*`). Where Microsoft
names no code for a case (throttling, unknown entity set), the
choice is marked "(unverified)" next to it.
"""

from __future__ import annotations

import uuid
from typing import Any


class BcError(Exception):
    """An error the API answers with `status` and BC's error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        super().__init__(f"{status} {code}: {message}")

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"{message}  CorrelationId:  {uuid.uuid4()}."}}


def code_for_status(status: int) -> str:
    """The error code used for a bare status (fault injection, throttling)."""
    return {
        400: "BadRequest",
        401: "Authentication_InvalidCredentials",
        404: "BadRequest_NotFound",
        408: "Internal_RequestTimeout",  # (unverified)
        409: "Request_EntityChanged",
        429: "Application_TooManyRequests",  # (unverified)
        500: "Internal_ServerError",  # (unverified)
        503: "Internal_ServiceUnavailable",  # (unverified)
        504: "Internal_GatewayTimeout",  # (unverified)
    }.get(status, "Unknown")


# The few errors raised from many places, with BC's wording.


def missing_if_match() -> BcError:
    return BcError(
        400,
        "BadRequest_InvalidToken",
        "Could not validate the client concurrency token required by the service. "
        "Please provide a valid token in the client request.",
    )


def entity_changed() -> BcError:
    return BcError(409, "Request_EntityChanged", "Another user has already changed the record.")


def record_not_found(caption: str, record_id: str) -> BcError:
    return BcError(
        404,
        "Internal_RecordNotFound",
        f"The {caption} does not exist. Identification fields and values: Id='{record_id}'",
    )


def resource_not_found(what: str) -> BcError:
    return BcError(404, "BadRequest_ResourceNotFound", f"Resource not found for the segment '{what}'.")


def bad_request(message: str, code: str = "BadRequest") -> BcError:
    return BcError(400, code, message)
