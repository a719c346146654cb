"""The Dataverse sandbox store without HTTP: transactions, keys, paging, the change log."""

from __future__ import annotations

import datetime as dt

import pytest

from devstack.dataverse.errors import DataverseError
from devstack.dataverse.store import Caller, ChangeEvent, Store
from devstack.sandbox_common.odata_query import compile_filter

CALLER = Caller("a1b2c3d4-0000-4000-8000-000000000001", "d2c3a8f0-5a1b-4b7e-9f00-000000000b01")


@pytest.fixture
def store() -> Store:
    return Store(lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_failed_transaction_undoes_rows_keys_log_and_events(store: Store) -> None:
    events: list[ChangeEvent] = []
    store.on_commit = events.extend
    kept = store.create("products", {"name": "kept", "productnumber": "K"}, CALLER)
    before = store.current_version()
    with pytest.raises(DataverseError), store.transaction():
        store.update("products", kept["productid"], {"productnumber": "K2"}, CALLER)
        store.create("products", {"name": "gone", "productnumber": "G"}, CALLER)
        store.create("products", {"name": "x" * 1000}, CALLER)
    assert [r["name"] for r in store.table("products").rows.values()] == ["kept"]
    assert store.resolve_key("products", {"productnumber": "K"}) == kept["productid"]
    assert store.resolve_key("products", {"productnumber": "G"}) is None
    assert store.changes("products", before, store.current_version()) == ([], [])
    assert [e.message for e in events] == ["Create"]


def test_paging_by_primary_key_continues_after_the_last_id(store: Store) -> None:
    ids = store.seed("accounts", [{"name": f"n{i}", "numberofemployees": i} for i in range(10)], CALLER)
    even = compile_filter("numberofemployees lt 100")
    first, more = store.page("accounts", even, [], 4)
    second, _ = store.page("accounts", even, [], 4, after_id=first[-1]["accountid"])
    third, last_more = store.page("accounts", even, [], 4, after_id=second[-1]["accountid"])
    assert more and not last_more
    assert [r["accountid"] for r in first + second + third] == sorted(ids)


def test_changes_list_each_row_once_in_change_order(store: Store) -> None:
    a = store.create("accounts", {"name": "a"}, CALLER)
    b = store.create("accounts", {"name": "b"}, CALLER)
    mark = store.current_version()
    store.update("accounts", a["accountid"], {"name": "a1"}, CALLER)
    store.update("accounts", b["accountid"], {"name": "b1"}, CALLER)
    store.update("accounts", a["accountid"], {"name": "a2"}, CALLER)
    store.delete("accounts", b["accountid"], CALLER)
    upserted, deleted = store.changes("accounts", mark, store.current_version())
    assert [r["name"] for r in upserted] == ["a2"]
    assert deleted == [b["accountid"]]


def test_etag_is_the_row_version(store: Store) -> None:
    row = store.create("accounts", {"name": "a"}, CALLER)
    with pytest.raises(DataverseError) as info:
        store.update("accounts", row["accountid"], {"name": "b"}, CALLER, if_match='W/"1"')
    assert info.value.status == 412
    updated = store.update(
        "accounts", row["accountid"], {"name": "b"}, CALLER, if_match=f'W/"{row["versionnumber"]}"'
    )
    assert updated["versionnumber"] > row["versionnumber"]
