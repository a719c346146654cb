"""A stand-in runtime for unit tests of `shared.sync.processor`: the default mappings, queues that
record what is sent to them (`sent`: queue name and body), and an engine that records the records it
is asked to sync (`synced`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared.mapping.loader import load_mapping_set
from shared.sync import processor


class RecordingQueue:
    def __init__(self, sent: list[tuple[str, str]], name: str) -> None:
        self.sent, self.name = sent, name

    def send_message(self, body: str, **_: Any) -> None:
        self.sent.append((self.name, body))


def processor_runtime(monkeypatch: pytest.MonkeyPatch) -> Any:
    sent: list[tuple[str, str]] = []
    synced: list[Any] = []
    runtime = SimpleNamespace(
        mappings=load_mapping_set("mappings/default.yaml"),
        multi_company=False,
        storage=SimpleNamespace(
            poison_queue_name="sync-requests-poison", queue=lambda name=None: RecordingQueue(sent, name or "")
        ),
        engine=SimpleNamespace(sync_record=lambda message: synced.append(message)),
        sent=sent,
        synced=synced,
    )
    monkeypatch.setattr(processor, "get_runtime", lambda: runtime)
    return runtime
