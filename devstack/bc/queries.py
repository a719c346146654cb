"""OData query options on an entity set: `$filter`, `$select`, `$orderby`, `$top`, `$skip`,
`$expand`, and server-driven paging with `@odata.nextLink` (docs/bc-sandbox.md#sources).

Paging is keyset-based, as BC's bookmarks are: the `$skiptoken` holds the sort values of the last
row served, so a record modified (and so re-sorted) while a client pages is neither skipped nor
repeated by the rows' shifting. Rows are ordered by `$orderby`, then BC's primary key (`number`
or `code`), then `id`.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devstack.bc.entities import EntitySet
from devstack.bc.errors import BcError, bad_request
from devstack.sandbox_common.odata_query import (
    OrAcrossFieldsError,
    Predicate,
    QueryError,
    UnknownPropertyError,
    compile_filter,
    parse_orderby,
    parse_select,
    sort_key,
)

SUPPORTED_OPTIONS = frozenset(
    {"$filter", "$select", "$orderby", "$top", "$skip", "$expand", "$skiptoken", "$count"}
)


@dataclass(frozen=True)
class QueryOptions:
    select: list[str] | None
    predicate: Predicate | None
    orderby: list[tuple[str, bool]]
    top: int | None
    skip: int
    expand: list[str]
    skiptoken: str | None
    count: bool = False  # `$count=true`: `@odata.count`, the matching rows before `$top`/`$skip`


def parse_options(entity: EntitySet, params: Mapping[str, str]) -> QueryOptions:
    """The query options of a collection GET; `BcError` 400 for anything BC would refuse."""
    unknown = sorted(k for k in params if k.startswith("$") and k not in SUPPORTED_OPTIONS)
    if unknown:
        raise bad_request(f"The query option {unknown[0]} is not supported.")
    fields = list(entity.by_name)
    try:
        text = params.get("$filter")
        predicate = compile_filter(text, fields=fields, or_single_field=True) if text else None
        select = parse_select(params.get("$select"), fields)
        orderby = parse_orderby(params.get("$orderby"), fields)
    except UnknownPropertyError as exc:
        raise unknown_property(entity, exc.name) from None
    except OrAcrossFieldsError as exc:
        # BC's documented known limitation (docs/bc-sandbox.md#sources), answered 501 as BC does.
        raise BcError(501, "BadRequest_MethodNotImplemented", str(exc)) from None
    except QueryError as exc:
        raise bad_request(str(exc)) from None
    expand = [e.strip() for e in params.get("$expand", "").split(",") if e.strip()]
    for name in expand:
        if name not in entity.expands:
            raise unknown_property(entity, name)
    return QueryOptions(
        select=select,
        predicate=predicate,
        orderby=orderby,
        top=_non_negative(params, "$top"),
        skip=_non_negative(params, "$skip") or 0,
        expand=expand,
        skiptoken=params.get("$skiptoken"),
        count=_boolean(params, "$count"),
    )


def _boolean(params: Mapping[str, str], name: str) -> bool:
    raw = params.get(name)
    if raw is None or raw.lower() == "false":
        return False
    if raw.lower() == "true":
        return True
    raise bad_request(f"Invalid value '{raw}' for {name}: true or false is expected.")


def count_rows(rows: Sequence[Mapping[str, Any]], options: QueryOptions) -> int:
    """The rows `$filter` matches, as `/$count` and `@odata.count` report them (paging ignored)."""
    if options.predicate is None:
        return len(rows)
    return sum(1 for row in rows if options.predicate(row))


def unknown_property(entity: EntitySet, name: str) -> BcError:
    """BC's (OData library's) answer to a name in `$select`, `$filter`, `$orderby` or `$expand` that the
    entity type lacks: "Could not find a property named 'x' on type 'Microsoft.NAV.customer'." (the
    code "BadRequest" is unverified; a structural property unknown in a request body has another
    message, see `BcStore._apply_body`)."""
    return bad_request(f"Could not find a property named '{name}' on type '{entity.type_name}'.")


def _non_negative(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise bad_request(f"Invalid value '{raw}' for {name}: a non-negative integer is expected.")
    return int(raw)


class _Descending:
    """Reverses the order of one sort value inside a key tuple."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


def _ordering(entity: EntitySet, orderby: Sequence[tuple[str, bool]]) -> list[tuple[str, bool]]:
    order = list(orderby)
    if entity.key and all(name != entity.key for name, _ in order):
        order.append((entity.key, False))
    order.append(("id", False))
    return order


def _key_function(order: Sequence[tuple[str, bool]]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            _Descending(sort_key(row.get(name))) if descending else sort_key(row.get(name))
            for name, descending in order
        )

    return key


def encode_token(values: list[Any], remaining: int | None) -> str:
    raw = json.dumps({"k": values, "r": remaining}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[list[Any], int | None]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values, remaining = data["k"], data["r"]
        if not isinstance(values, list) or not (remaining is None or isinstance(remaining, int)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise bad_request("The $skiptoken is not valid; start again from the first page.") from None
    return values, remaining


def run_query(
    entity: EntitySet, rows: Sequence[Mapping[str, Any]], options: QueryOptions, page_size: int
) -> tuple[list[Mapping[str, Any]], str | None]:
    """One page of matching rows and the `$skiptoken` of the next page (None on the last)."""
    if options.predicate is not None:
        rows = [row for row in rows if options.predicate(row)]
    order = _ordering(entity, options.orderby)
    key = _key_function(order)
    ordered = sorted(rows, key=key)
    if options.skiptoken:
        values, remaining = decode_token(options.skiptoken)
        if len(values) != len(order):
            raise bad_request(
                "The $skiptoken does not belong to this query; start again from the first page."
            )
        last = key(dict(zip((name for name, _ in order), values, strict=True)))
        start = bisect.bisect_right(ordered, last, key=key)
    else:
        start, remaining = options.skip, options.top
    size = page_size if remaining is None else min(page_size, remaining)
    page = ordered[start : start + size]
    left = None if remaining is None else remaining - len(page)
    more = start + len(page) < len(ordered) and (left is None or left > 0)
    if not more or not page:
        return page, None
    return page, encode_token([page[-1].get(name) for name, _ in order], left)


def to_wire(
    entity: EntitySet, record: Mapping[str, Any], select: Sequence[str] | None = None
) -> dict[str, Any]:
    """A stored record as the API shows it: `@odata.etag` first, then the (selected) fields."""
    out: dict[str, Any] = {"@odata.etag": record["_etag"]}
    for name in select if select is not None else entity.by_name:
        out[name] = record[name]
    return out


def to_wire_computed(
    entity: EntitySet, row: Mapping[str, Any], select: Sequence[str] | None = None
) -> dict[str, Any]:
    """A computed row (no table, no ETag, e.g. `contactsInformation`): the (selected) fields only."""
    return {name: row[name] for name in (select if select is not None else entity.by_name)}


def page_size_from_prefer(prefer: str | None, max_page_size: int) -> int:
    """`Prefer: odata.maxpagesize=N` lowers the page size; above the maximum BC answers 413."""
    if not prefer:
        return max_page_size
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "odata.maxpagesize":
            if not value.strip().isdigit() or int(value) < 1:
                raise bad_request(f"Invalid odata.maxpagesize '{value}'.")
            if int(value) > max_page_size:
                raise BcError(
                    413,
                    "BadRequest_RequestEntityTooLarge",  # (unverified)
                    f"The requested page size {value} exceeds the maximum of {max_page_size}.",
                )
            return int(value)
    return max_page_size
