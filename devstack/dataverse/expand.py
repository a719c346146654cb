"""`$expand` for the Dataverse sandbox: parsing and validating `nav($select=..;$filter=..;...)` lists.

As Dataverse (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/join-tables):
single-valued navigation properties (lookups) take a nested `$select`; collection-valued ones
(one-to-many relationships, `schema.RELATIONSHIPS`) take `$select`, `$filter`, `$orderby` and `$top`.
Anything else (nested `$expand`, `$count`, `$skip`, `$levels`, unknown properties) is refused with a
400 naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from devstack.dataverse import errors
from devstack.dataverse.schema import Column, Table, collection_navigation, single_navigation

SINGLE_OPTIONS: tuple[str, ...] = ("$select",)
COLLECTION_OPTIONS: tuple[str, ...] = ("$select", "$filter", "$orderby", "$top")


@dataclass(frozen=True)
class Expansion:
    name: str
    collection: bool
    column: Column  # single: this table's lookup; collection: the referencing table's lookup
    target: str | None  # single: fixed target logical name (None: the row says); collection: unused
    related: Table | None  # collection: the referencing table
    options: dict[str, str]


def split_top_level(text: str, separator: str) -> list[str]:
    """Split at `separator` outside parentheses and quotes."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0 or quote:
        raise errors.bad_request(f"The $expand '{text}' is malformed: unbalanced parentheses or quotes.")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_expand(
    text: str, table: Table, resolve: Callable[[str], Table | None] | None = None
) -> list[Expansion]:
    single = single_navigation(table)
    collections = collection_navigation(table, resolve) if resolve else collection_navigation(table)
    result: list[Expansion] = []
    for item in split_top_level(text, ","):
        name, _, rest = item.partition("(")
        name = name.strip()
        options: dict[str, str] = {}
        if rest:
            if not rest.endswith(")"):
                raise errors.bad_request(f"The $expand item '{item}' is malformed: expected 'name(options)'.")
            for option in split_top_level(rest[:-1], ";"):
                key, eq, value = option.partition("=")
                if not eq:
                    raise errors.bad_request(
                        f"The $expand option '{option}' is malformed: expected '$name=value'."
                    )
                options[key.strip()] = value.strip()
        if name in single:
            column, target = single[name]
            allowed = SINGLE_OPTIONS
            expansion = Expansion(
                name,
                False,
                column,
                None if len(column.targets) > 1 and not column.per_target_navigation else target,
                None,
                options,
            )
        elif name in collections:
            related, column = collections[name]
            allowed = COLLECTION_OPTIONS
            expansion = Expansion(name, True, column, None, related, options)
        else:
            raise errors.unknown_property(table.logical_name, name)
        for key in options:
            if key not in allowed:
                kind = "collection-valued" if expansion.collection else "single-valued"
                raise errors.bad_request(
                    f"The option '{key}' inside $expand={name}(...) is not supported by the sandbox for a "
                    f"{kind} navigation property (supported: {', '.join(allowed)})."
                )
        result.append(expansion)
    return result
