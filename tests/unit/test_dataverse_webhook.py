"""The Dataverse webhook parser (shared/feeds/dataverse_webhook.py) against the documented payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.feeds.dataverse_webhook import (
    DataverseChange,
    WebhookPayloadError,
    parse_dataverse_webhook,
    parse_wcf_date,
)
from tests.support import webhook_samples as samples
from tests.support.json_fuzz import json_values, mutated

RECORD_ID = "6d81597f-0f9f-e711-8122-000d3aa2331c"
USER_ID = "75c2dd85-e89e-e711-8122-000d3aa2331c"


def parse(context: dict[str, Any], headers: dict[str, str] | None = None) -> DataverseChange:
    return parse_dataverse_webhook(json.dumps(context).encode(), headers or {})


def test_the_documented_update_sample() -> None:
    change = parse_dataverse_webhook(
        samples.DATAVERSE_UPDATE_SAMPLE.encode(), samples.DATAVERSE_SAMPLE_HEADERS
    )
    assert change == DataverseChange(
        message="Update",
        entity="contact",
        record_id=RECORD_ID,
        initiating_user_id=USER_ID,
        user_id=USER_ID,
        correlation_id="b374239d-4233-41a9-8b17-a86cb4f737b5",
        depth=1,
        operation_created_on=datetime(2017, 9, 26, 0, 4, 8, tzinfo=UTC),
        changed_attributes=frozenset(
            {
                "firstname",
                "contactid",
                "fullname",
                "yomifullname",
                "modifiedon",
                "modifiedby",
                "modifiedonbehalfby",
            }
        ),
        size_exceeded=False,
        organization="orgname.crm.dynamics.com",
        operation_id="4af10637-4ea2-e711-8122-000d3aa2331c",
    )
    assert change.is_data_change


def test_without_headers_the_organization_comes_from_the_body() -> None:
    change = parse_dataverse_webhook(samples.DATAVERSE_UPDATE_SAMPLE.encode(), {})
    assert change.organization == "OrgName"
    assert change.record_id == RECORD_ID


def test_header_names_are_case_insensitive() -> None:
    headers = {name.upper(): value for name, value in samples.DATAVERSE_SAMPLE_HEADERS.items()}
    change = parse_dataverse_webhook(samples.DATAVERSE_UPDATE_SAMPLE.encode(), headers)
    assert change.organization == "orgname.crm.dynamics.com"


def test_the_256kb_cut_body_still_identifies_the_record() -> None:
    headers = {**samples.DATAVERSE_SAMPLE_HEADERS, "x-ms-dynamics-msg-size-exceeded": "true"}
    change = parse_dataverse_webhook(samples.dataverse_size_exceeded_body(), headers)
    assert change.size_exceeded
    assert (change.message, change.entity, change.record_id) == ("Update", "contact", RECORD_ID)
    assert change.changed_attributes == frozenset()  # unknown: the processor compares all mapped fields
    assert change.initiating_user_id == USER_ID  # echo suppression still works


def test_a_body_truncated_in_transit_is_malformed() -> None:
    body = samples.DATAVERSE_UPDATE_SAMPLE.encode()
    with pytest.raises(WebhookPayloadError, match="not valid JSON"):
        parse_dataverse_webhook(body[: len(body) // 2], {})


def test_a_delete_with_an_entity_reference_target() -> None:
    change = parse(samples.dataverse_delete(), {"x-ms-dynamics-request-name": "Delete"})
    assert (change.message, change.entity, change.record_id) == ("Delete", "contact", RECORD_ID)
    assert change.changed_attributes == frozenset()


def test_an_update_whose_target_is_a_reference_has_unknown_changes() -> None:
    context = samples.dataverse_delete()
    context["MessageName"] = "Update"
    assert parse(context).changed_attributes == frozenset()


def test_a_create_reports_no_changed_attributes() -> None:
    change = parse(samples.dataverse_create())
    assert (change.message, change.entity) == ("Create", "account")
    assert change.record_id == "0b1f4ac1-5c6e-4a0e-9a8b-3f2d1c0e9a77"
    assert change.changed_attributes == frozenset()
    # Plain values only (the option set as its number; money left out), for the intake's scope check.
    assert change.created_values == {
        "name": "Fourth Coffee", "accountid": change.record_id, "customertypecode": 3,
    }  # fmt: skip


def test_other_messages_are_kept_for_the_caller_to_ignore() -> None:
    context = samples.dataverse_update()
    context["MessageName"] = "Assign"
    change = parse(context)
    assert change.message == "Assign"
    assert not change.is_data_change


def test_guids_are_normalised_to_lowercase() -> None:
    context = samples.dataverse_update()
    context["PrimaryEntityId"] = RECORD_ID.upper()
    context["InitiatingUserId"] = USER_ID.upper()
    change = parse(context)
    assert (change.record_id, change.initiating_user_id) == (RECORD_ID, USER_ID)


def test_optional_members_may_be_missing_or_null() -> None:
    context: dict[str, Any] = {
        "MessageName": "Update",
        "PrimaryEntityName": "contact",
        "PrimaryEntityId": RECORD_ID,
    }
    context |= {"InitiatingUserId": None, "Depth": None, "InputParameters": None}
    change = parse(context)
    assert change.initiating_user_id is None and change.user_id is None and change.correlation_id is None
    assert change.depth is None and change.operation_created_on is None and change.organization is None
    assert change.changed_attributes == frozenset()


def test_unknown_members_and_a_byte_order_mark_are_tolerated() -> None:
    context = samples.dataverse_update() | {"SomethingNew": {"nested": [1, 2]}, "Stage": "forty"}
    change = parse_dataverse_webhook(b"\xef\xbb\xbf" + json.dumps(context).encode(), {})
    assert change.record_id == RECORD_ID


def _with(**members: Any) -> dict[str, Any]:
    context = samples.dataverse_update()
    for name, value in members.items():
        if value is _DROP:
            del context[name]
        else:
            context[name] = value
    return context


_DROP = object()


def _target_attributes(value: Any) -> dict[str, Any]:
    context = samples.dataverse_update()
    context["InputParameters"][0]["value"]["Attributes"] = value
    return context


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        ([], "must be a JSON object"),
        ("Update", "must be a JSON object"),
        (_with(MessageName=_DROP), "`MessageName` is missing"),
        (_with(MessageName=7), "`MessageName` must be a name"),
        (_with(MessageName="Up date"), "`MessageName` must be a name"),
        (_with(PrimaryEntityName=_DROP), "`PrimaryEntityName` is missing"),
        (_with(PrimaryEntityName="contact/../accounts"), "`PrimaryEntityName` must be a name"),
        (_with(PrimaryEntityName=""), "`PrimaryEntityName` must be a name"),
        (_with(PrimaryEntityId=_DROP), "`PrimaryEntityId` is missing"),
        (_with(PrimaryEntityId="not-a-guid"), "`PrimaryEntityId` must be a GUID"),
        (_with(PrimaryEntityId="{6d81597f-0f9f-e711-8122-000d3aa2331c}"), "`PrimaryEntityId` must be a GUID"),
        (_with(PrimaryEntityId=12345), "`PrimaryEntityId` must be a GUID, got 12345"),
        (_with(PrimaryEntityId="00000000-0000-0000-0000-000000000000"), "empty GUID"),
        (_with(InitiatingUserId=["x"]), "`InitiatingUserId` must be a GUID, got a list"),
        (_with(UserId="me"), "`UserId` must be a GUID"),
        (_with(CorrelationId=True), "`CorrelationId` must be a GUID"),
        (_with(Depth="1"), "`Depth` must be a non-negative integer"),
        (_with(Depth=True), "`Depth` must be a non-negative integer"),
        (_with(Depth=-1), "`Depth` must be a non-negative integer"),
        (_with(Depth=1.5), "`Depth` must be a non-negative integer"),
        (_with(OperationCreatedOn="2017-09-26T07:04:08Z"), "not a WCF date"),
        (_with(OperationCreatedOn=1506409448000), "`OperationCreatedOn` must be a WCF date string"),
        (_with(OperationCreatedOn="/Date(1506409448000-0799)/"), "impossible time zone offset"),
        (_with(OrganizationName=42), "`OrganizationName` must be a string"),
        (_with(InputParameters={"Target": {}}), "`InputParameters` must be a list of key/value pairs"),
        (_with(InputParameters=[{"value": {}}]), "entries must be objects with a string `key`"),
        (_with(InputParameters=["Target"]), "entries must be objects with a string `key`"),
        (_with(InputParameters=[{"key": "Target", "value": "contact"}]), "Target must be an object"),
        (_target_attributes({"firstname": "James"}), "`Target.Attributes` must be a list"),
        (_target_attributes([{"key": 1, "value": "James"}]), "string `key`"),
    ],
)
def test_malformed_bodies_name_the_problem(context: Any, reason: str) -> None:
    with pytest.raises(WebhookPayloadError) as caught:
        parse_dataverse_webhook(json.dumps(context).encode(), {})
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not valid JSON"),
        (b"<xml/>", "not valid JSON"),
        (b'{"MessageName": "Update",}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "too deeply nested"),
    ],
)
def test_bodies_that_are_not_json_are_malformed(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookPayloadError, match=reason):
        parse_dataverse_webhook(body, {})


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("x-ms-dynamics-entity-name", "account", "`PrimaryEntityName`"),
        ("X-MS-Dynamics-Request-Name", "Create", "`MessageName`"),
    ],
)
def test_headers_that_contradict_the_body_are_malformed(header: str, value: str, reason: str) -> None:
    with pytest.raises(WebhookPayloadError, match=reason):
        parse_dataverse_webhook(samples.DATAVERSE_UPDATE_SAMPLE.encode(), {header: value})


# --------------------------------------------------------------------------------------------------
# WCF dates
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/Date(1506384247000)/", datetime(2017, 9, 26, 0, 4, 7, tzinfo=UTC)),
        ("/Date(1506409448000-0700)/", datetime(2017, 9, 26, 0, 4, 8, tzinfo=UTC)),
        ("/Date(1506384248000+0000)/", datetime(2017, 9, 26, 0, 4, 8, tzinfo=UTC)),
        ("/Date(1506377048000+0530)/", datetime(2017, 9, 26, 3, 34, 8, tzinfo=UTC)),
        ("/Date(0)/", datetime(1970, 1, 1, tzinfo=UTC)),
        ("/Date(-86400000)/", datetime(1969, 12, 31, tzinfo=UTC)),
        ("/Date(1506384247123)/", datetime(2017, 9, 26, 0, 4, 7, 123000, tzinfo=UTC)),
    ],
)
def test_wcf_dates(value: str, expected: datetime) -> None:
    parsed = parse_wcf_date(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_the_json_escaped_form_decodes_to_the_same_date() -> None:
    assert parse_wcf_date(json.loads(r'"\/Date(1506409448000-0700)\/"')) == datetime(
        2017, 9, 26, 0, 4, 8, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "value",
    [
        r"\/Date(1506384247000)\/",
        "/Date()/",
        "/Date(1506384247000)",
        "Date(1506384247000)",
        "/Date(15063842.47)/",
        "/Date(1506384247000-07)/",
        "/Date(1506384247000+2400)/",
        "/Date(\u0661\u0662)/",  # Arabic-Indic digits are digits to Python, not to WCF
        "/Date(999999999999999)/",
        " /Date(0)/",
    ],
)
def test_not_wcf_dates(value: str) -> None:
    with pytest.raises(ValueError):
        parse_wcf_date(value)


# --------------------------------------------------------------------------------------------------
# Fuzz: a DataverseChange or a WebhookPayloadError, never anything else
# --------------------------------------------------------------------------------------------------

_header_values = st.dictionaries(
    st.sampled_from(
        [
            "x-ms-dynamics-entity-name",
            "x-ms-dynamics-request-name",
            "x-ms-dynamics-organization",
            "x-ms-dynamics-msg-size-exceeded",
            "X-Other",
        ]
    ),
    st.one_of(st.text(max_size=20), st.sampled_from(["contact", "Update", "Delete"])),
)


def _parses_or_refuses(body: bytes, headers: dict[str, str]) -> None:
    try:
        change = parse_dataverse_webhook(body, headers)
    except WebhookPayloadError as exc:
        assert exc.reason
        return
    assert isinstance(change, DataverseChange)
    assert change.record_id == change.record_id.lower() and len(change.record_id) == 36
    assert change.operation_created_on is None or change.operation_created_on.tzinfo is not None
    assert all(isinstance(name, str) for name in change.changed_attributes)


@given(st.binary(max_size=400), _header_values)
def test_fuzz_arbitrary_bytes(body: bytes, headers: dict[str, str]) -> None:
    _parses_or_refuses(body, headers)


@given(json_values, _header_values)
def test_fuzz_arbitrary_json(document: Any, headers: dict[str, str]) -> None:
    _parses_or_refuses(json.dumps(document).encode(), headers)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "MessageName",
                "PrimaryEntityName",
                "PrimaryEntityId",
                "InitiatingUserId",
                "UserId",
                "CorrelationId",
                "Depth",
                "OperationCreatedOn",
                "OrganizationName",
                "InputParameters",
            ]
        ),
        json_values,
    )
)
def test_fuzz_context_shaped_objects(document: dict[str, Any]) -> None:
    _parses_or_refuses(json.dumps(document).encode(), {})


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [samples.dataverse_update(), samples.dataverse_delete(), samples.dataverse_create()]
    ).flatmap(mutated),
    _header_values,
)
def test_fuzz_mutated_samples(document: Any, headers: dict[str, str]) -> None:
    _parses_or_refuses(json.dumps(document).encode(), headers)
