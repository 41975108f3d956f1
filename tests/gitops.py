"""Run the real health checkers GitOps tools use on live objects: kstatus (Go) and Argo CD's Lua."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ARGOCD_HEALTH_LUA = REPO_ROOT / "charts" / "opsconductor" / "files" / "argocd-health.lua"


def kstatus_binary() -> str:
    """Build (or reuse) hack/kstatus and return its path."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-kstatus.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def kstatus(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(status, message) per object, as sigs.k8s.io/cli-utils/pkg/kstatus computes it."""
    out = subprocess.run(
        [kstatus_binary()], input=json.dumps(objects), capture_output=True, text=True, check=True, timeout=60
    )
    return [(r["status"], r["message"]) for r in map(json.loads, out.stdout.splitlines())]


def _lua(value: Any) -> str:
    """``value`` as a Lua 5.1 expression (what Argo CD's gopher-lua hands the script as ``obj``)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string literal is a Lua one (no \\u escapes)
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua(v)}" for k, v in value.items()) + "}"


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) from the chart's Argo CD health script, run by the real Lua interpreter."""
    program = (
        f"obj = {_lua(obj)}\n"
        f"local hs = dofile({json.dumps(str(ARGOCD_HEALTH_LUA))})\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    out = subprocess.run(
        ["lua5.1", "-"], input=program, capture_output=True, text=True, check=True, timeout=30
    )
    status, _, message = out.stdout.partition("\n")
    return status, message
