"""Render an OpsJob's status as a table a person reads: steps × targets with outcome and excerpt.

Used by ``opsconductor results opsjob/NAME`` and ``make demo``; pure (takes the object as a dict).
"""

from __future__ import annotations

from typing import Any

EXCERPT_WIDTH = 60


def _first_line(text: str) -> str:
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    return line if len(line) <= EXCERPT_WIDTH else line[: EXCERPT_WIDTH - 1] + "…"


def results_rows(job: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(step, target, phase, exit code, duration, output or error) for every itemised target result."""
    rows = []
    for step in (job.get("status") or {}).get("steps") or []:
        for result in step.get("targets") or []:
            duration = result.get("durationMilliseconds")
            rows.append(
                (
                    step["name"],
                    result["target"],
                    result["phase"],
                    "" if result.get("exitCode") is None else str(result["exitCode"]),
                    "" if duration is None else f"{duration / 1000:.1f}s",
                    _first_line(result.get("error") or result.get("stdout") or result.get("stderr") or ""),
                )
            )
        if step.get("omittedTargets"):
            rows.append((step["name"], f"(+{step['omittedTargets']} more)", "", "", "", "see the runner log"))
    return rows


def format_results(job: dict[str, Any]) -> str:
    """Format the whole table, with a header line naming the job and its phase."""
    status = job.get("status") or {}
    meta = job["metadata"]
    header = ("STEP", "TARGET", "STATUS", "EXIT", "TIME", "OUTPUT / ERROR")
    rows = [header, *results_rows(job)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"OpsJob {meta.get('namespace', '')}/{meta['name']}: {status.get('phase', 'Pending')}"
        + (f" in {status['duration']}" if status.get("duration") else "")
        + (f" — {status['message']}" if status.get("message") else "")
    ]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)
