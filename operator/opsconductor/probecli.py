"""``opsconductor probe target/NAME``: ask the operator for a probe now and wait for its result.

Sets the ``opsconductor.io/probe`` annotation to a fresh value; the operator probes once per new
value and records it in ``status.handledProbeRequest``. The result is read back from the Target's
status, so what the command prints is what ``kubectl get target -o yaml`` shows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from opsconductor import kube
from opsconductor.api import GROUP, TARGET, VERSION
from opsconductor.constants import ANNOTATION_PROBE

Manifest = dict[str, Any]


class ProbeCommandError(Exception):
    """The probe could not be requested or did not finish; the message says why."""


def request_value() -> str:
    """Return a fresh annotation value: the time, precise enough that two requests never collide."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def outcome_of(target: Manifest, request: str) -> Manifest | None:
    """Return the probe result for ``request`` from the Target's status, or None while it is pending."""
    status = target.get("status") or {}
    if status.get("handledProbeRequest") != request or status.get("activeProbe"):
        return None
    last = status.get("lastProbe") or {}
    reachable: Manifest = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Reachable"), {}
    )
    return {
        "target": target["metadata"]["name"],
        "namespace": target["metadata"]["namespace"],
        "request": request,
        "address": target["spec"]["address"],
        "protocol": target["spec"]["protocol"],
        "reachable": bool(last.get("reachable")),
        "reason": reachable.get("reason", ""),
        "message": last.get("message", ""),
        "latencyMilliseconds": last.get("latencyMilliseconds"),
        "time": last.get("time"),
        "facts": status.get("facts") or {},
        "consecutiveProbeFailures": status.get("consecutiveProbeFailures", 0),
    }


def probe_target(namespace: str, name: str, *, wait: bool, timeout: float = 120) -> Manifest:
    """Request a probe of one Target; with ``wait``, return its outcome (see :func:`outcome_of`).

    Raises:
        ProbeCommandError: the Target does not exist, or no result arrived within ``timeout``.
    """
    request = request_value()
    try:
        kube.custom().patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            TARGET.plural,
            name,
            {"metadata": {"annotations": {ANNOTATION_PROBE: request}}},
            _content_type="application/merge-patch+json",
        )
    except ApiException as error:
        if kube.is_not_found(error):
            raise ProbeCommandError(f"target {namespace}/{name} not found") from None
        raise
    if not wait:
        return {"target": name, "namespace": namespace, "request": request}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        target = kube.get_custom(TARGET.plural, namespace, name)
        if target is None:
            raise ProbeCommandError(f"target {namespace}/{name} was deleted while probing")
        outcome = outcome_of(target, request)
        if outcome is not None:
            return outcome
        time.sleep(0.5)
    raise ProbeCommandError(
        f"no probe result for target {namespace}/{name} within {timeout:g}s — is the operator running "
        "and watching this namespace?"
    )


def format_probe(outcome: Manifest) -> str:
    """Format the outcome as a small table (key: value lines, facts indented)."""
    rows = [
        ("Target", f"{outcome['namespace']}/{outcome['target']}"),
        ("Address", f"{outcome['address']} ({outcome['protocol']})"),
        ("Reachable", f"{'yes' if outcome['reachable'] else 'no'} ({outcome['reason']})"),
        (
            "Latency",
            f"{outcome['latencyMilliseconds']} ms" if outcome["latencyMilliseconds"] is not None else "-",
        ),
        ("Message", outcome["message"] or "-"),
        ("Checked", outcome["time"] or "-"),
    ]
    rows += [(f"  {key}", str(value)) for key, value in sorted(outcome["facts"].items())]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)
