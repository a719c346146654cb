"""Resolving what a record refers to: lookups through couplings, BC code tables and BC's own links.

A mapped lookup (a customer's salesperson, a contact's company) is translated through the coupling
of the record it points to: a point read in Table Storage, no API request. What BC keeps in other
ways is found here too, with time-limited caches because it rarely changes: code tables (payment
terms, shipment methods), the key -> id index of a mapped set, the company contacts that link
persons to customers, and the Dataverse currency that stands for BC's blank local currency.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from shared.mapping.lookups import StaticLookups
from shared.mapping.queries import LookupKey, lookup_keys, lookup_needs
from shared.mapping.schema import EntityMapping, MappingSet, OptionSetMapping, Side
from shared.mapping.values import COMPANY_CONTACT_KEY, MissingLookup
from shared.odata import and_, any_eq, eq
from shared.store.couplings import CouplingStore
from shared.sync.gateways import BcGateway, DvGateway, Record

REFERENCE_TTL_SECONDS = 600
ITEMS_PER_INVENTORY_READ = 40


class LookupResolver:
    def __init__(self, mappings: MappingSet, couplings: CouplingStore, bc: BcGateway, dv: DvGateway) -> None:
        self.ms = mappings
        self.couplings = couplings
        self.bc = bc
        self.dv = dv
        self._cache: dict[str, tuple[float, Any]] = {}  # see `_fresh`

    def lookups_for(self, mapping: EntityMapping, bc: Record | None, dv: Record | None) -> StaticLookups:
        """Only the couplings these records refer to, and BC code tables (cached)."""
        lookups = self.code_tables(mapping)
        for side, record in (("bc", bc), ("dv", dv)):
            if record is not None:
                for key in lookup_keys(self.ms, mapping, side, record):  # type: ignore[arg-type]
                    self.resolve(lookups, key)
        return lookups

    def add_lookups(
        self, lookups: StaticLookups, mapping: EntityMapping, side: Side, records: Sequence[Record]
    ) -> None:
        """Add what `records` of `mapping` (a document's lines) refer to, and its code tables."""
        for need in lookup_needs(self.ms, mapping):
            if need.kind == "bc_reference":
                lookups.add_reference(need.mapping, self._code_table(need.mapping, need.bc_entity_set))
        for record in records:
            for key in lookup_keys(self.ms, mapping, side, record):
                self.resolve(lookups, key)

    def code_tables(self, mapping: EntityMapping) -> StaticLookups:
        """Lookups holding the BC code tables `mapping` translates through and nothing else."""
        lookups = StaticLookups()
        for need in lookup_needs(self.ms, mapping):
            if need.kind == "bc_reference":
                lookups.add_reference(need.mapping, self._code_table(need.mapping, need.bc_entity_set))
        if any(f.bc_card_page is not None for f in mapping.fields):
            lookups.web_client = self._fresh("web_client", self.bc.web_client)
        return lookups

    def resolve(self, lookups: StaticLookups, key: LookupKey) -> None:
        """Add the counterpart of `key` to `lookups` when it is known."""
        target = self.ms.entity(key.mapping)
        if key.side == "bc":
            # BC's local currency is usually no record of its currencies: a miss is expected and
            # must not reload the key index every minute.
            local_currency = (
                target.bc_blank_means_local_currency and key.value == self.ms.settings.bc_local_currency_code
            )
            if key.company_contact:
                bc_id = self.related_to_company_contact(target, key.value)
            elif target.bc.key == "id":
                bc_id = key.value
            else:
                bc_id = self._bc_id_for_key(target, key.value, reload_on_miss=not local_currency)
            coupling = self.couplings.get(key.mapping, "bc", bc_id) if bc_id else None
            if coupling is not None and coupling.dv_id:
                lookups.couple(key.space, key.value, coupling.dv_id)
            elif local_currency:
                local = self._local_currency_id(target, key.value)
                if local:
                    lookups.couple(key.space, key.value, local)
            return
        coupling = self.couplings.get(key.mapping, "dv", key.value)
        if coupling is None or not coupling.bc_id:
            # BC's local currency is no record of its currencies, so the Dataverse currency with its
            # ISO code is never coupled: it stands for BC's blank code (as in BC's own connector).
            pair = self.local_currency(target)
            if pair is not None and pair[1] == key.value.lower():
                lookups.couple(key.space, pair[0], key.value)
            return
        if key.company_contact:
            number = self._company_contact_of(target, coupling.bc_id)
            if number:
                lookups.couple(key.space, number, key.value)
            return
        lookups.couple(key.space, coupling.bc_key or coupling.bc_id, key.value)

    def records_waited_for(self, missing: MissingLookup) -> tuple[Side, list[str]]:
        """The side and ids of the record a missing lookup waits for (found by its key on its side)."""
        target = self.ms.entity(missing.mapping)
        if missing.side == "dv" or missing.key_field == "id":
            return missing.side, [missing.value]
        if missing.key_field == COMPANY_CONTACT_KEY:
            bc_id = self.related_to_company_contact(target, missing.value)
            return "bc", [bc_id] if bc_id else []
        rows = self.bc.query_pages(
            target, select=["id"], filter=eq(missing.key_field, missing.value), page_size=2
        )
        return "bc", [str(r["id"]) for r in next(iter(rows), [])]

    # ------------------------------------------------------------------------------ BC keys
    def _bc_id_for_key(self, mapping: EntityMapping, key: str, *, reload_on_miss: bool = True) -> str | None:
        """BC id of the record whose key field (a code, a number) is `key`. The whole key->id
        index of the entity set is read in pages and cached: codes and numbers rarely change, and
        one read serves every later lookup. A miss refreshes it at most once a minute; a miss within
        that minute (a customer created seconds ago, named by an invoice) asks BC for that key alone
        (1 request), so a record never waits a minute for a key BC already has."""

        def load() -> dict[str, str]:
            rows = self.bc.query_set(mapping.bc.entity_set, select=["id", mapping.bc.key])
            return {str(r[mapping.bc.key]): str(r["id"]) for r in rows if r.get(mapping.bc.key)}

        index: dict[str, str] = self._fresh(f"keys:{mapping.name}", load)
        if key not in index and reload_on_miss:
            index = self._fresh(f"keys:{mapping.name}", load, max_age=60)
            if key not in index:
                rows = self.bc.query_set(
                    mapping.bc.entity_set, select=["id", mapping.bc.key], filter=eq(mapping.bc.key, key)
                )
                for row in rows:
                    index[str(row[mapping.bc.key])] = str(row["id"])
        return index.get(key)

    # A person contact's `companyNumber` is its company contact's number. BC's API cannot list
    # contact business relations (contactsInformation answers one related record at a time), so a
    # relation is found per record and remembered: company contact number <-> customer or vendor id.
    def _company_contact_of(self, mapping: EntityMapping, bc_id: str) -> str | None:
        """The number of the company contact BC relates to customer (vendor) `bc_id`: 1 request."""
        links = self._contact_links_of(mapping)
        if bc_id not in links:
            rows = self.bc.related_contacts(mapping, bc_id, filter=eq("contactType", "Company"))
            number = next((str(r["contactNumber"]) for r in rows if r.get("contactNumber")), "")
            links[bc_id] = number  # "" = none, remembered like a link (a deferred record asks again)
            if number:
                links[number] = bc_id
        return links[bc_id] or None

    def related_to_company_contact(self, mapping: EntityMapping, number: str) -> str | None:
        """The customer (vendor) id BC relates company contact `number` to. BC copies a customer's
        name to its company contact, so the customers of that name are the candidates (up to 5),
        read with their relations (`$expand=contactsInformation`): 2 requests for a company contact
        not seen before, however many namesakes it has."""
        links = self._contact_links_of(mapping)
        if number not in links:
            company = self.bc.query_set(
                "contacts", select=["displayName"], filter=and_(eq("number", number), eq("type", "Company")),
                page_size=1,
            )  # fmt: skip
            name = next((str(c["displayName"]) for c in company), None)
            if not name:
                links[number] = ""
                return None
            namesakes = self.bc.query_set(
                mapping.bc.entity_set,
                select=["id"],
                filter=eq("displayName", name),
                page_size=5,
                expand=["contactsInformation"],
            )
            for candidate in itertools.islice(namesakes, 5):
                candidate_id = str(candidate["id"])
                rows = candidate.get("contactsInformation") or []
                found = next(
                    (
                        str(r["contactNumber"])
                        for r in rows
                        if r.get("contactType") == "Company" and r.get("contactNumber")
                    ),
                    "",
                )
                links[candidate_id] = found  # remembered as `_company_contact_of` would
                if found:
                    links[found] = candidate_id
                if found == number:
                    break
            links.setdefault(number, "")
        return links[number] or None

    def _contact_links_of(self, mapping: EntityMapping) -> dict[str, str]:
        """Company contact number <-> customer/vendor id, both directions ("" where BC has none),
        filled as they are found and forgotten after REFERENCE_TTL_SECONDS."""
        links: dict[str, str] = self._fresh(f"contact links:{mapping.name}", dict)
        return links

    # --------------------------------------------------------------------- reference tables
    def local_currency(self, mapping: EntityMapping) -> tuple[str, str] | None:
        """(BC's local currency code, the id of the Dataverse currency standing for it) when
        `mapping` is the currency mapping (`bc_blank_means_local_currency`) and that Dataverse
        currency exists; None otherwise (`bcsync setup` says what to change)."""
        code = self.ms.settings.bc_local_currency_code
        if not mapping.bc_blank_means_local_currency or not code:
            return None
        found = self._local_currency_id(mapping, code)
        return (code, found.lower()) if found else None

    def _local_currency_id(self, mapping: EntityMapping, code: str) -> str | None:
        """BC's local currency is not in its currencies list, so it is never coupled: find the
        Dataverse currency with that ISO code instead."""

        def load() -> str | None:
            iso = next((f.dv for f in mapping.fields if f.bc == mapping.bc.key and f.dv), "isocurrencycode")
            pk = mapping.dataverse.primary_key
            rows = next(
                iter(self.dv.query_pages(mapping, select=[pk], filter=eq(iso, code), page_size=1)), []
            )
            return str(rows[0][pk]) if rows else None

        found: str | None = self._fresh(f"local currency:{mapping.name}:{code}", load)
        return found

    # ------------------------------------------------------------------------- stock on hand
    def item_inventory(self, item_ids: Sequence[str]) -> dict[str, float]:
        """BC item id -> quantity on hand (`inventory`, a FlowField), asked now: 40 items per request
        (their `or` filter stays within the URL budget). Not cached: it is shown as it is."""
        ids = sorted(set(item_ids))
        inventory: dict[str, float] = {}
        for start in range(0, len(ids), ITEMS_PER_INVENTORY_READ):
            chunk = ids[start : start + ITEMS_PER_INVENTORY_READ]
            for item in self.bc.query_set("items", select=["id", "inventory"], filter=any_eq("id", chunk)):
                inventory[str(item["id"])] = float(item.get("inventory") or 0)
        return inventory

    def _code_table(self, mapping_name: str, entity_set: str) -> list[Record]:
        option = self.ms.get(mapping_name)
        select = None
        if isinstance(option, OptionSetMapping):
            select = list(dict.fromkeys(["id", option.bc.key, option.bc.code_field]))
        rows: list[Record] = self._fresh(
            f"reference:{mapping_name}",
            lambda: [dict(r) for r in self.bc.query_set(entity_set, select=select)],
        )
        return rows

    def _fresh(self, name: str, load: Callable[[], Any], max_age: float = REFERENCE_TTL_SECONDS) -> Any:
        """The cached value `name`, loaded again with `load()` once older than `max_age` seconds:
        BC code tables, key indexes and relations rarely change, and one read serves every later
        lookup in this process."""
        entry = self._cache.get(name)
        if entry is None or time.monotonic() - entry[0] > max_age:
            entry = (time.monotonic(), load())
            self._cache[name] = entry
        return entry[1]
