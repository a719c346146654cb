"""Echoes known by their stamp (`shared.sync.echoes`): from a coupling just read, and from the
horizons of the couplings this process stored."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from shared.messages import SyncMessage
from shared.store.couplings import Coupling
from shared.sync.echoes import EchoHorizons, horizon
from shared.timestamps import iso_ms

WRITTEN = dt.datetime(2026, 12, 2, 10, 0, 0, 500000, tzinfo=dt.UTC)


def _settled(bc_id: str = "AB-1") -> Coupling:
    c = Coupling("CUSTOMER", bc_id, "dv-1")
    c.state, c.last_result, c.bc_modified, c.snapshot = "coupled", "modified", iso_ms(WRITTEN), {"bc": {}}
    return c


def _note(stamp: dt.datetime, change: str = "updated", record: str = "ab-1") -> SyncMessage:
    return SyncMessage(mapping="CUSTOMER", side="bc", id=record, change=change, modified=iso_ms(stamp))


def test_a_stored_coupling_makes_the_notification_of_its_write_an_echo_and_nothing_after() -> None:
    echoes = EchoHorizons()
    echoes.stored("", _settled())
    before, after = WRITTEN - dt.timedelta(milliseconds=3), WRITTEN + dt.timedelta(milliseconds=3)
    assert echoes.echo("", _note(before))  # BC ids compared case-insensitively
    assert not echoes.echo("", _note(after))  # a person's change after our read-back
    assert not echoes.echo("", _note(before, change="deleted"))
    assert not echoes.echo("", _note(before).model_copy(update={"modified": None}))  # a poll's
    assert not echoes.echo("other-company:", _note(before))  # another company's coupling store
    assert not echoes.echo("", _note(before).model_copy(update={"mapping": "VENDOR"}))


def test_an_unsettled_write_or_a_deletion_forgets_the_horizon() -> None:
    echoes = EchoHorizons()
    before = WRITTEN - dt.timedelta(milliseconds=3)
    for unsettled in (
        {"last_result": "conflict"},
        {"skipped": True},
        {"state": "pending_bc"},
        {"snapshot": None},
    ):
        echoes.stored("", _settled())
        echoes.stored("", replace(_settled(), **unsettled))
        assert horizon(replace(_settled(), **unsettled)) is None
        assert not echoes.echo("", _note(before)), unsettled
    echoes.stored("", _settled())
    echoes.deleted("", _settled())
    assert not echoes.echo("", _note(before))


def test_horizons_stay_bounded_the_oldest_going_first() -> None:
    echoes = EchoHorizons(max_records=3)
    for n in range(5):
        echoes.stored("", _settled(f"id-{n}"))
    before = WRITTEN - dt.timedelta(milliseconds=3)
    assert [echoes.echo("", _note(before, record=f"id-{n}")) for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_the_coupling_store_reports_every_write_and_deletion() -> None:
    from shared.store.couplings import CouplingStore
    from tests.support.memory import MemoryTable

    echoes = EchoHorizons()
    store = CouplingStore(MemoryTable(), "", echoes)  # type: ignore[arg-type]
    before = WRITTEN - dt.timedelta(milliseconds=3)
    stored = store.create(_settled("ab-1"))
    assert echoes.echo("", _note(before, record="ab-1"))
    store.save(replace(stored, last_result="conflict"))
    assert not echoes.echo("", _note(before, record="ab-1"))
    many = store.create_many(
        [replace(_settled("ab-2"), dv_id="dv-2"), replace(_settled("ab-3"), dv_id="dv-3")]
    )
    assert all(echoes.echo("", _note(before, record=i)) for i in ("ab-2", "ab-3"))
    assert isinstance(many[0], Coupling) and isinstance(many[1], Coupling)
    store.update_many([replace(c, last_result="failed") for c in many if isinstance(c, Coupling)])
    assert not any(echoes.echo("", _note(before, record=i)) for i in ("ab-2", "ab-3"))
    newest = store.get("CUSTOMER", "bc", "ab-1")
    assert newest is not None
    store.save(replace(newest, last_result="modified"))
    assert echoes.echo("", _note(before, record="ab-1"))
    store.delete(store.get("CUSTOMER", "bc", "ab-1"))  # type: ignore[arg-type]
    assert not echoes.echo("", _note(before, record="ab-1"))


def test_a_bc_write_of_a_coalesced_batch_is_known_before_its_coupling_is_stored() -> None:
    """BC may notify before the batch's couplings are stored: the coalescer reports each BC write
    as BC answers it, so its notification is an echo already."""
    from shared.sync.coalesce import converge
    from tests.unit.test_engine import CUSTOMER, Harness

    h = Harness()
    echoes = EchoHorizons()
    reported: list[str] = []
    pairs = [h.coupled_customer(number=f"C{n}", displayName=f"Cust {n}") for n in range(3)]
    for _, dv_id in pairs:
        h.dv.edit(CUSTOMER, dv_id, telephone1="555")

    class Watching:
        def stored(self, scope: str, coupling: Coupling) -> None:
            echoes.stored(scope, coupling)

        def deleted(self, scope: str, coupling: Coupling) -> None:
            echoes.deleted(scope, coupling)

        def wrote(self, scope: str, mapping: str, bc_id: str, bc_modified: str) -> None:
            reported.append(bc_id)
            echoes.wrote(scope, mapping, bc_id, bc_modified)

    h.couplings.observer = Watching()
    converge(h.engine, [SyncMessage(mapping="CUSTOMER", side="dv", id=dv) for _, dv in pairs])
    assert sorted(reported) == sorted(bc for bc, _ in pairs)
    for bc_id, _ in pairs:
        written = h.bc.rows("customers")[bc_id]["lastModifiedDateTime"]
        stamp = dt.datetime.fromisoformat(written.replace("Z", "+00:00")) - dt.timedelta(milliseconds=1)
        assert echoes.echo("", _note(stamp, record=bc_id))
