"""A bulk job throttled beyond what the transport waits resumes after the server's Retry-After
(Dataverse's execution-time limit can ask for minutes during a large initial sync)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.connectors.errors import ThrottledError
from shared.messages import ScanMessage
from shared.sync import bulk
from shared.sync.engine import RequeueError

RESYNC = ScanMessage(mapping="CUSTOMER", side="bc", since=None, run_id="r1", reason="full resync requested")


def _throttled(*_: Any, **__: Any) -> None:
    raise ThrottledError("execution time exceeded", status=429, code="0x80072321", retry_after=267)


def test_a_throttled_resync_is_queued_again_after_the_servers_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk, "run_full_resync", _throttled)

    with pytest.raises(RequeueError) as info:
        bulk.scan(None, RESYNC)  # type: ignore[arg-type]

    assert info.value.delay == 267
    resumed = info.value.message
    assert isinstance(resumed, ScanMessage)
    assert (resumed.run_id, resumed.since, resumed.attempt) == ("r1", None, 1)  # the same run, resumed
    assert "resumes in 267 s" in str(info.value)


def test_a_job_throttled_too_often_goes_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "run_full_resync", _throttled)
    worn = RESYNC.model_copy(update={"attempt": bulk.MAX_THROTTLED_RESUMES})

    with pytest.raises(ThrottledError):
        bulk.scan(None, worn)  # type: ignore[arg-type]
