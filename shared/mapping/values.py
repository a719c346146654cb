"""Mapped values: read them out of records, compare them, translate them across, and build write bodies.

Values move through three forms:
- *wire*: as the API returns or accepts them (BC `""` / zero GUID for empty, Dataverse `_x_value` on read
  and `x@odata.bind` on write);
- *canonical*: what snapshots hold and merges compare: empty is `None`, GUIDs are lower-case, Dataverse
  lookups are the target id, option sets the option value;
- *translated*: a canonical value of one side turned into the other side's canonical value through the
  field's value map or lookup, normalised for the target (trim, length clamp, rounding).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal, TypeVar

from shared.errors import ServiceError
from shared.mapping.lookups import Lookups
from shared.mapping.schema import EntityMapping, FieldMapping, MappingSet, OptionSetMapping, Side

Record = Mapping[str, Any]
SideType = Literal["text", "number", "boolean", "guid", "date", "datetime", "person_name", "raw"]

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
BC_EMPTY_DATE = "0001-01-01"
BC_EMPTY_DATETIME = "0001-01-01T00:00:00Z"
T = TypeVar("T")

# Fixed forever: changing it would change every deterministic Dataverse id and duplicate records.
DATAVERSE_ID_NAMESPACE = uuid.UUID("6f1c2a4e-5b0d-4d1e-9a37-0c2b8e5f7d10")

SIDE_NAME = {"bc": "BC", "dv": "Dataverse"}


class RecordShapeError(ServiceError, ValueError):
    """A record lacks a mapped field: the caller did not `$select` it (see `queries.select_fields`)."""


class TranslationError(ServiceError, ValueError):
    """A value cannot be carried across; the message says which value and what to change."""


@dataclass(frozen=True)
class MissingLookup:
    """A lookup target that is not coupled (yet)."""

    mapping: str  # the lookup's mapping, e.g. CURRENCY
    side: Side  # side of `value`: "bc" -> value is the BC key (key_field), "dv" -> a Dataverse id
    key_field: str  # BC key field of `mapping` (e.g. "code") or the Dataverse primary key
    value: str
    field: str  # the field mapping that needs it
    resolvable: bool  # syncing `mapping` in this direction can couple it, so waiting makes sense


class LookupMissing(ServiceError):
    def __init__(self, missing: MissingLookup, message: str) -> None:
        super().__init__(message)
        self.missing = missing


def other(side: Side) -> Side:
    return "dv" if side == "bc" else "bc"


def by_side(side: Side, mine: T, theirs: T) -> tuple[T, T]:
    """`(bc, dv)` from a value of `side` and one of the other side: records, ids, snapshots."""
    return (mine, theirs) if side == "bc" else (theirs, mine)


def dataverse_id_for(mapping: EntityMapping | str, bc_id: str, scope: str = "") -> str:
    """Deterministic Dataverse id for the record created from BC record `bc_id`: a retried create finds it.
    `scope` is the company's key prefix (`shared.companies.key_prefix`): BC copies SystemIds when it
    copies a company, so two companies' records may share an id, never a Dataverse row."""
    name = mapping if isinstance(mapping, str) else mapping.name
    return str(uuid.uuid5(DATAVERSE_ID_NAMESPACE, f"{scope}{name}:{str(bc_id).lower()}"))


# -- field shapes ------------------------------------------------------------------------------------


# `MissingLookup.key_field` of a lookup by company contact number (`FieldMapping.bc_company_contact`).
COMPANY_CONTACT_KEY = "company contact number"


def lookup_space(lookup: str, company_contact: bool) -> str:
    """The name `Lookups` keeps a lookup's pairs under: a lookup by company contact number pairs
    other BC values with the same Dataverse ids, so it has its own space."""
    return f"{lookup} by {COMPANY_CONTACT_KEY}" if company_contact else lookup


def lookup_target(ms: MappingSet, f: FieldMapping) -> EntityMapping | OptionSetMapping | None:
    return ms.get(f.lookup) if f.lookup is not None else None


def side_type(ms: MappingSet, f: FieldMapping, side: Side) -> SideType:
    if f.price_list:
        return "guid"
    target = lookup_target(ms, f)
    if target is not None:
        if side == "bc":
            return "guid" if target.bc.key == "id" and not f.bc_company_contact else "text"
        return "guid" if isinstance(target, EntityMapping) else "raw"
    if f.value_map is not None and side == "dv":
        return "raw"
    return f.type


