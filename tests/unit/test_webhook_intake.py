"""The webhook intake handlers: status codes, echoes, and that nothing is enqueued unless the call
was authentic and well-formed (pure: no servers)."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.feeds.intake import (
    BcIntakeConfig,
    DataverseIntakeConfig,
    handle_bc_webhook,
    handle_dataverse_webhook,
)
from shared.mapping.loader import load_mapping_set
from shared.messages import ScanMessage, SyncMessage
from tests.support import webhook_samples as samples
from tests.support.json_fuzz import mutated

MAPPINGS = load_mapping_set("mappings/default.yaml")
SECRET = "s3cret-webhook-key-0123456789"
INTEGRATION_USER = "11111111-1111-1111-1111-111111111111"
DV_CONFIG = DataverseIntakeConfig("webhook_key", SECRET, "x-bcsync-key", INTEGRATION_USER)
COMPANY = "b18aed47-c385-49d2-b954-dbdf8ad71780"
BC_CONFIG = BcIntakeConfig("someClientState", [COMPANY])


def dv_call(body: bytes, query: dict[str, str] | None = None, headers: dict[str, str] | None = None):
    return handle_dataverse_webhook(
        headers if headers is not None else samples.DATAVERSE_SAMPLE_HEADERS,
        query if query is not None else {"code": SECRET},
        body,
        config=DV_CONFIG,
        mappings=MAPPINGS,
    )


def bc_call(body: bytes, query: dict[str, str] | None = None):
    return handle_bc_webhook(query or {}, body, config=BC_CONFIG, mappings=MAPPINGS)


def test_documented_dataverse_update_becomes_one_message_for_the_contact_mapping() -> None:
    answer = dv_call(samples.DATAVERSE_UPDATE_SAMPLE.encode())
    assert answer.status == 202
    assert len(answer.messages) == 1
    message = answer.messages[0]
    assert isinstance(message, SyncMessage)
    assert (message.mapping, message.side, message.id, message.change) == (
        "CONTACT", "dv", "6d81597f-0f9f-e711-8122-000d3aa2331c", "updated",
    )  # fmt: skip
    assert message.correlation_id == "b374239d-4233-41a9-8b17-a86cb4f737b5"


def _account_create(customertypecode: int | None) -> bytes:
    context = samples.dataverse_create()
    attributes = context["InputParameters"][0]["value"]["Attributes"]
    for entry in attributes:
        if entry["key"] == "customertypecode":
            if customertypecode is None:
                attributes.remove(entry)
            else:
                entry["value"]["Value"] = customertypecode
    return json.dumps(context).encode()


def test_account_change_goes_to_every_mapping_of_the_table() -> None:
    answer = dv_call(_account_create(None), headers={})
    assert answer.status == 202
    assert sorted(m.mapping for m in answer.messages) == ["CUSTOMER", "VENDOR"]


def test_a_created_customer_account_is_not_queued_for_vendor_whose_scope_it_is_outside() -> None:
    answer = dv_call(_account_create(3), headers={})
    assert [m.mapping for m in answer.messages] == ["CUSTOMER"]
    assert json.loads(answer.body)["out_of_scope"] == ["VENDOR"]
    answer = dv_call(_account_create(11), headers={})
    assert [m.mapping for m in answer.messages] == ["VENDOR"]


def test_a_created_account_outside_every_mapping_is_accepted_and_queues_nothing() -> None:
    answer = dv_call(_account_create(1), headers={})  # a competitor
    assert (answer.status, answer.messages) == (202, [])
    assert "outside the scope of CUSTOMER, VENDOR" in json.loads(answer.body)["ignored"]


@pytest.mark.parametrize("query", [{}, {"code": "wrong"}, {"code": SECRET[:-1]}])
def test_bad_or_missing_key_is_401_and_enqueues_nothing(query: dict[str, str]) -> None:
    answer = dv_call(samples.DATAVERSE_UPDATE_SAMPLE.encode(), query=query)
    assert answer.status == 401 and answer.messages == []
    assert SECRET not in answer.body


def test_bearer_token_is_not_accepted_instead_of_the_secret() -> None:
    answer = dv_call(
        samples.DATAVERSE_UPDATE_SAMPLE.encode(), query={}, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert answer.status == 401


def test_http_header_scheme() -> None:
    config = DataverseIntakeConfig("http_header", SECRET, "x-bcsync-key", None)
    body = samples.DATAVERSE_UPDATE_SAMPLE.encode()
    ok = handle_dataverse_webhook({"X-BcSync-Key": SECRET}, {}, body, config=config, mappings=MAPPINGS)
    bad = handle_dataverse_webhook(
        {"x-bcsync-key": "nope"}, {"code": SECRET}, body, config=config, mappings=MAPPINGS
    )
    assert (ok.status, bad.status) == (202, 401)


def test_malformed_body_is_400() -> None:
    answer = dv_call(b'{"MessageName": "Update"}')
    assert answer.status == 400 and answer.messages == []
    assert "PrimaryEntityName" in answer.body


def test_oversized_body_is_413() -> None:
    answer = dv_call(b" " * (600 * 1024))
    assert answer.status == 413 and answer.messages == []


def test_echo_from_the_integration_user_is_dropped_and_said_so() -> None:
    context = samples.dataverse_update()
    context["InitiatingUserId"] = INTEGRATION_USER
    answer = dv_call(json.dumps(context).encode())
    assert answer.status == 202 and answer.messages == []
    assert "echo" in json.loads(answer.body)["ignored"]


def test_unmapped_table_is_accepted_but_ignored() -> None:
    context = samples.dataverse_update()
    context["PrimaryEntityName"] = "lead"
    answer = dv_call(json.dumps(context).encode(), headers={})
    assert answer.status == 202 and answer.messages == []
    assert "lead" in json.loads(answer.body)["ignored"]


def test_size_exceeded_body_still_yields_the_record() -> None:
    headers = {**samples.DATAVERSE_SAMPLE_HEADERS, "x-ms-dynamics-msg-size-exceeded": "true"}
    answer = dv_call(samples.dataverse_size_exceeded_body(), headers=headers)
    assert answer.status == 202
    assert [m.id for m in answer.messages] == ["6d81597f-0f9f-e711-8122-000d3aa2331c"]  # type: ignore[union-attr]


def test_bc_handshake_echoes_the_token_as_text() -> None:
    answer = bc_call(b"", query={"validationToken": "abc-123_XYZ"})
    assert (answer.status, answer.body, answer.content_type) == (200, "abc-123_XYZ", "text/plain")


def test_bc_documented_sample() -> None:
    answer = bc_call(samples.BC_NOTIFICATION_SAMPLE.encode())
    assert answer.status == 202
    records = [m for m in answer.messages if isinstance(m, SyncMessage)]
    # items -> ITEM-PRODUCT and ITEM PRICE (updated), customers -> CUSTOMER (deleted); salesInvoices is
    # not mapped and its company is not configured: rejected in the body, still 2xx so BC keeps the
    # subscription.
    assert sorted((m.mapping, m.change) for m in records) == [
        ("CUSTOMER", "deleted"),
        ("ITEM PRICE", "updated"),
        ("ITEM-PRODUCT", "updated"),
    ]
    assert len(json.loads(answer.body)["rejected"]) == 1


def _entries(*changes: tuple[str, str, str]) -> bytes:
    """A BC notification body: (record id, changeType, lastModifiedDateTime) per entry."""
    return json.dumps({"value": [{
        "subscriptionId": "s", "clientState": "someClientState", "expirationDateTime": "2030-01-01T00:00:00Z",
        "resource": f"/api/v2.0/companies({COMPANY})/customers({record})",
        "changeType": change, "lastModifiedDateTime": stamp,
    } for record, change, stamp in changes]}).encode()  # fmt: skip


def test_bc_entries_for_one_record_become_one_message_and_a_delete_is_never_lost() -> None:
    created, deleted, other = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
    answer = bc_call(_entries(
        (created, "created", "2026-01-01T10:00:00.100Z"),
        (deleted, "updated", "2026-01-01T10:00:00.200Z"),
        (created, "updated", "2026-01-01T10:00:00.300Z"),
        (other, "updated", "2026-01-01T10:00:00.350Z"),
        (deleted, "deleted", "2026-01-01T10:00:00.400Z"),
    ))  # fmt: skip
    records = [(m.id, m.change) for m in answer.messages if isinstance(m, SyncMessage)]
    assert records == [(created, "created"), (deleted, "deleted"), (other, "updated")]  # first-seen order
    assert json.loads(answer.body) == {"accepted": 3, "merged": 2}
    # every entry folded in is remembered with its message, so a redelivery queues nothing
    assert sorted(len(k) for k in answer.keys) == [1, 2, 2]


def test_bc_echoes_of_this_process_are_not_queued_and_the_rest_is() -> None:
    """What `echo` knows for a notification of our own write is answered and counted, not queued;
    the intake reads no storage to know it (shared/sync/echoes.py)."""
    ours, person, gone = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
    body = _entries(
        (ours, "updated", "2026-01-01T10:00:00.100Z"),
        (person, "updated", "2026-01-01T10:00:00.200Z"),
        (gone, "deleted", "2026-01-01T10:00:00.300Z"),
    )
    asked: list[str] = []

    def echo(message: SyncMessage) -> bool:
        asked.append(message.id)
        return message.id == ours or message.change == "deleted"  # a deletion is the echo's to refuse

    answer = handle_bc_webhook({}, body, config=BC_CONFIG, mappings=MAPPINGS, echo=echo)
    queued = [(m.id, m.change) for m in answer.messages if isinstance(m, SyncMessage)]
    assert queued == [(person, "updated")]
    assert json.loads(answer.body) == {"accepted": 1, "echoes": 2}
    assert len(answer.keys) == 1 and sorted(asked) == sorted([ours, person, gone])


def test_bc_collection_becomes_a_scan_from_the_notified_time() -> None:
    since = "lastModifiedDateTime%20gt%202018-10-15T11:00:00Z"
    body = json.dumps({"value": [{
        "subscriptionId": "s", "clientState": "someClientState", "expirationDateTime": "2018-10-20T10:55:01Z",
        "resource": f"/api/v2.0/companies({COMPANY})/customers?$filter={since}",
        "changeType": "collection", "lastModifiedDateTime": "2018-10-26T12:54:30.503Z",
    }]}).encode()  # fmt: skip
    answer = bc_call(body)
    scans = [m for m in answer.messages if isinstance(m, ScanMessage)]
    assert [s.mapping for s in scans] == ["CUSTOMER"]
    assert scans[0].since is not None and scans[0].since.isoformat().startswith("2018-10-15T11:00:00")


def test_a_bare_bc_collection_becomes_a_sweep_of_changes_and_deletions() -> None:
    """BC sends the collection without a $filter when any change in it is a delete: the scan must
    find the deletions too, so it is a sweep, never a scan from a time nor a full resync."""
    body = json.dumps({"value": [{
        "subscriptionId": "s", "clientState": "someClientState", "expirationDateTime": "2018-10-20T10:55:01Z",
        "resource": f"/api/v2.0/companies({COMPANY})/customers",
        "changeType": "collection", "lastModifiedDateTime": "2018-10-26T12:54:30.503Z",
    }]}).encode()  # fmt: skip
    answer = bc_call(body)
    assert answer.status == 202 and json.loads(answer.body) == {"accepted": 1}
    [scan] = answer.messages
    assert isinstance(scan, ScanMessage) and scan.mapping == "CUSTOMER"
    assert scan.sweep == "all" and scan.since is None and scan.side == "bc"


def test_bc_wrong_client_state_is_401() -> None:
    answer = bc_call(samples.BC_NOTIFICATION_SAMPLE.replace("someClientState", "other").encode())
    assert answer.status == 401 and answer.messages == []


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4),
    query=st.dictionaries(
        st.sampled_from(["code", "x", "validationToken"]), st.text(max_size=40), max_size=2
    ),
)
def test_fuzz_any_call_is_answered_2xx_or_4xx_and_enqueues_only_when_authentic(body, headers, query) -> None:
    dv = handle_dataverse_webhook(headers, query, body, config=DV_CONFIG, mappings=MAPPINGS)
    assert 200 <= dv.status < 500
    if query.get("code") != SECRET:
        assert dv.messages == []
    bc = handle_bc_webhook(query, body, config=BC_CONFIG, mappings=MAPPINGS)
    assert 200 <= bc.status < 500
    if "someClientState" not in body.decode(errors="replace"):
        assert bc.messages == []


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzz_mutated_samples_never_crash(data: st.DataObject) -> None:
    context = samples.dataverse_update()
    key = data.draw(st.sampled_from(sorted(context)))
    context[key] = data.draw(
        st.one_of(st.none(), st.integers(), st.text(max_size=50), st.lists(st.integers(), max_size=3))
    )
    answer = dv_call(json.dumps(context).encode())
    assert answer.status in (202, 400)
    assert (answer.status == 202) or answer.messages == []


def test_bc_lone_surrogate_in_client_state_is_401_not_an_exception() -> None:
    # json.loads turns the escape into a lone surrogate, which cannot be encoded to compare it.
    body = samples.BC_NOTIFICATION_SAMPLE.replace("someClientState", "\\ud800").encode()
    answer = bc_call(body)
    assert answer.status == 401 and answer.messages == []


def test_dataverse_lone_surrogate_in_the_key_is_401() -> None:
    answer = dv_call(samples.DATAVERSE_UPDATE_SAMPLE.encode(), query={"code": "\ud800"})
    assert answer.status == 401 and answer.messages == []


def test_bc_redelivery_and_repeated_entries_are_not_queued_twice() -> None:
    from shared.feeds.dedup import RecentKeys

    recent = RecentKeys()
    entry = json.loads(samples.BC_NOTIFICATION_SAMPLE)["value"][0]
    body = json.dumps({"value": [entry] * 50}).encode()  # 50 identical entries in one call

    def call_once() -> object:
        answer = handle_bc_webhook({}, body, config=BC_CONFIG, mappings=MAPPINGS, seen=recent.contains)
        recent.add_all(k for keys in answer.keys for k in keys)  # what the shell does once they are stored
        return answer

    first = call_once()
    # one message per mapping of items (ITEM-PRODUCT, ITEM PRICE); the 49 repeats are duplicates of each
    assert len(first.messages) == 2 and json.loads(first.body)["duplicates"] == 98
    again = call_once()
    assert again.status == 202 and again.messages == []
    later = json.loads(samples.BC_NOTIFICATION_SAMPLE)["value"][0]
    later["lastModifiedDateTime"] = "2018-10-26T12:55:00Z"  # a new change of the same record
    fresh = handle_bc_webhook(
        {}, json.dumps({"value": [later]}).encode(), config=BC_CONFIG, mappings=MAPPINGS,
        seen=recent.contains,
    )  # fmt: skip
    assert len(fresh.messages) == 2


def test_dataverse_redelivery_of_the_same_operation_is_not_queued_twice() -> None:
    from shared.feeds.dedup import RecentKeys

    recent = RecentKeys()
    answers = []
    for _ in range(50):
        answer = handle_dataverse_webhook(
            samples.DATAVERSE_SAMPLE_HEADERS, {"code": SECRET}, samples.DATAVERSE_UPDATE_SAMPLE.encode(),
            config=DV_CONFIG, mappings=MAPPINGS, seen=recent.contains,
        )  # fmt: skip
        recent.add_all(k for keys in answer.keys for k in keys)
        answers.append(answer)
    assert sum(len(a.messages) for a in answers) == 1
    assert all(a.status == 202 for a in answers)


def test_recent_keys_forget_after_the_ttl_and_stay_bounded() -> None:
    from shared.feeds.dedup import RecentKeys

    now = [0.0]
    recent = RecentKeys(ttl=10, max_keys=3, clock=lambda: now[0])
    recent.add_all(["a", "b", "", "c", "d"])
    assert ("a" in recent, "b" in recent, "d" in recent, "" in recent) == (False, True, True, False)
    now[0] = 11
    assert "d" not in recent


@pytest.mark.parametrize(
    ("headers", "organization_name", "status"),
    [
        ({"x-ms-dynamics-organization": "orgname.crm.dynamics.com"}, "OrgName", 202),
        ({}, "OrgName", 202),  # no header: the body's name against the host's first label
        ({"x-ms-dynamics-organization": "evil.crm.dynamics.com"}, "OrgName", 401),
        ({}, "someoneelse", 401),
    ],
)
def test_dataverse_call_for_another_organization_is_refused(
    headers: dict[str, str], organization_name: str, status: int
) -> None:
    from dataclasses import replace

    from shared.feeds.intake import organization_host

    config = replace(DV_CONFIG, organization_host=organization_host("https://OrgName.crm.dynamics.com/"))
    context = samples.dataverse_update()
    context["OrganizationName"] = organization_name
    answer = handle_dataverse_webhook(
        headers, {"code": SECRET}, json.dumps(context).encode(), config=config, mappings=MAPPINGS
    )
    assert answer.status == status
    assert (answer.messages != []) is (status == 202)


def test_a_loopback_dataverse_url_names_no_organization() -> None:
    from shared.feeds.intake import organization_host

    assert organization_host("http://127.0.0.1:7081") is None
    assert organization_host("http://localhost:7081") is None
    assert organization_host("https://contoso.crm4.dynamics.com") == "contoso.crm4.dynamics.com"


@settings(max_examples=300, deadline=None, derandomize=True)  # seeded: the same cases every run
@given(
    document=mutated(json.loads(samples.BC_NOTIFICATION_SAMPLE)),
    client_state=st.one_of(st.none(), st.sampled_from(["someClientState", "\ud800", "x\udfff"]), st.text()),
    where=st.integers(min_value=0, max_value=5),
)
def test_fuzz_mutated_bc_notifications_never_5xx_and_enqueue_only_when_authentic(
    document: object, client_state: str | None, where: int
) -> None:
    entries = document.get("value") if isinstance(document, dict) else None
    target = entries[where % len(entries)] if isinstance(entries, list) and entries else None
    if client_state is not None and isinstance(target, dict):
        target["clientState"] = client_state  # aim at the authentication field
    body = json.dumps(document).encode()  # ensure_ascii: lone surrogates stay escaped, as a sender's would
    answer = bc_call(body)
    assert 200 <= answer.status < 500
    entries = document.get("value") if isinstance(document, dict) else None
    authentic = isinstance(entries, list) and all(
        isinstance(e, dict) and e.get("clientState") == "someClientState" for e in entries
    )
    if not authentic:
        assert answer.messages == []
    for message in answer.messages:
        assert isinstance(message, SyncMessage | ScanMessage) and message.mapping in {
            "CUSTOMER",
            "ITEM-PRODUCT",
            "ITEM PRICE",
        }


@settings(max_examples=300, deadline=None, derandomize=True)
@given(document=mutated(samples.dataverse_update()))
def test_fuzz_mutated_dataverse_calls_never_5xx(document: object) -> None:
    answer = dv_call(json.dumps(document).encode())
    assert answer.status in (202, 400, 401)
    assert answer.status == 202 or answer.messages == []
