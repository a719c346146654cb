"""What the engine reads for a mapping: scope filters, `$select` lists, match queries and lookup needs.

Scope filters are kept as structured clauses so the OData `$filter` sent to the service and the in-memory
predicate (`in_scope`, used on records that arrive by webhook or by id) come from one definition.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from shared import odata
from shared.mapping.lookups import Lookups
from shared.mapping.schema import EntityMapping, FilterClause, MappingSet, OptionSetMapping, Side
from shared.mapping.values import (
    LookupMissing,
    Record,
    TranslationError,
    field_name,
    lookup_space,
    lookup_target,
    other,
    read,
    side_type,
    translate,
)

_OPS = {"eq": odata.eq, "ne": odata.ne, "gt": odata.gt, "ge": odata.ge, "lt": odata.lt, "le": odata.le}


def scope_clauses(mapping: EntityMapping, side: Side) -> list[FilterClause]:
    return mapping.bc.filter if side == "bc" else mapping.dataverse.filter


def scope_filter(mapping: EntityMapping, side: Side) -> str | None:
    """The side's scope as an OData `$filter` (None: everything is in scope)."""
    parts = [_OPS[c.op](c.field, c.value) for c in scope_clauses(mapping, side)]
    return odata.and_(*parts) if parts else None


def in_scope(mapping: EntityMapping, side: Side, record: Record) -> bool:
    """Whether `record` satisfies the side's scope filter (the same clauses as `scope_filter`)."""
    for clause in scope_clauses(mapping, side):
        if clause.field not in record:
            raise ValueError(
                f"record lacks scope field {clause.field!r} of {mapping.name}; include it in $select"
            )
        if not _holds(clause, record[clause.field]):
            return False
    return True


def clause_holds(clause: FilterClause, record: Record) -> bool:
    """Whether one filter clause holds for `record` (a field it lacks counts as empty)."""
    return _holds(clause, record.get(clause.field))


def _holds(clause: FilterClause, actual: Any) -> bool:
    expected = clause.value
    if isinstance(actual, str) and isinstance(expected, str) and _is_guid(expected):
        actual, expected = actual.lower(), expected.lower()
    if clause.op in ("eq", "ne"):
        # BC has no null: an empty string is BC's "no value" and `eq null` should match it.
        equal = actual == expected or (actual in (None, "") and expected in (None, ""))
        return equal if clause.op == "eq" else not equal
    if actual is None or expected is None:
        return False
    if clause.op == "gt":
        return actual > expected
    if clause.op == "ge":
        return actual >= expected
    if clause.op == "lt":
        return actual < expected
    return actual <= expected


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def primary_key(mapping: EntityMapping, side: Side) -> str:
    return "id" if side == "bc" else mapping.dataverse.primary_key


def record_id(mapping: EntityMapping, side: Side, record: Record | None) -> str | None:
    """The record's id on `side` (BC `id`, or the Dataverse primary key), None without one."""
    if record is None:
        return None
    value = record.get(primary_key(mapping, side))
    return str(value) if value else None


# Dataverse's `modifiedby` lookup as the Web API returns it: the systemuser who saved the row last.
DV_MODIFIED_BY = "_modifiedby_value"


def modified_field(mapping: EntityMapping, side: Side) -> str:
    return mapping.bc.modified_field if side == "bc" else mapping.dataverse.modified_field


def select_fields(ms: MappingSet, mapping: EntityMapping, side: Side) -> list[str]:
    """Everything `reconcile` reads from a record of `side`: use as `$select`."""
    names = [primary_key(mapping, side), modified_field(mapping, side)]
    if side == "bc":
        names.append(mapping.bc.key)
    else:
        names.append(DV_MODIFIED_BY)  # who made a change, for the journal (BC API v2.0 does not say)
    names += [c.field for c in scope_clauses(mapping, side)]
    for f in mapping.fields:
        if (f.bc if side == "bc" else f.dv) is not None:
            names.append(field_name(ms, f, side))
    if side == "dv" and mapping.from_quote is not None:
        names.append(f"_{mapping.from_quote.quote_column}_value")
    if side == "bc" and mapping.fulfil is not None:
        names.append(mapping.fulfil.bc_field)
    if side == "dv" and mapping.fulfil is not None:
        names.append("statecode")
    return list(dict.fromkeys(names))


