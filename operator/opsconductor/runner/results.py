"""Run results and the status the runner reports: bounded, whatever the fan-out and output size.

This module owns the runner's record of a run (:class:`RunState` with one :class:`StepRecord` per
step and one :class:`TargetRecord` per target) and turns it into the OpsJob status fields the runner
writes: ``startTime``, ``steps`` and ``progress``.

The status must stay under :data:`STATUS_MAX_BYTES` (256 KiB) for any number of targets and any
output size, so:

- output is kept as head + tail (:class:`Captured`) the moment it arrives, never whole;
- excerpts shrink as the number of itemised targets grows;
- past :data:`ITEMISE_ALL_MAX_TARGETS` targets a step itemises only its first
  :data:`ITEMISED_FAILURES` failures, with per-phase counts and ``omittedTargets`` for the rest;
- the serialised size is measured, and excerpts, errors and itemised failures are cut further until
  it fits :data:`STATUS_BUDGET_BYTES` (leaving room for the fields the operator owns).

Texts arriving here are already masked by the engine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opsconductor.api.opsjob import PhaseCounts, RunProgress, StepStatus, TargetPhase, TargetResult

STATUS_MAX_BYTES = 256 * 1024
"""Hard cap for the serialised ``status`` the runner writes."""
STATUS_BUDGET_BYTES = 192 * 1024
"""What the runner's fields may use: the rest of the cap is for conditions and messages."""
OUTPUT_KEEP_CHARS = 4096
"""Characters of head and of tail kept per output stream (the excerpt fields hold 8192)."""
ERROR_MAX_CHARS = 2048
"""Longest error text in a TargetResult (the field holds 4096)."""
STEP_MESSAGE_MAX_CHARS = 2048
"""Longest step message."""
ITEMISE_ALL_MAX_TARGETS = 20
"""Steps with at most this many targets list every target; bigger ones list only failures."""
ITEMISED_FAILURES = 20
"""How many failed targets a big step lists (the first ones, in plan order)."""
LOCAL_TARGET = "local"
"""The target name of steps that run once without a target."""
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})


def utcnow() -> datetime:
    """Return the current UTC time, to the second (as Kubernetes timestamps are)."""
    return datetime.now(UTC).replace(microsecond=0)