def field_name(ms: MappingSet, f: FieldMapping, side: Side) -> str:
    """The attribute a record holds this field under (Dataverse lookups read as `_x_value`)."""
    if side == "bc":
        assert f.bc is not None
        return f.bc
    assert f.dv is not None
    target = lookup_target(ms, f)
    return f"_{f.dv}_value" if isinstance(target, EntityMapping) or f.price_list else f.dv


# -- reading and comparing -----------------------------------------------------------------------------


def read(ms: MappingSet, f: FieldMapping, side: Side, record: Record) -> Any:
    """The canonical value of field `f` in `record` of `side`."""
    name = field_name(ms, f, side)
    if name not in record:
        raise RecordShapeError(
            f"{SIDE_NAME[side]} record has no {name!r} (field mapping {f.key!r}); include it in $select"
        )
    return canonical(side_type(ms, f, side), record[name])


def canonical(kind: SideType, value: Any) -> Any:
    if value is None:
        return None
    if kind == "guid":
        text = str(value).strip().lower()
        return None if text in ("", ZERO_GUID) else text
    if kind in ("text", "person_name"):
        return value if value != "" else None
    if kind == "date":
        text = str(value)[:10]
        return None if text in ("", BC_EMPTY_DATE) else text
    if kind == "datetime":
        return None if value in ("", BC_EMPTY_DATETIME) else str(value)
    return value


def same(ms: MappingSet, f: FieldMapping, side: Side, a: Any, b: Any) -> bool:
    """Whether two canonical values of `side` are the same for this field (ignoring formatting noise)."""
    kind = side_type(ms, f, side)
    return _comparable(f, kind, a) == _comparable(f, kind, b)


def _comparable(f: FieldMapping, kind: SideType, value: Any) -> Any:
    value = canonical(kind, value)
    if value is None:
        return None
    if kind in ("text", "person_name"):
        text = str(value).strip() if f.trim else str(value)
        return text or None
    if kind == "number":
        number = _decimal(value)
        return _round(f, number) if number is not None else value
    if kind == "raw" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _decimal(value)
    return value


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _round(f: FieldMapping, number: Decimal) -> Decimal:
    if f.minimum is not None and number < Decimal(str(f.minimum)):
        number = Decimal(str(f.minimum))
    if f.decimals is not None:
        number = number.quantize(Decimal(1).scaleb(-f.decimals), rounding=ROUND_HALF_UP)
    return number.normalize() if number == number.to_integral_value() else number


# -- translating ---------------------------------------------------------------------------------------


def constant_value(ms: MappingSet, f: FieldMapping) -> Any:
    if f.price_list:
        assert ms.settings.price_list is not None  # MappingSet checks it
        return ms.settings.price_list.id
    target = f.target_of_constant
    return canonical(side_type(ms, f, target), f.constant)


def translate(
    ms: MappingSet, mapping: EntityMapping, f: FieldMapping, target: Side, value: Any, lookups: Lookups
) -> Any:
    """Turn the other side's canonical `value` into `target`'s canonical value, ready to write.

    Raises `TranslationError` (fail closed: unmapped option value, unknown code) or `LookupMissing`.
    """
    source: Side = other(target)
    value = _normalise(f, side_type(ms, f, source), value)
    if f.bc_card_page is not None:
        link = (
            lookups.bc_web_link(f.bc_card_page, str(value)) if value is not None and target == "dv" else None
        )
        return _fit(f, side_type(ms, f, target), target, link)
    if value is not None and f.value_map is not None:
        value = _through_value_map(mapping, f, target, value)
    lookup = lookup_target(ms, f)
    if isinstance(lookup, EntityMapping):
        value = _through_couplings(ms, mapping, f, lookup, target, value, lookups)
    elif isinstance(lookup, OptionSetMapping) and value is not None:
        value = _through_option_set(mapping, f, lookup, target, value, lookups)
    return _fit(f, side_type(ms, f, target), target, value)


def _normalise(f: FieldMapping, kind: SideType, value: Any) -> Any:
    value = canonical(kind, value)
    if value is None:
        return None
    if kind in ("text", "person_name") and f.trim:
        return str(value).strip() or None
    return value


