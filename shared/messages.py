"""Messages on the `sync-requests` queue: small, typed, versioned, base64 JSON on the wire.

A message says *which* record (or records) to look at, never what the values are: the processor
always reads the record fresh (and writes the other side only on the ETag of its last sync). The
Functions host decodes base64 by default (`messageEncoding`), so producers encode with
`encode_message` and the trigger hands us text to `decode_message`.

Two versions of the service run side by side during a deployment (a slot swap, scale-out while
instances update), so a message may have been written by a newer version. A field this version
does not know is ignored (and logged once, at debug level, by name only): new fields are added as
optional ones whose absence means what the older version did. A change an older version cannot
ignore (a field's meaning, a new required field) raises `MESSAGE_VERSION`; a message of a higher
version is not guessed at: `parse_json` raises `NewerMessageError` (see docs/architecture.md,
Decisions).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.errors import ServiceError

log = logging.getLogger(__name__)

# The message format's version: raised only for a change an older version cannot ignore. Fields
# added as optional keep it (an older version ignores them).
MESSAGE_VERSION = 1

# Azure queue messages are at most 64 KiB; base64 grows text by 4/3, so keep JSON under 48 KiB.
MAX_JSON_BYTES = 48 * 1024

Side = Literal["bc", "dv"]
Change = Literal["created", "updated", "deleted", "unknown"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _correlation_id() -> str:
    return str(uuid.uuid4())


# (model, field) pairs already logged as unknown: once per process is enough to notice a newer version.
_unknown_logged: set[tuple[str, str]] = set()


def _note_unknown_fields(model: type[BaseModel], data: object) -> None:
    if not isinstance(data, dict):
        return
    known = set(model.model_fields)
    new = sorted(
        str(k)[:60] for k in data if k not in known and (model.__name__, str(k)[:60]) not in _unknown_logged
    )
    if new:
        _unknown_logged.update((model.__name__, k) for k in new)
        # Names only: a value can be a record's data.
        log.debug(
            "%s with field(s) %s this version does not know: ignored (written by a newer version?)",
            model.__name__, ", ".join(new),
        )  # fmt: skip


class _Message(BaseModel):
    # Unknown fields are ignored, not refused: a newer version's message still works here.
    model_config = ConfigDict(extra="ignore", frozen=True)

    # MESSAGE_VERSION; a higher one is refused before validation (`NewerMessageError`).
    version: Literal[1] = 1
    mapping: str = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=200)
    observed: dt.datetime = Field(default_factory=_now)
    correlation_id: str = Field(default_factory=_correlation_id, max_length=100)
    # How often this work was put back for later (transient errors, waiting for a dependency).
    attempt: int = Field(default=0, ge=0, le=1000)
    # The BC company (its id) whose record this is. None: a BC-side message of the home company
    # (every message queued before companies were added), or a Dataverse change whose company the
    # processor finds from the coupling or the record's company column.
    company: str | None = Field(default=None, min_length=1, max_length=40)
    # W3C `traceparent` of the span that queued it (shared/telemetry.py), so the processor's span joins
    # the webhook's or poll's trace; absent in messages queued without telemetry, or before it existed.
    trace: str | None = Field(default=None, max_length=55)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: object) -> object:
        _note_unknown_fields(cls, data)
        return data


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
    whole mapping when `since` is None (full resync), or, with `sweep`, what BC's ids and times
    say changed or went away (see `shared.sync.bulk.sweep_bc`)."""

    kind: Literal["scan"] = "scan"
    side: Side
    since: dt.datetime | None = None  # None: a full resync of the mapping (unless `sweep`)
    # "all": changes and deletions (a bare BC `collection`, a gap in notifications); "deletions":
    # only deletions (the periodic sweep; changes come with the delta poll).
    sweep: Literal["all", "deletions"] | None = None
    run_id: str | None = Field(default=None, max_length=100)
    dry_run: bool = False


