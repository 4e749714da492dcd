"""Nomad's cron syntax (hashicorp/cronexpr) on top of croniter, and next launch times.

Fields like cronexpr: 5 fields are minute hour day-of-month month day-of-week; 6 fields add a
year at the end; 7 fields are second minute hour dom month dow year. The macros @yearly,
@annually, @monthly, @weekly, @daily, @midnight and @hourly work as in cron.
"""

from __future__ import annotations

from datetime import datetime, timezone, UTC
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter  # type: ignore[import-untyped]

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}

# how far ahead a cron must fire at least once (cronexpr looks up to year 2099)
_HORIZON_YEARS = 8


class CronError(ValueError):
    pass


def _seven(spec: str) -> str:
    """The expression as 7 fields, seconds first (cronexpr's full form)."""
    s = spec.strip()
    s = _MACROS.get(s.lower(), s)
    fields = s.split()
    if len(fields) == 5:
        return " ".join(["0", *fields, "*"])
    if len(fields) == 6:
        return " ".join(["0", *fields])
    if len(fields) == 7:
        return s
    raise CronError(f'cron "{spec}" has {len(fields)} fields: use 5 (minute hour day month weekday), '
                    '6 (and a year), 7 (a second first, a year last) or a macro like @daily')


def zone(name: str) -> ZoneInfo | timezone:
    if name in ("", "UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise CronError(f'time zone "{name}" is not known: use an IANA name like "Europe/Paris"') from e


def next_time(spec: str, after: datetime, tz_name: str = "UTC") -> datetime | None:
    """The first time strictly after `after` the expression fires, in the zone; None if never."""
    expr = _seven(spec)
    if not croniter.is_valid(expr, second_at_beginning=True):
        raise CronError(f'cron "{spec}" is not a valid cron expression')
    tz = zone(tz_name)
    start = after.astimezone(tz)
    try:
        it = croniter(expr, start, second_at_beginning=True, max_years_between_matches=_HORIZON_YEARS)
        nxt = it.get_next(datetime)
    except CroniterError:   # CroniterBadDateError: nothing matches within the horizon
        return None
    return nxt if isinstance(nxt, datetime) else None


def next_launch(specs: list[str], after: datetime, tz_name: str = "UTC") -> datetime | None:
    """The earliest next time over several expressions (Nomad's Specs), None if none fires."""
    times = [t for t in (next_time(s, after, tz_name) for s in specs) if t is not None]
    return min(times) if times else None


def cron_problem(spec: str, tz_name: str = "UTC", now: datetime | None = None) -> str | None:
    """Why the expression cannot be used (bad syntax, or it never fires), or None."""
    try:
        if next_time(spec, now or datetime.now(UTC), tz_name) is None:
            return f'cron "{spec}" never fires: no date matches it (like February 30)'
    except CronError as e:
        return str(e)
    return None
