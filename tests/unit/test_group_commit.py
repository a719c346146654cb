"""Group commit of webhook calls (shared/store/group_commit.py): a call alone is sent at once; calls
arriving during a send go next, together, packed; each call learns exactly which of its own
messages were stored."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence

import pytest

from shared.messages import AnyMessage, BatchMessage, SyncMessage
from shared.store.errors import EnqueueError
from shared.store.group_commit import GroupCommit

ACCOUNT = "CUSTOMER"


def change(n: int, trace: str | None = None) -> SyncMessage:
    return SyncMessage(
        mapping=ACCOUNT, side="dv", id=f"00000000-0000-0000-0000-{n:012d}", change="created",
        reason="dataverse webhook Create", trace=trace, correlation_id=f"call {n}",
        observed=dt.datetime(2026, 12, 2, 10, 0, n % 60, tzinfo=dt.UTC),
    )  # fmt: skip


class Queue:
    """A send that records what it was given; `hold` keeps the first send waiting."""

    def __init__(self) -> None:
        self.sends: list[list[AnyMessage]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.fail: set[int] = set()  # positions (in a send) that are not stored

    def send(self, messages: Sequence[AnyMessage], within: float) -> object:
        self.sends.append(list(messages))
        self.started.set()
        assert self.hold.wait(5)
        if self.fail:
            sent = [i for i in range(len(messages)) if i not in self.fail]
            raise EnqueueError(sent, len(messages), ConnectionError("refused"))
        return len(messages)


def records(messages: Sequence[AnyMessage]) -> list[SyncMessage]:
    out: list[SyncMessage] = []
    for m in messages:
        out += m.records() if isinstance(m, BatchMessage) else [m]  # type: ignore[list-item]
    return out


def test_a_call_alone_is_sent_at_once_as_it_is() -> None:
    queue, group = Queue(), GroupCommit()
    assert group.submit([change(1)], 5.0, queue.send) == 1
    assert queue.sends == [[change(1)]]


def _during_a_send(group: GroupCommit, queue: Queue, calls: list[list[SyncMessage]]) -> list[object]:
    """The first call's send is held until every other call is waiting; what each call returned."""
    results: list[object] = [None] * len(calls)

    def submit(i: int) -> None:
        try:
            results[i] = group.submit(calls[i], 5.0, queue.send)
        except EnqueueError as exc:
            results[i] = exc

    queue.hold.clear()
    threads = [threading.Thread(target=submit, args=(0,))]
    threads[0].start()
    assert queue.started.wait(5)
    for i in range(1, len(calls)):
        threads.append(threading.Thread(target=submit, args=(i,)))
        threads[-1].start()
    deadline = time.monotonic() + 5
    while len(group._waiting) < len(calls) - 1:
        assert time.monotonic() < deadline, "the other calls never waited"
        time.sleep(0.005)
    queue.hold.set()
    for thread in threads:
        thread.join(5)
    return results


def test_calls_arriving_during_a_send_are_sent_next_together_in_one_batch() -> None:
    queue, group = Queue(), GroupCommit()
    calls = [[change(0)], *([change(n, trace=f"00-{n:032x}-{n:016x}-01")] for n in range(1, 6))]
    results = _during_a_send(group, queue, calls)
    assert results == [1, 5, 5, 5, 5, 5]  # the first alone, then five calls in one send
    assert len(queue.sends) == 2 and len(queue.sends[1]) == 1
    [batch] = queue.sends[1]
    assert isinstance(batch, BatchMessage) and len(batch.changes) == 5
    # Each change keeps its own call's notification time and trace.
    assert sorted(records(queue.sends[1]), key=lambda m: m.id) == sorted(
        (c[0] for c in calls[1:]), key=lambda m: m.id
    )


class ContactsRefused(Queue):
    """From the second send on, the CONTACT messages are not stored."""

    def send(self, messages: Sequence[AnyMessage], within: float) -> object:
        if self.sends:
            self.fail = {i for i, m in enumerate(messages) if m.mapping == "CONTACT"}
        return super().send(messages, within)


def test_a_failed_part_fails_only_the_calls_whose_messages_it_held() -> None:
    queue, group = ContactsRefused(), GroupCommit()
    contact = change(9).model_copy(update={"mapping": "CONTACT"})
    # The second send packs the CUSTOMER changes into one batch and sends CONTACT's as its own message.
    results = _during_a_send(group, queue, [[change(0)], [change(1)], [change(2), contact], [change(3)]])
    assert results[0] == 1 and results[1] == 3 and results[3] == 3
    failed = results[2]
    assert isinstance(failed, EnqueueError)
    assert failed.sent == [0]  # its CUSTOMER change was stored, its CONTACT change was not
    assert "refused" in str(failed)


def test_a_call_never_taken_into_a_send_gives_up_at_its_deadline_having_stored_nothing() -> None:
    queue, group = Queue(), GroupCommit()
    queue.hold.clear()
    leader = threading.Thread(target=lambda: group.submit([change(0)], 5.0, queue.send))
    leader.start()
    assert queue.started.wait(5)
    with pytest.raises(EnqueueError) as raised:
        group.submit([change(1)], 0.2, queue.send)  # the send under way outlasts its 0.2 s
    assert raised.value.sent == [] and not group._waiting
    queue.hold.set()
    leader.join(5)
    assert queue.sends == [[change(0)]]  # it was never sent


def test_a_group_that_breaks_before_it_is_sent_fails_every_call_it_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is lost silently: a group whose packing raised answers each of its calls with an error
    (so each webhook answers 503 and is sent again); a refused send is answered the same way."""
    from shared.store import group_commit

    queue, group = Queue(), GroupCommit()
    real_pack = group_commit.pack

    def pack(messages: Sequence[AnyMessage]) -> list[tuple[AnyMessage, list[int]]]:
        if queue.sends:  # the waiting calls' group breaks
            raise RuntimeError("broken")
        return real_pack(messages)

    monkeypatch.setattr(group_commit, "pack", pack)
    results = _during_a_send(group, queue, [[change(0)], [change(1)], [change(2)]])
    assert results[0] == 1 and len(queue.sends) == 1
    assert all(isinstance(r, EnqueueError) and r.sent == [] and "broken" in str(r) for r in results[1:])


def test_under_sustained_load_the_next_send_lingers_while_calls_keep_coming() -> None:
    queue, group = Queue(), GroupCommit(linger=0.5, linger_step=0.1)
    group.submit([change(1)], 5.0, queue.send)  # a send just ended: the service is busy
    sizes: list[int] = []

    def call(n: int) -> None:
        sizes.append(group.submit([change(n)], 5.0, queue.send))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(2, 6)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # arriving one by one, each within a step of the one before
    for t in threads:
        t.join()
    assert len(queue.sends) == 2 and sizes == [4] * 4
    assert [m.id for m in records(queue.sends[1])] == [change(n).id for n in range(2, 6)]


def test_a_leader_stops_lingering_when_no_call_comes_and_after_a_pause_does_not_linger_at_all() -> None:
    queue, group = Queue(), GroupCommit(linger=10.0, linger_step=1.0)
    group.submit([change(1)], 5.0, queue.send)
    began = time.monotonic()
    group.submit([change(2)], 5.0, queue.send)  # busy, but nobody else is sending: one step, not 10 s
    assert 1.0 <= time.monotonic() - began < 5.0 and len(queue.sends) == 2
    time.sleep(0.15)  # quiet for longer than BUSY_WITHIN
    began = time.monotonic()
    group.submit([change(3)], 5.0, queue.send)
    assert time.monotonic() - began < 0.5 and len(queue.sends) == 3  # sent at once
