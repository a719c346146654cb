"""Coalesce a burst of one-record changes into bulk requests: one read and one write per 100 records.

A Sales import of 10,000 accounts sends 10,000 webhooks, queued as a `SyncMessage` each or, for
calls that arrived together, a `BatchMessage` of a few (`shared.store.group_commit`); on the
one-record path each change costs a read, a match query, a create and a write-back. When the
processor handles such a message in a burst (other workers of the process busy with the company's
changes, several changes in one message, or the message waited on the queue) and more record
changes of the company wait there, a `Coalescer` claims up to `GATHER_LIMIT` of them (`claim`: a
peek first, then `receive_messages` with a lease long enough for the batch; deletions, retries,
other companies and other kinds are put back visible at once) and `converge` handles each
mapping-and-side group together:

1. couplings: one Table Storage query per partition they fall in (no API request);
2. the changed records in one request per chunk (Dataverse: `$batch` of `In` queries; BC:
   `$filter=id eq ... or id eq ...` within `odata.URL_FILTER_CHARS`);
3. an echo (values equal the coupling's snapshot) stops there, as on the one-record path;
4. the coupled counterparts in one request per chunk, the same way (read, not presumed: one request
   per 100 records buys exact ETags and no 412 round-trips);
5. uncoupled Sales records: their match queries combined per priority (`name eq 'A' or name eq 'B'`,
   and the scope), the rows compared in memory with what each record's own query asks;
6. every pair decided by the pure `reconcile`, exactly as the engine does;
7. updates in one conditional bulk request per side and 100 records (`update_many`: `If-Match` per
   operation, each succeeding or failing alone); creates in BC as `create_many` after a `pending_bc`
   coupling per record (the one-record path's guard against duplicates: a create whose answer was
   lost is adopted on redelivery, never blindly sent again), BC's number back with one `$batch`;
8. couplings saved conditionally on their ETags, one transaction per partition (a conflict retried
   row by row, so it fails alone), journal rows per record.

Whatever does not fit (a lost race, a refusal, a deletion, a conflict, a match, a deferral, a
skipped or pending record) goes through `Engine.sync_record` for that record alone, so the rules
live in one place. Each message gets its own disposition: done (deleted from the queue), requeued
(a copy with a delay, as the processor does for `RequeueError`), or failed (left on the queue, so
it is delivered again on its own and finally poisoned alone); a claimed `BatchMessage` is deleted
once what it holds is done or queued alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from shared import odata, telemetry
from shared.connectors.errors import AmbiguousWriteError, AuthenticationError, RetriableApiError
from shared.mapping.queries import in_scope, match_values, primary_key, scope_filter, select_fields
from shared.mapping.schema import EntityMapping, MappingSet, Side
from shared.mapping.values import by_side, other
from shared.messages import AnyMessage, BatchMessage, MessageDecodeError, SyncMessage, parse_json
from shared.store.couplings import Coupling
from shared.store.journal import JournalEntry
from shared.sync.bulk import Pair, _chunk_lookups
from shared.sync.echoes import ECHO_BY_STAMP, stamped_before_sync
from shared.sync.engine import (
    SETTLING,
    Engine,
    RequeueError,
    SyncResult,
    planned_result,
    requeue_delay,
    settle,
    typed_number,
)
from shared.sync.gateways import Record
from shared.sync.reconcile import Outcome, Plan, change_times, reconcile, take_snapshot
from shared.timestamps import iso_ms

log = logging.getLogger(__name__)

BATCH_LIMIT = 100  # BC's `$batch` holds 100 operations: one write request per 100 records
# Record changes one batch gathers: several write requests' worth, because what a batch costs in
# Table Storage (a query or transaction per partition of the couplings) is shared by all it holds.
GATHER_LIMIT = 300
CLAIM_PAGE = 32  # the most `receive_messages` hands out per call
CLAIM_CALLS = 10  # receive calls per look at most (a queue mixes kinds; a few misses are fine)
# The claimed messages stay invisible this long; each is deleted or put back when its record is done.
# A worker that dies leaves them to come back after it, as the host's own lease does (10 minutes).
CLAIM_LEASE_SECONDS = 300
# How long the worker leading a batch keeps claiming while a burst keeps arriving (it stops when
# `QUIET_LOOKS` looks in a row find nothing new: a change alone, or a few per second, is not held),
# and how often it looks meanwhile. When the service is behind (the leading change waited more than
# `BEHIND_AFTER` on the queue, or the first claim found a full page of changes waiting), it
# gathers up to `BACKLOG_GATHER_SECONDS`: what a batch costs in Table Storage is per partition, so a
# batch of 100 costs little more than a batch of 20, and a service that is behind catches up faster
# with fewer, larger batches (10,000 accounts: 2.8 storage requests each with 2 s, against 3.7).
GATHER_SECONDS = 0.5
BACKLOG_GATHER_SECONDS = 2.0
# Well above what gathering itself makes a change wait: a threshold near it (1 s was) turns steady
# load into a loop, each long gathering making the next change wait long enough to gather long
# (20 changes/s on each side: p50 2.2 s).
BEHIND_AFTER = 5.0
GATHER_STEP = 0.1
QUIET_LOOKS = 2
# When the queue is looked at: this many other workers of the process on the company's changes, or
# the message waited this long since its notification (a backlog).
BUSY_FOR_BURST = 2
WAITED_FOR_BURST = 1.0
# Waiting changes of the same company that make a burst worth a batch: a handful goes the one-record
# way (a batch of 2-3 saves a request or two and reads counterparts the one-record path presumes), so
# an item's two mappings or a person's few edits cost exactly what they cost alone.
MIN_BURST = 8


# ------------------------------------------------------------------------------ dispositions
@dataclass
class Done:
    result: SyncResult


@dataclass
class Requeue:
    message: SyncMessage
    delay: int


@dataclass
class Failed:
    error: BaseException


Disposition = Done | Requeue | Failed


# ------------------------------------------------------------------------------------ claiming
class Claimed(Protocol):
    """A message received from the queue (the SDK's `QueueMessage`)."""

    content: Any
    dequeue_count: int | None


class ClaimQueue(Protocol):
    """What claiming needs of the queue (`azure.storage.queue.QueueClient` through `StorageQueue`)."""

    def peek(self, count: int) -> list[str]: ...
    def receive(self, count: int, lease_seconds: int) -> list[Claimed]: ...
    def delete(self, message: Claimed) -> None: ...
    def release(self, message: Claimed, delay: int) -> None: ...


class StorageQueue:
    """`ClaimQueue` over the sync queue's client (which decodes base64 as the host does), made when
    first used: a change that is not coalescable costs no client."""

    def __init__(self, client: Callable[[], Any]) -> None:
        self._make, self._client = client, None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make()
        return self._client

    def peek(self, count: int) -> list[str]:
        return [str(m.content) for m in self.client.peek_messages(max_messages=count)]

    def receive(self, count: int, lease_seconds: int) -> list[Claimed]:
        # `messages_per_page` is what one request asks for; without it the SDK asks for one message.
        received = self.client.receive_messages(
            messages_per_page=count, max_messages=count, visibility_timeout=lease_seconds
        )
        return list(next(received.by_page(), []))

    def delete(self, message: Claimed) -> None:
        self.client.delete_message(message)

    def release(self, message: Claimed, delay: int) -> None:
        self.client.update_message(message, visibility_timeout=delay)


def coalescable(ms: MappingSet, message: AnyMessage, dequeue_count: int = 1) -> bool:
    """Whether `message` may start or join a batch: a first attempt at a plain record change (not a
    deletion, not a document with lines). A message delivered before is retried alone."""
    if not isinstance(message, SyncMessage) or dequeue_count > 1 or message.attempt > 0:
        return False
    if message.change == "deleted" or message.mapping not in {m.name for m in ms.entities()}:
        return False
    return ms.entity(message.mapping).lines is None


def same_work(first: SyncMessage, other_message: AnyMessage) -> bool:
    """Whether `other_message` may join `first`'s batch: a first attempt at record changes of the same
    company, of any mapping and side (an account is announced to CUSTOMER and VENDOR, and our writes
    come back as the other side's echoes: a batch takes them all, grouped by mapping and side). A
    `BatchMessage` (concurrent webhook calls queued together) joins with all its changes, unless one
    is a deletion."""
    if not isinstance(other_message, (SyncMessage, BatchMessage)):
        return False
    if other_message.company != first.company or other_message.attempt != 0:
        return False
    if isinstance(other_message, BatchMessage):
        return all(c.change != "deleted" for c in other_message.changes)
    return other_message.change != "deleted"


def records_of(message: AnyMessage) -> list[SyncMessage]:
    """The record changes a queue message carries (none for bulk work)."""
    if isinstance(message, BatchMessage):
        return message.records()
    return [message] if isinstance(message, SyncMessage) else []


def _parsed(content: Any) -> AnyMessage | None:
    try:
        return parse_json(content if isinstance(content, (str, bytes)) else str(content))
    except MessageDecodeError:
        return None


@dataclass
class Taken:
    """A message claimed from the queue, with the record changes it carries."""

    raw: Claimed
    records: list[SyncMessage]
    batch: bool  # a `BatchMessage`: settled by queueing what is not done alone, then deleted


def claim(queue: ClaimQueue, first: SyncMessage, limit: int = GATHER_LIMIT - 1) -> list[Taken]:
    """Waiting messages of the same work as `first`, up to `limit` record changes (a batch message
    may pass it by its size), held for `CLAIM_LEASE_SECONDS`.

    A peek (which changes nothing) decides whether to claim at all. What was received but is other
    work, or was delivered before (it is retried alone), is put back visible at once."""
    if not any((m := _parsed(text)) is not None and same_work(first, m) for text in queue.peek(CLAIM_PAGE)):
        return []
    taken: list[Taken] = []
    count = 0
    for _ in range(CLAIM_CALLS):
        want = min(CLAIM_PAGE, limit - count)
        if want <= 0:
            break
        received = queue.receive(want, CLAIM_LEASE_SECONDS)
        misses = 0
        for raw in received:
            message = _parsed(raw.content)
            if message is not None and same_work(first, message) and (raw.dequeue_count or 1) <= 1:
                # A second notice of one record is settled with it.
                taken.append(Taken(raw, records_of(message), isinstance(message, BatchMessage)))
                count += len(taken[-1].records)
            else:
                misses += 1
                _release(queue, raw, 0)
        if len(received) < want or misses * 2 > len(received):
            break  # the queue is drained, or mostly holds other work: stop claiming
    return taken


def _release(queue: ClaimQueue, raw: Claimed, delay: int) -> None:
    try:
        queue.release(raw, delay)
    except Exception as exc:  # it comes back when its lease ends anyway
        log.warning("could not put a claimed message back (%s); it returns after its lease", exc)


def settle_claimed(
    engine: Engine, queue: ClaimQueue, claimed: Sequence[Taken], dispositions: Sequence[list[Disposition]]
) -> None:
    """Per claimed message: delete what is done, requeue what asked for it. A failed record change
    that came alone is left to be delivered again alone; one of a batch message is queued alone
    (`queue_alone`) and the batch deleted."""
    for taken, answers in zip(claimed, dispositions, strict=True):
        if taken.batch:
            try:
                queue_alone(engine, taken.records, answers)
            except Exception as exc:  # delivered again and fanned out: done records look like echoes
                log.warning("could not queue a claimed batch's unfinished changes (%s); it comes back", exc)
                _release(queue, taken.raw, requeue_delay(1))
                continue
        else:
            [disposition] = answers
            if isinstance(disposition, Requeue):
                engine.enqueue([disposition.message], disposition.delay)
            if isinstance(disposition, Failed):
                # Back after the host's visibility timeout, delivered on its own (dequeue count 2 or
                # more never joins a batch), and poisoned alone after maxDequeueCount deliveries.
                _release(queue, taken.raw, requeue_delay(1))
                continue
        try:
            queue.delete(taken.raw)
        except Exception as exc:  # handled again on redelivery: harmless, the second look is an echo
            log.warning("could not delete a handled message (%s); it is handled again", exc)


def queue_alone(
    engine: Engine, records: Sequence[SyncMessage], dispositions: Sequence[Disposition]
) -> Counter[str]:
    """Settle record changes that arrived together in one queue message: count what is done, and
    queue the rest one message per record: a requeue with the delay it asked for, a failure as a
    next attempt after the first retry's delay (so it is retried, and finally poisoned, on its own).
    Raises if the queue refuses: the message is then delivered again."""
    counts: Counter[str] = Counter()
    later: dict[int, list[SyncMessage]] = {}
    for record, d in zip(records, dispositions, strict=True):
        if isinstance(d, Done):
            counts[str(d.result.outcome)] += 1
            _count(record, d, str(d.result.outcome))
        elif isinstance(d, Requeue):
            later.setdefault(d.delay, []).append(d.message)
        else:
            retry = record.model_copy(update={"attempt": record.attempt + 1})
            later.setdefault(requeue_delay(1), []).append(retry)
    for delay, messages in sorted(later.items()):
        engine.enqueue(messages, delay)
    counts["queued alone"] = sum(len(m) for m in later.values())
    return counts


# --------------------------------------------------------------------------------- converging
@dataclass
class _Item:
    index: int
    message: SyncMessage
    coupling: Coupling | None
    source: Record | None = None
    counterpart: Record | None = None
    plan: Plan | None = None
    follow: Plan | None = None  # after a BC create: what BC filled in itself, back to Dataverse
    after: dict[str, Record | None] = field(default_factory=dict)


Alone = Callable[[Engine, SyncMessage], Disposition]


def converge(
    engine: Engine, messages: Sequence[SyncMessage], alone: Alone | None = None
) -> list[Disposition]:
    """Converge the records of `messages` (one mapping, one side, distinct ids) with bulk requests;
    one disposition per message, in order. Never raises for one record's sake. A record that needs
    the one-record path goes `alone` (default: `one_by_one`, here and now)."""
    m = engine.ms.entity(messages[0].mapping)
    side: Side = messages[0].side
    before = engine.requests_in_this_thread()
    out: list[Disposition | None] = [None] * len(messages)
    single: list[int] = []
    entries: list[JournalEntry] = []
    bulk_done: list[int] = []

    def finish(item: _Item, result: SyncResult) -> None:
        out[item.index] = Done(result)
        bulk_done.append(item.index)

    # 1. couplings (Table Storage: a query per partition, not a point read per record)
    ids = [message.id for message in messages]
    known = engine.couplings.get_many(m.name, side, ids)
    elsewhere = engine.coupled_elsewhere(m, side, [i for i in ids if i not in known])
    items: list[_Item] = []
    for index, message in enumerate(messages):
        coupling = known.get(message.id)
        if stamped_before_sync(message, coupling):
            assert coupling is not None
            finish(_Item(index, message, coupling), SyncResult(Outcome.UNCHANGED, ECHO_BY_STAMP,
                                                               coupling.bc_id, coupling.dv_id))  # fmt: skip
        elif coupling is not None and (coupling.skipped or coupling.state != "coupled"):
            single.append(index)  # skipped, or a BC create pending: the one-record path's rules
        elif coupling is None and message.id in elsewhere:
            # Not this mapping's record (an account is announced to CUSTOMER and VENDOR alike): what
            # the one-record path says, without its reads.
            finish(
                _Item(index, message, None),
                SyncResult(Outcome.SKIPPED, f"coupled under {elsewhere[message.id]}"),
            )
        else:
            items.append(_Item(index, message, coupling))

    # 2. the changed records
    found = read_by_ids(engine, m, side, [i.message.id for i in items])
    waiting: list[_Item] = []
    for item in items:
        item.source = found.get(item.message.id.lower())
        if item.source is None:
            single.append(item.index)  # deleted, or gone out of reach: decided one by one
        else:
            waiting.append(item)

    # 3. echoes, and what the one-record path decides before any merge
    coupled: list[_Item] = []
    uncoupled: list[_Item] = []
    for item in waiting:
        c, source = item.coupling, item.source
        assert source is not None
        if c is not None:
            if side == "dv" and engine._number_cleared(m, c, source):
                single.append(item.index)
            elif engine._is_echo(m, c, side, source):
                why = f"{side} values equal the last synced snapshot (echo)"
                finish(item, SyncResult(Outcome.UNCHANGED, why, c.bc_id, c.dv_id))
            else:
                coupled.append(item)
        elif not in_scope(m, side, source):
            # Before any match query, as on the one-record path: a customer's account is also
            # announced to VENDOR.
            why = f"{side} record is out of scope ({scope_filter(m, side)})"
            finish(item, SyncResult(Outcome.SKIPPED, why))
        elif side == "bc" or typed_number(m, side, source) is not None:
            single.append(item.index)  # Dataverse creates and typed numbers: the one-record path
        else:
            uncoupled.append(item)

    # 4. the coupled counterparts
    other_side = other(side)
    other_ids = [
        str(i.coupling.id_on(other_side)) for i in coupled if i.coupling and i.coupling.id_on(other_side)
    ]
    counterparts = read_by_ids(engine, m, other_side, other_ids)
    ready: list[_Item] = []
    for item in coupled:
        assert item.coupling is not None
        item.counterpart = counterparts.get(str(item.coupling.id_on(other_side) or "").lower())
        if item.counterpart is None:
            single.append(item.index)  # deleted or out of scope: the one-record path tells which
        else:
            ready.append(item)

    lookups = _chunk_lookups(
        engine, m, [Pair(i.coupling, *by_side(side, i.source, i.counterpart)) for i in [*ready, *uncoupled]]
    )
    # 5. matches for uncoupled records: any candidate sends the record down the one-record path
    matched = _with_candidates(engine, m, side, uncoupled, lookups)
    creates: list[_Item] = []
    for item in uncoupled:
        if item.index in matched:
            single.append(item.index)
            continue
        bc, dv = by_side(side, item.source, None)
        item.plan = reconcile(engine.ms, m, snapshot=None, bc=bc, dv=dv, lookups=lookups, candidates=[],
                              id_scope=engine.couplings.scope)  # fmt: skip
        if _is_plain_bc_create(item.plan):
            creates.append(item)
        else:
            single.append(item.index)

    # 6. decide the coupled pairs as the engine does
    updates: list[_Item] = []
    for item in ready:
        c = item.coupling
        assert c is not None
        bc, dv = by_side(side, item.source, item.counterpart)
        c.seen = engine._observed(m, c, bc, dv)
        item.plan = reconcile(engine.ms, m, snapshot=c.snapshot, bc=bc, dv=dv, lookups=lookups,
                              changed_at=change_times(c.seen))  # fmt: skip
        if _is_plain_update(item.plan):
            updates.append(item)
        else:
            single.append(item.index)

    # 7. writes
    try:
        single += _write_updates(engine, m, side, updates)
        single += _write_creates(engine, m, creates, out)
    except AuthenticationError as exc:
        # Our credentials, not a record's: every record would fail; each message goes back.
        return [d if d is not None and i in bulk_done else Failed(exc) for i, d in enumerate(out)]
    written = [item for item in updates if item.index not in single]
    for item, result in zip(written, _store_updates(engine, m, written), strict=True):
        if result is None:
            single.append(item.index)  # the coupling changed meanwhile: decide again alone
        else:
            finish(item, result)
    created = [item for item in creates if out[item.index] is None and item.index not in single]
    for item, result in zip(created, _store_creates(engine, m, created), strict=True):
        finish(item, result)

    # 8. journal, one row per record; the batch's requests shared out among them
    cost = engine.requests_in_this_thread() - before
    share = round(cost / max(1, len(bulk_done)))
    for index in bulk_done:
        done = out[index]
        assert isinstance(done, Done)
        entries.append(engine.journal_entry(m, messages[index], done.result, share))
    try:
        engine.journal.record_many(entries)
    except Exception:
        log.exception("could not write %d journal entries of a coalesced batch", len(entries))

    for index in sorted(set(single)):
        if out[index] is None:
            out[index] = (alone or one_by_one)(engine, messages[index])
    return [d if d is not None else Failed(RuntimeError("not decided")) for d in out]


def one_by_one(engine: Engine, message: SyncMessage) -> Disposition:
    """The one-record path for one message, its outcome as a disposition (never raising)."""
    try:
        return Done(engine.sync_record(message))
    except RequeueError as requeue:
        assert isinstance(requeue.message, SyncMessage)
        return Requeue(requeue.message, requeue.delay)
    except Exception as exc:  # journaled by the engine; this message alone is delivered again
        log.warning(
            "%s %s:%s failed in a coalesced batch: %s", message.mapping, message.side, message.id, exc
        )
        return Failed(exc)


def _is_plain_update(plan: Plan) -> bool:
    """What the bulk write carries out itself: updates only, on a pair that stays coupled."""
    if plan.outcome not in (Outcome.UNCHANGED, Outcome.MODIFIED) or plan.uncouple or plan.couple_with:
        return False
    return all(w.kind == "update" for w in plan.writes)


def _is_plain_bc_create(plan: Plan) -> bool:
    return (
        plan.outcome == Outcome.INSERTED
        and plan.bc_write is not None
        and plan.bc_write.kind == "create"
        and plan.dv_write is None
        and plan.couple_with is None
    )


# ---------------------------------------------------------------------------------- reading
def read_by_ids(engine: Engine, m: EntityMapping, side: Side, ids: Sequence[str]) -> dict[str, Record]:
    """Records by id, keyed by lower-case id, with the side's `read_many` (Dataverse: one `$batch` of
    `In` queries; BC: `id eq ... or ...` filters within `odata.URL_FILTER_CHARS`)."""
    if not ids:
        return {}
    rows = engine.sides[side].read_many(m, list(ids), select=select_fields(engine.ms, m, side))
    pk = primary_key(m, side)
    return {str(row[pk]).lower(): row for row in rows}


def _with_candidates(
    engine: Engine, m: EntityMapping, side: Side, items: Sequence[_Item], lookups: Any
) -> set[int]:
    """The items some counterpart may match, asked with one query per match priority and chunk (the
    chunks of a priority sent together: `query_many`).

    The one-record path asks each record's priorities in order and stops at the first that finds
    rows; here each priority is asked for the records no earlier priority matched, with the values
    of a one-field priority joined by `or` (BC allows `or` on one field only). A record with a
    several-field priority is treated as matched: the one-record path asks its own queries."""
    target = other(side)
    select = select_fields(engine.ms, m, target)
    scope = scope_filter(m, target)
    wanted: dict[int, dict[int, tuple[str, Any]]] = {}  # priority -> item index -> (field, value)
    matched: set[int] = set()
    for item in items:
        assert item.source is not None
        for priority, pairs in match_values(engine.ms, m, item.source, side, lookups):
            if len(pairs) != 1:
                matched.add(item.index)
                break
            wanted.setdefault(priority, {})[item.index] = pairs[0]
    for priority in sorted(wanted):
        asked = {index: pair for index, pair in wanted[priority].items() if index not in matched}
        by_field: dict[str, dict[int, Any]] = {}
        for index, (name, value) in asked.items():
            by_field.setdefault(name, {})[index] = value
        for name, values in by_field.items():
            distinct = list(dict.fromkeys(values.values()))
            filters = [
                odata.and_(f"({odata.or_(*part)})" if len(part) > 1 else part[0], *([scope] if scope else []))
                for part in odata.or_chunks([odata.eq(name, v) for v in distinct])
            ]
            rows = engine.sides[target].query_many(m, filters, select=select)
            present = {_match_key(row.get(name)) for row in rows}
            matched.update(index for index, value in values.items() if _match_key(value) in present)
    return matched


def _match_key(value: Any) -> Any:
    # Both services compare text case-insensitively in `$filter` (BC's and Dataverse's default collation).
    return str(value).casefold() if value is not None else None


# ---------------------------------------------------------------------------------- writing
def _write_updates(engine: Engine, m: EntityMapping, source_side: Side, items: Sequence[_Item]) -> list[int]:
    """Conditional updates in bulk on each side; the indexes whose write was refused (412, 404, a
    validation error, a throttled operation), which the one-record path decides again alone."""
    refused: list[int] = []
    for side, gateway in engine.sides.items():
        work = [
            (item, current, write.body)
            for item in items
            if item.index not in refused
            for write, current in [(item.plan.write_on(side) if item.plan else None,
                                    _on(item, source_side, side))]
            if write is not None and current is not None
        ]  # fmt: skip
        for start in range(0, len(work), BATCH_LIMIT):
            part = work[start : start + BATCH_LIMIT]
            answers = gateway.update_many(
                m, [(current, body) for _, current, body in part], select=select_fields(engine.ms, m, side)
            )
            for (item, _, _), answer in zip(part, answers, strict=True):
                if answer.ok:
                    item.after[side] = answer.record
                    if side == "bc":
                        engine.bc_written(m, answer.record)
                else:
                    if isinstance(answer.error, AuthenticationError):
                        raise answer.error
                    refused.append(item.index)
    return refused


def _on(item: _Item, source_side: Side, side: Side) -> Record | None:
    return item.source if side == source_side else item.counterpart


def _store_updates(engine: Engine, m: EntityMapping, items: Sequence[_Item]) -> list[SyncResult | None]:
    """Save the couplings as the engine does after a write, conditional on their ETags, in one
    transaction per partition (`update_many`); None for one that changed meanwhile."""
    couplings: list[Coupling] = []
    planned: list[tuple[SyncResult, bool]] = []  # each record's result, and whether it had failed before
    for item in items:
        c, plan = item.coupling, item.plan
        assert c is not None and plan is not None
        bc, dv = by_side(item.message.side, item.source, item.counterpart)
        planned.append((planned_result(plan, c.bc_id, c.dv_id, bc, dv), bool(c.last_error)))
        bc_after, dv_after = item.after.get("bc", bc), item.after.get("dv", dv)
        c.seen = engine._observed(m, c, bc_after, dv_after)
        snapshot = take_snapshot(engine.ms, m, bc_after, dv_after)
        couplings.append(settle(m, c, str(c.bc_id), str(c.dv_id), bc_after, dv_after, snapshot, plan.outcome))
    results: list[SyncResult | None] = []
    for item, saved, (result, had_error) in zip(
        items, engine.couplings.update_many(couplings), planned, strict=True
    ):
        if isinstance(saved, Exception):
            results.append(None)
            continue
        if had_error:
            engine._local.had_error = True
            engine._show_status(m, item.message, result)
        results.append(result)
    return results


def _write_creates(
    engine: Engine, m: EntityMapping, items: Sequence[_Item], out: list[Disposition | None]
) -> list[int]:
    """BC creates in bulk, guarded as the one-record path guards one: a `pending_bc` coupling per
    record first, so a create whose answer is lost is adopted on redelivery, never sent twice."""
    if not items:
        return []
    single: list[int] = []
    now = iso_ms(engine.clock())
    pending: list[Coupling] = []
    for item in items:
        assert item.plan is not None and item.source is not None
        c = Coupling(m.name, None, str(item.source[m.dataverse.primary_key]))
        c.state, c.pending_since, c.snapshot, c.last_result = "pending_bc", now, item.plan.snapshot, "pending"
        pending.append(c)
    stored = engine.couplings.create_many(pending)
    guarded: list[tuple[_Item, Coupling]] = []
    for item, row in zip(items, stored, strict=True):
        if isinstance(row, Exception):
            single.append(item.index)  # coupled or pending meanwhile: decided alone
        else:
            guarded.append((item, row))
    for start in range(0, len(guarded), BATCH_LIMIT):
        part = guarded[start : start + BATCH_LIMIT]
        bodies = [item.plan.bc_write.body for item, _ in part if item.plan and item.plan.bc_write]
        try:
            answers = engine.bc.create_many(m, bodies, select=select_fields(engine.ms, m, "bc"))
        except AmbiguousWriteError as exc:
            # May have landed: the pending rows stay, and each message is retried after the create
            # grace, when the one-record path adopts the record or creates it (see the engine).
            for item, _ in part:
                out[item.index] = Requeue(
                    item.message.model_copy(update={"attempt": 1}), requeue_delay(1, exc)
                )
            continue
        except RetriableApiError as exc:
            # Not sent (throttled, refused before it reached BC): nothing was created.
            _drop_pending(engine, [row for _, row in part])
            for item, _ in part:
                out[item.index] = Requeue(
                    item.message.model_copy(update={"attempt": 1}), requeue_delay(1, exc)
                )
            continue
        for (item, row), answer in zip(part, answers, strict=True):
            if answer.ok and answer.record is not None:
                item.after["bc"] = answer.record
                engine.bc_written(m, answer.record)
                item.coupling = row
            else:
                if isinstance(answer.error, AuthenticationError):
                    raise answer.error
                # BC refused this one (a validation error, a throttled operation): nothing created.
                _drop_pending(engine, [row])
                single.append(item.index)
    # BC's own values (its number, the card link) back to Dataverse in one `$batch` per 100.
    follow: list[_Item] = []
    made = [item for item, _ in guarded if item.after.get("bc") is not None and item.coupling is not None]
    # What the created records refer to, each distinct key resolved once (not once per record).
    lookups = _chunk_lookups(engine, m, [Pair(i.coupling, i.after["bc"], i.source) for i in made])
    for item in made:
        created = item.after["bc"]
        assert item.coupling is not None and created is not None
        planned = item.coupling.snapshot or take_snapshot(engine.ms, m, created, item.source)
        item.follow = reconcile(engine.ms, m, snapshot=planned, bc=created, dv=item.source, lookups=lookups)
        if item.follow.dv_write is not None and item.follow.dv_write.kind == "update":
            follow.append(item)
    for start in range(0, len(follow), BATCH_LIMIT):
        back = follow[start : start + BATCH_LIMIT]
        changes = [
            (i.source, i.follow.dv_write.body) for i in back if i.source and i.follow and i.follow.dv_write
        ]
        answers = engine.dv.update_many(m, changes, select=select_fields(engine.ms, m, "dv"))
        for one, answer in zip(back, answers, strict=True):
            if answer.ok:
                one.after["dv"] = answer.record
    return single


def _requeue(message: SyncMessage, error: RetriableApiError) -> Requeue:
    return Requeue(message.model_copy(update={"attempt": message.attempt + 1}), requeue_delay(1, error))


def _drop_pending(engine: Engine, rows: Sequence[Coupling]) -> None:
    for row in rows:
        try:
            engine.couplings.delete(row)
        except Exception as exc:  # a stale pending row only makes the next attempt look for an adoptee
            log.warning("could not delete a pending coupling: %s", exc)


def _store_creates(engine: Engine, m: EntityMapping, items: Sequence[_Item]) -> list[SyncResult]:
    """Couple the Sales records with the BC records created for them (as `Engine._settle_bc_create`),
    the couplings stored in bulk (`couple_many`): settled when BC's own values are back in Dataverse,
    else `SETTLING` for the next sync to finish."""
    couplings: list[Coupling] = []
    results: list[SyncResult] = []
    for item in items:
        pending, created, dv = item.coupling, item.after.get("bc"), item.source
        assert pending is not None and created is not None and dv is not None and pending.dv_id is not None
        planned = pending.snapshot or take_snapshot(engine.ms, m, created, dv)
        written = item.after.get("dv")
        back = item.follow.dv_write if item.follow is not None else None
        dv_after = written if written is not None else dv
        if back is not None and written is None:
            snapshot, stored_as = planned, SETTLING  # the write-back failed: the next sync finishes it
        else:
            snapshot, stored_as = take_snapshot(engine.ms, m, created, dv_after), Outcome.INSERTED
        bc_id = str(created["id"])
        couplings.append(settle(m, pending, bc_id, pending.dv_id, created, dv_after, snapshot, stored_as))
        assert item.plan is not None
        result = planned_result(item.plan, bc_id, pending.dv_id, None, dv)
        changes = [*result.changes, *(item.follow.changes if item.follow is not None and written else ())]
        fields = sorted({*planned.get("bc", {}), *(back.fields if back is not None and written else ())})
        results.append(replace(result, fields=fields, changes=changes))
    for c, saved in zip(couplings, engine.couplings.couple_many(couplings), strict=True):
        if isinstance(saved, Exception):
            # The BC record exists either way: the next sync of the pair settles the coupling.
            log.info("%s %s: coupling not stored (%s); the next sync settles it", m.name, c.dv_id, saved)
    return results


# ------------------------------------------------------------------------------------ shell
Key = str | None  # the company: one batch gathers per company and process


@dataclass
class _Gathering:
    """A batch being gathered by its leader: the record changes other workers of this process handed
    over (each waiting on its future) besides the leader's own."""

    followers: list[tuple[list[SyncMessage], Future[list[Disposition]]]] = field(default_factory=list)

    def size(self) -> int:
        return sum(len(records) for records, _ in self.followers)


class Coalescer:
    """Per process: at most one batch of each company gathers at a time.

    The host runs several messages at once (16 + 8 per instance), so a burst reaches many workers
    together and, each claiming alone, they would split it into batches of a few. Instead the first
    worker that sees a burst (more of the same work visible on the queue, or another worker of this
    process busy with it) leads: it claims from the queue for up to `gather_seconds` (or until the
    batch is full), and workers arriving meanwhile hand their own record changes to it and wait for
    their outcome. A change that arrives alone (nothing visible, nobody busy) is not delayed: the
    caller takes the one-record path after one peek."""

    def __init__(
        self,
        gather_seconds: float = GATHER_SECONDS,
        backlog_gather_seconds: float = BACKLOG_GATHER_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        eager: bool = False,
        min_burst: int = MIN_BURST,
    ) -> None:
        """`eager`: look at the queue for every message (tools and tests), not only when a burst shows,
        and take any change of the same work found there; `min_burst`: otherwise, the changes of the
        same work that must be waiting for a batch."""
        self.gather_seconds, self.sleep, self.clock, self.eager = gather_seconds, sleep, clock, eager
        self.backlog_gather_seconds = max(gather_seconds, backlog_gather_seconds)
        self.min_burst = 1 if eager else min_burst
        self._lock = threading.Lock()
        self._busy: dict[Key, int] = {}
        self._open: dict[Key, _Gathering] = {}

    def handle(
        self, engine: Engine, queue: ClaimQueue, lead: Sequence[SyncMessage]
    ) -> list[Disposition] | None:
        """The dispositions of `lead` (the record changes of one delivery, of one company) after a
        coalesced batch; None: take the one-record path. The caller has checked `coalescable`."""
        first = lead[0]
        key: Key = first.company
        with self._lock:
            gathering = self._open.get(key)
            if gathering is not None and gathering.size() + len(lead) < GATHER_LIMIT:
                handed: Future[list[Disposition]] | None = Future()
                gathering.followers.append((list(lead), handed))  # type: ignore[arg-type]
            else:
                handed = None
                self._busy[key] = self._busy.get(key, 0) + 1
                busy = self._busy[key] - 1  # other workers of this process on the company's changes
        if handed is not None:
            return handed.result()
        try:
            # A burst shows as other workers of this process busy with the same company's changes, as
            # webhook calls queued together, or as this message having waited on the queue; otherwise
            # not even the queue is asked (a peek is a storage round-trip, and a change alone must
            # not wait for it).
            waited = (dt.datetime.now(dt.UTC) - first.observed).total_seconds()
            suspect = self.eager or busy >= BUSY_FOR_BURST or len(lead) > 1 or waited > WAITED_FOR_BURST
            # Webhook calls that arrived together are a burst already: anything of it waiting will do.
            # With other workers of this process busy with batches, the burst's changes are in this
            # process's hands more than on the queue (the host fetched them): lead, and the workers
            # that bring them next hand them over instead of each taking the one-record path.
            wanted = self.min_burst if len(lead) == 1 else 1
            if not suspect or (busy < BUSY_FOR_BURST and not _burst_visible(queue, first, wanted)):
                return None
            return self._lead(engine, queue, list(lead), key, behind=waited > BEHIND_AFTER)
        finally:
            with self._lock:
                self._busy[key] -= 1

    def _lead(
        self, engine: Engine, queue: ClaimQueue, lead: list[SyncMessage], key: Key, *, behind: bool = False
    ) -> list[Disposition] | None:
        """`behind`: the leading change waited on the queue (the service is behind), or the first claim
        finds a full page waiting: gather up to `backlog_gather_seconds`."""
        gathering = _Gathering()
        with self._lock:
            self._open[key] = gathering
        claimed: list[Taken] = []
        try:
            started = self.clock()
            gathered, quiet = -1, 0
            while True:
                with self._lock:
                    now_gathered = gathering.size() + sum(len(t.records) for t in claimed)
                room = GATHER_LIMIT - len(lead) - now_gathered
                if room > 0:
                    try:
                        got = claim(queue, lead[0], room)
                    except Exception as exc:  # storage trouble: go with what is gathered
                        log.warning("could not claim waiting messages (%s)", exc)
                        break
                    if gathered < 0 and sum(len(t.records) for t in got) >= CLAIM_PAGE:
                        behind = True  # a full page was waiting
                    claimed += got
                with self._lock:
                    now_gathered = gathering.size() + sum(len(t.records) for t in claimed)
                # Full, out of time, or nothing new for `QUIET_LOOKS` looks: the burst has stopped
                # arriving (or never was: nothing at the first look, and the change goes alone at
                # once). A burst that keeps arriving is gathered, even when its webhooks come in
                # unevenly; changes at a steady few per second are not held.
                quiet = quiet + 1 if now_gathered == max(gathered, 0) else 0
                deadline = started + (self.backlog_gather_seconds if behind else self.gather_seconds)
                if room <= 0 or self.clock() >= deadline or now_gathered == 0 or quiet >= QUIET_LOOKS:
                    break
                gathered = now_gathered
                self.sleep(GATHER_STEP)
        finally:
            with self._lock:
                if self._open.get(key) is gathering:
                    del self._open[key]
                followers = list(gathering.followers)
        if not claimed and not followers:
            return None  # the burst went to other workers meanwhile: this one goes alone
        return _run_batch(engine, queue, lead, followers, claimed)


def _burst_visible(queue: ClaimQueue, first: SyncMessage, min_burst: int) -> bool:
    """Whether at least `min_burst` record changes of the same work wait on the queue."""
    if min_burst <= 0:
        return True
    try:
        alike = sum(
            len(records_of(m))
            for text in queue.peek(CLAIM_PAGE)
            if (m := _parsed(text)) is not None and same_work(first, m)
        )
        return alike >= min_burst
    except Exception as exc:  # storage trouble: the one-record path still works
        log.warning("could not peek at the queue (%s); handling %s alone", exc, first.id)
        return False


def _run_batch(
    engine: Engine,
    queue: ClaimQueue,
    lead: list[SyncMessage],
    followers: Sequence[tuple[list[SyncMessage], Future[list[Disposition]]]],
    claimed: Sequence[Taken],
) -> list[Disposition]:
    # One entry per record: a record notified twice is read once, and its messages share its outcome.
    position: dict[tuple[str, str, str], int] = {}
    records: list[SyncMessage] = []
    for m in [*lead, *(r for f, _ in followers for r in f), *(r for t in claimed for r in t.records)]:
        if _record(m) not in position:
            position[_record(m)] = len(records)
            records.append(m)
    dispositions = _converge_groups(engine, records)
    answered: set[int] = set()
    mine = _answers(lead, position, dispositions, answered)
    for own, future in followers:
        future.set_result(_answers(own, position, dispositions, answered))
    settle_claimed(
        engine, queue, claimed, [_answers(t.records, position, dispositions, answered) for t in claimed]
    )
    counts: Counter[str] = Counter()
    handed = {id(r) for r in lead} | {id(r) for f, _ in followers for r in f}
    for m, d in zip(records, dispositions, strict=True):
        outcome = str(d.result.outcome) if isinstance(d, Done) else type(d).__name__.lower()
        counts[outcome] += 1
        if id(m) not in handed:  # the processor counts the deliveries it was given
            _count(m, d, outcome)
    log.info("coalesced %d changes: %s", len(records), dict(counts))
    return mine


def _answers(
    own: Sequence[SyncMessage],
    position: dict[tuple[str, str, str], int],
    dispositions: list[Disposition],
    answered: set[int],
) -> list[Disposition]:
    """The dispositions of one delivery's record changes: each record's, except that a second notice
    of a record already answered is only done (its record's requeue is queued once, by the first)."""
    out: list[Disposition] = []
    for m in own:
        index = position[_record(m)]
        d = dispositions[index]
        if index in answered and not isinstance(d, Failed):
            d = Done(SyncResult("duplicate", "a second notice of the record"))
        answered.add(index)
        out.append(d)
    return out


def _count(message: SyncMessage, disposition: Disposition, outcome: str) -> None:
    """The metrics the processor records for a message it handles, for one handled in a batch."""
    telemetry.count("bcsync.changes", mapping=message.mapping, outcome=outcome)
    if isinstance(disposition, Done) and disposition.result.changes:
        latency = telemetry.seconds_since(message.observed)
        telemetry.record("bcsync.sync.latency", latency, mapping=message.mapping)


def _record(message: SyncMessage) -> tuple[str, str, str]:
    return message.mapping, message.side, message.id.lower()


def _converge_groups(
    engine: Engine, messages: Sequence[SyncMessage], alone: Alone | None = None
) -> list[Disposition]:
    """`converge` per mapping and side, in chunks of `GATHER_LIMIT`; a document mapping's records (and
    an unknown mapping's) one by one. A chunk whose bulk step fails (storage, a request the chunk
    shared) fails alone."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, m in enumerate(messages):
        groups.setdefault((m.mapping, m.side), []).append(index)
    out: list[Disposition | None] = [None] * len(messages)
    for (mapping, side), indexes in groups.items():
        for start in range(0, len(indexes), GATHER_LIMIT):
            chunk = indexes[start : start + GATHER_LIMIT]
            group = [messages[i] for i in chunk]
            if not coalescable(engine.ms, group[0]):
                answers = [(alone or one_by_one)(engine, m) for m in group]
            else:
                try:
                    answers = converge(engine, group, alone)
                except Exception as exc:
                    log.warning("coalesced batch of %d %s %s failed: %s", len(group), mapping, side, exc)
                    answers = [Failed(exc) for _ in group]
            for i, answer in zip(chunk, answers, strict=True):
                out[i] = answer
    return [d if d is not None else Failed(RuntimeError("not decided")) for d in out]


def converge_batch(engine: Engine, batch: BatchMessage) -> Counter[str]:
    """A webhook call's many changes (a `BatchMessage` on its first delivery) converged in bulk where
    they are, instead of fanned out into one queue message per record: for a burst of echoes (BC
    announcing the records the service just created) that saves an enqueue, a receive and a delete
    per record. What needs the one-record path (a deletion, a create on the other side, a conflict,
    a document) is queued alone, as the fan-out queued everything; a record the batch could not
    finish is queued alone too (`queue_alone`). Outcomes by count, for the log."""
    records: dict[tuple[str, str, str], SyncMessage] = {}
    for record in batch.records():  # one look per record; a deletion wins, as when packing
        if record.change == "deleted" or _record(record) not in records:
            records[_record(record)] = record
    together = [r for r in records.values() if coalescable(engine.ms, r)]
    apart = [r for r in records.values() if not coalescable(engine.ms, r)]
    dispositions = [*_converge_groups(engine, together, _queued_alone), *(Requeue(r, 0) for r in apart)]
    return queue_alone(engine, [*together, *apart], dispositions)


def _queued_alone(engine: Engine, message: SyncMessage) -> Disposition:
    """For `converge_batch`: the one-record path through the queue, where the host runs many at once."""
    return Requeue(message, 0)


def run(engine: Engine, queue: ClaimQueue, message: SyncMessage) -> Disposition | None:
    """`message` with whatever of the same work is visible on the queue now, without gathering or
    handing over (tests, tools); None when nothing waits."""
    answers = Coalescer(gather_seconds=0.0, eager=True).handle(engine, queue, [message])
    return answers[0] if answers is not None else None
