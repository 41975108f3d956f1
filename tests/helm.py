"""Run the locally built helm against the local control plane, and render the chart."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "opsconductor"
KUBE_VERSION = "1.36.3"


@dataclass
class Helm:
    """helm with one kubeconfig (helm keeps its cache and config under ``home``)."""

    binary: str
    kubeconfig: Path
    home: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run helm; with ``check`` a non-zero exit fails with helm's stderr."""
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(
        self, *set_args: str, namespace: str = "opsconductor", show_only: str = "", check: bool = True
    ) -> str:
        """Render the chart (``--set`` style arguments, e.g. ``"replicaCount=1"``)."""
        sets = [arg for value in set_args for arg in ("--set", value)]
        if show_only:
            sets += ["--show-only", show_only]
        result = self.run(
            "template", "release", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *sets, check=check,
        )  # fmt: skip
        return result.stdout if result.returncode == 0 else result.stderr


def documents(rendered: str) -> list[dict]:
    """The non-empty YAML documents of a rendered chart."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]
