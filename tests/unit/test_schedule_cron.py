"""Schedule arithmetic across DST transitions, leap days and month ends (reconcile.cron, windows)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from opsconductor.reconcile.cron import (
    InvalidSchedule,
    check_expression,
    fires_between,
    latest_fires,
    load_zone,
    next_fire,
    wall_to_utc,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local_fires(expressions: list[str], zone_name: str, start: datetime, end: datetime) -> list[str]:
    zone = load_zone(zone_name)
    return [f.astimezone(zone).isoformat() for f in fires_between(expressions, zone, start, end)]


# --- clocks go forward: a missing wall-clock time fires at the end of the gap ---------------------
def test_london_spring_forward_missing_time_fires_at_gap_end() -> None:
    # 2026-03-29: 01:00 GMT -> 02:00 BST; 01:30 does not exist that day.
    assert local_fires(["30 1 * * *"], "Europe/London", utc(2026, 3, 27), utc(2026, 3, 31)) == [
        "2026-03-27T01:30:00+00:00",
        "2026-03-28T01:30:00+00:00",
        "2026-03-29T02:00:00+01:00",
        "2026-03-30T01:30:00+01:00",
    ]


def test_several_fires_inside_one_gap_collapse_into_one() -> None:
    fires = local_fires(["*/20 1 * * *"], "Europe/London", utc(2026, 3, 29), utc(2026, 3, 29, 12))
    assert fires == ["2026-03-29T02:00:00+01:00"]


def test_new_york_spring_forward() -> None:
    # 2026-03-08: 02:00 EST -> 03:00 EDT.
    fires = local_fires(["30 2 * * *"], "America/New_York", utc(2026, 3, 7), utc(2026, 3, 10))
    assert fires == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_lord_howe_half_hour_forward_shift() -> None:
    # 2026-10-04: 02:00 +10:30 -> 02:30 +11:00; 02:15 does not exist, 01:45 does.
    fires = local_fires(
        ["15 2 * * *", "45 1 * * *"], "Australia/Lord_Howe", utc(2026, 10, 2), utc(2026, 10, 5)
    )
    assert fires == [
        "2026-10-03T01:45:00+10:30",
        "2026-10-03T02:15:00+10:30",
        "2026-10-04T01:45:00+10:30",
        "2026-10-04T02:30:00+11:00",
        "2026-10-05T01:45:00+11:00",
        "2026-10-05T02:15:00+11:00",
    ]


# --- clocks go back: a repeated wall-clock time fires once, at its first occurrence ---------------
def test_london_fall_back_repeated_time_fires_once() -> None:
    # 2026-10-25: 02:00 BST -> 01:00 GMT; 01:30 happens twice.
    fires = local_fires(["30 1 * * *"], "Europe/London", utc(2026, 10, 24), utc(2026, 10, 27))
    assert fires == [
        "2026-10-24T01:30:00+01:00",
        "2026-10-25T01:30:00+01:00",
        "2026-10-26T01:30:00+00:00",
    ]


def test_new_york_fall_back_hourly_has_no_double_run() -> None:
    # 2026-11-01: 02:00 EDT -> 01:00 EST. Hourly fires: 01:00 once (EDT); the repeated hour adds none.
    zone = load_zone("America/New_York")
    fires = fires_between(["0 * * * *"], zone, utc(2026, 11, 1, 3), utc(2026, 11, 1, 9))
    local = [f.astimezone(zone).isoformat() for f in fires]
    assert local == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
        "2026-11-01T04:00:00-05:00",
    ]
    assert len(set(fires)) == len(fires)


def test_lord_howe_half_hour_back_shift() -> None:
    # 2026-04-05: 02:00 +11:00 -> 01:30 +10:30; 01:45 happens twice.
    fires = local_fires(["45 1 * * *"], "Australia/Lord_Howe", utc(2026, 4, 3), utc(2026, 4, 6))
    assert fires == [
        "2026-04-04T01:45:00+11:00",
        "2026-04-05T01:45:00+11:00",
        "2026-04-06T01:45:00+10:30",
    ]


def test_fires_are_strictly_increasing_through_a_whole_year_of_transitions() -> None:
    for zone_name in ("Europe/London", "America/New_York", "Australia/Lord_Howe", "Europe/Berlin"):
        zone = load_zone(zone_name)
        fires = fires_between(["0 * * * *"], zone, utc(2026, 1, 1), utc(2027, 1, 1))
        assert all(a < b for a, b in itertools.pairwise(fires)), zone_name
        # 24 a day; a one-hour spring gap loses one (a half-hour gap none: 02:00 moves to 02:30);
        # the repeated autumn hour adds none.
        expected = 365 * 24 - (0 if zone_name == "Australia/Lord_Howe" else 1)
        assert len(fires) == expected, zone_name


# --- calendar edges --------------------------------------------------------------------------------
def test_leap_day_only_fires_in_leap_years() -> None:
    fires = fires_between(["0 12 29 2 *"], load_zone("UTC"), utc(2025, 1, 1), utc(2033, 1, 1))
    assert fires == [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12)]


def test_end_of_month_31st_skips_short_months() -> None:
    fires = fires_between(["0 0 31 * *"], load_zone("Europe/Berlin"), utc(2026, 1, 1), utc(2026, 12, 31))
    assert [f.astimezone(load_zone("Europe/Berlin")).month for f in fires] == [1, 3, 5, 7, 8, 10, 12]


def test_macros_and_several_expressions_merge_without_duplicates() -> None:
    zone = load_zone("UTC")
    fires = fires_between(["@hourly", "0 */2 * * *"], zone, utc(2026, 1, 1), utc(2026, 1, 1, 4))
    assert fires == [utc(2026, 1, 1, h) for h in (1, 2, 3, 4)]


def test_next_fire_is_strictly_after() -> None:
    zone = load_zone("UTC")
    assert next_fire(["*/5 * * * *"], zone, utc(2026, 1, 1, 0, 5)) == utc(2026, 1, 1, 0, 10)


def test_latest_fires_goes_back_far_cheaply() -> None:
    zone = load_zone("Europe/London")
    latest = latest_fires(["30 1 * * *"], zone, utc(2026, 10, 27), 3)
    assert [f.astimezone(zone).isoformat() for f in latest] == [
        "2026-10-26T01:30:00+00:00",
        "2026-10-25T01:30:00+01:00",
        "2026-10-24T01:30:00+01:00",
    ]
    spring = latest_fires(["30 1 * * *"], zone, utc(2026, 3, 30), 2)
    assert [f.astimezone(zone).isoformat() for f in spring] == [
        "2026-03-29T02:00:00+01:00",
        "2026-03-28T01:30:00+00:00",
    ]


def test_wall_to_utc_gap_and_fold() -> None:
    zone = load_zone("Europe/Berlin")
    assert wall_to_utc(datetime(2026, 3, 29, 2, 30), zone) == utc(2026, 3, 29, 1)
    assert wall_to_utc(datetime(2026, 10, 25, 2, 30), zone) == utc(2026, 10, 25, 0, 30)


def test_unknown_zone_and_bad_expression_have_clear_messages() -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone 'Mars/Olympus'"):
        load_zone("Mars/Olympus")
    with pytest.raises(InvalidSchedule, match="invalid cron expression"):
        check_expression("61 * * * *")
    with pytest.raises(InvalidSchedule, match="5 fields"):
        check_expression("0 0 * * * *")


def test_fires_between_respects_bounds() -> None:
    zone = load_zone("UTC")
    start = utc(2026, 1, 1)
    fires = fires_between(["* * * * *"], zone, start, start + timedelta(minutes=3))
    assert fires == [start + timedelta(minutes=m) for m in (1, 2, 3)]
