"""Coupling rows in real Table Storage (Azurite): atomic pairs, ETag-guarded updates."""

from __future__ import annotations

import uuid

import pytest

from shared.store.couplings import AlreadyCoupledError, Coupling, CouplingConflictError, CouplingStore
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def store(storage: Storage) -> CouplingStore:
    storage.ensure()
    return CouplingStore(storage.table("Couplings"))


@pytest.fixture
def mapping() -> str:
    return f"M{uuid.uuid4().hex[:8]}"


def test_coupling_is_found_from_either_side(store: CouplingStore, mapping: str) -> None:
    store.create(Coupling(mapping, "bc-1", "dv-1", snapshot={"bc": {"name": "A"}, "dv": {"name": "A"}}))
    from_bc = store.get(mapping, "bc", "bc-1")
    from_dv = store.get(mapping, "dv", "dv-1")
    assert from_bc is not None and from_dv is not None
    assert (from_bc.dv_id, from_dv.bc_id) == ("dv-1", "bc-1")
    assert from_dv.snapshot == {"bc": {"name": "A"}, "dv": {"name": "A"}}
    assert set(from_bc.row_etags) == {"bc:bc-1", "dv:dv-1"}


def test_a_record_cannot_be_coupled_twice(store: CouplingStore, mapping: str) -> None:
    store.create(Coupling(mapping, "bc-1", "dv-1"))
    with pytest.raises(AlreadyCoupledError, match="uncouple it first"):
        store.create(Coupling(mapping, "bc-2", "dv-1"))
    assert store.get(mapping, "bc", "bc-2") is None  # the transaction rolled back


def test_concurrent_updates_cannot_both_win(store: CouplingStore, mapping: str) -> None:
    store.create(Coupling(mapping, "bc-1", "dv-1"))
    first = store.get(mapping, "bc", "bc-1")
    second = store.get(mapping, "dv", "dv-1")
    assert first and second
    first.last_result = "modified"
    store.save(first)
    second.last_result = "conflict"
    with pytest.raises(CouplingConflictError):
        store.save(second)
    assert store.get(mapping, "dv", "dv-1").last_result == "modified"  # type: ignore[union-attr]


def test_pending_bc_side_is_completed_atomically(store: CouplingStore, mapping: str) -> None:
    pending = store.create(
        Coupling(mapping, None, "dv-9", state="pending_bc", pending_since="2026-11-27T00:00:00Z")
    )
    assert store.get(mapping, "dv", "dv-9").state == "pending_bc"  # type: ignore[union-attr]
    pending.bc_id, pending.state = "bc-9", "coupled"
    store.save(pending)
    found = store.get(mapping, "bc", "bc-9")
    assert found is not None and found.state == "coupled" and found.dv_id == "dv-9"


def test_uncouple_removes_both_rows(store: CouplingStore, mapping: str) -> None:
    store.create(Coupling(mapping, "bc-1", "dv-1"))
    coupling = store.get(mapping, "bc", "bc-1")
    assert coupling
    store.delete(coupling)
    assert store.get(mapping, "bc", "bc-1") is None and store.get(mapping, "dv", "dv-1") is None


def test_list_and_bulk_create(store: CouplingStore, mapping: str) -> None:
    pairs = [Coupling(mapping, f"bc-{i}", f"dv-{i}") for i in range(120)]
    pairs[5].last_result = "failed"
    results = store.create_many(pairs)
    assert all(isinstance(r, Coupling) for r in results)
    dup = store.create_many([Coupling(mapping, "bc-new", "dv-new"), Coupling(mapping, "bc-3", "dv-x")])
    assert isinstance(dup[0], Coupling) and isinstance(dup[1], Exception)
    assert len(list(store.list(mapping))) == 121
    assert [c.bc_id for c in store.list(mapping, only="failed")] == ["bc-5"]
    assert dict(store.all_ids(mapping, "dv"))["dv-7"] == "bc-7"


def test_coupling_is_found_by_its_bc_key_and_the_key_row_follows_changes(
    store: CouplingStore, mapping: str
) -> None:
    store.create(Coupling(mapping, "bc-1", "dv-1", bc_key="JR"))
    found = store.get_by_key(mapping, "JR")
    assert found is not None and found.dv_id == "dv-1"
    found.bc_key = "JRX"
    store.save(found)
    assert store.get_by_key(mapping, "JR") is None
    assert store.get_by_key(mapping, "JRX").dv_id == "dv-1"  # type: ignore[union-attr]
    assert len(list(store.list(mapping))) == 1
    store.delete(store.get(mapping, "dv", "dv-1"))  # type: ignore[arg-type]
    assert store.get_by_key(mapping, "JRX") is None
