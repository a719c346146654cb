"""The queue processor: decode one message, dispatch it by kind, put it back when asked to.

A `SyncMessage` is one record pair for the engine; a `BatchMessage` (a webhook call's many
changes) is converged in bulk on its first delivery and fanned out into `SyncMessage`s after
that; a `ChunkMessage` (records that failed in bulk) and a `ScanMessage` (full resync, BC
`collection`) are bulk work. Dispatch lives here, not in the engine, so the engine knows nothing
of the bulk path that builds on it.
"""

from __future__ import annotations

import logging
import re

from shared import telemetry
from shared.companies import COMPANY_TABLES, COMPANY_VALUE, same_company
from shared.errors import ServiceError
from shared.messages import (
    AnyMessage,
    BatchMessage,
    ChunkMessage,
    MessageDecodeError,
    NewerMessageError,
    SyncMessage,
    parse_json,
)
from shared.runtime import Runtime, get_runtime
from shared.sync import bulk, coalesce
from shared.sync.engine import Engine, RequeueError, SyncResult

log = logging.getLogger(__name__)

# Deliveries a message of a newer format waits for a newer instance (host.json's `visibilityTimeout`
# apart, 10 s) before it is moved to the poison queue with the reason; at most `maxDequeueCount`.
NEWER_MESSAGE_DELIVERIES = 5


class NewerVersionPendingError(ServiceError):
    """Raised so that the host puts the message back: a newer instance may take it next time."""


# Both sides address records by GUID (BC `id` / SystemId, Dataverse primary key).
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def permanent_problem(rt: Runtime, message: AnyMessage) -> str | None:
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


def _to_poison(rt: Runtime, body: bytes, message_id: str, why: str) -> None:
    log.error("message %s cannot succeed (%s); moved to %s", message_id, why, rt.storage.poison_queue_name)
    rt.storage.queue(rt.storage.poison_queue_name).send_message(body.decode("utf-8", errors="replace"))


def process_message(body: bytes, *, message_id: str = "", dequeue_count: int = 1) -> None:
    """Raise only for what the host should retry (and finally move to the poison queue)."""
    rt = get_runtime()
    try:
        message = parse_json(body)
    except NewerMessageError as exc:
        # A rolling deployment: another instance already runs the version that wrote it.
        if dequeue_count < NEWER_MESSAGE_DELIVERIES:
            log.warning(
                "message %s has format version %d, newer than this instance's: left on the queue for a "
                "newer instance (delivery %d of %d)", message_id, exc.version, dequeue_count,
                NEWER_MESSAGE_DELIVERIES,
            )  # fmt: skip
            raise NewerVersionPendingError(str(exc)) from None
        _to_poison(rt, body, message_id, str(exc))
        return
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
        _process(rt, message, body, message_id, span, dequeue_count)


def _process(
    rt: Runtime,
    message: AnyMessage,
    body: bytes,
    message_id: str,
    span: telemetry.Span,
    dequeue_count: int = 1,
) -> None:
    problem = permanent_problem(rt, message)
    if problem is not None:
        # Retrying cannot fix it either: poison at once, where `bcsync poison` shows it and a replay
        # after the fix (e.g. the mapping restored) puts it back.
        _to_poison(rt, body, message_id, problem)
        return
    routed = route(rt, message)
    if routed is None:
        return
    rt, message = routed
    if _converged_in_place(rt, message, dequeue_count):
        return
    try:
        result = _coalesced(rt, message, dequeue_count)
        if result is None:
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


# One per process: workers of this process hand a burst's messages to one batch (see `Coalescer`).
_COALESCER = coalesce.Coalescer()


def _coalesced(rt: Runtime, message: AnyMessage, dequeue_count: int) -> SyncResult | None:
    """`message` handled with the same work waiting behind it in bulk (`shared.sync.coalesce`); None
    when it goes alone (nothing waits, another kind, a retry). A Dataverse change with several
    companies is routed one by one, so it goes alone."""
    if not coalesce.coalescable(rt.mappings, message, dequeue_count):
        return None
    assert isinstance(message, SyncMessage)
    if rt.multi_company and message.side == "dv":
        return None
    answers = _COALESCER.handle(rt.engine, _sync_queue(rt), [message])
    if answers is None:
        return None
    [disposition] = answers
    if isinstance(disposition, coalesce.Done):
        return disposition.result
    if isinstance(disposition, coalesce.Requeue):
        raise RequeueError(disposition.message, disposition.delay, "requeued from a coalesced batch")
    raise disposition.error


def _sync_queue(rt: Runtime) -> coalesce.StorageQueue:
    return coalesce.StorageQueue(lambda: rt.storage.queue())


