"""Billing periods in UTC. A monthly plan renews on the day of the month it started (its anchor),
or on the last day of a shorter month: started on January 31, it renews on February 28 (29), then
March 31, April 30. Days and weeks are exact multiples of 24 hours. Pure functions: the service
passes the time in (its clock), the tests call them directly.
"""

from __future__ import annotations

import calendar
import datetime

INTERVALS = ("day", "week", "month")
# interval_count bounds: at most 12 intervals a period, whatever the interval (one bound the API's
# document states exactly; 30 days is a month, 14 a two-week plan).
COUNT_MAX = {"day": 12, "week": 12, "month": 12}


def _months_later(anchor: datetime.datetime, months: int) -> datetime.datetime:
    """`anchor` moved `months` calendar months on, its day clamped to the month's last day."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def period_end(anchor: datetime.datetime, interval: str, count: int, periods: int) -> datetime.datetime:
    """The end of the `periods`-th period counted from `anchor` (period 1 ends one interval
    after it). Counted from the anchor, never from the previous end, so a clamped February 28 does
    not make every later month end on the 28th."""
    if anchor.tzinfo is None:
        raise ValueError("anchor must be timezone-aware")
    if interval not in INTERVALS or not 1 <= count <= COUNT_MAX[interval] or periods < 0:
        raise ValueError("bad interval")
    anchor = anchor.astimezone(datetime.UTC)
    if interval == "month":
        return _months_later(anchor, count * periods)
    days = (7 if interval == "week" else 1) * count * periods
    return anchor + datetime.timedelta(days=days)
