"""The interface between the step engine and protocol modules.

The engine renders a step's templates for one target, then calls the protocol session that owns
the step's type. A session lives for the whole run so it can reuse connections (one SSH transport
per target, one HTTP client per run) and is closed at the end.

What must stay true:
- ``run`` never raises for failures of the remote side: it returns a StepOutcome with ``error``
  set to a message a person can act on (host, port, what failed, what to check).
- ``run`` returns promptly once ``ctx.cancel`` is set or ``ctx.deadline`` passes, after stopping
  the remote command.
- Secret values are never put into outcomes or logs unmasked (``ctx.secrets.mask``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol as TypingProtocol

from opsconductor.api.opsjob import Step
from opsconductor.plan import PlanTarget, RunPlan


class SecretStore(TypingProtocol):
    """Reads secret values from mounted files and masks every value it has handed out."""

    def read(self, path: str) -> str:
        """Read the file's content (trailing newline kept as is); registered for masking."""
        ...

    def read_bytes(self, path: str) -> bytes:
        """Read the file's raw content; registered for masking when it decodes as text."""
        ...

    def mask(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``***``."""
        ...


@dataclass
class StepContext:
    """What a protocol session gets for one attempt of one step on one target."""

    plan: RunPlan
    target: PlanTarget | None
    """None for steps that run once without a target (http with an absolute URL, webhook, wait)."""
    secrets: SecretStore
    workspace: Path
    cancel: threading.Event
    deadline: float | None = None
    """``time.monotonic()`` value after which the attempt must stop (the step timeout)."""
    log: list[str] = field(default_factory=list)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


@dataclass
class StepOutcome:
    """The result of one attempt."""

    ok: bool
    exit_code: int | None = None
    """Remote exit code, or the HTTP status for http steps."""
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    timed_out: bool = False
    cancelled: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    """Small named values later steps may template on (e.g. ``status``, ``json``)."""


class ProtocolSession(TypingProtocol):
    """Runs the step types of one protocol for a whole run."""

    step_types: frozenset[str]

    def run(self, step: Step, ctx: StepContext) -> StepOutcome:
        """Execute one attempt of a rendered step (templates already expanded) on ``ctx.target``."""
        ...

    def close(self) -> None:
        """Close connections; called once at the end of the run."""
        ...
