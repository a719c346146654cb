"""Messages on the `sync-requests` queue: small, typed, versioned, base64 JSON on the wire.

A message says *which* record (or records) to look at, never what the values are: the processor
always reads the record fresh (and writes the other side only on the ETag of its last sync). The
Functions host decodes base64 by default (`messageEncoding`), so producers encode with
`encode_message` and the trigger hands us text to `decode_message`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import ServiceError

# Azure queue messages are at most 64 KiB; base64 grows text by 4/3, so keep JSON under 48 KiB.
MAX_JSON_BYTES = 48 * 1024

Side = Literal["bc", "dv"]
Change = Literal["created", "updated", "deleted", "unknown"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _correlation_id() -> str:
    return str(uuid.uuid4())


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A new message format gets version 2 here, so a worker can tell old messages still queued apart.
    version: Literal[1] = 1
    mapping: str = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=200)
    observed: dt.datetime = Field(default_factory=_now)
    correlation_id: str = Field(default_factory=_correlation_id, max_length=100)
    # How often this work was put back for later (transient errors, waiting for a dependency).
    attempt: int = Field(default=0, ge=0, le=1000)


class SyncMessage(_Message):
    """Converge the pair that contains record `id` on `side`."""

    kind: Literal["record"] = "record"
    side: Side
    id: str = Field(min_length=1, max_length=100)
    change: Change = "unknown"
    # BC's notification time, kept for echo suppression; never trusted as data.
    modified: str | None = Field(default=None, max_length=40)


class ChunkMessage(_Message):
    """Converge many pairs at once with bulk reads and writes (full resync, BC `collection`)."""

    kind: Literal["chunk"] = "chunk"
    side: Side
    ids: list[str] = Field(min_length=1, max_length=1000)
    run_id: str | None = Field(default=None, max_length=100)


class ScanMessage(_Message):
    """Converge everything changed on one side since `since` in bulk (BC `collection`), or the
    whole mapping when `since` is None (full resync)."""

    kind: Literal["scan"] = "scan"
    side: Side
    since: dt.datetime | None = None  # None: a full resync of the mapping
    run_id: str | None = Field(default=None, max_length=100)
    dry_run: bool = False


QueueMessage = Annotated[SyncMessage | ChunkMessage | ScanMessage, Field(discriminator="kind")]
_adapter: TypeAdapter[SyncMessage | ChunkMessage | ScanMessage] = TypeAdapter(QueueMessage)


class MessageDecodeError(ServiceError, ValueError):
    """The queue message is not one of ours: not base64, not JSON, or not a valid message."""


def to_json(message: SyncMessage | ChunkMessage | ScanMessage) -> str:
    text = message.model_dump_json()
    if len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(f"message is {len(text)} bytes of JSON; split it (limit {MAX_JSON_BYTES})")
    return text


def encode_message(message: SyncMessage | ChunkMessage | ScanMessage) -> str:
    """Base64 of the JSON, as the Functions host expects with the default `messageEncoding`."""
    return base64.b64encode(to_json(message).encode()).decode("ascii")


def parse_json(text: str | bytes) -> SyncMessage | ChunkMessage | ScanMessage:
    """Parse already-decoded JSON (what the queue trigger hands to the function)."""
    try:
        return _adapter.validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MessageDecodeError(f"not a valid sync message ({problems})") from None


def decode_message(raw: str | bytes) -> SyncMessage | ChunkMessage | ScanMessage:
    """Decode a base64 JSON queue body; raise `MessageDecodeError` for anything else."""
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageDecodeError(f"queue message is not base64: {exc}") from None
    try:
        json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageDecodeError(f"queue message is not JSON: {exc}") from None
    return parse_json(data)
