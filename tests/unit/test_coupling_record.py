"""`Coupling.unchanged_since_sync`: how a poll or resync tells a row the last sync left from a
newer change."""

from __future__ import annotations

from shared.store.couplings import Coupling

SECOND = "2026-12-02T08:00:01Z"  # Dataverse's modifiedon: whole seconds


def _synced() -> Coupling:
    return Coupling(
        "CUSTOMER", "b1", "d1", dv_modified=SECOND, dv_etag='W/"1001"', bc_modified="t1", bc_etag="e1"
    )


def test_a_change_in_the_same_second_is_told_apart_by_its_row_version() -> None:
    changed = {"accountid": "d1", "modifiedon": SECOND, "@odata.etag": 'W/"1002"'}
    assert _synced().unchanged_since_sync("dv", changed, "modifiedon") is False


def test_the_row_as_synchronized_is_unchanged() -> None:
    same = {"accountid": "d1", "modifiedon": SECOND, "@odata.etag": 'W/"1001"'}
    assert _synced().unchanged_since_sync("dv", same, "modifiedon") is True


def test_without_an_etag_the_modified_time_decides() -> None:
    assert _synced().unchanged_since_sync("bc", {"lastModifiedDateTime": "t1"}, "lastModifiedDateTime")
    assert not _synced().unchanged_since_sync("bc", {"lastModifiedDateTime": "t2"}, "lastModifiedDateTime")
    older = Coupling("CUSTOMER", "b1", "d1", dv_modified=SECOND)  # stored before ETags were kept
    assert older.unchanged_since_sync("dv", {"modifiedon": SECOND, "@odata.etag": 'W/"9"'}, "modifiedon")
