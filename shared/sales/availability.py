"""Product availability for salespeople: BC's inventory of an item, asked live, cached briefly.

BC API v2.0 has no availability resource (see the resources of
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/); the item's
`inventory` (quantity on hand, in the base unit of measure) is what it offers. An item is found by
its number, or by the Dataverse product coupled to it through the item mapping. Answers are cached
in-process for a few seconds, so a salesperson adding several lines of the same item costs one BC
request.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shared.connectors.business_central import BusinessCentralClient
from shared.errors import ServiceError
from shared.mapping.schema import EntityMapping, MappingSet
from shared.odata import eq
from shared.store.couplings import CouplingStore

if TYPE_CHECKING:
    from shared.runtime import Runtime

CACHE_SECONDS = 10.0
ITEM_FIELDS = ["id", "number", "displayName", "inventory", "baseUnitOfMeasureCode", "blocked"]


class ItemNotFound(ServiceError, LookupError):
    """No such item (answer 404 with the message)."""

    http_status = 404


@dataclass(frozen=True)
class Availability:
    item_number: str
    item_id: str
    description: str
    inventory: float
    unit_of_measure: str
    as_of: str  # when BC was asked (UTC)
    blocked: bool
    product_id: str | None = None  # the coupled Dataverse product, when asked by product
    cached: bool = False


class AvailabilityService:
    def __init__(
        self,
        *,
        bc: BusinessCentralClient,
        company_id: str,
        couplings: CouplingStore,
        item_mapping: EntityMapping | None,
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.bc, self.company_id, self.couplings = bc, company_id, couplings
        self.item_mapping = item_mapping
        self.ttl, self.clock, self.now = ttl, clock, now
        self._cache: dict[str, tuple[float, Availability]] = {}
        self._lock = threading.Lock()

    def by_number(self, number: str) -> Availability:
        number = number.strip()
        if not number or len(number) > 20:
            raise ItemNotFound(f"{number!r} is not an item number (1 to 20 characters)")
        # BC stores code fields upper-case; so must the cache key and the filter.
        key = number.upper()
        cached = self._cached(key)
        if cached is not None:
            return cached
        rows: list[dict[str, Any]] = next(
            iter(
                self.bc.query_pages(
                    self.company_id, "items", select=ITEM_FIELDS, filter=eq("number", key), page_size=1
                )
            ),
            [],
        )
        if not rows:
            raise ItemNotFound(f"Business Central has no item {key}")
        return self._store(key, rows[0])

    def by_product_id(self, product_id: str) -> Availability:
        if self.item_mapping is None:
            raise ItemNotFound("no active mapping couples BC items with Dataverse products")
        coupling = self.couplings.get(self.item_mapping.name, "dv", product_id.lower())
        if coupling is None or not coupling.bc_id:
            raise ItemNotFound(
                f"Dataverse product {product_id} is not coupled to a BC item ({self.item_mapping.name}); "
                "couple it or ask by item number"
            )
        key = f"id:{coupling.bc_id}"
        cached = self._cached(key)
        if cached is None:
            item = self.bc.get(self.company_id, "items", coupling.bc_id, select=ITEM_FIELDS)
            if item is None:
                raise ItemNotFound(f"the BC item coupled to product {product_id} no longer exists")
            cached = self._store(key, item)
        return replace(cached, product_id=product_id.lower())

    def _cached(self, key: str) -> Availability | None:
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or self.clock() - hit[0] >= self.ttl:
            return None
        return replace(hit[1], cached=True)

    def _store(self, key: str, item: dict[str, Any]) -> Availability:
        answer = Availability(
            item_number=str(item.get("number", "")),
            item_id=str(item.get("id", "")),
            description=str(item.get("displayName") or ""),
            inventory=float(item.get("inventory") or 0),
            unit_of_measure=str(item.get("baseUnitOfMeasureCode") or ""),
            as_of=self.now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            blocked=bool(item.get("blocked", False)),
        )
        with self._lock:
            self._cache[key] = (self.clock(), answer)
        return answer


def item_mapping(ms: MappingSet) -> EntityMapping | None:
    """The active mapping that couples BC items (ITEM-PRODUCT in the default file)."""
    return next((m for m in ms.entities() if m.bc.entity_set == "items"), None)


_current: tuple[Any, AvailabilityService] | None = None
_current_lock = threading.Lock()


def availability_service(rt: Runtime) -> AvailabilityService:
    """One service (one cache) per runtime (`rt`: `shared.runtime.Runtime`); a new runtime (settings
    changed) gets a new cache."""
    global _current
    with _current_lock:
        if _current is None or _current[0] is not rt:
            service = AvailabilityService(
                bc=rt.bc,
                company_id=rt.company_id,
                couplings=rt.couplings,
                item_mapping=item_mapping(rt.mappings),
            )
            _current = (rt, service)
        return _current[1]
