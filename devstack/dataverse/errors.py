"""Dataverse's error answers: `{"error": {"code": "0x...", "message": "..."}}` with the real status.

Messages and codes follow Microsoft's documentation (docs/dataverse-sandbox.md#sources: errors,
conditional operations, change tracking, service protection limits) and what live services return;
where the documentation is silent the message says what to do instead. Where the documentation's
own examples show an EMPTY `code` (404 "Does Not Exist", 412 version mismatch, 412 "matching key
values already exists"; page webapi/perform-conditional-operations-using-web-api and
webapi/update-delete-entities-using-web-api), the sandbox sends it empty too, so a client cannot
come to depend on a code that real answers may not carry.
"""

from __future__ import annotations

from typing import Any


class DataverseError(Exception):
    """An error answer; `status`, `code` and `message` go on the wire as Dataverse sends them."""

    def __init__(
        self, status: int, message: str, code: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        super().__init__(f"{status} {code} {message}")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# Microsoft's troubleshooting page (troubleshoot/power-platform/power-apps/dataverse/web-api-client-errors).
SEGMENT_NOT_FOUND = "0x8006088a"
# Service protection: the request-count limit (power-apps/developer/data-platform/api-limits).
REQUESTS_LIMIT = "0x80072322"
CHANGE_TRACKING_NOT_ENABLED = "0x80072491"  # ChangeTrackingNotEnabledForEntity


def segment_not_found(segment: str, hint: str = "") -> DataverseError:
    return DataverseError(404, f"Resource not found for the segment '{segment}'.{hint}", SEGMENT_NOT_FOUND)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The body of an injected fault (used by `FaultMiddleware`).

    An injected 429 is a service-protection answer, so it carries the request-count code and message
    (the execution-time and concurrency ones come from the real limiters: lower them with
    `set_limits`). Other statuses have no code to imitate and keep it empty.
    """
    if status == 429:
        return {
            "error": {
                "code": REQUESTS_LIMIT,
                # The live text at the default limits (an injected fault does not consult them).
                "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            }
        }
    return {"error": {"code": "", "message": message}}


def not_found(logical_name: str, record_id: str) -> DataverseError:
    # The documented example has an empty code (live services often say 0x80040217).
    return DataverseError(404, f"{logical_name} With Id = {record_id} Does Not Exist", "")


def unknown_property(logical_name: str, name: str) -> DataverseError:
    return DataverseError(
        400,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{logical_name}'.",
        "0x80060888",
    )


def bad_request(message: str, code: str = "0x80060888") -> DataverseError:
    return DataverseError(400, message, code)


def validation(message: str) -> DataverseError:
    return DataverseError(400, f"A validation error occurred.  {message}", "0x80044331")


def version_mismatch() -> DataverseError:
    return DataverseError(
        412,
        "The version of the existing record doesn't match the RowVersion property provided.",
        "",  # as documented (live services often say 0x80060882)
    )


def key_exists() -> DataverseError:
    # As documented: an empty code (live services often say 0x80060892).
    return DataverseError(412, "A record with matching key values already exists.", "")


def duplicate_key(logical_name: str, columns: tuple[str, ...]) -> DataverseError:
    names = ", ".join(columns)
    return DataverseError(
        412,
        f"A record that has the attribute values {names} already exists. The entity key on {logical_name} "
        "requires that this set of attributes contains unique values. Select unique values and try again.",
        "0x80060892",
    )


def duplicate_id(logical_name: str, record_id: str) -> DataverseError:
    # DuplicateRecord: a create reused an existing primary key.
    return DataverseError(
        412,
        f"Cannot insert duplicate key: a {logical_name} with id {record_id} already exists.",
        "0x80040237",
    )


def expired_token() -> DataverseError:
    return DataverseError(
        400,
        "Version stamp associated with the client has expired. Please perform a full sync.",
        "0x80044352",
    )


def unauthorized(message: str) -> DataverseError:
    return DataverseError(401, message, "0x80072560")
