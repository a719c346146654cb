"""Per mapping and side: where the delta poll left off (BC modified time or Dataverse delta link)."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.errors import ServiceError
from shared.store.storage import stored_if_same


@dataclass
class Watermark:
    mapping: str
    side: str
    value: str
    etag: str | None = None


class WatermarkConflictError(ServiceError):
    """Another instance moved the watermark first; its poll covers the same ground."""


class WatermarkStore:
    def __init__(self, table: TableClient, scope: str = "") -> None:
        self.table = table
        self.scope = scope  # the company's key prefix ("" for the home company): `shared.companies`

    def get(self, mapping: str, side: str) -> Watermark | None:
        try:
            e = self.table.get_entity(self.scope + mapping, side)
        except ResourceNotFoundError:
            return None
        return Watermark(mapping, side, e.get("Value", ""), e.metadata["etag"])

    def set(self, mark: Watermark) -> Watermark:
        """Conditional on the ETag it was read with (None = must not exist yet)."""
        # WriteId: only our own write, landed although its response was lost, counts as ours on a
        # conflict; another instance that moved the mark to the same value has won this round.
        entity = {
            "PartitionKey": self.scope + mark.mapping,
            "RowKey": mark.side,
            "Value": mark.value,
            "WriteId": uuid.uuid4().hex,
        }
        try:
            if mark.etag is None:
                meta = self.table.create_entity(entity)
            else:
                meta = self.table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=mark.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            landed = stored_if_same(self.table, entity)  # a resent write may have met its own first try
            if landed is None:
                raise WatermarkConflictError(
                    f"watermark {mark.mapping}/{mark.side} moved concurrently"
                ) from exc
            meta = landed
        return Watermark(mark.mapping, mark.side, mark.value, meta["etag"])

    def clear(self, mapping: str, side: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.table.delete_entity(self.scope + mapping, side)
