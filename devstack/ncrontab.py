"""NCRONTAB schedules as the Functions timer trigger reads them: 6 fields, UTC.

`{second} {minute} {hour} {day} {month} {day-of-week}`; each field takes `*`, numbers, ranges
`a-b`, lists `a,b`, and steps `*/n` or `a-b/n`; months and weekdays also take 3-letter names.
Day-of-month and day-of-week combine like cron: when both are restricted, either may match.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS = (  # name, lowest, highest, names
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    def matches_date(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first occurrence strictly after `moment` (aware, UTC)."""
        t = moment.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        for _ in range(366 * 5):  # days; a valid schedule always matches within a few years
            if self.matches_date(t.date()):
                found = self._first_time_on_or_after(t)
                if found is not None:
                    return found
            t = dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        raise ScheduleError(f"schedule {self.expression!r} never fires")

    def _first_time_on_or_after(self, t: dt.datetime) -> dt.datetime | None:
        for hour in sorted(h for h in self.hours if h >= t.hour):
            for minute in sorted(self.minutes):
                if hour == t.hour and minute < t.minute:
                    continue
                for second in sorted(self.seconds):
                    if hour == t.hour and minute == t.minute and second < t.second:
                        continue
                    return t.replace(hour=hour, minute=minute, second=second)
        return None


def parse_schedule(expression: str) -> Schedule:
    parts = expression.split()
    if len(parts) != 6:
        raise ScheduleError(
            f"NCRONTAB needs 6 fields (second minute hour day month day-of-week), got {len(parts)}: "
            f"{expression!r}"
        )
    sets = [_parse_field(text, *spec) for text, spec in zip(parts, _FIELDS, strict=True)]
    return Schedule(
        expression,
        *sets,
        days_restricted=parts[3] != "*",
        weekdays_restricted=parts[5] != "*",
    )


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            elif "-" in base:
                a, b = base.split("-", 1)
                start, end = _value(a, names), _value(b, names)
            else:
                start = _value(base, names)
                end = high if step_text else start
        except ValueError:
            raise ScheduleError(f"bad {name} field {text!r}") from None
        if step < 1 or not (low <= start <= high and low <= end <= high) or start > end:
            raise ScheduleError(f"{name} field {text!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, names: dict[str, int]) -> int:
    return names[text] if text in names else int(text)
