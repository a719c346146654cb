"""A message that can never succeed goes to the poison queue at once (issue 13, point 9), instead
of failing five deliveries first."""

from __future__ import annotations

from typing import Any

import pytest

from shared.messages import SyncMessage, to_json
from shared.sync import processor
from tests.support.processor_runtime import processor_runtime

GUID = "6d81597f-0f9f-e711-8122-000d3aa2331c"


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Any:
    return processor_runtime(monkeypatch)


@pytest.mark.parametrize(
    "message",
    [
        SyncMessage(mapping="NO-SUCH-MAPPING", side="bc", id=GUID),
        SyncMessage(mapping="CUSTOMER", side="bc", id="../../x"),
        SyncMessage(mapping="CUSTOMER", side="dv", id="' or 1 eq 1"),
    ],
)
def test_permanent_errors_go_to_poison_without_a_retry(rt: Any, message: SyncMessage) -> None:
    body = to_json(message).encode()
    processor.process_message(body, message_id="m1")  # does not raise: no redelivery
    assert rt.synced == []
    assert rt.sent == [("sync-requests-poison", body.decode())]


def test_a_good_message_is_synced(rt: Any) -> None:
    processor.process_message(to_json(SyncMessage(mapping="CUSTOMER", side="bc", id=GUID)).encode())
    assert len(rt.synced) == 1 and rt.sent == []
