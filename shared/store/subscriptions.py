"""What registration put in place, mirrored in the `Subscriptions` table.

Two kinds of rows:

- partition `bc`, one row per BC webhook subscription (key: its subscriptionId), with the company,
  entity set, resource and expiry, so `status` can show expiries without asking BC;
- partition `dataverse`, row `endpoint-fingerprint`: a hash of the Dataverse webhook endpoint's URL,
  auth type and secret. Dataverse never returns the secret, so this is how the upkeep timer knows the
  endpoint is still as configured without writing it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.odata import eq

BC_PARTITION = "bc"
FINGERPRINT_ROW = ("dataverse", "endpoint-fingerprint")


@dataclass(frozen=True)
class BcSubscription:
    subscription_id: str
    company: str
    entity_set: str
    resource: str
    expires: str  # as BC wrote it (ISO 8601); "" when BC did not say
    checked_at: str  # ISO 8601, when registration last saw it


class SubscriptionStore:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    # ------------------------------------------------------------------------------------------- BC
    def bc_subscriptions(self) -> Iterator[BcSubscription]:
        """Every recorded BC subscription; none while the table does not exist yet (before setup)."""
        try:
            for row in self.table.query_entities(eq("PartitionKey", BC_PARTITION)):
                yield BcSubscription(
                    subscription_id=str(row["RowKey"]),
                    company=str(row.get("Company", "")),
                    entity_set=str(row.get("EntitySet", "")),
                    resource=str(row.get("Resource", "")),
                    expires=str(row.get("Expires", "")),
                    checked_at=str(row.get("CheckedAt", "")),
                )
        except ResourceNotFoundError:
            return

    def record_bc(self, sub: BcSubscription) -> None:
        self.table.upsert_entity(
            {
                "PartitionKey": BC_PARTITION,
                "RowKey": sub.subscription_id,
                "Company": sub.company,
                "EntitySet": sub.entity_set,
                "Resource": sub.resource,
                "Expires": sub.expires,
                "CheckedAt": sub.checked_at,
            },
            mode=UpdateMode.REPLACE,
        )

    def forget_bc_except(self, live: set[str]) -> None:
        """Delete the rows of subscriptions not in `live` (BC deleted them or let them expire)."""
        rows = self.table.query_entities(eq("PartitionKey", BC_PARTITION), select=["RowKey"])
        for row in list(rows):
            if row["RowKey"] not in live:
                self.table.delete_entity(BC_PARTITION, row["RowKey"])

    # ------------------------------------------------------------------------------------ Dataverse
    def endpoint_fingerprint(self) -> str | None:
        try:
            return str(self.table.get_entity(*FINGERPRINT_ROW).get("Fingerprint") or "") or None
        except ResourceNotFoundError:
            return None

    def set_endpoint_fingerprint(self, fingerprint: str) -> None:
        self.table.upsert_entity(
            {"PartitionKey": FINGERPRINT_ROW[0], "RowKey": FINGERPRINT_ROW[1], "Fingerprint": fingerprint},
            mode=UpdateMode.REPLACE,
        )
