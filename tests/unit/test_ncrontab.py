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
        # NCrontab (the timer trigger's parser) needs both day fields to match: Friday the 13th.
        ("0 0 0 13 * fri", dt.datetime(2027, 8, 13, 0, 0, 0, tzinfo=dt.UTC)),
        ("0 0 0 1-7 * mon", dt.datetime(2026, 12, 7, 0, 0, 0, tzinfo=dt.UTC)),  # first Monday
        # More than a few years away: NCrontab searches on, so does the dev host.
        ("0 0 0 29 feb mon", dt.datetime(2044, 2, 29, 0, 0, 0, tzinfo=dt.UTC)),
    ],
)
def test_next_occurrence(expression: str, expected: dt.datetime) -> None:
    assert parse_schedule(expression).next_after(T0) == expected


def test_a_schedule_across_a_skipped_leap_day_still_fires() -> None:
    after = dt.datetime(2096, 2, 29, 0, 0, 0, tzinfo=dt.UTC)  # 2100 is no leap year
    assert parse_schedule("0 0 0 29 feb *").next_after(after) == dt.datetime(2104, 2, 29, tzinfo=dt.UTC)


def test_next_is_strictly_after() -> None:
    at = dt.datetime(2026, 11, 27, 21, 16, 0, tzinfo=dt.UTC)
    assert parse_schedule("0 */2 * * * *").next_after(at) == at + dt.timedelta(minutes=2)


@pytest.mark.parametrize(
    "expression",
    ["* * * * *", "61 * * * * *", "0 0 25 * * *", "a b c d e f", "0 5-1 * * * *", "@daily", "0 0 0 L * *"],
)
def test_invalid_schedules_are_rejected(expression: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(expression)


def test_a_schedule_that_never_fires_says_so() -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        parse_schedule("0 0 0 31 feb *").next_after(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