def _converged_in_place(rt: Runtime, message: AnyMessage, dequeue_count: int) -> bool:
    """A batch message converged in bulk on its first delivery: at least `MIN_BURST` changes (a
    webhook call's many) where they are (`coalesce.converge_batch`); fewer (concurrent calls queued
    together) with what else of the burst waits on the queue (`Coalescer`), unless nothing does.
    Fanned out, one message per record: a few changes that are not part of a burst, a batch
    delivered again (the first try failed part way), or Dataverse changes of several companies (each
    routed on its own)."""
    if not isinstance(message, BatchMessage) or dequeue_count > 1:
        return False
    if rt.multi_company and message.side == "dv":
        return False
    if len(message.changes) >= coalesce.MIN_BURST:
        counts = coalesce.converge_batch(rt.engine, message)
    else:
        records = message.records()
        if not all(coalesce.coalescable(rt.mappings, r) for r in records):
            return False
        answers = _COALESCER.handle(rt.engine, _sync_queue(rt), records)
        if answers is None:
            return False
        counts = coalesce.queue_alone(rt.engine, records, answers)
    log.info(
        "batch of %d %s %s changes: %s", len(message.changes), message.mapping, message.side, dict(counts)
    )
    return True


def route(rt: Runtime, message: AnyMessage) -> tuple[Runtime, AnyMessage] | None:
    """The company view that handles `message`, and the message with its company; None when it is
    no configured company's (left alone, logged), or was handed to each company.

    A message names its company, except a Dataverse change (the webhook and the delta poll see only
    the row) and messages queued before there were several companies (the home company's). A
    Dataverse row is the company's that coupled it (a point read per company, no API request), else
    the one its `bcbi_companyid` names (one read), untagged rows the home company's. A change of a
    table shared by all companies (users, currencies) is each company's: one message per company."""
    if message.company is not None:
        if not any(same_company(message.company, c) for c in rt.companies):
            log.warning(
                "%s message for BC company %s, which is no longer in BC_COMPANY_IDS: dropped (its "
                "couplings and journal stay in storage; add the company again to resume)",
                message.mapping, message.company,
            )  # fmt: skip
            return None
        return rt.for_company(message.company), message
    if not rt.multi_company:
        return rt, message
    if isinstance(message, BatchMessage) and message.side == "dv":
        return rt, message  # fans out unscoped: each record is routed on its own
    if message.side == "bc" or not isinstance(message, SyncMessage):
        # BC-side messages without a company, and Dataverse bulk work queued without one, were
        # queued for the home company (before there were several).
        return _for(rt, rt.home_company, message)
    table = rt.mappings.entity(message.mapping).dataverse.table
    if table not in COMPANY_TABLES:
        copies = [message.model_copy(update={"company": c}) for c in rt.companies]
        rt.storage.enqueue(copies)
        return None
    company = _company_of_dataverse_row(rt, message)
    return _for(rt, company, message) if company is not None else None


def _for(rt: Runtime, company: str, message: AnyMessage) -> tuple[Runtime, AnyMessage] | None:
    if not any(same_company(company, c) for c in rt.companies):
        # The home company was removed from the setting: what is its (untagged rows, messages from
        # before there were several) is left alone, as any removed company's.
        log.warning(
            "%s message of BC company %s, which is no longer configured: dropped", message.mapping, company
        )
        return None
    return rt.for_company(company), message.model_copy(update={"company": company})


def _company_of_dataverse_row(rt: Runtime, message: SyncMessage) -> str | None:
    table = rt.mappings.entity(message.mapping).dataverse.table
    # Any mapping of the same table counts: an account is announced to CUSTOMER and VENDOR alike,
    # and the one that did not couple it must not pay a read to learn it is not its.
    names = [m.name for m in rt.mappings.entities() if m.dataverse.table == table]
    for company in rt.companies:
        couplings = rt.for_company(company).couplings
        if any(couplings.get(name, "dv", message.id) is not None for name in names):
            return company
    entity_set = rt.mappings.entity(message.mapping).dataverse.entity_set
    row = rt.dataverse.get(entity_set, message.id, select=[COMPANY_VALUE])
    tag = str((row or {}).get(COMPANY_VALUE) or "").lower()
    if not tag:
        return rt.home_company  # untagged (or gone and never coupled): the home company's
    by_row = {row_id.lower(): company for company, row_id in rt.dataverse_companies().items()}
    if tag not in by_row:
        by_row = {row_id.lower(): company for company, row_id in rt.dataverse_companies(refresh=True).items()}
    owner = by_row.get(tag)
    configured = next((c for c in rt.companies if same_company(c, owner)), None) if owner else None
    if configured is None:
        log.info(
            "%s %s belongs to Dataverse company %s, which no BC company in BC_COMPANY_IDS is: left alone",
            message.mapping, message.id, tag,
        )  # fmt: skip
    return configured


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
