"""Notification rules shared by OpsJob and OpsSchedule: which outcomes go to which channels."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from opsconductor.api._base import ApiModel, ConfigMapKeySelector, LocalObjectReference

Outcome = Literal["Started", "Succeeded", "Failed", "Cancelled", "Recovered", "DurationExceeded"]


class NotifyRule(ApiModel):
    """Send a notification to a channel on one of ``events``."""

    events: Annotated[list[Outcome], Field(min_length=1, max_length=6)]
    """Run events that trigger this rule. Recovered = first success after failures. (Not named
    ``on``: YAML 1.1 reads an unquoted ``on`` key as the boolean true.)"""
    channel_ref: LocalObjectReference
    """A Credential of type SMTP, SlackWebhook, TeamsWebhook or Webhook: the channel to use."""
    to: Annotated[
        list[Annotated[str, Field(min_length=3, max_length=320, pattern=r"^.+@.+$")]], Field(max_length=50)
    ] = []
    """Email recipients (SMTP channels only)."""
    duration_threshold_seconds: Annotated[int, Field(ge=1)] | None = None
    """For DurationExceeded: notify when a run takes longer than this."""
    template_ref: ConfigMapKeySelector | None = None
    """A Jinja2 template (ConfigMap key) replacing the channel's default message."""
