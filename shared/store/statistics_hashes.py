"""Per BC customer: a hash of the statistics last pushed to Dataverse, so unchanged ones cost no write.

Kept in the `Watermarks` table (partition `statistics`): like a watermark it says how far a job got,
and a separate table would be one more thing to create and grant for four rows' worth of purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from azure.data.tables import TableClient, UpdateMode

from shared.odata import eq
from shared.store.transactions import submit_transaction

HASH_PARTITION = "statistics"
# Table Storage takes at most 100 operations per transaction.
TABLE_TRANSACTION_ROWS = 100


@dataclass(frozen=True)
class PushedHash:
    customer_id: str
    hash: str
    number: str  # the BC customer number, for a person reading the table


class StatisticsHashStore:
    def __init__(self, table: TableClient, scope: str = "") -> None:
        self.table = table
        # Partition `statistics` for the home company, `<company id>:statistics` for the others.
        self.partition = scope + HASH_PARTITION

    def pushed(self) -> dict[str, str]:
        """BC customer id -> hash of the figures last pushed."""
        rows = self.table.query_entities(eq("PartitionKey", self.partition), select=["RowKey", "Hash"])
        return {str(r["RowKey"]): str(r.get("Hash", "")) for r in rows}

    def remember(self, hashes: Iterable[PushedHash]) -> None:
        entities = [
            {"PartitionKey": self.partition, "RowKey": h.customer_id, "Hash": h.hash, "Number": h.number}
            for h in hashes
        ]
        for start in range(0, len(entities), TABLE_TRANSACTION_ROWS):
            chunk = entities[start : start + TABLE_TRANSACTION_ROWS]
            submit_transaction(self.table, [("upsert", e, {"mode": UpdateMode.REPLACE}) for e in chunk])
