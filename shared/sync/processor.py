"""The queue processor: decode one message, dispatch it by kind, put it back when asked to.

A `SyncMessage` is one record pair for the engine; a `BatchMessage` (a webhook call's many
changes) is fanned out into `SyncMessage`s; a `ChunkMessage` (records that failed in bulk) and a
`ScanMessage` (full resync, BC `collection`) are bulk work. Dispatch lives here, not in the
engine, so the engine knows nothing of the bulk path that builds on it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from shared import telemetry
from shared.messages import (
    AnyMessage,
    BatchMessage,
    ChunkMessage,
    MessageDecodeError,
    SyncMessage,
    parse_json,
)
from shared.runtime import get_runtime
from shared.sync import bulk
from shared.sync.engine import Engine, RequeueError, SyncResult

log = logging.getLogger(__name__)

# Both sides address records by GUID (BC `id` / SystemId, Dataverse primary key).
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def permanent_problem(rt: Any, message: AnyMessage) -> str | None:
    """Why no delivery of `message` can ever succeed (unknown mapping, an id that is not a GUID), or
    None. Such a message used to fail five deliveries before the host moved it to poison."""
    known = {m.name for m in rt.mappings.entities()}
    if message.mapping not in known:
        return f"no active entity mapping named {message.mapping!r:.80} (known: {', '.join(sorted(known))})"
    ids = _ids(message)
    bad = next((i for i in ids if not _GUID.fullmatch(i)), None)
    if bad is not None:
        return f"record id {bad!r:.80} is not a GUID"
    return None


def _ids(message: AnyMessage) -> list[str]:
    if isinstance(message, SyncMessage):
        return [message.id]
    if isinstance(message, BatchMessage):
        return [c.id for c in message.changes]
    return message.ids if isinstance(message, ChunkMessage) else []


def _to_poison(rt: Any, body: bytes, message_id: str, why: str) -> None:
    log.error("message %s cannot succeed (%s); moved to %s", message_id, why, rt.storage.poison_queue_name)
    rt.storage.queue(rt.storage.poison_queue_name).send_message(body.decode("utf-8", errors="replace"))


def process_message(body: bytes, *, message_id: str = "", dequeue_count: int = 1) -> None:
    """Raise only for what the host should retry (and finally move to the poison queue)."""
    rt = get_runtime()
    try:
        message = parse_json(body)
    except MessageDecodeError as exc:
        # Retrying cannot fix a malformed message: park it in the poison queue at once, byte for byte.
        log.error(
            "message %s is not a sync message (%s); moved to %s",
            message_id,
            exc,
            rt.storage.poison_queue_name,
        )
        rt.storage.queue(rt.storage.poison_queue_name).send_message(body.decode("utf-8", errors="replace"))
        return
    attributes = {
        "bcsync.mapping": message.mapping, "bcsync.message_kind": message.kind,
        "bcsync.side": getattr(message, "side", None), "bcsync.record_id": getattr(message, "id", None),
        "bcsync.attempt": message.attempt, "messaging.message.delivery_count": dequeue_count,
    }  # fmt: skip
    # A child of the span that queued it: the webhook's or poll's trace (shared/telemetry.py).
    with telemetry.span("process message", attributes, parent=message.trace, kind="consumer") as span:
        _process(rt, message, body, message_id, span)


def _process(rt: Any, message: AnyMessage, body: bytes, message_id: str, span: Any) -> None:
    problem = permanent_problem(rt, message)
    if problem is not None:
        # Retrying cannot fix it either: poison at once, where `bcsync poison` shows it and a replay
        # after the fix (e.g. the mapping restored) puts it back.
        _to_poison(rt, body, message_id, problem)
        return
    try:
        result = dispatch(rt.engine, message)
    except RequeueError as requeue:
        log.info("requeue %s in %.0f s: %s", message_id, requeue.delay, requeue)
        span.set("bcsync.outcome", "requeued")
        telemetry.count("bcsync.changes", mapping=message.mapping, outcome="requeued")
        rt.storage.enqueue([requeue.message], delay_seconds=requeue.delay)
        return
    if result is not None:
        span.set("bcsync.outcome", str(result.outcome))
        telemetry.count("bcsync.changes", mapping=message.mapping, outcome=str(result.outcome))
        if result.changes and not result.dry_run:
            # From the notification (or poll) that saw the change to the write on the other side.
            latency = telemetry.seconds_since(message.observed)
            telemetry.record("bcsync.sync.latency", latency, mapping=message.mapping)
        # Not `result.error`: it can quote a record's values (a conflict's two values, a refusal's text),
        # and logs are exported (shared/telemetry.py); `bcsync errors` and the journal keep it.
        said = "not in sync: the reason is in `bcsync errors`" if result.error else result.reason
        log.info(
            "%s %s:%s -> %s %s", message.mapping, getattr(message, "side", ""), getattr(message, "id", ""),
            result.outcome, said,
        )  # fmt: skip


def dispatch(engine: Engine, message: AnyMessage) -> SyncResult | None:
    """Run one message; the engine's result for a single record, None for bulk work."""
    if isinstance(message, SyncMessage):
        return engine.sync_record(message)
    if isinstance(message, BatchMessage):
        # One message per record, so each is retried, deferred or poisoned on its own and many
        # workers share the batch. If the fan-out fails part way, the whole batch is delivered again:
        # a record queued twice costs one read (its second look is an echo).
        engine.enqueue(message.records(), 0)
    elif isinstance(message, ChunkMessage):
        bulk.sync_chunk(engine, message)
    else:
        bulk.scan(engine, message)
    return None
