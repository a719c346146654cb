"""Poison handling reads every message whatever its encoding (issue 13, point 3): one body that is
not base64 once made the queue SDK's decode policy fail `status`, `poison` and `poison --replay`."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest

from shared.messages import SyncMessage, decode_message, to_json
from shared.ops import operations as ops
from shared.store.journal import Journal
from shared.store.storage import Storage
from shared.store.tables import JOURNAL

pytestmark = pytest.mark.integration

GUID = "6d81597f-0f9f-e711-8122-000d3aa2331c"


def _poisoned(storage: Storage) -> Any:
    storage.ensure()
    raw = storage.queues.get_queue_client(storage.poison_queue_name)  # no encode policy
    raw.send_message("%%% not base64 at all {")
    raw.send_message(base64.b64encode(b"\xff\xfe not utf-8").decode())
    raw.send_message(base64.b64encode(b'{"kind": "record"}').decode())  # base64 JSON, not a message
    storage.queue(storage.poison_queue_name).send_message(
        to_json(SyncMessage(mapping="CUSTOMER", side="bc", id=GUID, reason="failed 5 times"))
    )
    return SimpleNamespace(storage=storage, journal=Journal(storage.table(JOURNAL)))


def test_listing_shows_undecodable_messages_as_such_and_never_fails(storage: Storage) -> None:
    rt = _poisoned(storage)
    listed = ops.list_poison(rt)  # type: ignore[arg-type]
    assert len(listed) == 4
    assert [m.valid for m in listed] == [False, False, False, True]
    assert all(m.summary.startswith("not a sync message (undecodable: ") for m in listed[:3])
    assert "not base64" in listed[0].summary and "not base64" not in listed[2].summary
    assert listed[3].summary.startswith("record CUSTOMER bc:" + GUID)
    peeked = ops._peek_messages(rt, storage.poison_queue_name)  # what `status` counts per mapping
    assert [m.mapping for m, _ in peeked if ops._is_message(m)] == ["CUSTOMER"]


def test_replay_moves_the_valid_message_and_keeps_the_undecodable_ones(storage: Storage) -> None:
    rt = _poisoned(storage)
    dry = ops.replay_poison(rt, dry_run=True)  # type: ignore[arg-type]
    assert (len(dry.replayed), len(dry.kept)) == (1, 3)

    result = ops.replay_poison(rt, dry_run=False)  # type: ignore[arg-type]
    assert (len(result.replayed), len(result.kept)) == (1, 3)
    moved = storage.queues.get_queue_client(storage.sync_queue_name).receive_messages(max_messages=32)
    bodies = [decode_message(m.content) for m in moved]
    assert [(b.mapping, getattr(b, "id", None), b.attempt) for b in bodies] == [("CUSTOMER", GUID, 0)]
    # The undecodable ones are still in the poison queue, byte for byte, for a person to inspect.
    remaining = storage.queues.get_queue_client(storage.poison_queue_name).peek_messages(max_messages=32)
    assert len(remaining) in (0, 3)  # hidden for a minute by the replay's receive, never deleted
    assert (
        storage.queues.get_queue_client(storage.poison_queue_name)
        .get_queue_properties()
        .approximate_message_count
        == 3
    )
