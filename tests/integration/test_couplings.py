"""Coupling rows in real Table Storage (Azurite): atomic pairs, ETag-guarded updates."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from shared.store import tables
from shared.store.couplings import (
    _PREFIX,
    AlreadyCoupledError,
    Coupling,
    CouplingConflictError,
    CouplingStore,
)
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def store(storage: Storage) -> CouplingStore:
    storage.ensure()
    return CouplingStore(storage.table(tables.COUPLINGS))


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
    assert from_bc.etag and from_bc.etag == from_dv.etag  # one row holds the coupling


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


def test_pending_couplings_learn_their_bc_ids_in_bulk_and_a_conflict_fails_only_its_pair(
    store: CouplingStore, mapping: str
) -> None:
    """`couple_many` (BC records created for Sales records in a burst): pointers and rows written in
    transactions; a BC id coupled elsewhere, or a row changed meanwhile, fails that pair alone."""
    pending = store.create_many(
        [Coupling(mapping, None, f"dv-{n}", state="pending_bc", pending_since="2026-12-02T00:00:00Z")
         for n in range(30)]
    )  # fmt: skip
    store.create(Coupling(mapping, "bc-taken", "dv-other"))
    learned: list[Coupling] = []
    for n, c in enumerate(pending):
        assert isinstance(c, Coupling)
        learned.append(replace(c, bc_id="bc-taken" if n == 0 else f"bc-{n}", state="coupled"))
    moved = store.get(mapping, "dv", "dv-1")
    assert moved is not None
    moved.last_result = "failed"
    store.save(moved)  # another worker changed this row after it was read
    results = store.couple_many(learned)
    assert isinstance(results[0], AlreadyCoupledError) and isinstance(results[1], CouplingConflictError)
    assert all(isinstance(r, Coupling) and r.stored_bc_id == r.bc_id for r in results[2:])
    found = store.get_many(mapping, "bc", [f"bc-{n}" for n in range(1, 30)])
    assert set(found) == {f"bc-{n}" for n in range(2, 30)}
    assert store._row(mapping, _PREFIX["bc"] + "bc-1") is None  # its pointer was released
    assert all(
        found[f"bc-{n}"].dv_id == f"dv-{n}" and found[f"bc-{n}"].state == "coupled" for n in range(2, 30)
    )
    assert store.get(mapping, "bc", "bc-taken").dv_id == "dv-other"  # type: ignore[union-attr]


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
    assert len(list(store.each(mapping))) == 121
    assert [c.bc_id for c in store.each(mapping, only="failed")] == ["bc-5"]
    assert dict(store.all_ids(mapping, "dv"))["dv-7"] == "bc-7"


def test_update_touches_one_row_and_pointer_follows_uncouple(store: CouplingStore, mapping: str) -> None:
    store.create(Coupling(mapping, "bc-1", "dv-1"))
    c = store.get(mapping, "dv", "dv-1")
    assert c is not None
    c.snapshot = {"bc": {"x": 1}, "dv": {"x": 1}}
    saved = store.save(c)
    assert store.get(mapping, "dv", "dv-1").snapshot == {"bc": {"x": 1}, "dv": {"x": 1}}  # type: ignore[union-attr]
    store.delete(saved)
    assert list(store.table.query_entities(f"Mapping eq '{mapping}'")) == []


def test_pair_created_by_the_service_is_one_row_found_from_both_sides(
    store: CouplingStore, mapping: str
) -> None:
    from shared.mapping.values import dataverse_id_for

    dv_id = dataverse_id_for(mapping, "bc-42")
    store.create(Coupling(mapping, "bc-42", dv_id))
    rows = list(store.table.query_entities(f"Mapping eq '{mapping}'"))
    assert [r["RowKey"] for r in rows] == [f"dv:{dv_id}"]
    assert store.get(mapping, "bc", "bc-42").dv_id == dv_id  # type: ignore[union-attr]
    assert store.get(mapping, "bc", "bc-43") is None


def test_many_couplings_are_read_with_a_query_per_partition_as_get_finds_them_one_by_one(
    store: CouplingStore, mapping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.mapping.values import dataverse_id_for

    derived = [str(uuid.uuid4()) for _ in range(60)]  # created by the service: no pointer rows
    matched = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(20)]  # coupled by matching
    store.create_many([Coupling(mapping, bc, dataverse_id_for(mapping, bc)) for bc in derived])
    store.create_many([Coupling(mapping, bc, dv) for bc, dv in matched])
    unknown = [str(uuid.uuid4()) for _ in range(5)]
    bc_ids = [*derived, *(bc for bc, _ in matched), *unknown]
    dv_ids = [*(dataverse_id_for(mapping, bc) for bc in derived), *(dv for _, dv in matched), *unknown]

    queries: list[str] = []
    real = store.table.query_entities
    monkeypatch.setattr(store.table, "query_entities", lambda q, **kw: queries.append(q) or real(q, **kw))
    by_bc = store.get_many(mapping, "bc", bc_ids)
    bc_queries = len(queries)
    by_dv = store.get_many(mapping, "dv", dv_ids)

    assert set(by_bc) == set(bc_ids) - set(unknown) and set(by_dv) == set(dv_ids) - set(unknown)
    for bc_id in bc_ids[:-5]:
        one = store.get(mapping, "bc", bc_id)
        assert one is not None and (by_bc[bc_id].dv_id, by_bc[bc_id].etag) == (one.dv_id, one.etag)
    # 85 ids in 16 partitions, at most 14 row keys to a query (Table Storage's 15 comparisons):
    # the derived rows, then the pointers of the 25 not found there, then the rows they point to.
    assert bc_queries <= 3 * 16 + 2 and len(queries) - bc_queries <= 16 + 2
    assert all(q.count(" eq ") <= 15 for q in queries)