def match_values(
    ms: MappingSet, mapping: EntityMapping, record: Record, side: Side, lookups: Lookups
) -> list[tuple[int, list[tuple[str, Any]]]]:
    """Per match priority (ascending), the *other* side's fields and the values a counterpart of
    `record` has there: what `match_queries` turns into filters, and what the coalesced path
    (`shared.sync.coalesce`) compares rows of one combined query against.

    Fields of one priority are ANDed; empty values are left out (as the built-in connector does);
    a priority whose values are all empty, or cannot be translated yet, yields nothing.
    """
    target = other(side)
    groups: dict[int, list[tuple[str, Any]]] = {}
    skipped: set[int] = set()
    for f in mapping.fields:
        if f.match_priority is None or f.has_constant:
            continue
        try:
            value = translate(ms, mapping, f, target, read(ms, f, side, record), lookups)
        except (LookupMissing, TranslationError):
            skipped.add(f.match_priority)
            continue
        if value is None:
            continue
        literal_value: Any = uuid.UUID(value) if side_type(ms, f, target) == "guid" else value
        groups.setdefault(f.match_priority, []).append((field_name(ms, f, target), literal_value))
    return [(priority, groups[priority]) for priority in sorted(groups) if priority not in skipped]


def match_queries(
    ms: MappingSet, mapping: EntityMapping, record: Record, side: Side, lookups: Lookups
) -> list[tuple[int, str]]:
    """OData filters on the *other* side finding counterparts of `record`, by ascending match priority
    (the values of `match_values`, with the other side's scope)."""
    scope = scope_filter(mapping, other(side))
    return [
        (priority, odata.and_(*[odata.eq(name, value) for name, value in pairs], *([scope] if scope else [])))
        for priority, pairs in match_values(ms, mapping, record, side, lookups)
    ]


@dataclass(frozen=True)
class LookupNeed:
    """Something the engine loads into `Lookups` before reconciling records of a mapping.

    kind "couplings": couplings of `mapping` keyed by the BC field `bc_key` (Lookups.dataverse_id/bc_key);
    kind "bc_reference": the BC code table `bc_entity_set` (Lookups.bc_reference).
    """

    mapping: str
    kind: Literal["couplings", "bc_reference"]
    bc_entity_set: str
    bc_key: str
    fields: tuple[str, ...]  # field mappings that use it


def lookup_needs(ms: MappingSet, mapping: EntityMapping) -> list[LookupNeed]:
    found: dict[str, LookupNeed] = {}
    for f in mapping.fields:
        target = lookup_target(ms, f)
        if target is None or (isinstance(target, OptionSetMapping) and not target.needs_reference):
            continue
        kind: Literal["couplings", "bc_reference"] = (
            "couplings" if isinstance(target, EntityMapping) else "bc_reference"
        )
        previous = found.get(target.name)
        fields = (*previous.fields, f.key) if previous else (f.key,)
        found[target.name] = LookupNeed(target.name, kind, target.bc.entity_set, target.bc.key, fields)
    return list(found.values())


@dataclass(frozen=True)
class LookupKey:
    """One coupling a record's lookups need: BC key value (side "bc") or Dataverse id (side "dv")."""

    mapping: str
    side: Side
    value: str
    company_contact: bool = False  # BC value is the target's company contact number (bc_company_contact)

    @property
    def space(self) -> str:
        return lookup_space(self.mapping, self.company_contact)


def lookup_keys(ms: MappingSet, mapping: EntityMapping, side: Side, record: Record) -> list[LookupKey]:
    """The couplings `record`'s lookups need, so the engine can load just those instead of all."""
    keys: list[LookupKey] = []
    for f in mapping.fields:
        target = lookup_target(ms, f)
        if not isinstance(target, EntityMapping) or (f.bc if side == "bc" else f.dv) is None:
            continue
        if field_name(ms, f, side) not in record:
            continue
        value = read(ms, f, side, record)
        if value is None and side == "bc" and target.bc_blank_means_local_currency:
            value = ms.settings.bc_local_currency_code
        if value is not None:
            keys.append(LookupKey(target.name, side, str(value), f.bc_company_contact))
    return list(dict.fromkeys(keys))
