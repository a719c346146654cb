"""The metadata endpoints of the Web API over `metadata.py`: service document, `$metadata`,
`EntityDefinitions` (by MetadataId or `LogicalName='x'`), `/Attributes` (with typed casts and
`$expand=OptionSet`) and `/Keys`. Reads only: creating tables, columns and keys (POST) and turning on
change tracking (PUT of a definition) are `api.WebApi`'s and `customization.py`'s.

Query options as Dataverse's metadata queries take them
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query-metadata-web-api):
`$select`, `$filter`, `$expand`; anything else is refused with a 400 naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from devstack.dataverse import errors, metadata
from devstack.dataverse.expand import split_top_level
from devstack.dataverse.schema import RELATIONSHIPS, Column, Kind, Table
from devstack.sandbox_common.odata_query import QueryError, UnknownPropertyError, compile_filter, parse_select

PATH = re.compile(
    r"^EntityDefinitions(?:\((?P<key>[^)]*)\))?"
    r"(?:/(?P<nav>Attributes|Keys)(?:\((?P<akey>[^)]*)\))?(?:/Microsoft\.Dynamics\.CRM\.(?P<cast>\w+))?)?$"
)
_LOGICAL_KEY = re.compile(r"^LogicalName='(?P<name>[^']*)'$")
_OPTIONS = frozenset({"$select", "$filter", "$expand"})
_ENTITY_EXPANDS = ("Attributes", "Keys")
_ATTRIBUTE_EXPANDS = ("OptionSet",)
_CASTS = {
    "StringAttributeMetadata",
    "MemoAttributeMetadata",
    "IntegerAttributeMetadata",
    "BigIntAttributeMetadata",
    "DecimalAttributeMetadata",
    "MoneyAttributeMetadata",
    "BooleanAttributeMetadata",
    "DateTimeAttributeMetadata",
    "UniqueIdentifierAttributeMetadata",
    "PicklistAttributeMetadata",
    "StateAttributeMetadata",
    "StatusAttributeMetadata",
    "LookupAttributeMetadata",
}

Json = dict[str, Any]


def service_document(tables: Sequence[Table], base_url: str) -> Json:
    sets = [{"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set} for t in tables]
    sets.append({"name": "EntityDefinitions", "kind": "EntitySet", "url": "EntityDefinitions"})
    return {"@odata.context": f"{base_url}$metadata", "value": sets}


def handle(method: str, path: str, query: Mapping[str, str], tables: Sequence[Table], base_url: str) -> Json:
    """The JSON answer to a GET on an `EntityDefinitions` path (raises `DataverseError`)."""
    if method != "GET":
        raise errors.bad_request(
            f"The sandbox does not implement {method} on {path}: it creates tables (POST EntityDefinitions), "
            "columns (POST .../Attributes) and alternate keys (POST .../Keys), and changes nothing else."
        )
    match = PATH.match(path)
    if not match:
        raise errors.segment_not_found(path)
    for name in query:
        if name not in _OPTIONS and not name.startswith("@"):
            raise errors.bad_request(
                f"The query option '{name}' is not supported on metadata queries by the sandbox "
                f"(supported: {', '.join(sorted(_OPTIONS))})."
            )
    context = f"{base_url}$metadata#"
    if match.group("key") is None:
        if match.group("nav"):
            raise errors.segment_not_found(match.group("nav"))
        kept = _matching(tables, [metadata.entity(t) for t in tables], query, "EntityMetadata")
        return {
            "@odata.context": context + "EntityDefinitions",
            "value": [_entity_row(t, query) for t in kept],
        }
    table = find_table(match.group("key"), tables)
    nav, akey, cast = match.group("nav"), match.group("akey"), match.group("cast")
    if nav is None:
        return {"@odata.context": context + "EntityDefinitions/$entity", **_entity_row(table, query)}
    if nav == "Keys":
        if akey is not None or cast is not None:
            raise errors.segment_not_found(path.rsplit("/", 1)[-1])
        return {"@odata.context": context + "EntityDefinitions/Keys", "value": _key_rows(table, query)}
    if cast is not None and cast not in _CASTS:
        raise errors.segment_not_found(f"Microsoft.Dynamics.CRM.{cast}")
    columns = _columns(table, cast)
    if akey is not None:
        column = _find_column(akey, table, columns)
        entity_context = context + "EntityDefinitions/Attributes/$entity"
        return {"@odata.context": entity_context, **_attribute_row(table, column, query)}
    suffix = f"/Microsoft.Dynamics.CRM.{cast}" if cast else ""
    return {
        "@odata.context": context + f"EntityDefinitions/Attributes{suffix}",
        "value": _attribute_rows(table, columns, query),
    }


def _matching(items: Sequence[Any], rows: list[Json], query: Mapping[str, str], type_name: str) -> list[Any]:
    """The items whose full metadata rows pass `$filter` (filtered before `$select` projects them)."""
    text = query.get("$filter")
    if not text or not rows:
        return list(items)
    fields = set().union(*(r.keys() for r in rows))
    aliases = {k: v for k, v in query.items() if k.startswith("@")}
    try:
        predicate = compile_filter(text, fields=fields, aliases=aliases)
    except UnknownPropertyError as exc:
        raise _unknown(type_name, exc.name) from None
    except QueryError as exc:
        raise errors.bad_request(str(exc)) from None
    return [item for item, row in zip(items, rows, strict=True) if predicate(row)]


def _key_rows(table: Table, query: Mapping[str, str]) -> list[Json]:
    rows = [metadata.key(table, k) for k in table.alternate_keys]
    return [
        _project(r, query, "EntityKeyMetadata") for r in _matching(rows, rows, query, "EntityKeyMetadata")
    ]


def _attribute_rows(table: Table, columns: Sequence[Column], query: Mapping[str, str]) -> list[Json]:
    full = [metadata.attribute(table, c) for c in columns]
    return [_attribute_row(table, c, query) for c in _matching(columns, full, query, "AttributeMetadata")]


def find_table(key: str, tables: Sequence[Table]) -> Table:
    logical = _LOGICAL_KEY.match(key)
    for table in tables:
        if (logical and table.logical_name == logical.group("name")) or (
            not logical and metadata.metadata_id(table.logical_name) == key.strip().lower()
        ):
            return table
    raise errors.DataverseError(
        404, f"Could not find entity with key {key}.", "0x80040217"
    )  # as the live service says for an unknown table


def _find_column(key: str, table: Table, columns: Sequence[Column]) -> Column:
    logical = _LOGICAL_KEY.match(key)
    for column in columns:
        if (logical and column.name == logical.group("name")) or (
            not logical and metadata.metadata_id(table.logical_name, column.name) == key.strip().lower()
        ):
            return column
    raise errors.DataverseError(
        404, f"Could not find attribute with key {key} on entity {table.logical_name}.", "0x80040217"
    )


def _columns(table: Table, cast: str | None) -> list[Column]:
    columns = metadata.columns_of(table)
    if cast is None:
        return columns
    return [c for c in columns if metadata.attribute_type(table, c)[2] == cast]


def _expansions(query: Mapping[str, str], allowed: Sequence[str]) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    for item in split_top_level(query.get("$expand") or "", ","):
        name, _, rest = item.partition("(")
        name = name.strip()
        if name not in allowed:
            raise errors.bad_request(
                f"The sandbox cannot $expand '{name}' here (supported: {', '.join(allowed)})."
            )
        options: dict[str, str] = {}
        for option in split_top_level(rest[:-1] if rest.endswith(")") else rest, ";"):
            key, _, value = option.partition("=")
            if key.strip() not in _OPTIONS:
                raise errors.bad_request(
                    f"The option '{key.strip()}' inside $expand={name}(...) is not supported."
                )
            options[key.strip()] = value.strip()
        result[name] = options
    return result


def _project(row: Json, query: Mapping[str, str], type_name: str) -> Json:
    try:
        select = parse_select(query.get("$select"), row)
    except UnknownPropertyError as exc:
        raise _unknown(type_name, exc.name) from None
    if select is None:
        return row
    keep = {*select, "MetadataId", "@odata.type"}  # the key (and derived type) always come back
    return {k: v for k, v in row.items() if k in keep}


def _unknown(type_name: str, name: str) -> errors.DataverseError:
    return errors.bad_request(
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'."
    )


def _entity_row(table: Table, query: Mapping[str, str]) -> Json:
    row = _project(metadata.entity(table), query, "EntityMetadata")
    for name, options in _expansions(query, _ENTITY_EXPANDS).items():
        if name == "Attributes":
            row["Attributes"] = _attribute_rows(table, metadata.columns_of(table), options)
        else:
            row["Keys"] = _key_rows(table, options)
    return row


def _attribute_row(table: Table, column: Column, query: Mapping[str, str]) -> Json:
    row = _project(metadata.attribute(table, column), query, "AttributeMetadata")
    expansions = _expansions(query, _ATTRIBUTE_EXPANDS)
    if "OptionSet" in expansions:
        if column.kind is not Kind.CHOICE:
            raise errors.bad_request(
                "OptionSet is a navigation property of the choice attribute types: cast to "
                "Microsoft.Dynamics.CRM.PicklistAttributeMetadata (or State/Status) to expand it."
            )
        option_set = metadata.option_set(table, column)
        row["OptionSet"] = _project(option_set, expansions["OptionSet"], "OptionSetMetadata")
    return row


# --- RelationshipDefinitions ---------------------------------------------------------------------

_RELATIONSHIP_PATH = re.compile(
    r"^RelationshipDefinitions(?:\((?P<key>[^)]*)\))?(?:/Microsoft\.Dynamics\.CRM\.(?P<cast>\w+))?$"
)
_SCHEMA_KEY = re.compile(r"^SchemaName='(?P<name>[^']*)'$")


def relationship_rows(tables: Sequence[Table]) -> list[Json]:
    """OneToManyRelationshipMetadata of the relationships the sandbox knows: the standard ones
    (`schema.RELATIONSHIPS`) and one per lookup of a table created at run time."""
    known = {t.logical_name: t for t in tables}
    rows: list[Json] = []
    for (referencing, column_name, referenced), name in sorted(RELATIONSHIPS.items(), key=lambda i: i[1]):
        if referencing in known and referenced in known:
            rows.append(_relationship(name, referencing, column_name, referenced, known[referenced]))
    for table in tables:
        if not table.enforce_privileges:
            continue
        for column in table.columns.values():
            if column.kind is Kind.LOOKUP and not column.read_only and column.name != "ownerid":
                for target in column.targets:
                    if target in known:
                        name = f"{target}_{table.logical_name}_{column.name}"
                        rows.append(
                            _relationship(name, table.logical_name, column.name, target, known[target])
                        )
    return rows


def _relationship(name: str, referencing: str, column: str, referenced: str, target: Table) -> Json:
    return {
        "@odata.type": "#Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "MetadataId": metadata.metadata_id("relationship", name),
        "SchemaName": name,
        "RelationshipType": "OneToManyRelationship",
        "IsCustomRelationship": referencing.startswith("bcs_") or column.startswith("bcs_"),
        "ReferencedEntity": referenced,
        "ReferencedAttribute": target.primary_key,
        "ReferencingEntity": referencing,
        "ReferencingAttribute": column,
        "ReferencedEntityNavigationPropertyName": name,
        "ReferencingEntityNavigationPropertyName": column,
    }


def handle_relationships(path: str, query: Mapping[str, str], tables: Sequence[Table], base_url: str) -> Json:
    match = _RELATIONSHIP_PATH.match(path)
    if not match:
        raise errors.segment_not_found(path)
    cast = match.group("cast")
    if cast is not None and cast not in ("OneToManyRelationshipMetadata", "RelationshipMetadataBase"):
        raise errors.segment_not_found(f"Microsoft.Dynamics.CRM.{cast}")
    for name in query:
        if name not in ("$select", "$filter") and not name.startswith("@"):
            raise errors.bad_request(
                f"The query option '{name}' is not supported on RelationshipDefinitions by the sandbox "
                "(supported: $filter, $select)."
            )
    rows = relationship_rows(tables)
    context = f"{base_url}$metadata#RelationshipDefinitions"
    key = match.group("key")
    if key is None:
        kept = _matching(rows, rows, query, "RelationshipMetadataBase")
        return {
            "@odata.context": context,
            "value": [_project(r, query, "RelationshipMetadataBase") for r in kept],
        }
    by_name = _SCHEMA_KEY.match(key)
    for row in rows:
        if (by_name and row["SchemaName"] == by_name.group("name")) or (
            not by_name and row["MetadataId"] == key.strip().lower()
        ):
            return {
                "@odata.context": context + "/$entity",
                **_project(row, query, "RelationshipMetadataBase"),
            }
    raise errors.DataverseError(404, f"Could not find relationship with key {key}.", "0x80040217")
