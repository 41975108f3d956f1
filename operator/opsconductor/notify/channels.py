"""Channels: read a channel Credential and its Secret, and send one message over it.

Only the operator reads channel Secrets (its ClusterRole allows ``get`` on Secrets; runner pods never
see them). Errors are :class:`DeliveryError` with a message safe to record: webhook URLs embed
their secret, so neither they nor passwords ever appear in an error, a log line or an Event.
"""

from __future__ import annotations

import base64
import logging
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from pydantic.alias_generators import to_snake

from opsconductor import kube
from opsconductor.api import CREDENTIAL
from opsconductor.api.credential import SECRET_KEYS, CredentialSpec
from opsconductor.notify.rules import CHANNEL_TYPES

SEND_TIMEOUT_SECONDS = 20.0
# httpx logs every request's URL at INFO; a webhook URL embeds its secret.
logging.getLogger("httpx").setLevel(logging.WARNING)


class DeliveryError(Exception):
    """A delivery attempt failed; the message is safe to record (no secret in it)."""


@dataclass(frozen=True)
class Channel:
    """A channel's settings and secret values (never logged: ``repr`` hides the values)."""

    name: str
    type: str
    spec: CredentialSpec
    values: dict[str, str] = field(repr=False)

    def secrets(self) -> list[str]:
        """Secret values, to scrub from any error text."""
        return [v for v in self.values.values() if v]


def _secret_data(namespace: str, name: str) -> dict[str, str] | None:
    try:
        secret = kube.core().read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as error:
        if kube.is_not_found(error):
            return None
        raise
    data = kube._json_body(secret).get("data") or {}
    return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in data.items()}


def channel_type(namespace: str, name: str) -> str | None:
    """Return the type of a Credential, or None when it does not exist."""
    credential = kube.get_custom(CREDENTIAL.plural, namespace, name)
    return None if credential is None else str(credential.get("spec", {}).get("type"))


def load_channel(namespace: str, name: str) -> Channel:
    """Read a channel Credential and the values of its Secret.

    Raises:
        DeliveryError: missing Credential or Secret, wrong type, missing key.
    """
    credential = kube.get_custom(CREDENTIAL.plural, namespace, name)
    if credential is None:
        raise DeliveryError(f"Credential {name!r} (notify channel) does not exist")
    try:
        spec = CredentialSpec.model_validate(credential.get("spec") or {})
    except ValidationError as error:
        raise DeliveryError(f"Credential {name!r} is invalid: {error.error_count()} error(s)") from None
    if spec.type not in CHANNEL_TYPES:
        wanted = ", ".join(CHANNEL_TYPES)
        raise DeliveryError(
            f"Credential {name!r} has type {spec.type}; a notify channel needs one of {wanted}"
        )
    data = _secret_data(namespace, spec.secret_ref.name)
    if data is None:
        raise DeliveryError(f"Secret {spec.secret_ref.name!r} of Credential {name!r} does not exist")
    values: dict[str, str] = {}
    for role, (default_key, optional) in SECRET_KEYS[spec.type].items():
        key = (getattr(spec.keys, to_snake(role), None) if spec.keys else None) or default_key
        if key in data:
            values[role] = data[key]
        elif not optional:
            raise DeliveryError(f"Secret {spec.secret_ref.name!r} has no key {key!r} ({role} of {name!r})")
    return Channel(name, spec.type, spec, values)


def scrub(text: str, channel: Channel) -> str:
    """Replace every secret value of the channel in ``text``."""
    for value in sorted(channel.secrets(), key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "<secret>")
    return text


async def post_json(
    channel: Channel, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
) -> None:
    """POST to the channel's webhook URL; any non-2xx status is a failure."""
    url = channel.values["url"]
    try:
        response = await client.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=SEND_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as error:
        # httpx errors may quote the URL (which embeds the webhook's secret): say only what kind.
        raise DeliveryError(
            f"{channel.type} {channel.name!r}: {type(error).__name__} reaching the webhook"
        ) from None
    if not 200 <= response.status_code < 300:
        detail = scrub(response.text[:200].strip(), channel)
        raise DeliveryError(f"{channel.type} {channel.name!r}: HTTP {response.status_code} {detail}".strip())


def _tls_context(channel: Channel) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if channel.values.get("ca"):
        context.load_verify_locations(cadata=channel.values["ca"])
    return context


async def send_email(channel: Channel, mail: EmailMessage) -> None:
    """Send over SMTP: StartTLS (required, verified), implicit TLS or plain, with AUTH if set."""
    smtp = channel.spec.smtp
    assert smtp is not None  # admission: type SMTP requires smtp settings
    options: dict[str, Any] = {
        "hostname": smtp.host,
        "port": smtp.port,
        "timeout": SEND_TIMEOUT_SECONDS,
        "username": channel.values.get("username") or None,
        "password": channel.values.get("password") or None,
    }
    if smtp.security == "StartTLS":
        options.update(start_tls=True, use_tls=False, tls_context=_tls_context(channel))
    elif smtp.security == "TLS":
        options.update(use_tls=True, start_tls=False, tls_context=_tls_context(channel))
    else:
        options.update(use_tls=False, start_tls=False)
    try:
        await aiosmtplib.send(mail, **options)
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as error:
        text = scrub(f"{type(error).__name__}: {error}", channel)
        raise DeliveryError(f"SMTP {channel.name!r}: {text}"[:1024]) from None
