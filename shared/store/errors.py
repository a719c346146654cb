"""Errors of the storage layer that callers outside it handle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future

from shared.errors import ServiceError


class EnqueueError(ServiceError):
    """Some messages could not be sent (or not in time); `sent` holds the positions of those that were."""

    retriable = True

    def __init__(
        self,
        sent: Sequence[int],
        total: int,
        first: BaseException,
        late: Mapping[int, Future[None]] | None = None,
    ) -> None:
        super().__init__(f"{total - len(sent)} of {total} messages could not be queued: {first}")
        self.sent = list(sent)
        # Sends still under way when the caller stopped waiting: each may yet be stored.
        self.late = dict(late or {})
