"""Billing periods (services/subscriptions/calendar.py), pure: calendar months counted from the
anchor and clamped to the month's last day (January 31 renews on February 28, or 29, then March 31,
April 30, never drifting to the 28th), days and weeks exact multiples of 24 hours in UTC,
interval_count, the refusals, and properties over any anchor: period ends strictly increase, a month
period ends on min(anchor day, days in that month), the time of day is kept, UTC in and out.
"""

from __future__ import annotations

import calendar as stdcal
import datetime
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.subscriptions_schema import INTERVAL_COUNT_MAX
from services.subscriptions.calendar import COUNT_MAX, INTERVALS, period_end

UTC = datetime.UTC


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ends(anchor: datetime.datetime, interval: str, count: int, periods: int) -> list[datetime.datetime]:
    """The ends of periods 1..`periods`."""
    return [period_end(anchor, interval, count, n) for n in range(1, periods + 1)]


# -- calendar months ----------------------------------------------------------------------------------


def test_a_month_started_on_the_31st_renews_on_each_months_last_day_counted_from_the_anchor() -> None:
    anchor = at(2027, 1, 31, 9, 30, 15)
    assert ends(anchor, "month", 1, 13) == [
        at(2027, 2, 28, 9, 30, 15),
        at(2027, 3, 31, 9, 30, 15),  # back to the 31st: counted from the anchor, not from Feb 28
        at(2027, 4, 30, 9, 30, 15),
        at(2027, 5, 31, 9, 30, 15),
        at(2027, 6, 30, 9, 30, 15),
        at(2027, 7, 31, 9, 30, 15),
        at(2027, 8, 31, 9, 30, 15),
        at(2027, 9, 30, 9, 30, 15),
        at(2027, 10, 31, 9, 30, 15),
        at(2027, 11, 30, 9, 30, 15),
        at(2027, 12, 31, 9, 30, 15),
        at(2028, 1, 31, 9, 30, 15),
        at(2028, 2, 29, 9, 30, 15),  # a leap year
    ]
    assert period_end(anchor, "month", 1, 0) == anchor  # period 1 starts at the anchor


@pytest.mark.parametrize(
    ("anchor", "february"),
    [
        (at(2027, 1, 31), at(2027, 2, 28)),
        (at(2028, 1, 31), at(2028, 2, 29)),
        (at(2028, 1, 30), at(2028, 2, 29)),
        (at(2027, 1, 29), at(2027, 2, 28)),
        (at(2028, 1, 29), at(2028, 2, 29)),
        (at(2100, 1, 31), at(2100, 2, 28)),  # a century: not a leap year
        (at(2000, 1, 31), at(2000, 2, 29)),  # every 400 years: a leap year
        (at(2027, 1, 28), at(2027, 2, 28)),
    ],
)
def test_february_is_clamped_to_its_last_day(anchor: datetime.datetime, february: datetime.datetime) -> None:
    assert period_end(anchor, "month", 1, 1) == february
    # ... and March is the anchor's day again.
    assert period_end(anchor, "month", 1, 2) == anchor.replace(month=3)


def test_months_cross_the_year_and_a_leap_day_anchor_comes_back_every_four_years() -> None:
    assert period_end(at(2027, 11, 30), "month", 1, 3) == at(2028, 2, 29)
    assert period_end(at(2027, 12, 31), "month", 1, 1) == at(2028, 1, 31)
    leap = at(2028, 2, 29)
    assert ends(leap, "month", 12, 4) == [at(2029, 2, 28), at(2030, 2, 28), at(2031, 2, 28), at(2032, 2, 29)]
    assert period_end(leap, "month", 1, 1) == at(2028, 3, 29)  # the anchor's day, not the month's end


def test_interval_count_multiplies_the_interval() -> None:
    anchor = at(2027, 1, 31)
    assert ends(anchor, "month", 3, 4) == [at(2027, 4, 30), at(2027, 7, 31), at(2027, 10, 31), at(2028, 1, 31)]
    assert ends(anchor, "month", 12, 2) == [at(2028, 1, 31), at(2029, 1, 31)]
    assert period_end(anchor, "month", 1, 13) == at(2028, 2, 29)
    assert period_end(anchor, "month", 2, 6) == period_end(anchor, "month", 12, 1) == at(2028, 1, 31)


# -- days and weeks -----------------------------------------------------------------------------------


def test_days_and_weeks_are_exact_multiples_of_24_hours() -> None:
    anchor = at(2027, 1, 31, 23, 59, 59)
    assert ends(anchor, "day", 1, 3) == [
        at(2027, 2, 1, 23, 59, 59),
        at(2027, 2, 2, 23, 59, 59),
        at(2027, 2, 3, 23, 59, 59),
    ]
    assert period_end(anchor, "day", 12, 1) == at(2027, 2, 12, 23, 59, 59)
    assert period_end(anchor, "day", 12, 30) == at(2028, 1, 26, 23, 59, 59)  # 360 days
    assert period_end(at(2028, 2, 28), "day", 1, 1) == at(2028, 2, 29)
    assert ends(anchor, "week", 1, 2) == [at(2027, 2, 7, 23, 59, 59), at(2027, 2, 14, 23, 59, 59)]
    assert period_end(anchor, "week", 2, 3) == anchor + datetime.timedelta(weeks=6)
    assert period_end(anchor, "week", 12, 1) == at(2027, 4, 25, 23, 59, 59)  # 84 days


