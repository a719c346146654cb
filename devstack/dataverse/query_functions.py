"""Dataverse's query functions (`Microsoft.Dynamics.CRM.<Name>(PropertyName=...,...)`) for `$filter`.

Names and parameters follow Microsoft's Web API query function reference
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/queryfunctions).
Date functions evaluate in UTC against the sandbox clock: the real service uses the caller's time-zone
setting (a documented difference, docs/dataverse-sandbox.md#queries). `In` / `NotIn` are part of the
shared filter parser (devstack/sandbox_common/odata_query.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from devstack.sandbox_common.odata_query import (
    FunctionCall,
    Predicate,
    QueryError,
    QueryFunction,
    Row,
    compare_values,
    parse_instant,
)

PREFIX = "Microsoft.Dynamics.CRM."


def _instant(value: Any) -> dt.datetime | None:
    """A row's date or datetime value as an aware UTC datetime (a date is its midnight)."""
    if value is None:
        return None
    text = str(value)
    try:
        if len(text) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
        return parse_instant(text)
    except (ValueError, QueryError):
        return None


def _day_arg(call: FunctionCall) -> dt.date:
    value = call.arg("PropertyValue")
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise QueryError(f"{call.name}: PropertyValue must be a date (yyyy-mm-dd), got '{value}'.") from None


def _days_arg(call: FunctionCall) -> int:
    value = call.arg("PropertyValue")
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise QueryError(
            f"{call.name}: PropertyValue must be a whole number of days, got '{value}'."
        ) from None
    if days < 0:
        raise QueryError(f"{call.name}: PropertyValue must not be negative, got {days}.")
    return days


def _window(call: FunctionCall, start: dt.datetime, end: dt.datetime, *, end_inclusive: bool) -> Predicate:
    get = call.column(call.arg("PropertyName", str))

    def test(row: Row) -> bool:
        moment = _instant(get(row))
        if moment is None:
            return False
        return start <= moment and (moment <= end if end_inclusive else moment < end)

    return test


def build_query_functions(now: Callable[[], dt.datetime], user_id: str) -> dict[str, QueryFunction]:
    """The query functions for one request: `now` is the sandbox clock, `user_id` the caller."""

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), dt.UTC)

    def today(call: FunctionCall) -> Predicate:
        day = now().astimezone(dt.UTC).date()
        return _window(call, midnight(day), midnight(day + dt.timedelta(days=1)), end_inclusive=False)

    def last_x_days(call: FunctionCall) -> Predicate:
        # From midnight X days ago up to now.
        moment = now().astimezone(dt.UTC)
        start = midnight(moment.date() - dt.timedelta(days=_days_arg(call)))
        return _window(call, start, moment, end_inclusive=True)

    def next_x_days(call: FunctionCall) -> Predicate:
        # From now to the end of the day X days ahead.
        moment = now().astimezone(dt.UTC)
        end = midnight(moment.date() + dt.timedelta(days=_days_arg(call) + 1))
        return _window(call, moment, end, end_inclusive=False)

    def on(call: FunctionCall) -> Predicate:
        day = _day_arg(call)
        return _window(call, midnight(day), midnight(day + dt.timedelta(days=1)), end_inclusive=False)

    def on_or_after(call: FunctionCall) -> Predicate:
        return _window(
            call, midnight(_day_arg(call)), dt.datetime.max.replace(tzinfo=dt.UTC), end_inclusive=True
        )

    def on_or_before(call: FunctionCall) -> Predicate:
        end = midnight(_day_arg(call) + dt.timedelta(days=1))
        return _window(call, dt.datetime.min.replace(tzinfo=dt.UTC), end, end_inclusive=False)

    def between(call: FunctionCall) -> Predicate:
        get = call.column(call.arg("PropertyName", str))
        values = call.arg("PropertyValues", list)
        if len(values) != 2:
            raise QueryError(f"{call.name}: PropertyValues must hold exactly two values [low, high].")
        low, high = (_typed(v) for v in values)
        fold = call.case_insensitive

        def test(row: Row) -> bool:
            value = get(row)
            if value is None:
                return False
            return compare_values("ge", value, low, case_insensitive=fold) and compare_values(
                "le", value, high, case_insensitive=fold
            )

        return test

    def equal_user_id(call: FunctionCall) -> Predicate:
        get = call.column(call.arg("PropertyName", str))
        return lambda row: str(get(row) or "").lower() == user_id.lower()

    def not_equal_user_id(call: FunctionCall) -> Predicate:
        get = call.column(call.arg("PropertyName", str))
        return lambda row: str(get(row) or "").lower() != user_id.lower()

    functions: dict[str, QueryFunction] = {
        "Between": between,
        "Today": today,
        "LastXDays": last_x_days,
        "NextXDays": next_x_days,
        "On": on,
        "OnOrAfter": on_or_after,
        "OnOrBefore": on_or_before,
        "EqualUserId": equal_user_id,
        "NotEqualUserId": not_equal_user_id,
    }
    return {PREFIX + name: fn for name, fn in functions.items()}


def _typed(value: Any) -> Any:
    """`Between` passes its bounds as strings ("1", "2024-01-31"): compare dates as dates."""
    if isinstance(value, str) and len(value) >= 10 and value[4:5] == "-" and value[7:8] == "-":
        moment = _instant(value)
        if moment is not None:
            return moment
    return value
