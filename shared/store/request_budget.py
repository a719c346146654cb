"""The integration user's request allowance on BC or Dataverse, shared by every instance of the app.

Both services count requests per user across all callers (6,000 per 5-minute sliding window), while
Azure Functions runs as many instances as the load asks for, each with its own process. Each
instance therefore claims *blocks* of requests from one shared ledger in Table Storage and spends
them locally, so the storage round-trips are per block, not per request.

The ledger is a ring of rows, one per time bucket (`bucket_seconds`, 10 s), in partition
`<service>`: row `slot = bucket % ring` holds the bucket's index and the requests granted in it. A
claim reads the partition (one query), sums the grants of the buckets that can still be in the
server's window, and adds its block to the current bucket's row with `If-Match` on the row's ETag
(optimistic concurrency: an instance that lost the race reads again). A block may only be spent
within the bucket it was granted in, and the sum covers one bucket more than the window, so every
request is counted for at least as long as the server counts it: what is unspent when the bucket
ends is dropped (counted, never sent). Under pressure (the window more than half used) a block is
sized to what this instance is expected to spend before the bucket ends, so little is dropped.

If storage cannot be asked, the instance falls back to its share of the allowance in memory
(`fallback`), so a storage hiccup slows the sync instead of failing it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
from azure.data.tables import TableClient, UpdateMode

from shared.connectors.retry import RequestBudget

log = logging.getLogger(__name__)

BUCKET_SECONDS = 10.0
MAX_BLOCK = 20
# Below this share of the allowance in use, claim whole blocks: nothing is short, and fewer claims
# mean fewer storage round-trips.
PRESSURE = 0.5
# After a storage error, use the in-memory fallback for this long before asking storage again.
FALLBACK_SECONDS = 30.0


class SharedRequestBudget:
    """`acquire()` returns when one more request of `service` fits the shared allowance."""

    def __init__(
        self,
        table: TableClient,
        service: str,
        *,
        max_requests: int,
        window_seconds: float,
        fallback: RequestBudget,
        bucket_seconds: float = BUCKET_SECONDS,
        max_block: int = MAX_BLOCK,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        self.service = service
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self.max_block = max_block
        self.fallback = fallback
        # Buckets whose grants can still be in the server's window, the current one included: a
        # request spent at the end of bucket b is counted by the server until (b+1)*size + window.
        self.window_buckets = math.ceil(window_seconds / bucket_seconds) + 1
        self.ring = self.window_buckets + 1
        self.claims = 0  # storage claims made (each: one query and one write)
        self.conflicts = 0  # claims another instance won first (read again)
        self.waited_seconds = 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._bucket = -1
        self._left = 0
        self._spent: deque[float] = deque()  # when this instance spent its recent requests
        self._fallback_until = float("-inf")

    def acquire(self) -> None:
        with self._lock:  # one claimer per process; others wait for its block
            while True:
                now = self._clock()
                if now < self._fallback_until:
                    break
                bucket = int(now // self.bucket_seconds)
                if bucket == self._bucket and self._left > 0:
                    self._left -= 1
                    self._note_spent(now)
                    return
                try:
                    wait = self._claim(now, bucket)
                except AzureError as exc:
                    log.warning(
                        "shared %s request budget unavailable (%s); using this instance's share for %g s",
                        self.service, type(exc).__name__, FALLBACK_SECONDS,
                    )  # fmt: skip
                    self._fallback_until = now + FALLBACK_SECONDS
                    break
                if wait > 0:
                    self.waited_seconds += wait
                    self._sleep(wait)
        self.fallback.acquire()

    def _note_spent(self, now: float) -> None:
        self._spent.append(now)
        while self._spent and self._spent[0] <= now - self.bucket_seconds:
            self._spent.popleft()

    def _claim(self, now: float, bucket: int) -> float:
        """Claim a block in `bucket`; 0 when claimed (or lost a race: try again), else seconds to wait."""
        rows = {int(e["Bucket"]): e for e in self._rows()}
        oldest = bucket - self.window_buckets + 1
        granted = {b: int(e.get("Granted", 0)) for b, e in rows.items() if oldest <= b <= bucket}
        room = self.max_requests - sum(granted.values())
        if room <= 0:
            # Wait until the oldest bucket with grants leaves the sum.
            first = min((b for b, n in granted.items() if n > 0), default=bucket)
            return max(0.01, (first + self.window_buckets) * self.bucket_seconds - now)
        block = min(room, self._block_size(now, bucket, room))
        slot = bucket % self.ring
        current = next((e for e in rows.values() if int(e["RowKey"]) == slot), None)
        entity = {"PartitionKey": self.service, "RowKey": f"{slot:03d}", "Bucket": bucket}
        self.claims += 1
        try:
            if current is None:
                self.table.create_entity({**entity, "Granted": block})
            else:
                already = int(current.get("Granted", 0)) if int(current["Bucket"]) == bucket else 0
                self.table.update_entity(
                    {**entity, "Granted": already + block},
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceModifiedError, ResourceExistsError):
            self.conflicts += 1
            return 0.0
        self._bucket, self._left = bucket, block
        return 0.0

    def left(self) -> int:
        """Requests of the shared allowance not yet granted in the window (a metric: one query); this
        instance's fallback share's while storage cannot be asked."""
        bucket = int(self._clock() // self.bucket_seconds)
        oldest = bucket - self.window_buckets + 1
        try:
            rows = self._rows()
        except AzureError:
            return self.fallback.left()
        granted = sum(int(e.get("Granted", 0)) for e in rows if oldest <= int(e["Bucket"]) <= bucket)
        return max(0, self.max_requests - granted)

    def _rows(self) -> list:  # type: ignore[type-arg]
        return list(self.table.query_entities("PartitionKey eq @p", parameters={"p": self.service}))

    def _block_size(self, now: float, bucket: int, room: int) -> int:
        if room > self.max_requests * (1 - PRESSURE):
            return self.max_block
        # Under pressure: what this instance spent in the last bucket's time, scaled to what is
        # left of this bucket, so the unspent remainder dropped at the bucket's end stays small.
        rate = len(self._spent) / self.bucket_seconds
        left = (bucket + 1) * self.bucket_seconds - now
        return max(1, min(self.max_block, math.ceil(rate * left)))
