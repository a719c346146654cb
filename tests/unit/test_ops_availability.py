"""Product availability (pure, with a fake BC client): lookup, cache lifetime, unknown items."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shared.sales.availability import AvailabilityService, ItemNotFound

ITEM = {"id": "i1", "number": "I00010", "displayName": "Desk", "inventory": 7, "baseUnitOfMeasureCode": "PCS"}


class FakeBc:
    def __init__(self) -> None:
        self.filters: list[str] = []
        self.inventory = 7

    def query_pages(self, company: str, entity_set: str, **kw: Any) -> Any:
        self.filters.append(kw["filter"])
        if kw["filter"] == "number eq 'I00010'":
            yield [{**ITEM, "inventory": self.inventory}]
        else:
            yield []


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def service(bc: FakeBc, clock: Clock) -> AvailabilityService:
    return AvailabilityService(
        bc=bc, company_id="co", couplings=None, item_mapping=None, ttl=5, clock=clock,  # type: ignore[arg-type]
        now=lambda: dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
    )  # fmt: skip


def test_numbers_are_looked_up_upper_case_and_cached_for_the_ttl() -> None:
    bc, clock = FakeBc(), Clock()
    svc = service(bc, clock)
    first = svc.by_number(" i00010 ")
    assert (first.item_number, first.inventory, first.unit_of_measure, first.cached) == (
        "I00010",
        7,
        "PCS",
        False,
    )
    assert first.as_of == "2026-03-01T12:00:00Z"

    bc.inventory = 3
    clock.now = 4.9
    assert svc.by_number("I00010").cached is True
    assert len(bc.filters) == 1
    clock.now = 5.0
    fresh = svc.by_number("I00010")
    assert (fresh.inventory, fresh.cached, len(bc.filters)) == (3, False, 2)


def test_unknown_and_malformed_numbers_are_not_found() -> None:
    svc = service(FakeBc(), Clock())
    with pytest.raises(ItemNotFound, match="no item X1"):
        svc.by_number("x1")
    with pytest.raises(ItemNotFound, match="not an item number"):
        svc.by_number("")


def test_products_need_an_item_mapping() -> None:
    with pytest.raises(ItemNotFound, match="no active mapping"):
        service(FakeBc(), Clock()).by_product_id("0d0c0000-0000-4000-8000-000000000001")
