"""What a field lookup needs to know, pre-resolved by the engine: couplings and BC code tables.

`reconcile` never reads storage. The engine loads what `queries.lookup_needs` / `lookup_keys` ask for
(coupling rows from Table Storage, small BC code tables such as paymentTerms) into a `Lookups`, usually
a `StaticLookups`, and passes it in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

Record = Mapping[str, Any]


class Lookups(Protocol):
    def dataverse_id(self, mapping: str, bc_key: str) -> str | None:
        """The Dataverse id coupled to the BC record of `mapping` whose key field equals `bc_key`."""
        ...

    def bc_key(self, mapping: str, dataverse_id: str) -> str | None:
        """The key-field value of the BC record of `mapping` coupled to `dataverse_id`."""
        ...

    def bc_reference(self, mapping: str) -> Sequence[Record] | None:
        """BC's code table of an option-set mapping (None: not loaded)."""
        ...

    def bc_web_link(self, page: int, number: str) -> str | None:
        """The BC web client URL opening the record `number` on card `page` (None: no web client known)."""
        ...


@dataclass
class StaticLookups:
    """In-memory `Lookups`: filled by the engine (and tests) before calling `reconcile`."""

    couplings: dict[str, dict[str, str]] = field(default_factory=dict)  # mapping -> {bc key: dataverse id}
    references: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # mapping -> BC records
    # The BC web client with the company, e.g. https://businesscentral.dynamics.com/<tenant>/<env>/?company=X
    web_client: str | None = None

    def couple(self, mapping: str, bc_key: str, dataverse_id: str) -> StaticLookups:
        self.couplings.setdefault(mapping, {})[bc_key] = dataverse_id.lower()
        return self

    def add_reference(self, mapping: str, records: Sequence[Record]) -> StaticLookups:
        self.references[mapping] = [dict(r) for r in records]
        return self

    def dataverse_id(self, mapping: str, bc_key: str) -> str | None:
        return self.couplings.get(mapping, {}).get(bc_key)

    def bc_key(self, mapping: str, dataverse_id: str) -> str | None:
        wanted = dataverse_id.lower()
        for key, dv_id in self.couplings.get(mapping, {}).items():
            if dv_id == wanted:
                return key
        return None

    def bc_reference(self, mapping: str) -> Sequence[Record] | None:
        return self.references.get(mapping)

    def bc_web_link(self, page: int, number: str) -> str | None:
        return web_client_link(self.web_client, page, number) if self.web_client else None


def web_client_link(web_client: str, page: int, number: str) -> str:
    """A deep link to a card page filtered on `No.`, in the web client URL syntax BC documents
    (https://learn.microsoft.com/dynamics365/business-central/dev-itpro/developer/devenv-web-client-urls):
    `<web client>?company=<name>&page=<id>&filter='No.' IS '<number>'`."""
    value = number.replace("'", "''")
    condition = quote(f"'No.' IS '{value}'", safe="'.")
    return f"{web_client}&page={page}&filter={condition}"
