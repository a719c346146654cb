"""NCRONTAB schedules as the Functions timer trigger reads them: 6 fields, UTC.

`{second} {minute} {hour} {day} {month} {day-of-week}`; each field takes `*`, numbers, ranges
`a-b`, lists `a,b`, and steps `*/n`, `a/n` or `a-b/n`; months and weekdays also take 3-letter names.

The timer trigger parses schedules with NCrontab (`CronSchedule.TryCreate` in
azure-webjobs-sdk-extensions: `CrontabSchedule.TryParse` with `IncludingSeconds`), and NCrontab
picks a day from the day field and then also requires the day-of-week field: **when both are
restricted, both must match** (`0 0 0 13 * fri` fires on Friday the 13th only), unlike Vixie cron,
where either may match. It searches up to year 9999, so a rare schedule (`0 0 0 29 feb mon`: next
2044-02-29) still fires here.

Stricter than NCrontab, on purpose (a schedule refused here fails loudly in development instead of
behaving differently in Azure): a reversed range `5-1` is refused (NCrontab swaps it to `1-5`), a step
of 0 is refused (NCrontab reads `*/0` as `*`), and names must be the 3-letter ones (NCrontab takes any
prefix of the English name: `Mo`, `Monday`).

Why not `croniter` (7.0, `second_at_beginning=True`): with `day_or=False` it gives the same next
8 fire times as this module on every schedule in README.md, local.settings.example.json and the
tests, and on 1,500 generated expressions from 4 start times each. But its default `day_or=True` is
cron's either-day rule (`0 0 0 13 * fri` from 2026-11-27: croniter 2026-12-04, NCrontab 2027-08-13),
it wraps reversed ranges (`0 0 22-2 * * *`: hours 22-23 and 0-2; NCrontab: 2 to 22), and it accepts
schedules the Functions host refuses at start-up: 5 fields (`* * * * *`, minute first), `@daily`,
`0 0 0 L * *`, `0 0 0 15W * *`, `0 0 0 * * 5#3`, `0 0 0 ? * *`, weekday 7. A dev host on croniter
would run schedules that fail in Azure, so the grammar check would have to stay in front of it, to
save only the date search: kept, without a dependency. The grammar itself is `shared/ncrontab.py`
(start-up validates schedules with it); this module adds the next-fire search.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from shared.ncrontab import ScheduleError, parse_fields

__all__ = ["Schedule", "ScheduleError", "parse_schedule"]


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches_date(self, day: dt.date) -> bool:
        # NCrontab's rule (see the module docstring): month, day and day-of-week must all match.
        return day.month in self.months and day.day in self.days and (day.isoweekday() % 7) in self.weekdays

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first occurrence strictly after `moment` (aware, UTC)."""
        t = moment.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        if self.matches_date(t.date()):
            found = self._first_time_on_or_after(t)
            if found is not None:
                return found
        next_day = self._next_date_after(t.date())
        if next_day is None:
            raise ScheduleError(f"schedule {self.expression!r} never fires")
        found = self._first_time_on_or_after(dt.datetime.combine(next_day, dt.time(), tzinfo=dt.UTC))
        assert found is not None  # every field has a value, so a matching day has a first time
        return found

    def _next_date_after(self, day: dt.date) -> dt.date | None:
        # Only the candidate dates (months x days of the schedule), so looking 400 years ahead (the
        # Gregorian cycle: a schedule that matches no date in it never fires) costs at most 150,000
        # checks, for a schedule that never fires; NCrontab itself stops at year 9999.
        for year in range(day.year, min(day.year + 401, dt.MAXYEAR + 1)):
            for month in sorted(self.months):
                if (year, month) < (day.year, day.month):
                    continue
                for dom in sorted(self.days):
                    if dom > calendar.monthrange(year, month)[1]:
                        break
                    candidate = dt.date(year, month, dom)
                    if candidate > day and self.matches_date(candidate):
                        return candidate
        return None

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
    return Schedule(expression, *parse_fields(expression))
