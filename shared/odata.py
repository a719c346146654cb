"""The one OData `$filter` builder: every value goes through `literal`, so quotes are escaped.

Both services speak OData v4: strings are single-quoted with `'` doubled, GUIDs and numbers are
bare, datetimes are ISO 8601 in UTC. Dataverse also has `Microsoft.Dynamics.CRM.In`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

Scalar = str | int | float | bool | Decimal | uuid.UUID | dt.datetime | dt.date | None


def literal(value: Scalar) -> str:
    """Render one value as an OData literal."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in an OData filter: give it a timezone (UTC)")
        utc = value.astimezone(dt.UTC)
        text = utc.strftime("%Y-%m-%dT%H:%M:%S")
        if utc.microsecond:
            text += f".{utc.microsecond // 1000:03d}"
        return text + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot render {type(value).__name__} as an OData literal")


def guid(value: str | uuid.UUID) -> str:
    """A GUID literal, validated so no text can be smuggled in."""
    return str(uuid.UUID(str(value)))


def _cmp(op: str, field: str, value: Scalar) -> str:
    _check_field(field)
    return f"{field} {op} {literal(value)}"


def eq(field: str, value: Scalar) -> str:
    return _cmp("eq", field, value)


def ne(field: str, value: Scalar) -> str:
    return _cmp("ne", field, value)


def gt(field: str, value: Scalar) -> str:
    return _cmp("gt", field, value)


def ge(field: str, value: Scalar) -> str:
    return _cmp("ge", field, value)


def lt(field: str, value: Scalar) -> str:
    return _cmp("lt", field, value)


def le(field: str, value: Scalar) -> str:
    return _cmp("le", field, value)


def and_(*clauses: str) -> str:
    return _join("and", clauses)


def or_(*clauses: str) -> str:
    return _join("or", clauses)


def not_(clause: str) -> str:
    return f"not ({clause})"


def any_eq(field: str, values: Iterable[Scalar]) -> str:
    """`field eq a or field eq b ...`: works on both services (BC has no `in`)."""
    return or_(*(eq(field, v) for v in values))


def dataverse_in(field: str, values: Iterable[Scalar]) -> str:
    """Dataverse's `Microsoft.Dynamics.CRM.In(PropertyName='f',PropertyValues=[...])`.

    Values are rendered as strings, as the documentation's examples do for GUIDs and numbers.
    """
    _check_field(field)
    rendered = ",".join(literal(v if isinstance(v, str) else str(v)) for v in values)
    return f"Microsoft.Dynamics.CRM.In(PropertyName={literal(field)},PropertyValues=[{rendered}])"


# `$filter` text per request of ids or match values joined by `or`: the whole URL stays far below the
# 2,048 characters proxies and IIS accept by default (the ids of 30 records).
URL_FILTER_CHARS = 1500


def or_chunks(clauses: Sequence[str], budget: int = URL_FILTER_CHARS) -> Iterator[list[str]]:
    """`clauses` in groups whose `or_` stays within `budget` characters: one request per group."""
    part: list[str] = []
    size = 0
    for clause in clauses:
        if part and size + len(clause) + 6 > budget:
            yield part
            part, size = [], 0
        part.append(clause)
        size += len(clause) + 6  # " or " and the parentheses `or_` adds
    if part:
        yield part


def _join(op: str, clauses: Iterable[str]) -> str:
    parts = [c for c in clauses if c]
    if not parts:
        raise ValueError(f"'{op}' needs at least one clause")
    if len(parts) == 1:
        return parts[0]
    return f" {op} ".join(f"({p})" for p in parts)


def _check_field(field: str) -> None:
    # Field names come from configuration, never from requests; still, refuse anything that is
    # not a plain (optionally navigation-qualified) identifier so a typo cannot inject syntax.
    if not field or not all(part.replace("_", "a").isalnum() for part in field.split("/")):
        raise ValueError(f"not an OData property name: {field!r}")
