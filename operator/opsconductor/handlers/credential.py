"""Credential handlers: validate a Credential against its Secret whenever either changes.

Reads the Secret (values, in memory only), calls ``credentialcheck`` and patches the status it
returns, guarded by the Credential's resourceVersion; posts Events only when Ready (or Expiring)
flips. Secret values never reach a log line, an Event or the status: ``credentialcheck`` messages
name keys, never values, and nothing here logs the Secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import TYPE_CHECKING, Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from opsconductor import clock, kube
from opsconductor.api import CREDENTIAL
from opsconductor.api.credential import CredentialSpec
from opsconductor.credentialcheck import check_credential, credential_status, next_expiry_check

if TYPE_CHECKING:
    from urllib3 import HTTPResponse

Manifest = dict[str, Any]
log = logging.getLogger(__name__)


def read_secret(namespace: str, name: str) -> tuple[dict[str, bytes], str] | None:
    """Read the Secret's decoded data and resourceVersion, or None when it does not exist."""
    try:
        response = kube.core().read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as error:
        if kube.is_not_found(error):
            return None
        raise
    body: Manifest = json.loads(
        cast("HTTPResponse", response).data
    )  # _preload_content=False: the raw HTTPResponse
    data: dict[str, bytes] = {}
    for key, value in (body.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value or "")
        except (binascii.Error, ValueError):
            data[key] = b""
    return data, str(body["metadata"].get("resourceVersion") or "")


def validate(namespace: str, name: str) -> None:
    """Re-validate one Credential and record the outcome (idempotent; no-op when nothing changed)."""
    for _ in range(5):
        credential = kube.get_custom(CREDENTIAL.plural, namespace, name)
        if credential is None or credential["metadata"].get("deletionTimestamp"):
            return
        try:
            spec = CredentialSpec.model_validate(credential.get("spec") or {})
        except ValueError as error:  # admission already validates; an older schema version may not
            raise kopf.PermanentError(f"invalid Credential spec: {error}") from None
        secret = read_secret(namespace, spec.secret_ref.name)
        now = clock.now()
        check = check_credential(name, spec, secret[0] if secret else None, now)
        update = credential_status(credential, check, secret[1] if secret else None, now)
        if update.patch is None:
            return
        meta = credential["metadata"]
        if kube.patch_status(CREDENTIAL.plural, namespace, name, update.patch, meta["resourceVersion"]):
            for event_type, reason, message in update.events:
                kopf.event(credential, type=event_type, reason=reason, message=message)  # type: ignore[arg-type]
            log.info("Credential %s/%s: %s (%s)", namespace, name, check.reason, check.message)
            return
    raise kopf.TemporaryError("the Credential kept changing while its status was being updated", delay=1)


def watch_expiry(namespace: str, name: str, body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    """Re-validate exactly when a certificate enters its warning window and when it expires.

    Runs as a kopf daemon while the Credential holds a certificate; ``body`` is kept current by kopf.
    Time comes from ``opsconductor.clock``, so tests move it with the file clock.
    """
    while not stopped:
        due = next_expiry_check(dict(body))
        # Nothing due (already expired): keep watching; a renewed certificate brings a new date.
        wait = 3600.0 if due is None else clock.seconds_until(due)
        if wait <= 0:
            validate(namespace, name)
            wait = 5.0  # the status now reflects the change; the next instant follows from it
        # Wake at least hourly (every 0.5 s with the test clock) to follow spec and clock changes.
        stopped.wait(min(wait, 0.5 if clock.is_fake() else 3600.0))
