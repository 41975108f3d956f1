"""Fixtures for OpsSchedule end-to-end tests: an operator on a controllable clock.

A second operator process watches ``sched-*`` namespaces with ``OPSCONDUCTOR_CLOCK_FILE`` set, so a
test moves the operator's time with :class:`FakeClock` instead of waiting minutes (the session's
main operator, on the real clock, keeps watching ``e2e-*``). Time flows from the instant written
(the fake clock adds the real time elapsed since), and only ever moves forward across the tests of
a session: each test starts from :meth:`FakeClock.fresh_start`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsconductor import clock
from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.conftest import fresh_namespace, running_operator
from tests.kube import Kubectl, wait_until

SCHEDULE_PREFIX = "sched-"
START = datetime(2030, 1, 7, 0, 0, tzinfo=UTC)  # a Monday


class FakeClock:
    """The clock file the scheduling operator reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.latest = START
        self.set(START)

    def set(self, instant: datetime) -> None:
        assert instant >= self.latest - timedelta(seconds=5), "the fake clock only moves forward"
        self.latest = instant
        clock.set_fake_time(self.path, instant)

    def now(self) -> datetime:
        return datetime.fromisoformat(self.path.read_text().strip())

    def fresh_start(self) -> datetime:
        """Move to the next whole day (tests start from a clean 00:00 UTC) and return it."""
        day = (self.latest + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        self.set(day - timedelta(seconds=30))
        return day


@pytest.fixture(scope="session")
def fake_clock(tmp_path_factory: pytest.TempPathFactory) -> FakeClock:
    return FakeClock(tmp_path_factory.mktemp("clock") / "now")


@pytest.fixture(scope="session")
def schedule_operator(
    control_plane: ControlPlane, kubelet: KubeletProcess, fake_clock: FakeClock
) -> Iterator[OperatorProcess]:
    with running_operator(
        control_plane,
        "operator-schedule",
        f"{SCHEDULE_PREFIX}*",
        OPSCONDUCTOR_CLOCK_FILE=str(fake_clock.path),
    ) as process:
        yield process


@pytest.fixture
def sk(
    kubectl: Kubectl, request: pytest.FixtureRequest, schedule_operator: OperatorProcess
) -> Iterator[Kubectl]:
    """kubectl in a fresh namespace the fake-clock operator watches."""
    for name in fresh_namespace(kubectl, request, SCHEDULE_PREFIX):
        yield kubectl.with_namespace(name)


def runs(k: Kubectl, schedule: str) -> list[dict[str, Any]]:
    """The OpsJobs of a schedule, oldest first."""
    items = json.loads(
        k.run("get", "opsjobs", "-l", f"opsconductor.io/schedule={schedule}", "-o", "json").stdout
    )["items"]
    return sorted(items, key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"]))


def wait_runs(k: Kubectl, schedule: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the schedule has exactly ``count`` runs (fails fast on more)."""

    def enough() -> list[dict[str, Any]] | None:
        found = runs(k, schedule)
        assert len(found) <= count, f"expected {count} runs, found {[j['metadata']['name'] for j in found]}"
        return found if len(found) == count else None

    return wait_until(enough, timeout=timeout, what=f"{count} run(s) of {schedule}")


def schedule_status(k: Kubectl, name: str) -> dict[str, Any]:
    status: dict[str, Any] = k.get("opsschedule", name).get("status") or {}
    return status


def schedule_events(k: Kubectl, name: str) -> list[tuple[str, str, str]]:
    items = json.loads(
        k.run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    )["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items]
