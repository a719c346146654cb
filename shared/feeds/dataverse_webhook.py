"""Parse a Dataverse webhook call into the one record change it reports.

The body is a serialized `RemoteExecutionContext`
(https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks).
Only *which* record changed is taken from it, never field values (docs/architecture.md#the-flow): the
processor reads the record fresh. The parser is tolerant of members it does not use and strict about
the ones it does, so a malformed call is answered 400 with a reason instead of becoming a bogus sync request.

`WebhookPayloadError` and `load_json_body` are shared with the Business Central notification parser.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import ServiceError

ORGANIZATION_HEADER = "x-ms-dynamics-organization"
ENTITY_NAME_HEADER = "x-ms-dynamics-entity-name"
REQUEST_NAME_HEADER = "x-ms-dynamics-request-name"
# Sent only when the payload exceeded 256KB; the body then lacks ParentContext, InputParameters and
# the entity images, but still names the record (the use-webhooks page above).
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"

DATA_MESSAGES = frozenset({"Create", "Update", "Delete"})

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NIL_GUID = "00000000-0000-0000-0000-000000000000"
# Logical names are lowercase in practice; the pattern also keeps anything URL-hostile out.
_LOGICAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MESSAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# WCF DataContractJsonSerializer dates: "/Date(ms)/" or "/Date(ms+hhmm)/" (the JSON text escapes the
# slashes as "\/", which json.loads undoes).
_WCF_DATE = re.compile(r"/Date\((-?[0-9]{1,15})(?:([+-])([0-9]{2})([0-9]{2}))?\)/")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WebhookPayloadError(ServiceError):
    """A webhook body that cannot be what the sender documents (answer 400 with `reason`)."""

    http_status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def load_json_body(body: bytes) -> Any:
    """Decode a UTF-8 JSON body (a byte-order mark is tolerated), or raise `WebhookPayloadError`."""
    try:
        return json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise WebhookPayloadError("the body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        detail = f": {exc}" if isinstance(exc, json.JSONDecodeError) else " (too deeply nested)"
        raise WebhookPayloadError(f"the body is not valid JSON{detail}") from None


def parse_wcf_date(value: str) -> datetime:
    """A WCF JSON date (`/Date(ms)/` or `/Date(ms±hhmm)/`) as an aware UTC datetime; `ValueError` otherwise.

    Without an offset, `ms` is milliseconds since 1970-01-01 UTC ("Stand-Alone JSON Serialization
    using DataContractJsonSerializer", learn.microsoft.com, "Dates/Times and JSON"). With an offset the
    serializer was given a DateTime of unspecified kind: it took it for server-local time, shifted it to
    UTC and appended the server's offset. Dataverse keeps UTC values in such DateTimes, so adding the
    offset back recovers the value. The documented sample shows it: `modifiedon` is
    /Date(1506384247000)/ (00:04:07Z) and `OperationCreatedOn` /Date(1506409448000-0700)/, which reads
    00:04:08Z this way and seven hours later if the offset were ignored. Dataverse online servers run
    on UTC (offset +0000), where both readings agree.
    """
    match = _WCF_DATE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a WCF date like /Date(1506409448000)/")
    milliseconds, sign, hours, minutes = match.groups()
    offset = timedelta()
    if sign is not None:
        if int(hours) > 23 or int(minutes) > 59:
            raise ValueError(f"{value!r} has an impossible time zone offset")
        offset = timedelta(hours=int(hours), minutes=int(minutes)) * (1 if sign == "+" else -1)
    try:
        return _EPOCH + timedelta(milliseconds=int(milliseconds)) + offset
    except OverflowError:
        raise ValueError(f"{value!r} is outside the supported date range") from None


@dataclass(frozen=True)
class DataverseChange:
    message: str  # "Create", "Update", "Delete", or another SDK message kept as sent
    entity: str  # logical name, e.g. "contact"
    record_id: str  # lowercase GUID
    initiating_user_id: str | None
    user_id: str | None
    correlation_id: str | None
    depth: int | None
    operation_created_on: datetime | None
    changed_attributes: frozenset[str]  # Update's Target columns; empty when unknown
    size_exceeded: bool
    organization: str | None
    # The system job's operation: the same on every redelivery of one change, so it identifies
    # duplicates. None when absent, the empty GUID or not a GUID (it is never refused over it).
    operation_id: str | None = None
    # Lookups the step's images carry (`PostImage`, or `PreImage` for Delete): column -> referenced id.
    # A document line's notification names its document through one.
    image_references: Mapping[str, str] = field(default_factory=dict)
    # A Create's Target columns with plain values (an option set as its number); lookups, money and
    # dates are left out. Enough to tell that a created row is outside a mapping's scope.
    created_values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_data_change(self) -> bool:
        return self.message in DATA_MESSAGES


def parse_dataverse_webhook(body: bytes, headers: Mapping[str, str]) -> DataverseChange:
    """The change a Dataverse webhook call reports; raises `WebhookPayloadError` if it is malformed."""
    context = load_json_body(body)
    if not isinstance(context, dict):
        raise WebhookPayloadError("the body must be a JSON object (a RemoteExecutionContext)")
    lower_headers = {name.lower(): value.strip() for name, value in headers.items()}

    message = _required_name(context, "MessageName", _MESSAGE_NAME)
    entity = _required_name(context, "PrimaryEntityName", _LOGICAL_NAME)
    record_id = _optional_guid(context, "PrimaryEntityId")
    if record_id is None:
        raise WebhookPayloadError("`PrimaryEntityId` is missing; it must be the changed record's GUID")
    if record_id == _NIL_GUID:
        raise WebhookPayloadError(
            "`PrimaryEntityId` is the empty GUID: register the step at PostOperation so the record exists"
        )
    _check_header_agrees(lower_headers, ENTITY_NAME_HEADER, entity, "PrimaryEntityName")
    _check_header_agrees(lower_headers, REQUEST_NAME_HEADER, message, "MessageName")

    target = _target(context)
    changed = _attribute_keys(target) if message == "Update" and target is not None else frozenset()
    return DataverseChange(
        message=message,
        entity=entity,
        record_id=record_id,
        initiating_user_id=_optional_guid(context, "InitiatingUserId"),
        user_id=_optional_guid(context, "UserId"),
        correlation_id=_optional_guid(context, "CorrelationId"),
        depth=_optional_depth(context),
        operation_created_on=_optional_wcf_date(context, "OperationCreatedOn"),
        changed_attributes=changed,
        size_exceeded=SIZE_EXCEEDED_HEADER in lower_headers,
        organization=lower_headers.get(ORGANIZATION_HEADER) or _optional_str(context, "OrganizationName"),
        operation_id=_lenient_guid(context, "OperationId"),
        image_references=_image_references(context),
        created_values=_plain_values(target) if message == "Create" and target is not None else {},
    )


def _plain_values(target: dict[str, Any]) -> dict[str, Any]:
    attributes = target.get("Attributes")
    values: dict[str, Any] = {}
    for entry in _key_value_list(attributes, "Target.Attributes") if attributes is not None else []:
        value = entry.get("value")
        if isinstance(value, dict) and str(value.get("__type", "")).startswith("OptionSetValue:"):
            value = value.get("Value")
        if value is None or isinstance(value, (str, int, float, bool)):
            values[entry["key"]] = value
    return values


def _image_references(context: dict[str, Any]) -> dict[str, str]:
    """Entity references in the post- and pre-images (`{"Id", "LogicalName"}` values), by column."""
    found: dict[str, str] = {}
    for member in ("PreEntityImages", "PostEntityImages"):
        images = context.get(member)
        if not images:
            continue
        for image in _key_value_list(images, member):
            entity = image.get("value")
            attributes = entity.get("Attributes") if isinstance(entity, dict) else None
            if not attributes:
                continue
            for entry in _key_value_list(attributes, f"{member}.Attributes"):
                value = entry.get("value")
                if isinstance(value, dict) and isinstance(value.get("Id"), str):
                    try:
                        found[entry["key"]] = str(uuid.UUID(value["Id"]))
                    except ValueError:
                        continue
    return found


def _lenient_guid(context: dict[str, Any], member: str) -> str | None:
    value = context.get(member)
    if not isinstance(value, str) or not _GUID.fullmatch(value) or value == _NIL_GUID:
        return None
    return value.lower()


def _required_name(context: dict[str, Any], member: str, pattern: re.Pattern[str]) -> str:
    value = context.get(member)
    if value is None:
        raise WebhookPayloadError(f"`{member}` is missing")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WebhookPayloadError(f"`{member}` must be a name like `contact` or `Update`, got {_show(value)}")
    return value


def _optional_guid(context: dict[str, Any], member: str) -> str | None:
    value = context.get(member)
    if value is None:
        return None
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise WebhookPayloadError(f"`{member}` must be a GUID, got {_show(value)}")
    return value.lower()


def _optional_str(context: dict[str, Any], member: str) -> str | None:
    value = context.get(member)
    if value is not None and not isinstance(value, str):
        raise WebhookPayloadError(f"`{member}` must be a string, got {_show(value)}")
    return value or None


def _optional_depth(context: dict[str, Any]) -> int | None:
    value = context.get("Depth")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WebhookPayloadError(f"`Depth` must be a non-negative integer, got {_show(value)}")
    return value


def _optional_wcf_date(context: dict[str, Any], member: str) -> datetime | None:
    value = context.get(member)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookPayloadError(f"`{member}` must be a WCF date string, got {_show(value)}")
    try:
        return parse_wcf_date(value)
    except ValueError as exc:
        raise WebhookPayloadError(f"`{member}`: {exc}") from None


def _check_header_agrees(headers: dict[str, str], header: str, body_value: str, member: str) -> None:
    sent = headers.get(header)
    if sent is not None and sent.casefold() != body_value.casefold():
        raise WebhookPayloadError(
            f"header `{header}` says {sent!r} but the body's `{member}` is {body_value!r}"
        )


def _target(context: dict[str, Any]) -> dict[str, Any] | None:
    """The `Target` input parameter (an Entity, or an EntityReference for Delete), if the body has one."""
    parameters = context.get("InputParameters")
    if parameters is None:
        return None
    target = None
    for entry in _key_value_list(parameters, "InputParameters"):
        if entry["key"] == "Target":
            target = entry.get("value")
    if target is not None and not isinstance(target, dict):
        raise WebhookPayloadError(f"`InputParameters` Target must be an object, got {_show(target)}")
    return target


def _attribute_keys(target: dict[str, Any]) -> frozenset[str]:
    # An EntityReference (Delete, or anything not carrying columns) has no `Attributes`.
    attributes = target.get("Attributes")
    if attributes is None:
        return frozenset()
    return frozenset(entry["key"] for entry in _key_value_list(attributes, "Target.Attributes"))


def _key_value_list(value: Any, where: str) -> list[dict[str, Any]]:
    """A serialized .NET collection: `[{"key": …, "value": …}, …]`."""
    if not isinstance(value, list):
        raise WebhookPayloadError(f"`{where}` must be a list of key/value pairs, got {_show(value)}")
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise WebhookPayloadError(f"`{where}` entries must be objects with a string `key`")
    return value


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value for an error reason."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
