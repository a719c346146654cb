import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.messages import (
    ChunkMessage,
    MessageDecodeError,
    ScanMessage,
    SyncMessage,
    decode_message,
    encode_message,
    parse_json,
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
        (base64.b64encode(b'{"kind":"record","mapping":"M","side":"bc","id":"1","x":1}').decode(), "x"),
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