def _fit(f: FieldMapping, kind: SideType, target: Side, value: Any) -> Any:
    """Normalise for the target: length clamp, rounding, minimum."""
    if value is None:
        return None
    if kind in ("text", "person_name") and isinstance(value, str):
        limit = f.bc_max_length if target == "bc" else f.dv_max_length
        if limit is not None and len(value) > limit:
            value = value[:limit].rstrip() if f.trim else value[:limit]
        return value or None
    if kind == "number":
        number = _decimal(value)
        if number is None:
            raise TranslationError(f"field {f.key!r}: {value!r} is not a number")
        number = _round(f, number)
        return int(number) if number == number.to_integral_value() else float(number)
    return value


def _through_value_map(mapping: EntityMapping, f: FieldMapping, target: Side, value: Any) -> Any:
    assert f.value_map is not None
    if target == "dv":
        code = str(value)
        if code not in f.value_map:
            raise TranslationError(
                f"{mapping.name}: BC {f.bc} value {code!r} has no Dataverse {f.dv} value; "
                f"add {code!r} to value_map of field {f.key!r} in the mapping file"
            )
        return f.value_map[code]
    for code, mapped in f.value_map.items():
        if mapped == value or (_decimal(mapped) is not None and _decimal(mapped) == _decimal(value)):
            return code
    raise TranslationError(
        f"{mapping.name}: Dataverse {f.dv} value {value!r} has no BC {f.bc} value; "
        f"add it to value_map of field {f.key!r} in the mapping file"
    )


def _through_couplings(
    ms: MappingSet,
    mapping: EntityMapping,
    f: FieldMapping,
    lookup: EntityMapping,
    target: Side,
    value: Any,
    lookups: Lookups,
) -> Any:
    local = ms.settings.bc_local_currency_code
    space = lookup_space(lookup.name, f.bc_company_contact)
    bc_key_field = COMPANY_CONTACT_KEY if f.bc_company_contact else lookup.bc.key
    if target == "dv":
        if value is None and lookup.bc_blank_means_local_currency:
            if local is None:
                raise TranslationError(
                    f"{mapping.name}: BC {f.bc} is blank, which means the local currency; "
                    "set settings.bc_local_currency_code (e.g. USD) in the mapping file"
                )
            value = local
        if value is None:
            return None
        found = lookups.dataverse_id(space, str(value))
        if found is None:
            missing = MissingLookup(
                lookup.name, "bc", bc_key_field, str(value), f.key, lookup.writes_to("dv")
            )
            raise LookupMissing(missing, _missing_message(mapping, f, lookup, missing))
        return found.lower()
    if value is None:
        return None
    found = lookups.bc_key(space, str(value))
    if found is None:
        missing = MissingLookup(
            lookup.name, "dv", lookup.dataverse.primary_key, str(value), f.key, lookup.writes_to("bc")
        )
        raise LookupMissing(missing, _missing_message(mapping, f, lookup, missing))
    if lookup.bc_blank_means_local_currency and local is not None and found == local:
        return None
    return found


def _missing_message(mapping: EntityMapping, f: FieldMapping, lookup: EntityMapping, m: MissingLookup) -> str:
    if f.failed_lookup_message is not None:
        return f.failed_lookup_message.replace("{value}", repr(m.value))
    if m.side == "bc":
        what = (
            f"BC {lookup.bc.entity_set} {m.key_field} {m.value!r} is not coupled to a Dataverse "
            f"{lookup.dataverse.table}"
        )
    else:
        what = f"Dataverse {lookup.dataverse.table} {m.value} is not coupled to a BC {lookup.bc.entity_set}"
    if m.resolvable:
        fix = f"sync {lookup.name} first"
    else:
        fix = f"couple it manually ({lookup.name} does not create records in this direction)"
    return f"{mapping.name} field {f.key!r}: {what}; {fix}, or set clear_on_failed_lookup on the field"


