"""Writes whose response is lost after Azurite processed them (a kept-alive connection reset at the
wrong moment): the SDK alone fails them, the service's storage resends them and recognises its own
landed write, so no sync fails and no coupling is refused because of a connection blip."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient

from shared.mapping.values import dataverse_id_for
from shared.store.couplings import AlreadyCoupledError, Coupling, CouplingStore
from shared.store.storage import Storage, resend_after_disconnect
from shared.store.tables import COUPLINGS, WATERMARKS
from shared.store.watermarks import Watermark, WatermarkConflictError, WatermarkStore

pytestmark = pytest.mark.integration


class LosingTransport(RequestsTransport):
    """Sends each request to Azurite, then drops the response of the next `lose[method]` ones."""

    def __init__(self) -> None:
        super().__init__()
        self.lose: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()

    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        if self.lose[request.method] > 0:
            self.lose[request.method] -= 1
            self.lost[request.method] += 1
            raise ServiceResponseError("('Connection aborted.', ConnectionResetError(104))")
        return response


@pytest.fixture
def transport() -> LosingTransport:
    return LosingTransport()


def _tables(connection_string: str, transport: LosingTransport) -> TableServiceClient:
    return TableServiceClient.from_connection_string(connection_string, transport=transport)


@pytest.fixture
def store(storage: Storage, storage_connection_string: str, transport: LosingTransport) -> CouplingStore:
    storage.ensure()
    tables = resend_after_disconnect(_tables(storage_connection_string, transport))
    return CouplingStore(tables.get_table_client(COUPLINGS))


@pytest.fixture
def mapping() -> str:
    return f"M{uuid.uuid4().hex[:8]}"


def _pair(mapping: str, bc_id: str) -> Coupling:
    """A pair the service created: its Dataverse id derives from the BC id, so there is no pointer row
    and the coupling row's own create is the write that is resent."""
    return Coupling(mapping, bc_id, dataverse_id_for(mapping, bc_id))


def test_the_sdk_alone_fails_a_create_whose_response_was_lost(
    storage: Storage, storage_connection_string: str, transport: LosingTransport
) -> None:
    storage.ensure()
    table = _tables(storage_connection_string, transport).get_table_client(COUPLINGS)
    transport.lose["POST"] = 1
    with pytest.raises(ServiceResponseError):
        table.create_entity({"PartitionKey": "p", "RowKey": uuid.uuid4().hex})


def test_a_coupling_whose_create_response_was_lost_is_stored_once_and_usable(
    store: CouplingStore, transport: LosingTransport, mapping: str
) -> None:
    transport.lose["POST"] = 1
    created = store.create(replace(_pair(mapping, "bc-1"), snapshot={"bc": {"n": 1}}))
    assert transport.lost["POST"] == 1
    stored = store.get(mapping, "bc", "bc-1")
    assert stored is not None and stored.etag == created.etag
    assert [c.bc_id for c in store.each(mapping)] == ["bc-1"]
    store.save(stored)  # the returned ETag is the stored one: the next conditional update goes through


def test_a_coupling_matched_to_an_existing_record_survives_a_lost_pointer_create(
    store: CouplingStore, transport: LosingTransport, mapping: str
) -> None:
    transport.lose["POST"] = 2  # the pointer row `bc:<id>` and the coupling row
    store.create(Coupling(mapping, "bc-1", "dv-1"))
    assert transport.lost["POST"] == 2
    stored = store.get(mapping, "bc", "bc-1")
    assert stored is not None and stored.dv_id == "dv-1"


def test_a_lost_update_response_is_not_taken_for_a_concurrent_writer(
    store: CouplingStore, transport: LosingTransport, mapping: str
) -> None:
    created = store.create(_pair(mapping, "bc-1"))
    created.last_result = "updated"
    transport.lose["PATCH"] = transport.lose["PUT"] = 1
    saved = store.save(created)
    assert sum(transport.lost.values()) == 1
    stored = store.get(mapping, "bc", "bc-1")
    assert stored is not None and stored.last_result == "updated" and stored.etag == saved.etag


def test_a_genuine_conflict_is_still_refused_after_a_resend(
    store: CouplingStore, transport: LosingTransport, mapping: str
) -> None:
    first = store.create(_pair(mapping, "bc-1"))
    transport.lose["POST"] = 2
    with pytest.raises(AlreadyCoupledError):
        store.create(Coupling(mapping, "bc-2", first.dv_id))


def test_a_bulk_create_whose_transaction_response_was_lost_couples_every_pair(
    store: CouplingStore, transport: LosingTransport, mapping: str
) -> None:
    pairs = [_pair(mapping, f"bc-{i}") for i in range(40)]
    transport.lose["POST"] = 1
    results = store.create_many(pairs)
    assert not [r for r in results if isinstance(r, Exception)]
    assert sorted(c.bc_id or "" for c in store.each(mapping)) == sorted(f"bc-{i}" for i in range(40))


def test_a_watermark_whose_create_response_was_lost_is_set(
    storage: Storage, storage_connection_string: str, transport: LosingTransport, mapping: str
) -> None:
    storage.ensure()
    tables = resend_after_disconnect(_tables(storage_connection_string, transport))
    marks = WatermarkStore(tables.get_table_client(WATERMARKS))
    transport.lose["POST"] = 1
    mark = marks.set(Watermark(mapping, "bc", "2026-11-27T10:00:00.000Z"))
    stored = marks.get(mapping, "bc")
    assert stored is not None and stored.etag == mark.etag and transport.lost["POST"] == 1
    with pytest.raises(ResourceExistsError):  # a plain second create still conflicts
        tables.get_table_client(WATERMARKS).create_entity({"PartitionKey": mapping, "RowKey": "bc"})


def test_another_instance_moving_the_watermark_to_the_same_value_still_wins_the_round(
    storage: Storage, mapping: str
) -> None:
    storage.ensure()
    marks = WatermarkStore(storage.table(WATERMARKS))
    marks.set(Watermark(mapping, "bc", "2026-11-27T10:00:00.000Z"))
    mine, theirs = marks.get(mapping, "bc"), marks.get(mapping, "bc")
    assert mine is not None and theirs is not None
    marks.set(Watermark(mapping, "bc", "2026-11-27T10:05:00.000Z", theirs.etag))
    # Same value, but not our write: this instance must skip the round, not enqueue it again.
    with pytest.raises(WatermarkConflictError):
        marks.set(Watermark(mapping, "bc", "2026-11-27T10:05:00.000Z", mine.etag))
