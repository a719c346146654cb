"""The sandbox's clock: wall time plus an offset tests can advance (subscription expiry, timestamps)."""

from __future__ import annotations

import datetime as dt
import threading
import time


class SandboxClock:
    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        """Seconds since the epoch, advanced."""
        return time.time() + self._offset

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    def now_ms(self) -> int:
        return int(self.time() * 1000)

    def advance(self, seconds: float) -> dt.datetime:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()


def iso_ms(epoch_ms: int) -> str:
    """`2026-11-27T12:00:00.123Z`: BC's `lastModifiedDateTime` format (UTC, milliseconds)."""
    stamp = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def iso_seconds(moment: dt.datetime) -> str:
    """`2018-10-29T07:52:31Z`: the format of a subscription's `expirationDateTime`."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