def test_periods_are_counted_in_utc_whatever_zone_the_anchor_is_in() -> None:
    new_york = zoneinfo.ZoneInfo("America/New_York")
    anchor = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=new_york)  # 17:00 UTC, before daylight saving
    end = period_end(anchor, "week", 2, 1)
    assert end.tzinfo is UTC and end == at(2027, 3, 15, 17, 0)  # 13:00 in New York by then: 24 h days
    # Late on January 31 in New York is February 1 in UTC: the anchor's day is the 1st.
    late = datetime.datetime(2027, 1, 31, 22, 0, tzinfo=new_york)
    assert period_end(late, "month", 1, 1) == at(2027, 3, 1, 3, 0)
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    early = datetime.datetime(2027, 2, 1, 1, 0, tzinfo=plus_two)  # January 31, 23:00 UTC
    assert period_end(early, "month", 1, 1) == at(2027, 2, 28, 23, 0)
    assert period_end(early, "month", 1, 0).tzinfo is UTC


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "interval", "count", "periods", "message"),
    [
        (datetime.datetime(2027, 1, 31, 12, 0), "month", 1, 1, "timezone-aware"),  # naive
        (at(2027, 1, 31), "year", 1, 1, "bad interval"),
        (at(2027, 1, 31), "Month", 1, 1, "bad interval"),
        (at(2027, 1, 31), "", 1, 1, "bad interval"),
        (at(2027, 1, 31), "month", 0, 1, "bad interval"),
        (at(2027, 1, 31), "month", -1, 1, "bad interval"),
        (at(2027, 1, 31), "month", 13, 1, "bad interval"),
        (at(2027, 1, 31), "week", 13, 1, "bad interval"),
        (at(2027, 1, 31), "day", 13, 1, "bad interval"),
        (at(2027, 1, 31), "day", 1, -1, "bad interval"),
    ],
)
def test_refusals(anchor: datetime.datetime, interval: str, count: int, periods: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        period_end(anchor, interval, count, periods)


def test_the_largest_counts_are_accepted_and_are_the_documented_bound() -> None:
    # One bound for every interval, the one the API documents (subscriptions_schema.py).
    assert COUNT_MAX == dict.fromkeys(INTERVALS, INTERVAL_COUNT_MAX) and INTERVALS == ("day", "week", "month")
    anchor = at(2027, 1, 31)
    for interval, count in COUNT_MAX.items():
        assert anchor < period_end(anchor, interval, count, 1) <= at(2028, 1, 31)
        assert period_end(anchor, interval, 1, 1) > anchor


# -- properties ---------------------------------------------------------------------------------------

offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: datetime.timezone(datetime.timedelta(minutes=m)))
anchors = st.datetimes(
    min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2200, 12, 31), timezones=offsets
)
intervals = st.sampled_from(INTERVALS)


@st.composite
def plans(draw: st.DrawFn) -> tuple[datetime.datetime, str, int]:
    interval = draw(intervals)
    return draw(anchors), interval, draw(st.integers(1, COUNT_MAX[interval]))


@given(plans(), st.integers(0, 60), st.integers(1, 60))
def test_period_ends_strictly_increase(plan: tuple[datetime.datetime, str, int], first: int, more: int) -> None:
    anchor, interval, count = plan
    assert period_end(anchor, interval, count, first) < period_end(anchor, interval, count, first + more)
    assert period_end(anchor, interval, count, first + 1) > period_end(anchor, interval, count, first)


@given(anchors, st.integers(1, 12), st.integers(0, 240))
def test_a_month_period_ends_on_the_anchor_day_or_the_months_last(
    anchor: datetime.datetime, count: int, periods: int
) -> None:
    end = period_end(anchor, "month", count, periods)
    utc = anchor.astimezone(UTC)
    assert (end.year * 12 + end.month) - (utc.year * 12 + utc.month) == count * periods
    assert end.day == min(utc.day, stdcal.monthrange(end.year, end.month)[1])


@given(plans(), st.integers(0, 120))
def test_the_time_of_day_is_kept_and_the_answer_is_utc(plan: tuple[datetime.datetime, str, int], periods: int) -> None:
    anchor, interval, count = plan
    end = period_end(anchor, interval, count, periods)
    assert end.tzinfo is UTC
    assert end.time() == anchor.astimezone(UTC).time()  # microseconds too
    assert period_end(anchor.astimezone(UTC), interval, count, periods) == end  # the same instant, any zone
    if interval != "month":
        days = (7 if interval == "week" else 1) * count * periods
        assert end - anchor == datetime.timedelta(days=days)
