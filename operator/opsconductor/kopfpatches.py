"""Fixes for kopf behaviour the operator depends on, applied once when the handlers are registered.

Each fix says which kopf versions it was written against, what goes wrong without it, and when it can
go. ``tests/unit/test_kopfpatches.py`` runs kopf's own code with and without each fix.

**Namespaces created while the operator starts (kopf 1.45).** With namespace patterns
(``OPSCONDUCTOR_NAMESPACES=team-*``), kopf's namespace observer lists the namespaces once, then starts
a watch, which lists them again before watching. Events of that second listing have no type, and
``observation.process_discovered_namespace_event`` drops every event without a type. A namespace
created between the two listings (or while the watch re-lists after an expired resource version) is
therefore never served: its objects get no handlers until the namespace itself changes, which for a
test namespace is its deletion. Seen in a test run: the first e2e test's namespace was created as
the operator started, and the operator saw its OpsJob only 90 s later, when the namespace was deleted.
The fix treats the watch's listing like the first listing (adding a namespace twice is harmless).
It can go when kopf processes typeless namespace events itself.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._core.reactor import observation

_kopf_process_namespace_event = observation.process_discovered_namespace_event


async def process_namespace_event_with_listings(
    *, raw_event: Any, namespaces: Collection[Any], insights: Any, **kwargs: Any
) -> None:
    """Kopf's namespace event processor, which also takes the events of a (re-)listing."""
    if raw_event["type"] is not None:
        await _kopf_process_namespace_event(
            raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs
        )
        return
    async with insights.revised:
        observation.revise_namespaces(
            raw_bodies=[raw_event["object"]], insights=insights, namespaces=namespaces
        )
        insights.revised.notify_all()


def apply() -> None:
    """Install the fixes (idempotent)."""
    observation.process_discovered_namespace_event = process_namespace_event_with_listings