def _through_option_set(
    mapping: EntityMapping,
    f: FieldMapping,
    lookup: OptionSetMapping,
    target: Side,
    value: Any,
    lookups: Lookups,
) -> Any:
    reference = lookups.bc_reference(lookup.name) if lookup.needs_reference else None
    if lookup.needs_reference and reference is None:
        raise ValueError(
            f"BC {lookup.bc.entity_set} for option set {lookup.name} not loaded (see lookup_needs)"
        )
    if target == "dv":
        code = str(value)
        if reference is not None:
            row = _find(reference, lookup.bc.key, value)
            if row is None:
                raise TranslationError(
                    f"{mapping.name}: BC {f.bc} {value!r} is not a record of BC {lookup.bc.entity_set}; "
                    "fix the BC record or reload the code table"
                )
            code = str(row[lookup.bc.code_field])
        if code not in lookup.value_map:
            raise TranslationError(
                f"{mapping.name} field {f.key!r}: BC {lookup.bc.entity_set} code {code!r} has no Dataverse "
                f"{lookup.dataverse_column} option; add {code!r} to value_map of {lookup.name} "
                "in the mapping file"
            )
        return lookup.value_map[code]
    codes = [c for c, option in lookup.value_map.items() if _decimal(option) == _decimal(value)]
    if not codes:
        raise TranslationError(
            f"{mapping.name} field {f.key!r}: Dataverse {lookup.dataverse_column} option {value!r} has no BC "
            f"{lookup.bc.entity_set} code; add it to value_map of {lookup.name} in the mapping file"
        )
    if reference is None:
        return codes[0]
    row = _find(reference, lookup.bc.code_field, codes[0])
    if row is None:
        raise TranslationError(
            f"{mapping.name} field {f.key!r}: BC has no {lookup.bc.entity_set} with code {codes[0]!r} "
            f"(value_map of {lookup.name}); create it in BC or fix the value map"
        )
    return canonical("guid" if lookup.bc.key == "id" else "text", row[lookup.bc.key])


def _find(rows: Any, field: str, value: Any) -> Record | None:
    wanted = str(value).lower()
    for row in rows:
        if str(row.get(field, "")).lower() == wanted:
            return row
    return None


# -- write bodies ----------------------------------------------------------------------------------------


def bc_wire(ms: MappingSet, f: FieldMapping, value: Any) -> Any:
    """A canonical value as BC wants it: BC has no null, empty is "" / zero GUID / 0 / false."""
    if value is not None:
        return value
    return {
        "guid": ZERO_GUID,
        "number": 0,
        "boolean": False,
        "date": BC_EMPTY_DATE,
        "datetime": BC_EMPTY_DATETIME,
    }.get(side_type(ms, f, "bc"), "")


def bc_body(ms: MappingSet, values: Iterable[tuple[FieldMapping, Any]]) -> dict[str, Any]:
    return {f.bc: bc_wire(ms, f, v) for f, v in values if f.bc is not None}


def dv_body(ms: MappingSet, values: Iterable[tuple[FieldMapping, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for f, value in values:
        body.update(dv_entries(ms, f, value))
    return body


def dv_entries(ms: MappingSet, f: FieldMapping, value: Any) -> dict[str, Any]:
    """One field's part of a Dataverse body. Lookups bind through the navigation property; null unbinds.

    Null disassociates a single-valued navigation property ("To disassociate, set the value to null"):
    learn.microsoft.com/power-apps/developer/data-platform/webapi/associate-disassociate-entities-using-web-api
    """
    assert f.dv is not None
    if f.price_list:
        nav = f.dv_navigation or f.dv
        return {f"{nav}@odata.bind": None if value is None else f"/{PRICE_LIST_ENTITY_SET}({value})"}
    lookup = lookup_target(ms, f)
    if isinstance(lookup, EntityMapping):
        nav = f.dv_navigation or f.dv
        return {f"{nav}@odata.bind": None if value is None else f"/{lookup.dataverse.entity_set}({value})"}
    if f.type == "person_name":
        first, last = split_person_name(value)
        return {"firstname": first, "lastname": last}
    return {f.dv: value}


# Dataverse's price list table (`pricelevel`), what `FieldMapping.price_list` fields bind to.
PRICE_LIST_ENTITY_SET = "pricelevels"


def split_person_name(full: str | None) -> tuple[str | None, str | None]:
    """'Ann Marie Smith' -> ('Ann Marie', 'Smith'): Dataverse computes fullname as 'first last'."""
    parts = (full or "").split()
    if not parts:
        return None, None
    return (" ".join(parts[:-1]) or None), parts[-1]


def expected_after_write(ms: MappingSet, f: FieldMapping, side: Side, value: Any) -> Any:
    """The canonical value a record will read back after `value` is written (for the expected snapshot)."""
    if side == "bc":
        return canonical(side_type(ms, f, "bc"), bc_wire(ms, f, value))
    if f.type == "person_name":
        first, last = split_person_name(value)
        return " ".join(p for p in (first, last) if p) or None
    return value


def owner_team_bind(ms: MappingSet) -> dict[str, str]:
    team = ms.settings.ownership.team_id
    return {"ownerid@odata.bind": f"/teams({team})"} if team else {}
