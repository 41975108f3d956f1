"""Maintenance windows: is an instant inside a window, where does it end, when does the next begin.

A window is a recurring range, read on the wall clock of its time zone:

- ``weekly``: ``days`` the range starts on, ``start``-``end`` (HH:MM); ``end`` at or before
  ``start`` runs past midnight into the next day. Wall-clock times map to instants with the rules of
  ``reconcile.cron`` (a repeated time means its first occurrence; a missing one the end of the gap).
- ``cron`` + ``durationMinutes``: a window opens at each cron fire and lasts that long.

Ranges are half-open, ``[start, end)``: a fire at a window's end is outside it.

What must stay true: pure functions of (windows, instant); the search for a window's end or the
next opening is bounded (overlapping or back-to-back windows are merged, at most
``_MAX_CHAIN`` of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from opsconductor.reconcile.cron import fires_after, latest_fire_at_or_before, load_zone, wall_to_utc

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MAX_CHAIN = 64
_WEEK = timedelta(days=7)


@dataclass(frozen=True)
class WeeklyRange:
    """One weekly range (API ``WeeklyRange``)."""

    days: tuple[str, ...]
    start: time
    end: time


@dataclass(frozen=True)
class Window:
    """A recurring window in a zone: weekly ranges, or a cron expression plus a duration."""

    name: str
    zone: ZoneInfo
    weekly: tuple[WeeklyRange, ...] = ()
    cron: str | None = None
    duration: timedelta = timedelta(0)

    @property
    def label(self) -> str:
        """How Events name the window."""
        return self.name or (f"cron {self.cron}" if self.cron else "weekly window")


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def parse_window(raw: dict[str, object], default_zone: str) -> Window:
    """Build a :class:`Window` from its API form (camelCase dict); raises ``InvalidSchedule``."""
    zone = load_zone(str(raw.get("timeZone") or default_zone))
    weekly = tuple(
        WeeklyRange(tuple(r["days"]), _clock(r["start"]), _clock(r["end"]))
        for r in raw.get("weekly") or []  # type: ignore[attr-defined]
    )
    cron = raw.get("cron")
    minutes = raw.get("durationMinutes") or 0
    return Window(
        name=str(raw.get("name") or ""),
        zone=zone,
        weekly=weekly,
        cron=str(cron) if cron else None,
        duration=timedelta(minutes=int(minutes)),  # type: ignore[call-overload]
    )


def _weekly_ranges_around(window: Window, instant: datetime) -> list[tuple[datetime, datetime]]:
    """Return the window's ranges that start from two days before ``instant``'s local date to a week after."""
    local_date = instant.astimezone(window.zone).date()
    ranges: list[tuple[datetime, datetime]] = []
    for offset in range(-2, 9):
        day = local_date + timedelta(days=offset)
        for weekly in window.weekly:
            if WEEKDAYS[day.weekday()] not in weekly.days:
                continue
            start = wall_to_utc(datetime.combine(day, weekly.start), window.zone)
            end_day = day if weekly.end > weekly.start else day + timedelta(days=1)
            end = wall_to_utc(datetime.combine(end_day, weekly.end), window.zone)
            if end > start:
                ranges.append((start, end))
    return sorted(ranges)


def range_containing(window: Window, instant: datetime) -> tuple[datetime, datetime] | None:
    """Return the ``[start, end)`` range of ``window`` that contains ``instant``, or None."""
    if window.cron:
        opened = latest_fire_at_or_before([window.cron], window.zone, instant, window.duration)
        if opened is not None and instant < opened + window.duration:
            return opened, opened + window.duration
        return None
    for start, end in _weekly_ranges_around(window, instant):
        if start <= instant < end:
            return start, end
    return None


def next_opening(window: Window, instant: datetime) -> datetime | None:
    """Return the first range start strictly after ``instant`` (within about a week), or None."""
    if window.cron:
        return next(fires_after([window.cron], window.zone, instant), None)
    starts = [start for start, _ in _weekly_ranges_around(window, instant) if start > instant]
    return min(starts) if starts else None


def inside_any(windows: tuple[Window, ...], instant: datetime) -> tuple[Window, datetime] | None:
    """Return the first window containing ``instant`` and the end of the merged run of windows around it."""
    hit: Window | None = None
    end = instant
    for _ in range(_MAX_CHAIN):
        extended = False
        for window in windows:
            found = range_containing(window, end)
            if found is not None:
                hit = hit or window
                end = found[1]
                extended = True
        if not extended:
            break
    return (hit, end) if hit is not None else None


@dataclass(frozen=True)
class WindowVerdict:
    """What the windows say about a fire: run at ``run_at``, or skip (``run_at`` None) with a reason."""

    run_at: datetime | None
    reason: str = ""
    message: str = ""

    @property
    def skipped(self) -> bool:
        """The fire does not run."""
        return self.run_at is None


def judge_fire(
    fire: datetime, blackout: tuple[Window, ...], allowed: tuple[Window, ...], defer: bool
) -> WindowVerdict:
    """Decide when a fire may run: at once, deferred to a window's end / the next allowed opening, or never.

    Args:
        fire: the fire instant.
        blackout: windows in which fires do not run.
        allowed: if non-empty, fires run only inside one of these.
        defer: ``blackoutPolicy: Defer`` (otherwise Skip).
    """
    candidate = fire
    for _ in range(_MAX_CHAIN):
        blocked = inside_any(blackout, candidate) if blackout else None
        if blocked is not None:
            window, end = blocked
            if not defer:
                return WindowVerdict(
                    None, "BlackoutWindow", f"fire at {_stamp(fire)} skipped: inside blackout {window.label}"
                )
            candidate = end
            continue
        if allowed and inside_any(allowed, candidate) is None:
            if not defer:
                return WindowVerdict(
                    None,
                    "OutsideAllowedWindow",
                    f"fire at {_stamp(fire)} skipped: outside the allowed windows",
                )
            openings = [o for o in (next_opening(w, candidate) for w in allowed) if o is not None]
            if not openings:
                return WindowVerdict(
                    None, "OutsideAllowedWindow", f"fire at {_stamp(fire)} skipped: no allowed window ahead"
                )
            candidate = min(openings)
            continue
        if candidate != fire:
            return WindowVerdict(
                candidate, "Deferred", f"fire at {_stamp(fire)} deferred to {_stamp(candidate)}"
            )
        return WindowVerdict(candidate)
    return WindowVerdict(None, "BlackoutWindow", f"fire at {_stamp(fire)} skipped: windows never open")


def _stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