class RecordChange(BaseModel):
    """One notified change inside a `BatchMessage`: what a `SyncMessage` holds besides the mapping."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=100)
    change: Change = "unknown"
    modified: str | None = Field(default=None, max_length=40)
    # Set when the change came from another webhook call than the batch's first (several calls' changes
    # queued together, `shared.feeds.group_commit`): its own notification time, correlation and trace.
    # Absent: the batch's.
    observed: dt.datetime | None = None
    correlation_id: str | None = Field(default=None, max_length=100)
    trace: str | None = Field(default=None, max_length=55)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: object) -> object:
        _note_unknown_fields(cls, data)
        return data


class BatchMessage(_Message):
    """Many notified changes of one mapping and side, queued as one message so that a webhook call
    of 1,000 entries (or a burst of concurrent calls) costs a handful of queue requests and answers
    in well under BC's 10 s. The processor converges it in bulk or fans it out into one `SyncMessage`
    per record, each then retried on its own."""

    kind: Literal["batch"] = "batch"
    side: Side
    changes: list[RecordChange] = Field(min_length=1, max_length=1000)

    def records(self) -> list[SyncMessage]:
        return [
            SyncMessage(
                mapping=self.mapping,
                side=self.side,
                id=c.id,
                change=c.change,
                modified=c.modified,
                reason=self.reason,
                observed=c.observed or self.observed,
                correlation_id=c.correlation_id or self.correlation_id,
                company=self.company,
                trace=c.trace or self.trace,
            )
            for c in self.changes
        ]


AnyMessage = SyncMessage | ChunkMessage | ScanMessage | BatchMessage
QueueMessage = Annotated[AnyMessage, Field(discriminator="kind")]
_adapter: TypeAdapter[AnyMessage] = TypeAdapter(QueueMessage)


def pack(messages: Sequence[AnyMessage]) -> list[tuple[AnyMessage, list[int]]]:
    """The messages as they go on the queue, each with the positions of the input messages it
    carries: `SyncMessage`s of one company, mapping, side and reason (in order) become `BatchMessage`s
    that fit the size limit; a group of one stays as it is, and other kinds pass through. A change
    whose notification time, correlation or trace differs from its batch's first keeps its own."""
    groups: dict[tuple[str | None, str, str, str], list[int]] = {}
    out: list[tuple[AnyMessage, list[int]]] = []
    for index, message in enumerate(messages):
        if isinstance(message, SyncMessage):
            key = (message.company, message.mapping, message.side, message.reason)
            groups.setdefault(key, []).append(index)
        else:
            out.append((message, [index]))
    for positions in groups.values():
        for part in _fitting_parts(messages, positions):
            if len(part) == 1:
                out.append((messages[part[0]], part))
                continue
            first = messages[part[0]]
            assert isinstance(first, SyncMessage)
            changes = [_change_of(messages[i], first) for i in part]
            batch = BatchMessage(
                mapping=first.mapping, side=first.side, changes=changes, reason=first.reason,
                observed=first.observed, correlation_id=first.correlation_id, company=first.company,
                trace=first.trace,
            )  # fmt: skip
            out.append((batch, part))
    return out


# The JSON of one change in a batch, beside what the batch's own fields take (a margin for them).
_BATCH_OVERHEAD = 1024


def _fitting_parts(messages: Sequence[AnyMessage], positions: list[int]) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    size = _BATCH_OVERHEAD
    for index in positions:
        entry = (
            len(_change_of(messages[index], messages[positions[0]]).model_dump_json(exclude_none=True)) + 1
        )
        if parts[-1] and (size + entry > MAX_JSON_BYTES or len(parts[-1]) == 1000):
            parts.append([])
            size = _BATCH_OVERHEAD
        parts[-1].append(index)
        size += entry
    return parts


def _change_of(message: AnyMessage, first: AnyMessage) -> RecordChange:
    assert isinstance(message, SyncMessage)
    own = {
        name: getattr(message, name)
        for name in ("observed", "correlation_id", "trace")
        if getattr(message, name) != getattr(first, name)
    }
    return RecordChange(id=message.id, change=message.change, modified=message.modified, **own)


class MessageDecodeError(ServiceError, ValueError):
    """The queue message is not one of ours: not base64, not JSON, or not a valid message."""


class NewerMessageError(MessageDecodeError):
    """The message was written by a newer version of the service, in a format this one does not
    understand (its `version` is higher than `MESSAGE_VERSION`): a newer instance can handle it."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(
            f"message version {version} was written by a newer version of the service (this one "
            f"understands version {MESSAGE_VERSION}): finish the deployment so that every instance runs "
            "the new version, then replay the poison queue (`bcsync poison --replay`)"
        )


def to_json(message: AnyMessage) -> str:
    # Fields left at None are left out: every one of them defaults to None when read back.
    text = message.model_dump_json(exclude_none=True)
    if len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(f"message is {len(text)} bytes of JSON; split it (limit {MAX_JSON_BYTES})")
    return text


def encode_message(message: AnyMessage) -> str:
    """Base64 of the JSON, as the Functions host expects with the default `messageEncoding`."""
    return base64.b64encode(to_json(message).encode()).decode("ascii")


def parse_json(text: str | bytes) -> AnyMessage:
    """Parse already-decoded JSON (what the queue trigger hands to the function). A message of a
    newer format raises `NewerMessageError` before anything else is judged."""
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageDecodeError(f"queue message is not JSON: {exc}") from None
    version = data.get("version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > MESSAGE_VERSION:
        raise NewerMessageError(version)
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MessageDecodeError(f"not a valid sync message ({problems})") from None


def decode_message(raw: str | bytes) -> AnyMessage:
    """Decode a base64 JSON queue body; raise `MessageDecodeError` for anything else."""
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageDecodeError(f"queue message is not base64: {exc}") from None
    return parse_json(data)