def _bytes(text: str) -> int:
    """UTF-8 size of ``text`` (O(1) for ASCII: CPython knows a string is ASCII)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def truncation_marker(omitted_bytes: int) -> str:
    """Return the marker that stands for ``omitted_bytes`` left out of the middle of an output."""
    return f"\n… [truncated {omitted_bytes} bytes] …\n"


_MARKER_RESERVE = len(truncation_marker(10**12))


@dataclass(frozen=True)
class Captured:
    """An output kept as head + tail: ``head``, then ``omitted_bytes`` not kept, then ``tail``."""

    head: str = ""
    tail: str = ""
    omitted_bytes: int = 0

    @classmethod
    def of(cls, text: str, keep: int = OUTPUT_KEEP_CHARS) -> Captured:
        """Keep at most ``keep`` characters of the head and of the tail of ``text``.

        Args:
            text: the full output.
            keep: characters kept at each end.

        Returns:
            The captured output (whole when it is at most ``2 * keep`` characters).
        """
        if keep <= 0:
            return cls(omitted_bytes=_bytes(text))
        if len(text) <= 2 * keep:
            return cls(head=text)
        head, tail = text[:keep], text[-keep:]
        return cls(head=head, tail=tail, omitted_bytes=_bytes(text) - _bytes(head) - _bytes(tail))

    @property
    def complete(self) -> bool:
        """Whether nothing was left out."""
        return self.omitted_bytes == 0 and not self.tail

    @property
    def total_bytes(self) -> int:
        """UTF-8 size of the full output."""
        return _bytes(self.head) + self.omitted_bytes + _bytes(self.tail)

    def text(self) -> str:
        """Return the kept text, with a truncation marker where the middle was left out."""
        if self.complete:
            return self.head
        return self.head + truncation_marker(self.omitted_bytes) + self.tail

    def excerpt(self, limit: int) -> str:
        """Return head + marker + tail in at most ``limit`` characters.

        Args:
            limit: the longest result; 0 gives the empty string.

        Returns:
            The whole output when it fits, else its start and end around
            a truncation marker (N counts every byte left out).
        """
        if limit <= 0 or (not self.head and not self.tail):
            return ""
        if self.complete and len(self.head) <= limit:
            return self.head
        if limit < _MARKER_RESERVE:
            return ""  # no room for a marker: an excerpt without one would mislead
        room = limit - _MARKER_RESERVE
        head_chars = room // 2
        tail_chars = room - head_chars
        if self.complete:
            head, middle, tail = self.head[:head_chars], self.head[head_chars:], ""
            if tail_chars:
                middle, tail = middle[:-tail_chars], middle[-tail_chars:]
            omitted = _bytes(middle)
        else:
            head = self.head[:head_chars]
            tail = self.tail[len(self.tail) - tail_chars :] if tail_chars else ""
            omitted = (
                _bytes(self.head[head_chars:])
                + self.omitted_bytes
                + _bytes(self.tail[: len(self.tail) - tail_chars])
            )
        return head + truncation_marker(omitted) + tail


EMPTY = Captured()


def capture_keep(target_count: int, phase: str) -> int:
    """Return how much output (head and tail each) to keep of one target's run of a step.

    Small steps keep :data:`OUTPUT_KEEP_CHARS`; steps past :data:`ITEMISE_ALL_MAX_TARGETS` list only
    failures, so they keep less of failures and nothing of other targets (memory stays bounded
    for thousands of targets; the full output is in the runner's log).
    """
    if target_count <= ITEMISE_ALL_MAX_TARGETS:
        return OUTPUT_KEEP_CHARS
    return OUTPUT_KEEP_CHARS // 2 if phase == "Failed" else 0


def clip(text: str, limit: int) -> str:
    """Return ``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…" if limit > 0 else ""


@dataclass
class TargetRecord:
    """What the runner knows about one step on one target."""

    target: str
    phase: TargetPhase = "Pending"
    exit_code: int | None = None
    attempts: int = 0
    duration_milliseconds: int | None = None
    stdout: Captured = EMPTY
    stderr: Captured = EMPTY
    error: str = ""

    def to_result(self, excerpt_chars: int, error_chars: int) -> TargetResult:
        """Return the API model with output excerpts of at most ``excerpt_chars`` characters."""
        return TargetResult(
            target=self.target[:253],
            phase=self.phase,
            exit_code=self.exit_code,
            attempts=self.attempts,
            duration_milliseconds=self.duration_milliseconds,
            stdout=self.stdout.excerpt(min(excerpt_chars, 8192)),
            stderr=self.stderr.excerpt(min(excerpt_chars, 8192)),
            error=clip(self.error, min(error_chars, 4096)),
        )


def count_phases(targets: Iterable[TargetRecord]) -> PhaseCounts:
    """Count targets per phase."""
    counts = dict.fromkeys(PhaseCounts.model_fields, 0)
    for record in targets:
        counts[record.phase.lower()] += 1
    return PhaseCounts(**counts)


@dataclass
class StepRecord:
    """What the runner knows about one step."""

    name: str
    targets: list[TargetRecord]
    phase: TargetPhase = "Pending"
    start_time: datetime | None = None
    completion_time: datetime | None = None
    message: str = ""

    def itemised(self, failures: int = ITEMISED_FAILURES) -> list[TargetRecord]:
        """Return the targets listed in the status: all of a small step, else the first failures.

        Args:
            failures: how many failures to list; below :data:`ITEMISED_FAILURES` (a status that
                is still too big) small steps list only failures too.
        """
        if len(self.targets) <= ITEMISE_ALL_MAX_TARGETS and failures >= ITEMISED_FAILURES:
            return list(self.targets)
        return [record for record in self.targets if record.phase == "Failed"][:failures]

    def to_status(
        self, excerpt_chars: int, error_chars: int, failures: int = ITEMISED_FAILURES
    ) -> StepStatus:
        """Return the API model of this step within the given limits."""
        listed = self.itemised(failures)
        return StepStatus(
            name=self.name,
            phase=self.phase,
            start_time=self.start_time,
            completion_time=self.completion_time,
            counts=count_phases(self.targets),
            targets=[record.to_result(excerpt_chars, error_chars) for record in listed],
            omitted_targets=len(self.targets) - len(listed),
            message=clip(self.message, min(error_chars, STEP_MESSAGE_MAX_CHARS)),
        )


def progress(steps: list[StepRecord]) -> RunProgress:
    """Return ``steps: done/total`` and ``targets: ok/failed`` (over all steps)."""
    done = sum(1 for step in steps if step.phase in TERMINAL_PHASES)
    ok = failed = 0
    for step in steps:
        for record in step.targets:
            ok += record.phase == "Succeeded"
            failed += record.phase == "Failed"
    return RunProgress(steps=f"{done}/{len(steps)}", targets=f"{ok}/{failed}")


def serialized_size(payload: Any) -> int:
    """Return the size in bytes of ``payload`` as compact JSON (non-ASCII escaped: an upper bound)."""
    return len(json.dumps(payload, separators=(",", ":")).encode())


def _dump(model: StepStatus | RunProgress) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _initial_limits(steps: list[StepRecord], budget: int) -> tuple[int, int]:
    """Excerpt and error sizes that spread ``budget`` over the itemised targets."""
    items = sum(len(step.itemised()) for step in steps) or 1
    per_item = budget // items - 300  # 300: the JSON of a TargetResult without its texts
    excerpt = max(0, min(OUTPUT_KEEP_CHARS * 2, per_item // 3))
    error = max(128, min(ERROR_MAX_CHARS, per_item // 3))
    return excerpt, error


def build_status(
    steps: list[StepRecord], start_time: datetime | None, budget: int = STATUS_BUDGET_BYTES
) -> dict[str, Any]:
    """Build the ``status`` fields the runner owns, within ``budget`` bytes of JSON.

    Args:
        steps: the run's step records (in plan order).
        start_time: when the run started.
        budget: the largest serialised size allowed.

    Returns:
        ``{"startTime": ..., "steps": [...], "progress": {...}}`` (camelCase, JSON-ready).
    """
    excerpt, error = _initial_limits(steps, budget)
    failures = ITEMISED_FAILURES
    while True:
        status: dict[str, Any] = {
            "steps": [_dump(step.to_status(excerpt, error, failures)) for step in steps],
            "progress": _dump(progress(steps)),
        }
        if start_time is not None:
            status["startTime"] = start_time.isoformat().replace("+00:00", "Z")
        size = serialized_size(status)
        if size <= budget:
            return status
        # Cut in proportion to the excess, texts first, then the number of itemised targets.
        if excerpt > 0:
            excerpt = int(excerpt * budget / size * 0.9) if excerpt > 64 else 0
        elif error > 32:
            error //= 2
        elif failures > 0:
            failures = min(failures, ITEMISED_FAILURES - 1) // 2
        elif error > 0:
            error = 0
        else:  # nothing left to cut: 50 steps without targets are far below any budget
            return status


class RunState:
    """The run's records, shared by the engine (writes) and the reporters (reads), under one lock."""

    def __init__(self, step_targets: list[tuple[str, list[str]]]) -> None:
        """Create the records of a run.

        Args:
            step_targets: ``(step name, target names)`` per step in plan order; an empty list of
                target names stands for one run without a target (:data:`LOCAL_TARGET`).
        """
        self.lock = threading.RLock()
        self.start_time: datetime | None = None
        self.completion_time: datetime | None = None
        self.steps = [
            StepRecord(name, [TargetRecord(target) for target in (targets or [LOCAL_TARGET])])
            for name, targets in step_targets
        ]

    def status(self, budget: int = STATUS_BUDGET_BYTES) -> dict[str, Any]:
        """Return a consistent snapshot of the runner-owned status fields (see :func:`build_status`)."""
        with self.lock:
            return build_status(self.steps, self.start_time, budget)

    def progress(self) -> RunProgress:
        """Return the run's progress summary."""
        with self.lock:
            return progress(self.steps)

    def counts(self) -> PhaseCounts:
        """Return target phase counts over all steps."""
        with self.lock:
            return count_phases(record for step in self.steps for record in step.targets)
