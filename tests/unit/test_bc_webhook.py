"""The Business Central notification parser (shared/feeds/bc_webhook.py) against the documented payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.auth import WebhookAuthError
from shared.feeds.bc_webhook import (
    BcNotification,
    BcNotificationBatch,
    RejectedEntry,
    parse_bc_notifications,
)
from shared.feeds.dataverse_webhook import WebhookPayloadError
from tests.support import webhook_samples as samples
from tests.support.json_fuzz import json_values, mutated

COMPANY_A = "b18aed47-c385-49d2-b954-dbdf8ad71780"
COMPANY_B = "7dbba574-5f69-4167-a43e-fb975045de15"
ITEM_ID = "26814998-936a-401c-81c1-0e848a64971d"
CUSTOMER_ID = "4b4f31f0-dc1c-4033-b2aa-ab03ca1d6ebc"
CLIENT_STATE = "someClientState"
ENTITY_SETS = ("items", "customers", "salesInvoices")


def parse(body: bytes | dict[str, Any], *, client_state: str = CLIENT_STATE) -> BcNotificationBatch:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_bc_notifications(
        raw, client_state=client_state, company_ids=[COMPANY_A, COMPANY_B], entity_sets=ENTITY_SETS
    )


def sample() -> dict[str, Any]:
    return json.loads(samples.BC_NOTIFICATION_SAMPLE)


def entry(**overrides: Any) -> dict[str, Any]:
    base = {
        "subscriptionId": "webhookCustomersId",
        "clientState": CLIENT_STATE,
        "expirationDateTime": "2018-10-29T12:50:30Z",
        "resource": f"api/v2.0/companies({COMPANY_A})/customers({CUSTOMER_ID})",
        "changeType": "updated",
        "lastModifiedDateTime": "2018-10-26T12:54:30.503Z",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_the_documented_sample() -> None:
    batch = parse(samples.BC_NOTIFICATION_SAMPLE.encode())
    assert batch.rejected == []
    assert batch.accepted == [
        BcNotification(
            subscription_id="webhookItemsId",
            change_type="updated",
            company_id=COMPANY_A,
            entity_set="items",
            record_id=ITEM_ID,
            collection_filter=None,
            collection_modified_after=None,
            last_modified=datetime(2018, 10, 26, 12, 54, 20, 467000, tzinfo=UTC),
        ),
        BcNotification(
            subscription_id="webhookCustomersId",
            change_type="deleted",
            company_id=COMPANY_A,
            entity_set="customers",
            record_id=CUSTOMER_ID,
            collection_filter=None,
            collection_modified_after=None,
            last_modified=datetime(2018, 10, 26, 12, 54, 30, 503000, tzinfo=UTC),
        ),
        BcNotification(
            subscription_id="salesInvoice",
            change_type="collection",
            company_id=COMPANY_B,
            entity_set="salesInvoices",
            record_id=None,
            # Rebuilt on the real property name, never passed through (BC's sample misspells it).
            collection_filter="lastModifiedDateTime gt 2018-10-15T11:00:00Z",
            collection_modified_after=datetime(2018, 10, 15, 11, 0, tzinfo=UTC),
            last_modified=datetime(2018, 10, 26, 12, 54, 30, 503000, tzinfo=UTC),
        ),
    ]


def test_a_created_entry_has_the_same_shape() -> None:
    (notification,) = parse({"value": [entry(changeType="created")]}).accepted
    assert (notification.change_type, notification.record_id) == ("created", CUSTOMER_ID)


def test_a_byte_order_mark_and_unknown_members_are_tolerated() -> None:
    body = {"value": [entry(somethingNew={"x": 1})], "@odata.context": "ignored"}
    batch = parse(b"\xef\xbb\xbf" + json.dumps(body).encode())
    assert [n.record_id for n in batch.accepted] == [CUSTOMER_ID]


def test_ids_are_normalised_and_times_converted_to_utc() -> None:
    resource = f"/api/v2.0/companies({COMPANY_A.upper()})/customers({CUSTOMER_ID.upper()})"
    (notification,) = parse(
        {"value": [entry(resource=resource, lastModifiedDateTime="2018-10-26T14:54:30.5034567+02:00")]}
    ).accepted
    assert (notification.company_id, notification.record_id) == (COMPANY_A, CUSTOMER_ID)
    assert notification.last_modified == datetime(2018, 10, 26, 12, 54, 30, 503456, tzinfo=UTC)
    assert notification.last_modified.tzinfo is UTC


def test_an_empty_batch_is_accepted_as_nothing_to_do() -> None:
    assert parse({"value": []}) == BcNotificationBatch()


# --------------------------------------------------------------------------------------------------
# clientState: one wrong entry fails the whole call
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        entry(clientState="otherState"),
        entry(clientState=None),
        entry(clientState=12345),
        entry(clientState=CLIENT_STATE.lower()),
        "not an object",
    ],
)
def test_a_wrong_client_state_on_any_entry_is_an_authentication_failure(bad: Any) -> None:
    with pytest.raises(WebhookAuthError) as caught:
        parse({"value": [entry(), bad]})
    assert caught.value.reason == "notification 1 does not carry this service's clientState"
    assert CLIENT_STATE not in caught.value.reason


def test_the_client_state_is_checked_before_anything_else() -> None:
    with pytest.raises(WebhookAuthError):
        parse({"value": [entry(changeType="bogus", resource="https://evil.example/x", clientState="x")]})


def test_an_unconfigured_client_state_refuses_everything() -> None:
    with pytest.raises(WebhookAuthError):
        parse({"value": [entry(clientState="")]}, client_state="")


# --------------------------------------------------------------------------------------------------
# Bad entries are rejected one by one; the rest of the batch still counts
# --------------------------------------------------------------------------------------------------

OTHER_COMPANY = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (entry(subscriptionId=None), "`subscriptionId` must be a non-empty string"),
        (entry(subscriptionId=""), "`subscriptionId` must be a non-empty string"),
        (entry(subscriptionId=7), "`subscriptionId` must be a non-empty string"),
        (entry(changeType="modified"), "`changeType` must be one of"),
        (entry(changeType="Updated"), "`changeType` must be one of"),
        (entry(changeType=None), "`changeType` must be one of"),
        (entry(resource=None), "`resource` must be a string"),
        (entry(resource=["api"]), "`resource` must be a string"),
        (entry(resource=f"api/v2.0/companies({OTHER_COMPANY})/customers({CUSTOMER_ID})"), "not configured"),
        (entry(resource=f"api/v2.0/companies({COMPANY_A})/vendors({CUSTOMER_ID})"), "not configured"),
        (
            entry(resource=f"https://evil.example/api/v2.0/companies({COMPANY_A})/customers({CUSTOMER_ID})"),
            "not a URL",
        ),
        (entry(resource=f"api/v2.0/companies({'-' * 36})/customers({CUSTOMER_ID})"), "`resource` rejected"),
        (entry(resource=f"api/v2.0/companies({COMPANY_A})/customers({'-' * 36})"), "`resource` rejected"),
        (
            entry(
                resource=f"api/v2.0/companies({COMPANY_A})/customers?$filter=lastModifiedDateTime%20gt%20"
                "2018-13-45T11:00:00Z"
            ),
            "`resource` rejected",
        ),
        (
            entry(
                resource=f"api/v2.0/companies({COMPANY_A})/customers({CUSTOMER_ID})", changeType="collection"
            ),
            "must point at a collection, not a record",
        ),
        (
            entry(
                resource=f"api/v2.0/companies({COMPANY_A})/customers?$filter=lastModifiedDateTime%20gt%20"
                "2018-10-15T11:00:00Z"
            ),
            "must point at one record",
        ),
        (entry(lastModifiedDateTime=None), "`lastModifiedDateTime` must be an ISO 8601 string"),
        (entry(lastModifiedDateTime=1540558470), "`lastModifiedDateTime` must be an ISO 8601 string"),
        (entry(lastModifiedDateTime="yesterday"), "is not an ISO 8601 date-time"),
        (entry(lastModifiedDateTime="2018-10-26T12:54:30"), "has no time zone"),
        (entry(lastModifiedDateTime="0001-01-01T00:00:00+01:00"), "is out of range"),
    ],
)
def test_a_bad_entry_is_rejected_and_the_rest_accepted(bad: dict[str, Any], reason: str) -> None:
    good_before = entry(subscriptionId="first")
    good_after = entry(subscriptionId="last", changeType="deleted")
    batch = parse({"value": [good_before, bad, good_after]})
    assert [n.subscription_id for n in batch.accepted] == ["first", "last"]
    assert len(batch.rejected) == 1
    assert batch.rejected[0].index == 1
    assert reason in batch.rejected[0].reason


def test_every_bad_entry_is_reported_with_its_index() -> None:
    batch = parse({"value": [entry(changeType="x"), entry(), entry(resource="api/v2.0/nowhere")]})
    assert [r.index for r in batch.rejected] == [0, 2]
    assert all(isinstance(r, RejectedEntry) and r.reason for r in batch.rejected)
    assert len(batch.accepted) == 1


# --------------------------------------------------------------------------------------------------
# A body that is not a notification at all
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not valid JSON"),
        (b"validationToken=abc", "not valid JSON"),
        (b"\x80\x81", "not UTF-8"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "`value` list"),
        (b'"value"', "`value` list"),
        (b"{}", "`value` list"),
        (b'{"value": {"subscriptionId": "x"}}', "`value` list"),
        (b'{"value": null}', "`value` list"),
    ],
)
def test_malformed_bodies_are_payload_errors(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookPayloadError) as caught:
        parse(body)
    assert reason in caught.value.reason


# --------------------------------------------------------------------------------------------------
# Fuzz: a batch, a WebhookPayloadError or a WebhookAuthError, never anything else
# --------------------------------------------------------------------------------------------------


def _parses_or_refuses(body: bytes) -> None:
    try:
        batch = parse(body)
    except (WebhookPayloadError, WebhookAuthError) as exc:
        assert exc.reason
        return
    for notification in batch.accepted:
        assert notification.company_id in (COMPANY_A, COMPANY_B)
        assert notification.entity_set in ENTITY_SETS
        is_collection = notification.change_type == "collection"
        assert (notification.record_id is None) == is_collection
        if not is_collection:
            assert notification.collection_modified_after is None
        assert notification.last_modified.tzinfo is UTC
    assert all(r.reason for r in batch.rejected)


@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    _parses_or_refuses(body)


@given(json_values)
def test_fuzz_arbitrary_json(document: Any) -> None:
    _parses_or_refuses(json.dumps(document).encode())


_entry_like = st.fixed_dictionaries(
    {"clientState": st.just(CLIENT_STATE)},
    optional={
        "subscriptionId": json_values,
        "changeType": st.one_of(
            st.sampled_from(["created", "updated", "deleted", "collection"]), json_values
        ),
        "resource": st.one_of(
            st.sampled_from([e["resource"] for e in sample()["value"]]),
            st.text(max_size=120).map(lambda t: f"api/v2.0/companies({COMPANY_A})/{t}"),
            json_values,
        ),
        "lastModifiedDateTime": st.one_of(st.text(max_size=40), json_values),
    },
)


@given(st.lists(_entry_like, max_size=5))
def test_fuzz_authenticated_entries(entries: list[dict[str, Any]]) -> None:
    _parses_or_refuses(json.dumps({"value": entries}).encode())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated(sample()))
def test_fuzz_mutated_sample(document: Any) -> None:
    _parses_or_refuses(json.dumps(document).encode())
