import datetime as dt

import pytest

from devstack.ncrontab import ScheduleError, parse_schedule

T0 = dt.datetime(2026, 11, 27, 21, 14, 5, tzinfo=dt.UTC)  # a Friday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 */2 * * * *", dt.datetime(2026, 11, 27, 21, 16, 0, tzinfo=dt.UTC)),
        ("*/5 * * * * *", dt.datetime(2026, 11, 27, 21, 14, 10, tzinfo=dt.UTC)),
        ("0 0 2 * * *", dt.datetime(2026, 11, 28, 2, 0, 0, tzinfo=dt.UTC)),
        ("0 30 9 * * mon-fri", dt.datetime(2026, 11, 30, 9, 30, 0, tzinfo=dt.UTC)),
        ("0 0 0 29 feb *", dt.datetime(2028, 2, 29, 0, 0, 0, tzinfo=dt.UTC)),
        ("10,20 14 21 * * *", dt.datetime(2026, 11, 27, 21, 14, 10, tzinfo=dt.UTC)),
    ],
)
def test_next_occurrence(expression: str, expected: dt.datetime) -> None:
    assert parse_schedule(expression).next_after(T0) == expected


def test_next_is_strictly_after() -> None:
    at = dt.datetime(2026, 11, 27, 21, 16, 0, tzinfo=dt.UTC)
    assert parse_schedule("0 */2 * * * *").next_after(at) == at + dt.timedelta(minutes=2)


@pytest.mark.parametrize(
    "expression", ["* * * * *", "61 * * * * *", "0 0 25 * * *", "a b c d e f", "0 5-1 * * * *"]
)
def test_invalid_schedules_are_rejected(expression: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(expression)
