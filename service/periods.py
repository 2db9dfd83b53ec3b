"""Window periods: ids (`all`, `2026-11-22`, `2026-W47`, `2026-11`), starts and resets, UTC."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from service.models import Window

ALL = "all"
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


DAY_MS = 86_400_000


@lru_cache(maxsize=4096)
def _period_of_day(window: Window, day: int) -> str:
    return period_id(window, datetime.fromtimestamp(day * 86_400, tz=UTC))


def period_id_ms(window: Window, ms: int) -> str:
    """period_id for a unix time in ms; cached by UTC day, as every period is whole days."""
    if window == "all":
        return ALL
    return _period_of_day(window, ms // DAY_MS)


def from_ms(ms: int) -> datetime:
    """UTC datetime of a unix time in milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def period_id(window: Window, at: datetime) -> str:
    """The id of the period of `window` that contains `at`."""
    at = at.astimezone(UTC)
    if window == "all":
        return ALL
    if window == "daily":
        return at.strftime("%Y-%m-%d")
    if window == "weekly":
        year, week, _ = at.isocalendar()
        return f"{year}-W{week:02d}"
    return at.strftime("%Y-%m")


def period_start(window: Window, period: str) -> datetime | None:
    """Start of a period (None for `all`); ValueError if the id does not fit the window."""
    if window == "all":
        if period != ALL:
            raise ValueError(f"window all has only the period {ALL!r}")
        return None
    day = _parse_start(window, period)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def period_end(window: Window, period: str) -> datetime | None:
    """When a period resets (None for `all`)."""
    start = period_start(window, period)
    if start is None:
        return None
    if window == "daily":
        return start + timedelta(days=1)
    if window == "weekly":
        return start + timedelta(days=7)
    return _add_months(start, 1)


def previous(window: Window, period: str) -> str:
    """The period before `period` (`all` has none: it is its own previous)."""
    start = period_start(window, period)
    if start is None:
        return ALL
    return period_id(window, start - timedelta(seconds=1))


def resolve(window: Window, period: str, now: datetime) -> str:
    """Turn `current`, `previous` or an explicit id into a validated period id."""
    current = period_id(window, now)
    if period == "current":
        return current
    if period == "previous":
        return previous(window, current)
    period_start(window, period)  # validates
    return period


def _parse_start(window: Window, period: str) -> date:
    try:
        if window == "daily" and (m := _DAY.match(period)):
            return date(int(m[1]), int(m[2]), int(m[3]))
        if window == "weekly" and (m := _WEEK.match(period)):
            return date.fromisocalendar(int(m[1]), int(m[2]), 1)
        if window == "monthly" and (m := _MONTH.match(period)):
            return date(int(m[1]), int(m[2]), 1)
    except ValueError:
        pass
    raise ValueError(f"{period!r} is not a {window} period id")


def _add_months(start: datetime, months: int) -> datetime:
    month = start.month - 1 + months
    return start.replace(year=start.year + month // 12, month=month % 12 + 1, day=1)
