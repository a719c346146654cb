"""Group commit: the messages of concurrent webhook calls queued together.

A Sales import of 10,000 accounts reaches the service as 10,000 webhook calls, several at a time
(Dataverse's async service sends them in parallel). Queued one message per call, the queue would
hold 10,000 messages, and each costs a send, a receive and a delete; a queue's requests also grow
slower with its length (measured on Azurite: docs/architecture.md, Decisions). So while one call's
messages are being sent, calls arriving meanwhile wait, and the first of them then sends all of
theirs at once, packed (`shared.messages.pack`: one `BatchMessage` per company, mapping, side and
reason). A call that arrives when nothing is being sent is sent at once: a change alone waits for
nobody. Under sustained load (the last send ended less than `BUSY_WITHIN` ago) the call that leads
the next send lingers for company while calls keep coming: up to `LINGER_SECONDS`, but only while
each `LINGER_STEP` brings another call, and not past `FULL_GROUP` calls. Each message costs a send,
a receive and a delete whatever it holds, so at 100 webhook calls a second this puts several calls
in one message instead of about one; a sender with a few calls in flight (Dataverse's delivery
workers, which wait for each answer) is not held once all of them are in.

Each call returns only when its own messages are stored, or raises `EnqueueError` naming which of
its messages were stored (in time, or still under way), exactly as `Storage.enqueue` does for one
call, so the webhook answers 503 and the sender's retry queues only the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from shared.messages import AnyMessage, pack
from shared.store.errors import EnqueueError

LINGER_SECONDS = 0.02
LINGER_STEP = 0.005
BUSY_WITHIN = 0.1
FULL_GROUP = 32

# Sends the messages (packed), waiting at most the seconds given; raises `EnqueueError` for a part.
Send = Callable[[Sequence[AnyMessage], float], object]


@dataclass
class _Call:
    messages: list[AnyMessage]
    deadline: float
    error: EnqueueError | None = None
    done: bool = False
    # Calls whose messages went with this one's (this one's included); set by the leader.
    group_size: int = 0


@dataclass
class GroupCommit:
    """One per queue and process: at most one send is under way; calls arriving during it go next,
    together."""

    clock: Callable[[], float] = time.monotonic
    # One lock: `_cond` tells waiting calls that a send ended, `_arrival` tells a lingering leader
    # that a call came (only it wakes for each arrival).
    _cond: threading.Condition = field(init=False, repr=False)
    _arrival: threading.Condition = field(init=False, repr=False)
    _waiting: list[_Call] = field(default_factory=list, repr=False)
    _sending: bool = False
    linger: float = LINGER_SECONDS
    linger_step: float = LINGER_STEP
    _last_sent: float = float("-inf")  # when the last send ended (`clock`)

    def __post_init__(self) -> None:
        lock = threading.Lock()
        self._cond, self._arrival = threading.Condition(lock), threading.Condition(lock)

    def submit(self, messages: Sequence[AnyMessage], within: float, send: Send) -> int:
        """Store `messages` (with whatever other calls wait) within `within` seconds; how many calls
        shared the send. Raises `EnqueueError` with positions in `messages`."""
        call = _Call(list(messages), self.clock() + within)
        with self._cond:
            self._waiting.append(call)
            self._arrival.notify()  # a lingering leader counts the calls that came
            while self._sending and not call.done:
                left = call.deadline - self.clock()
                if call in self._waiting and left <= 0:
                    # Never taken into a send: nothing of it was stored.
                    self._waiting.remove(call)
                    timeout = TimeoutError(f"storage did not take the messages within {within} s")
                    raise EnqueueError([], len(call.messages), timeout)
                # Once taken into a send, wait for it: the leader's own deadline bounds it.
                self._cond.wait(left if call in self._waiting else None)
            group: list[_Call] = []
            if not call.done:
                self._sending = True
                if self.clock() - self._last_sent < BUSY_WITHIN:
                    self._linger()
                group, self._waiting = self._waiting, []
        if group:
            try:
                self._send(group, send)
            except Exception as exc:  # packing failed: nothing of the group was sent, every call says so
                for taken in group:
                    if not taken.done:
                        taken.error, taken.done = EnqueueError([], len(taken.messages), exc), True
            finally:
                with self._cond:
                    self._sending, self._last_sent = False, self.clock()
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.group_size

    def _linger(self) -> None:
        """Wait (holding the sending turn, the lock released) for more calls, in real time."""
        until = time.monotonic() + self.linger
        while len(self._waiting) < FULL_GROUP and (left := until - time.monotonic()) > 0:
            before = len(self._waiting)
            step_end = time.monotonic() + min(left, self.linger_step)
            while len(self._waiting) < FULL_GROUP and (rest := step_end - time.monotonic()) > 0:
                self._arrival.wait(rest)
            if len(self._waiting) == before:
                return  # nothing more came: the calls in flight are all in

    def _send(self, group: list[_Call], send: Send) -> None:
        flat = [(call, index) for call in group for index in range(len(call.messages))]
        packed = pack([call.messages[index] for call, index in flat])
        within = max(0.0, max(call.deadline for call in group) - self.clock())
        stored: set[int] = set(range(len(flat)))
        late: dict[int, Future[None]] = {}
        first: BaseException | None = None
        try:
            send([message for message, _ in packed], within)
        except EnqueueError as exc:
            first = exc.__cause__ or exc
            stored = {position for k in exc.sent for position in packed[k][1]}
            late = {position: future for k, future in exc.late.items() for position in packed[k][1]}
        except Exception as exc:  # nothing is known to be stored
            first, stored = exc, set()
        for call in group:
            own = [position for position, (c, _) in enumerate(flat) if c is call]
            sent = [i for i, position in enumerate(own) if position in stored]
            if len(sent) < len(own):
                assert first is not None
                own_late = {i: late[position] for i, position in enumerate(own) if position in late}
                call.error = EnqueueError(sent, len(own), first, own_late)
            call.group_size, call.done = len(group), True
