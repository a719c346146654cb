"""The queue processor: decode one message, hand it to the engine, put it back when asked to."""

from __future__ import annotations

import logging
import math

from shared.messages import MessageDecodeError, parse_json
from shared.runtime import get_runtime
from shared.sync.engine import RequeueError

log = logging.getLogger(__name__)


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
    try:
        result = rt.engine.handle(message)
    except RequeueError as requeue:
        log.info("requeue %s in %.0f s: %s", message_id, requeue.delay, requeue)
        rt.storage.enqueue([requeue.message], delay_seconds=max(1, math.ceil(requeue.delay)))
        return
    if result is not None:
        log.info(
            "%s %s:%s -> %s %s", message.mapping, getattr(message, "side", ""), getattr(message, "id", ""),
            result.outcome, result.error or result.reason,
        )  # fmt: skip
