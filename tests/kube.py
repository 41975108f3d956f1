"""Test helpers around the local control plane: a kubectl wrapper and condition polling."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``probe`` until it returns a truthy value and return it; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last error: {last_error}")


@dataclass
class Kubectl:
    """Runs the locally built kubectl against one kubeconfig."""

    binary: str
    kubeconfig: Path
    namespace: str = "default"

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; with ``check`` a non-zero exit fails with kubectl's stderr."""
        result = subprocess.run(
            [
                self.binary,
                f"--kubeconfig={self.kubeconfig}",
                *([f"--namespace={self.namespace}"] if self.namespace else []),  # "": the objects' own
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def apply(self, manifest: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f -`` (client-side, strict field validation like a user's apply)."""
        return self.run("apply", "-f", "-", input=manifest, check=check)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The object as JSON."""
        return json.loads(self.run("get", kind, name, "-o", "json").stdout)  # type: ignore[no-any-return]

    def with_namespace(self, namespace: str) -> Kubectl:
        """The same kubectl in another namespace."""
        return Kubectl(self.binary, self.kubeconfig, namespace)
