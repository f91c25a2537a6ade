"""Time formats shared by the config and the Alertmanager payloads: RFC 3339 in and out."""

from __future__ import annotations

__all__ = ["format_time", "parse_time", "seconds"]

import calendar
import re
from datetime import UTC, datetime
from functools import lru_cache

_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


@lru_cache(maxsize=4096)  # repeats and regrouped notifications carry the same times
def parse_time(text: str) -> int | None:
    """An RFC 3339 time as Unix nanoseconds; ``None`` for Go's zero time (year 1).

    Raises ``ValueError`` for anything else, including times without a zone offset.
    """
    m = _TIME_RE.match(text)
    if m is None:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if year == 1:
        return None
    datetime(year, month, day, hour, minute, second)  # range checks; raises ValueError
    frac = m.group(7) or ""
    nanos = int(frac.ljust(9, "0")) if frac else 0
    offset = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise ValueError(text)
        offset = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + nanos


def seconds(ns: int) -> float:
    """Unix nanoseconds as float seconds, rounded once (``ns / 1e9`` would round twice)."""
    whole, frac = divmod(ns, 1_000_000_000)
    return whole + frac / 1e9


def format_time(ts: float) -> str:
    """Unix seconds as RFC 3339 in UTC, to the millisecond: ``2030-01-05T22:00:00.000Z``."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
