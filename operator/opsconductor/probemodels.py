"""The probe pod's contract: what the operator hands a probe pod and what the pod reports back.

A probe pod (``python -m opsconductor.runner probe``) gets a :class:`ProbeRequest` as JSON in the
environment variable :data:`PROBE_REQUEST_ENV` (no secret values: the request names files under
``SECRETS_ROOT`` where the pod's Secret volumes put them) and writes a :class:`ProbeReport` as JSON
to its termination message. The operator turns the report into the Target's status.

Why the termination message and not a status patch by the pod: the pod then needs no API access
at all (no service account token, no per-Target Role), and the operator alone decides the status
(backoff, Events on change), so a probe pod cannot write anything but its own few bytes of result.

What must stay true: a report fits a termination message (4096 bytes) and holds no secret value
(the probe masks every message with its secret store).
"""

from __future__ import annotations

from typing import Final

from opsconductor.plan import PlanModel, PlanTarget

PROBE_REQUEST_ENV: Final = "OPSCONDUCTOR_PROBE_REQUEST"
REPORT_MAX_BYTES: Final = 4096

# Reasons of the Reachable condition.
REASON_CONNECTED = "Connected"
REASON_CONNECTION_FAILED = "ConnectionFailed"
REASON_CONNECTION_REFUSED = "ConnectionRefused"
REASON_NAME_RESOLUTION_FAILED = "NameResolutionFailed"
REASON_TIMEOUT = "Timeout"
REASON_AUTHENTICATION_FAILED = "AuthenticationFailed"
REASON_HOST_KEY_MISMATCH = "HostKeyVerificationFailed"
REASON_TLS_ERROR = "TLSError"
REASON_CREDENTIAL_INVALID = "CredentialInvalid"
REASON_CREDENTIAL_NOT_FOUND = "CredentialNotFound"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_NOT_SUPPORTED = "ProbeNotSupported"
REASON_PROBE_FAILED = "ProbeFailed"
REASON_PROBE_LOST = "ProbeLost"


class ProbeRequest(PlanModel):
    """One connection test."""

    target: PlanTarget
    timeout_seconds: int = 15
    collect_facts: bool = True


class ProbeReport(PlanModel):
    """The outcome of one connection test, as the probe pod reports it."""

    reachable: bool
    reason: str
    message: str = ""
    latency_milliseconds: int | None = None
    facts: dict[str, str | int] = {}
    """Keyed by ``TargetFacts`` snake_case field names."""

    def to_json(self) -> str:
        """JSON that fits a termination message (the message is shortened until it does)."""
        data = self.model_dump_json()
        message = self.message
        while len(data.encode()) > REPORT_MAX_BYTES and message:
            message = message[: len(message) // 2]
            data = self.model_copy(update={"message": message + "…"}).model_dump_json()
        if len(data.encode()) > REPORT_MAX_BYTES:
            data = self.model_copy(update={"message": message, "facts": {}}).model_dump_json()
        return data
