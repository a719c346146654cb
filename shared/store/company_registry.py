"""The BC companies set-up has brought in, and the pinned home company (`shared.companies` has the
model), in the `Watermarks` table, partition `companies`.

- row `home`: `Value`, the home company, pinned by the first set-up so that reordering or removing
  companies in `BC_COMPANY_IDS` never hands its stored rows or untagged Dataverse rows to another;
- one row per company brought in (RowKey its id in lower case): `Name`, `Added`, and `InitialSync`,
  the run ids of the initial sync queued for it.

In `Watermarks` rather than a table of its own for the reason the statistics hashes are: a handful of
rows that say how far set-up got, not worth one more table to create and grant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.odata import eq

COMPANIES_PARTITION = "companies"
HOME_ROW = "home"


@dataclass(frozen=True)
class RegisteredCompany:
    row_key: str  # as stored (set-up writes the id in lower case)
    name: str
    added: str  # ISO 8601
    initial_sync: tuple[str, ...]  # run ids; none for a company synced before it was registered


class CompanyRegistry:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def pinned_home(self) -> str | None:
        try:
            row = self.table.get_entity(COMPANIES_PARTITION, HOME_ROW)
        except ResourceNotFoundError:
            return None
        return str(row.get("Value") or "") or None

    def pin_home(self, company: str) -> None:
        self.table.upsert_entity({"PartitionKey": COMPANIES_PARTITION, "RowKey": HOME_ROW, "Value": company})

    def companies(self) -> dict[str, RegisteredCompany]:
        """Registered companies by id in lower case."""
        found = {}
        for row in self.table.query_entities(eq("PartitionKey", COMPANIES_PARTITION)):
            key = str(row["RowKey"])
            if key == HOME_ROW:
                continue
            runs = str(row.get("InitialSync") or "")
            found[key.lower()] = RegisteredCompany(
                key,
                str(row.get("Name") or ""),
                str(row.get("Added") or ""),
                tuple(filter(None, runs.split(","))),
            )
        return found

    def add(
        self, company: str, name: str, initial_sync: Sequence[str] = (), *, at: dt.datetime | None = None
    ) -> None:
        row = {
            "PartitionKey": COMPANIES_PARTITION,
            "RowKey": company.lower(),
            "Name": name,
            "Added": (at or dt.datetime.now(dt.UTC)).isoformat(),
        }
        if initial_sync:
            row["InitialSync"] = ",".join(initial_sync)
        self.table.upsert_entity(row, mode=UpdateMode.REPLACE)

    def remove(self, company: RegisteredCompany) -> None:
        self.table.delete_entity(COMPANIES_PARTITION, company.row_key)
