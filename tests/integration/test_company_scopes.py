"""Several BC companies in one storage account: each company's rows under its own keys (Azurite)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shared.companies import key_prefix
from shared.store import tables
from shared.store.company_registry import CompanyRegistry, RegisteredCompany
from shared.store.journal import Journal, JournalEntry
from shared.store.statistics_hashes import PushedHash, StatisticsHashStore
from shared.store.storage import Storage
from shared.store.watermarks import Watermark, WatermarkStore

pytestmark = pytest.mark.integration

HOME = "5c7f2c4e-8d1a-4b6e-9f3a-2d4c6e8a0b1c"
OTHER = "7E9A1B3C-5D7F-4A2B-8C4D-6E8F0A2B4C6D"


@pytest.fixture(autouse=True)
def _tables(storage: Storage) -> None:
    storage.ensure()


def test_watermarks_and_statistics_hashes_are_per_company(storage: Storage) -> None:
    table = storage.table(tables.WATERMARKS)
    home, other = WatermarkStore(table, ""), WatermarkStore(table, key_prefix(OTHER, HOME))
    m = f"M{uuid.uuid4().hex[:6]}"
    home.set(Watermark(m, "bc", "2026-01-01T00:00:00.000Z"))
    assert other.get(m, "bc") is None
    other.set(Watermark(m, "bc", "2026-02-01T00:00:00.000Z"))
    assert home.get(m, "bc").value.startswith("2026-01")  # type: ignore[union-attr]
    assert table.get_entity(m, "bc")["Value"].startswith("2026-01")  # the single-company key
    hashes = StatisticsHashStore(table, key_prefix(OTHER, HOME))
    customer = uuid.uuid4().hex
    hashes.remember([PushedHash(customer, "h", "C1")])
    assert customer not in StatisticsHashStore(table).pushed()
    assert hashes.pushed()[customer] == "h"


def test_journal_entries_and_time_rows_stay_with_their_company(storage: Storage) -> None:
    table = storage.table(tables.JOURNAL)
    home, other = Journal(table, ""), Journal(table, key_prefix(OTHER, HOME))
    at = dt.datetime(2031, 3, 1, 12, tzinfo=dt.UTC)
    mapping = f"M{uuid.uuid4().hex[:6]}"
    for journal, error in ((home, "home failed"), (other, "other failed")):
        journal.record(JournalEntry(mapping=mapping, outcome="failed", bc_id="b1", error=error, at=at))
    assert [e.error for e in home.history(mapping, "bc", "b1")] == ["home failed"]
    assert [e.error for e in other.history(mapping, "bc", "b1")] == ["other failed"]
    span = (at - dt.timedelta(minutes=1), at + dt.timedelta(minutes=1))
    assert [e.error for e in home.between(*span, mapping=mapping)] == ["home failed"]
    assert [e.error for e in other.between(*span, mapping=mapping)] == ["other failed"]


def test_the_company_registry_pins_the_home_company_and_lists_the_companies(storage: Storage) -> None:
    name = f"Registry{uuid.uuid4().hex[:12]}"  # its own table: the registry's partition is fixed
    storage.tables.create_table(name)
    table = storage.table(name)
    registry = CompanyRegistry(table)
    assert registry.pinned_home() is None and registry.companies() == {}
    registry.pin_home(HOME)
    at = dt.datetime(2031, 3, 1, 12, tzinfo=dt.UTC)
    registry.add(HOME, "CRONUS", at=at)
    registry.add(OTHER, "CRONUS Canada", ["run-1", "run-2"], at=at)
    assert registry.pinned_home() == HOME
    found = registry.companies()
    assert set(found) == {HOME.lower(), OTHER.lower()}  # keyed in lower case, the home row not listed
    other = RegisteredCompany(OTHER.lower(), "CRONUS Canada", at.isoformat(), ("run-1", "run-2"))
    assert found[OTHER.lower()] == other
    assert found[HOME.lower()].initial_sync == ()
    # The rows as they have always been stored (partition `companies` of the Watermarks table).
    assert table.get_entity("companies", "home")["Value"] == HOME
    assert table.get_entity("companies", OTHER.lower())["InitialSync"] == "run-1,run-2"
    registry.remove(found[OTHER.lower()])
    assert set(registry.companies()) == {HOME.lower()}
