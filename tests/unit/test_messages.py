import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.messages import (
    BatchMessage,
    ChunkMessage,
    MessageDecodeError,
    ScanMessage,
    SyncMessage,
    decode_message,
    encode_message,
    pack,
    parse_json,
    to_json,
)


def test_sync_message_round_trips_through_base64_json() -> None:
    message = SyncMessage(mapping="CUSTOMER", side="bc", id="4b4f31f0", change="updated", reason="webhook")
    encoded = encode_message(message)
    assert json.loads(base64.b64decode(encoded))["kind"] == "record"
    assert decode_message(encoded) == message


def test_chunk_and_scan_messages_round_trip() -> None:
    chunk = ChunkMessage(mapping="CUSTOMER", side="dv", ids=["a", "b"], run_id="r1")
    scan = ScanMessage(mapping="CUSTOMER", side="bc", since=None)
    assert decode_message(encode_message(chunk)) == chunk
    assert decode_message(encode_message(scan)) == scan


def test_message_carries_a_version() -> None:
    message = SyncMessage(mapping="CUSTOMER", side="bc", id="1")
    assert json.loads(base64.b64decode(encode_message(message)))["version"] == 1
    data = json.loads(message.model_dump_json()) | {"version": 2}
    with pytest.raises(MessageDecodeError, match="version"):
        parse_json(json.dumps(data))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not base64!", "not base64"),
        (base64.b64encode(b"\xff\xfe").decode(), "not JSON"),
        (base64.b64encode(b"{").decode(), "not JSON"),
        (base64.b64encode(b"[]").decode(), "not a valid sync message"),
        (base64.b64encode(b'{"kind":"record"}').decode(), "mapping"),
        (base64.b64encode(b'{"kind":"record","mapping":"M","side":"erp","id":"1"}').decode(), "side"),
        (base64.b64encode(b'{"kind":"teleport","mapping":"M"}').decode(), "not a valid sync message"),
        (
            base64.b64encode(b'{"kind":"record","mapping":"M","side":"bc","id":"1","version":0}').decode(),
            "version",
        ),
    ],
)
def test_malformed_messages_raise_the_typed_error(raw: str, why: str) -> None:
    with pytest.raises(MessageDecodeError, match=why):
        decode_message(raw)


def test_oversized_chunk_is_refused_before_it_reaches_the_queue() -> None:
    chunk = ChunkMessage(mapping="CUSTOMER", side="bc", ids=["x" * 100] * 1000)
    with pytest.raises(ValueError, match="split it"):
        encode_message(chunk)


@given(st.one_of(st.text(), st.binary().map(lambda b: base64.b64encode(b).decode())))
def test_decoding_anything_gives_a_message_or_the_typed_error(raw: str) -> None:
    try:
        decoded = decode_message(raw)
    except MessageDecodeError:
        return
    assert decoded.version == 1


def _notified(n: int, mapping: str = "CUSTOMER") -> list[SyncMessage]:
    return [
        SyncMessage(
            mapping=mapping,
            side="bc",
            id=f"{i:08x}-0000-4000-8000-000000000000",
            change="updated",
            modified="2026-01-01T10:00:00.123Z",
            reason="bc webhook",
        )
        for i in range(n)
    ]


def test_a_thousand_notified_changes_go_on_the_queue_as_a_few_batches_in_order() -> None:
    messages = _notified(1000)
    packed = pack(messages)
    assert 2 <= len(packed) <= 5  # not 1,000 queue requests
    carried = [i for _, positions in packed for i in positions]
    assert carried == list(range(1000))
    unpacked = []
    for message, _ in packed:
        assert len(encode_message(message)) <= 64 * 1024  # fits a queue message, base64 and all
        decoded = parse_json(to_json(message))
        assert isinstance(decoded, BatchMessage)
        unpacked += decoded.records()
    assert [(m.id, m.change, m.modified, m.mapping) for m in unpacked] == [
        (m.id, m.change, m.modified, m.mapping) for m in messages
    ]


def test_a_lone_change_and_other_kinds_are_queued_as_they_are() -> None:
    scan = ScanMessage(mapping="CUSTOMER", side="bc", since=None)
    lone = _notified(1, "ITEM")[0]
    packed = pack([*_notified(2), scan, lone])
    kinds = sorted((m.kind, m.mapping, tuple(p)) for m, p in packed)
    assert kinds == [("batch", "CUSTOMER", (0, 1)), ("record", "ITEM", (3,)), ("scan", "CUSTOMER", (2,))]
