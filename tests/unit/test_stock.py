"""Which mappings the item ledger refresh serves (shared.sales.stock)."""

from __future__ import annotations

from pathlib import Path

from shared.mapping.loader import load_mapping_set, parse_mapping_set
from shared.sales.stock import stock_mappings

DEFAULT = load_mapping_set(Path(__file__).resolve().parents[2] / "mappings" / "default.yaml")


def test_the_default_mappings_refresh_item_product_only() -> None:
    assert [m.name for m in stock_mappings(DEFAULT)] == ["ITEM-PRODUCT"]


def test_a_mapping_without_inventory_to_dataverse_is_not_refreshed() -> None:
    ms = parse_mapping_set(
        """
version: 1
settings: {ownership: {model: team, team_id: 00000000-0000-0000-0000-0000000000aa}}
mappings:
  - name: ITEMS-NO-STOCK
    bc: {entity_set: items, key: number}
    dataverse: {table: product, entity_set: products}
    fields:
      - {bc: number, dv: productnumber, direction: to_dataverse, match_priority: 1}
  - name: ITEMS-STOCK
    bc: {entity_set: items, key: number}
    dataverse: {table: product, entity_set: products}
    fields:
      - {bc: number, dv: productnumber, direction: to_dataverse, match_priority: 1}
      - {bc: inventory, dv: quantityonhand, direction: to_dataverse, type: number}
"""
    )
    assert [m.name for m in stock_mappings(ms)] == ["ITEMS-STOCK"]
