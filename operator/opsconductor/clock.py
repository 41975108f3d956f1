"""The operator's notion of "now": real time, or a controllable clock for tests and demos.

Everything time-dependent in the operator (schedule fires, maintenance windows, quiet hours,
notification backoff) reads the time through :func:`now` and waits through :func:`sleep_until`,
never through ``datetime.now`` or ``time.time`` directly, so a test can move time forward without
waiting minutes for real.

The controllable clock is a file named by ``OPSCONDUCTOR_CLOCK_FILE`` holding one ISO 8601
timestamp with a UTC offset (``2026-03-29T00:59:30+00:00``). When set, the clock reads that
instant plus the real time elapsed since the file was last written: time keeps flowing, and a test
jumps it by rewriting the file (:func:`set_fake_time`). The file is re-read when its mtime changes.

What must stay true:
- :func:`now` is always timezone-aware UTC.
- Without ``OPSCONDUCTOR_CLOCK_FILE`` this module costs one ``datetime.now`` per call.
- :func:`sleep_until` wakes within ``poll_seconds`` of a clock jump that makes the deadline pass.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

CLOCK_FILE_ENV = "OPSCONDUCTOR_CLOCK_FILE"


class _FileClock:
    """Reads the fake instant from a file; caches it until the file's mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime_ns: int | None = None
        self._base: datetime | None = None
        self._base_monotonic = 0.0

    def now(self) -> datetime:
        stat = self.path.stat()
        with self._lock:
            if stat.st_mtime_ns != self._mtime_ns or self._base is None:
                text = self.path.read_text().strip()
                base = datetime.fromisoformat(text)
                if base.tzinfo is None:
                    raise ValueError(f"{self.path}: the fake time {text!r} needs a UTC offset")
                self._base = base.astimezone(UTC)
                # Time written at mtime; what passed since then counts too.
                self._base_monotonic = time.monotonic() - max(0.0, time.time() - stat.st_mtime_ns / 1e9)
                self._mtime_ns = stat.st_mtime_ns
            return self._base + timedelta(seconds=time.monotonic() - self._base_monotonic)


_clock_lock = threading.Lock()
_clock: _FileClock | None = None
_clock_path: str | None = None


def _file_clock() -> _FileClock | None:
    global _clock, _clock_path
    path = os.environ.get(CLOCK_FILE_ENV)
    if not path:
        return None
    with _clock_lock:
        if _clock is None or path != _clock_path:
            _clock, _clock_path = _FileClock(Path(path)), path
        return _clock


def now() -> datetime:
    """Return the current instant, timezone-aware UTC (fake when ``OPSCONDUCTOR_CLOCK_FILE`` is set)."""
    clock = _file_clock()
    return clock.now() if clock is not None else datetime.now(UTC)


def is_fake() -> bool:
    """Whether the controllable clock is in use."""
    return _file_clock() is not None


def seconds_until(deadline: datetime) -> float:
    """Return the seconds from :func:`now` to ``deadline`` (negative when it passed)."""
    return (deadline - now()).total_seconds()


def sleep_until(deadline: datetime, stop: threading.Event | None = None, poll_seconds: float = 0.5) -> bool:
    """Block until the clock reaches ``deadline``; return False when ``stop`` was set first.

    With the real clock this sleeps in one go (interrupted by ``stop``); with the fake clock it polls
    every ``poll_seconds`` so a jump of the clock is noticed promptly.
    """
    stop = stop or threading.Event()
    while True:
        remaining = seconds_until(deadline)
        if remaining <= 0:
            return True
        wait = min(remaining, poll_seconds) if is_fake() else remaining
        if stop.wait(wait):
            return False


def set_fake_time(path: Path, instant: datetime) -> None:
    """Write ``instant`` to a clock file (tests and demos); the operator notices at its next read."""
    if instant.tzinfo is None:
        raise ValueError("the fake time needs a timezone")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(instant.astimezone(UTC).isoformat() + "\n")
    os.replace(tmp, path)
