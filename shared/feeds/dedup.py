"""Recently queued notifications, so a redelivered webhook call costs no duplicate work.

BC resends a whole notification POST when it got no answer in time (and Dataverse a system job
that failed), and a sender that gave up while we were still enqueuing used to get every record
queued twice. The intake derives a key per queue message from what identifies the notification
(BC: subscription, resource, change type and `lastModifiedDateTime`; Dataverse: the system job's
`OperationId`, else record and `OperationCreatedOn`) and skips keys seen within `ttl` seconds.

In-process on purpose, as a first line: a retry usually reaches the same instance (one instance
serves a Function App until load scales it out), it costs nothing per entry, and a duplicate that
slips through (another instance, a restart) is harmless: the processor reads the record fresh and
handling a message twice changes nothing the second time; it only costs one read. A Table Storage
insert-if-absent would cover every instance but adds a storage round trip per entry to the answer
that BC waits at most 10 s for.

A key is remembered only once its message was stored, never before: a call that failed to enqueue
(answered 503) must be enqueued in full when the sender retries, or a change would be lost.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

# Longer than any sender's retry schedule that matters here (BC resends within minutes), short
# enough that a genuinely new change with an equal stamp cannot be held back for long.
DEFAULT_TTL_SECONDS = 600.0
# Bounds memory (about 100 bytes per key) whatever the traffic; the oldest keys go first.
DEFAULT_MAX_KEYS = 200_000


class RecentKeys:
    """A thread-safe set of keys that forgets each key `ttl` seconds after it was added."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_keys = max_keys
        self._clock = clock
        self._added: OrderedDict[bytes, float] = OrderedDict()  # digest -> when, oldest first
        self._lock = threading.Lock()

    @staticmethod
    def _digest(key: str) -> bytes:
        # Keys hold request text: a fixed-size digest keeps memory bounded whatever was sent.
        return hashlib.blake2b(key.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not key:
            return False
        with self._lock:
            self._expire()
            return self._digest(key) in self._added

    def contains(self, key: str) -> bool:
        return key in self

    def add_all(self, keys: Iterable[str]) -> None:
        with self._lock:
            now = self._clock()
            for key in keys:
                if not key:
                    continue  # nothing identifies that notification: never deduplicated
                digest = self._digest(key)
                self._added.pop(digest, None)
                self._added[digest] = now
            while len(self._added) > self._max_keys:
                self._added.popitem(last=False)
            self._expire()

    def clear(self) -> None:
        with self._lock:
            self._added.clear()

    def _expire(self) -> None:
        limit = self._clock() - self._ttl
        while self._added:
            digest, added = next(iter(self._added.items()))
            if added > limit:
                break
            del self._added[digest]
