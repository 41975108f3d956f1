"""The runner's status stays under 256 KiB whatever the fan-out and output size."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from opsconductor.api.opsjob import OpsJobStatus
from opsconductor.runner.results import (
    ITEMISE_ALL_MAX_TARGETS,
    ITEMISED_FAILURES,
    STATUS_MAX_BYTES,
    Captured,
    RunState,
    StepRecord,
    TargetRecord,
    build_status,
    capture_keep,
    serialized_size,
)

TEN_MB = 10 * 1024 * 1024
MARKER = re.compile(r"\n… \[truncated (\d+) bytes\] …\n")
START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def big_output(char: str = "x") -> str:
    return ("line " + char * 70 + "\n") * (TEN_MB // 76)


def failed(name: str, out: Captured, err: Captured, error: str = "E" * 10_000) -> TargetRecord:
    return TargetRecord(
        target=name,
        phase="Failed",
        exit_code=1,
        attempts=3,
        duration_milliseconds=123456,
        stdout=out,
        stderr=err,
        error=error,
    )


def assert_fits(status: dict[str, object]) -> int:
    size = serialized_size(status)
    assert size < STATUS_MAX_BYTES, f"status is {size} bytes"
    OpsJobStatus.model_validate(status)  # every field within the CRD's limits
    return size


# --- excerpts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["short", "ü" * 20_000, "a" * 50_000, "é€😀" * 9000 + "end"])
@pytest.mark.parametrize("limit", [0, 10, 40, 100, 1000, 8192])
def test_excerpt_keeps_head_and_tail_and_counts_every_omitted_byte(text: str, limit: int) -> None:
    for captured in (Captured.of(text), Captured.of(text, keep=300)):
        excerpt = captured.excerpt(limit)
        assert len(excerpt) <= limit
        if limit < 38 and len(text) > limit:
            assert excerpt == ""
            continue
        match = MARKER.search(excerpt)
        if match is None:
            assert excerpt == text
            continue
        head, tail = excerpt[: match.start()], excerpt[match.end() :]
        assert text.startswith(head)
        assert text.endswith(tail)
        assert len(head.encode()) + int(match[1]) + len(tail.encode()) == len(text.encode())


def test_small_output_is_kept_whole() -> None:
    assert Captured.of("ok\n").excerpt(8192) == "ok\n"
    assert Captured.of("").excerpt(8192) == ""


def test_capture_keeps_nothing_of_successes_in_big_steps() -> None:
    assert capture_keep(ITEMISE_ALL_MAX_TARGETS, "Succeeded") > 0
    assert capture_keep(ITEMISE_ALL_MAX_TARGETS + 1, "Succeeded") == 0
    assert capture_keep(ITEMISE_ALL_MAX_TARGETS + 1, "Failed") > 0
    captured = Captured.of(big_output(), keep=0)
    assert captured.head == captured.tail == ""
    assert captured.total_bytes == len(big_output())


# --- whole status -----------------------------------------------------------------------------
def test_5000_failed_targets_with_10mb_outputs_stay_under_the_cap() -> None:
    text = big_output()
    targets = [
        failed(
            f"host-{n:05d}.example.com", Captured.of(text, capture_keep(5000, "Failed")), Captured.of(text)
        )
        for n in range(5000)
    ]
    step = StepRecord("fanout", targets, phase="Failed", start_time=START, message="M" * 10_000)
    status = build_status([step], START)
    assert_fits(status)
    [listed] = status["steps"]
    assert len(listed["targets"]) == ITEMISED_FAILURES
    assert listed["omittedTargets"] == 5000 - ITEMISED_FAILURES
    assert listed["counts"]["failed"] == 5000
    first = listed["targets"][0]
    assert first["target"] == "host-00000.example.com"
    match = MARKER.search(first["stdout"])
    assert match is not None
    head, tail = first["stdout"][: match.start()], first["stdout"][match.end() :]
    assert len(head) + int(match[1]) + len(tail) == len(text)
    assert status["progress"] == {"steps": "1/1", "targets": "0/5000"}


def test_50_steps_of_5000_targets_with_huge_names_and_outputs_stay_under_the_cap() -> None:
    out = Captured.of(big_output("ü"))  # multi-byte output: JSON escapes make it bigger still
    err = Captured.of(big_output("\x01"))  # control characters: 6 bytes each in JSON
    steps = []
    for s in range(50):
        targets = [failed(f"{n:05d}-" + "h" * 240, out, err) for n in range(5000)]
        steps.append(StepRecord(f"step-{s:02d}-" + "s" * 50, targets, phase="Failed", message="m" * 5000))
    assert_fits(build_status(steps, START))


def test_50_small_steps_itemising_every_target_stay_under_the_cap() -> None:
    out = Captured.of(big_output())
    steps = [
        StepRecord(
            f"step-{s:02d}",
            [failed(f"{n:02d}-" + "t" * 250, out, out) for n in range(ITEMISE_ALL_MAX_TARGETS)],
            phase="Failed",
        )
        for s in range(50)
    ]
    status = build_status(steps, START)
    assert_fits(status)


def test_small_runs_list_every_target_with_generous_excerpts() -> None:
    text = "x" * 3000
    targets = [
        TargetRecord(f"t{n}", phase="Succeeded", exit_code=0, stdout=Captured.of(text)) for n in range(5)
    ]
    status = build_status([StepRecord("s", targets, phase="Succeeded")], START)
    [step] = status["steps"]
    assert [t["target"] for t in step["targets"]] == ["t0", "t1", "t2", "t3", "t4"]
    assert all(t["stdout"] == text for t in step["targets"])
    assert step["omittedTargets"] == 0
    assert status["startTime"] == "2026-01-02T03:04:05Z"


def test_big_step_itemises_only_failures_in_plan_order() -> None:
    targets = [TargetRecord(f"t{n:03d}", phase="Failed" if n % 7 == 0 else "Succeeded") for n in range(100)]
    status = build_status([StepRecord("s", targets, phase="Failed")], None)
    [step] = status["steps"]
    assert [t["target"] for t in step["targets"]] == [f"t{n:03d}" for n in range(0, 100, 7)][
        :ITEMISED_FAILURES
    ]
    assert step["omittedTargets"] == 100 - len(step["targets"])
    assert step["counts"]["succeeded"] == 100 - 15


def test_run_state_snapshot_and_progress() -> None:
    state = RunState([("a", ["x", "y"]), ("b", [])])
    assert [t.target for t in state.steps[1].targets] == ["local"]
    with state.lock:
        state.steps[0].phase = "Succeeded"
        state.steps[0].targets[0].phase = "Succeeded"
        state.steps[0].targets[1].phase = "Failed"
    assert state.progress().model_dump() == {"steps": "1/2", "targets": "1/1"}
    assert state.status()["progress"] == {"steps": "1/2", "targets": "1/1"}
