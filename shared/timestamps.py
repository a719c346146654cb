"""The one way timestamps are written and read: UTC ISO 8601 with milliseconds and a `Z`, the
format BC uses for `lastModifiedDateTime` (Dataverse's `modifiedon` parses the same way)."""

from __future__ import annotations

import datetime as dt


def iso_ms(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso_ms(dt.datetime.now(dt.UTC))


def parse_iso(text: str) -> dt.datetime:
    """An aware datetime (Python 3.11 reads the trailing `Z` itself)."""
    return dt.datetime.fromisoformat(text)
