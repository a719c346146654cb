"""NCRONTAB syntax as the Functions timer trigger accepts it: 6 fields, UTC. The one grammar.

`{second} {minute} {hour} {day} {month} {day-of-week}`; each field takes `*`, numbers, ranges
`a-b`, lists `a,b`, and steps `*/n`, `a/n` or `a-b/n`; months and weekdays also take 3-letter names.

In `shared/` so that start-up refuses a schedule the Functions host would refuse (the host only logs
it and leaves the timer out, and the delta poll is the only feed for some changes); the dev host's
scheduler (`devstack/ncrontab.py`) builds its next-fire search on `parse_fields`.

Stricter than NCrontab, on purpose (a schedule refused here fails loudly at start instead of
behaving differently in Azure): a reversed range `5-1` is refused (NCrontab swaps it to `1-5`), a step
of 0 is refused (NCrontab reads `*/0` as `*`), and names must be the 3-letter ones (NCrontab takes any
prefix of the English name: `Mo`, `Monday`). 5-field cron, `@daily`, `L`, `W`, `#`, `?` and weekday 7
are refused, as the Functions host refuses them.
"""

from __future__ import annotations

from shared.errors import ServiceError

_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (  # name, lowest, highest, names
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)


class ScheduleError(ValueError, ServiceError):
    pass


def parse_fields(expression: str) -> tuple[frozenset[int], ...]:
    """The values of the 6 fields (second, minute, hour, day, month, day-of-week); `ScheduleError`
    says what is wrong."""
    parts = expression.split()
    if len(parts) != 6:
        raise ScheduleError(
            f"NCRONTAB needs 6 fields (second minute hour day month day-of-week), got {len(parts)}: "
            f"{expression!r}; e.g. '0 */5 * * * *' for every 5 minutes"
        )
    return tuple(_parse_field(text, *spec) for text, spec in zip(parts, _FIELDS, strict=True))


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
