"""Benchmark: per-command overhead of ``winrm.exec`` through the runner engine against a bare pywinrm loop.

Both run the same PowerShell command (``Write-Output <n>``, sent as ``-EncodedCommand``) against the
same WinRM test server (``python -m tests.winrm``, in its own process; NTLM with message encryption
over http, as a default Windows listener), on one connection and one remote shell each:

- ``pywinrm``: a bare loop on one ``winrm.Protocol``: ``run_command`` → ``get_command_output`` →
  ``cleanup_command`` per command, the least a correct client does;
- ``runner``: the runner's ``Engine`` (in this process, as ``opsconductor run`` and the runner pod run
  it) on a plan of N ``winrm.exec`` steps on one Target; the time per step is measured from the
  engine's step_started to step_finished report (templating, the session, masking, bookkeeping).

The two alternate in rounds (``--rounds``) so background load hits both alike; the medians over all
commands and the difference are printed. No container, no cluster: loopback only.

    .venv/bin/python bench/winrm_overhead.py [--commands 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from winrm.protocol import Protocol

from opsconductor.api.opsjob import Step
from opsconductor.plan import JobRef, PlanCredential, PlanStep, PlanTarget, RunPlan
from opsconductor.runner.engine import Engine
from opsconductor.runner.protocols.winrm import powershell_command
from opsconductor.runner.reporting import NullReporter, OutputLog
from opsconductor.runner.secrets import FileSecretStore

REPO_ROOT = Path(__file__).resolve().parents[1]
STEP = TypeAdapter(Step)


def start_server() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.winrm"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def bare_loop(info: dict[str, Any], commands: int) -> list[float]:
    protocol = Protocol(
        info["endpoint"],
        transport="ntlm",
        username=info["user"],
        password=info["password"],
        message_encryption="auto",
        read_timeout_sec=30,
        operation_timeout_sec=20,
        proxy=None,
    )
    shell = protocol.open_shell(codepage=65001)
    times = []
    try:
        for n in range(commands):
            started = time.perf_counter()
            executable, arguments = powershell_command(f"Write-Output {n}")
            command = protocol.run_command(shell, executable, arguments)
            out, _, code = protocol.get_command_output(shell, command)
            protocol.cleanup_command(shell, command)
            times.append(time.perf_counter() - started)
            assert code == 0 and out.strip() == str(n).encode(), (code, out)
    finally:
        protocol.close_shell(shell)
    return times


class StepTimer(NullReporter):
    """Records when each step started and finished (monotonic)."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}

    def step_started(self, state: Any, index: int) -> None:
        self.started[index] = time.perf_counter()

    def step_finished(self, state: Any, index: int) -> None:
        self.finished[index] = time.perf_counter()


def runner_loop(info: dict[str, Any], commands: int, workdir: Path) -> list[float]:
    password = workdir / "password"
    password.write_text(info["password"])
    target = PlanTarget(
        name="win",
        address=info["address"],
        port=info["port"],
        protocol="winrm",
        scheme="http",
        path="/wsman",
        transport="ntlm",
        message_encryption="auto",
        operation_timeout_seconds=20,
        credential=PlanCredential(
            name="win", type="BasicAuth", username=info["user"], files={"password": str(password)}
        ),
    )
    steps = [
        PlanStep(
            step=STEP.validate_python(
                {"name": f"c{n}", "type": "winrm.exec", "command": f"Write-Output {n}"}
            ),
            targets=["win"],
        )
        for n in range(commands)
    ]
    plan = RunPlan(job=JobRef(namespace="bench", name="winrm", uid="u"), targets={"win": target}, steps=steps)
    timer = StepTimer()
    with open("/dev/null", "w") as sink:
        result = Engine(
            plan, FileSecretStore(), reporter=timer, output=OutputLog(sink), workspace=workdir
        ).run()
    assert result.summary.phase == "Succeeded", result.summary
    return [timer.finished[i] - timer.started[i] for i in range(commands)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    process, info = start_server()
    bare: list[float] = []
    runner: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="opsc-bench-winrm-") as tmp:
            bare_loop(info, 5)  # warm-up: imports, first NTLM handshake
            runner_loop(info, 5, Path(tmp))
            for _ in range(args.rounds):
                bare += bare_loop(info, args.commands)
                runner += runner_loop(info, args.commands, Path(tmp))
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)
    bare_ms = statistics.median(bare) * 1000
    runner_ms = statistics.median(runner) * 1000
    print(
        f"server: {info['endpoint']} (NTLM, message encryption), "
        f"{args.rounds} rounds x {args.commands} commands"
    )
    print(f"{'':10} {'median':>9} {'p10':>9} {'p90':>9}")
    for name, values in (("pywinrm", bare), ("runner", runner)):
        deciles = statistics.quantiles(values, n=10)
        print(
            f"{name:10} {statistics.median(values) * 1000:8.1f}ms "
            f"{deciles[0] * 1000:8.1f}ms {deciles[-1] * 1000:8.1f}ms"
        )
    print(
        f"runner overhead per command: {runner_ms - bare_ms:+.1f} ms "
        f"({runner_ms / bare_ms:.2f}x the bare loop)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
