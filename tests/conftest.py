"""Session-wide fixtures: one Azurite for the whole run (real Azure Storage API, in memory)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from devstack.azurite import Azurite, start_azurite
from shared.store.storage import Storage, storage_from_connection_string

# `make test` runs the suite in parallel processes on machines with two cores: a per-example deadline
# would measure the machine's load, not the code (a 200 ms deadline failed at 314 ms that way).
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite started for this test session (or the one named by TEST_AZURITE_CONNECTION_STRING)."""
    external = os.environ.get("TEST_AZURITE_CONNECTION_STRING")
    if external:
        yield Azurite(None, 0, 0, 0)  # pragma: no cover - only when CI provides one
        return
    handle = start_azurite()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def storage_connection_string(azurite: Azurite) -> str:
    return os.environ.get("TEST_AZURITE_CONNECTION_STRING") or azurite.connection_string


@pytest.fixture
def storage(storage_connection_string: str) -> Storage:
    """Storage with a queue name unique to the test, so tests never see each other's messages."""
    queue = f"sync-{uuid.uuid4().hex[:12]}"
    return storage_from_connection_string(storage_connection_string, sync_queue=queue)
