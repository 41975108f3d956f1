"""Cron arithmetic in an IANA time zone, with explicit daylight-saving rules.

A cron expression is read on the zone's wall clock (croniter enumerates naive wall-clock times);
each wall-clock time is then mapped to one UTC instant:

- a wall-clock time that occurs twice (clocks go back) fires once, at its first occurrence
  (the earlier UTC instant, ``fold=0``);
- a wall-clock time that does not exist (clocks go forward) fires at the first instant after the
  gap, i.e. the transition itself (02:30 on the day Europe/Berlin jumps from 02:00 to 03:00 fires at
  03:00 CEST). Several fires inside one gap collapse into that one instant.

The mapping wall clock → UTC is monotonic (non-decreasing) under these rules, so the fires of an
expression are a strictly increasing sequence of UTC instants; several expressions merge into one
sequence without duplicates.

What must stay true: every function here is pure (no clock reads); all instants in and out are
timezone-aware; an instant fires at most once however many expressions match it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

# Upper bound of a UTC offset change (no zone changes by more than this at once); the backwards
# enumeration starts this far after the instant asked about so that no fire is missed.
_MAX_SHIFT = timedelta(hours=3)


class InvalidSchedule(ValueError):
    """A cron expression or time zone the API pattern let through but that cannot be used."""


def load_zone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name``; raise :class:`InvalidSchedule` with a clear message if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidSchedule(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
        ) from error


def check_expression(expression: str) -> None:
    """Raise :class:`InvalidSchedule` when croniter cannot read ``expression``."""
    if not croniter.is_valid(expression):
        raise InvalidSchedule(f"invalid cron expression {expression!r}")
    if len(expression.split()) not in (1, 5):
        raise InvalidSchedule(f"cron expression {expression!r} must have 5 fields (or be a macro)")


def _transition_after(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """Return the first UTC instant in (low, high] whose UTC offset differs from ``low``'s (bisection)."""
    offset = low.astimezone(zone).utcoffset()
    while (high - low) > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """Map a naive wall-clock time in ``zone`` to the UTC instant it fires at (rules above)."""
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant  # exists (for a repeated time, fold=0 is the first occurrence)
    # In a gap: fold=0 uses the offset before the transition (an instant after the gap), fold=1 the
    # offset after it (an instant before the gap); the transition lies between them.
    before = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(before, instant), max(before, instant)
    return _transition_after(zone, low, high)


def _expression_fires(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    # Start at the wall-clock reading of ``after``: it maps to ``after`` or earlier (a repeated time
    # maps to its first occurrence), and the mapping is monotonic, so no earlier wall-clock time can
    # fire after ``after``.
    start_wall = after.astimezone(zone).replace(tzinfo=None)
    walls = croniter(expression, start_wall, ret_type=datetime)
    previous: datetime | None = None
    while True:
        instant = wall_to_utc(walls.get_next(datetime), zone)
        if instant > after and instant != previous:
            previous = instant
            yield instant


def fires_after(expressions: Sequence[str], zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Yield the UTC instants strictly after ``after`` at which any expression fires, in order, once each.

    Args:
        expressions: cron expressions (5 fields or macros), read in ``zone``.
        zone: the time zone.
        after: a timezone-aware instant.
    """
    previous: datetime | None = None
    for instant in heapq.merge(*(_expression_fires(e, zone, after) for e in expressions)):
        if instant != previous:
            previous = instant
            yield instant


def next_fire(expressions: Sequence[str], zone: ZoneInfo, after: datetime) -> datetime:
    """Return the first fire strictly after ``after``."""
    return next(fires_after(expressions, zone, after))


def fires_between(
    expressions: Sequence[str], zone: ZoneInfo, after: datetime, until: datetime, limit: int = 100_000
) -> list[datetime]:
    """Return the fires in ``(after, until]``, at most ``limit`` of them (the earliest)."""
    result: list[datetime] = []
    for instant in fires_after(expressions, zone, after):
        if instant > until or len(result) >= limit:
            break
        result.append(instant)
    return result


def latest_fire_at_or_before(
    expressions: Sequence[str], zone: ZoneInfo, instant: datetime, horizon: timedelta
) -> datetime | None:
    """Return the last fire in ``(instant - horizon, instant]``, or None."""
    latest: datetime | None = None
    for fire in fires_after(expressions, zone, instant - horizon):
        if fire > instant:
            break
        latest = fire
    return latest


def to_utc(value: datetime) -> datetime:
    """``value`` as aware UTC (naive values are taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _expression_fires_descending(expression: str, zone: ZoneInfo, until: datetime) -> Iterator[datetime]:
    start_wall = (until + _MAX_SHIFT).astimezone(zone).replace(tzinfo=None)
    walls = croniter(expression, start_wall + timedelta(seconds=1), ret_type=datetime)
    previous: datetime | None = None
    while True:
        instant = wall_to_utc(walls.get_prev(datetime), zone)
        if instant <= until and instant != previous:
            previous = instant
            yield instant


def latest_fires(expressions: Sequence[str], zone: ZoneInfo, until: datetime, count: int) -> list[datetime]:
    """Return the last ``count`` fires at or before ``until``, newest first (cheap however far back)."""
    result: list[datetime] = []
    merged = heapq.merge(
        *(_expression_fires_descending(e, zone, until) for e in expressions), key=lambda d: -d.timestamp()
    )
    for instant in merged:
        if result and instant == result[-1]:
            continue
        result.append(instant)
        if len(result) >= count:
            break
    return result
