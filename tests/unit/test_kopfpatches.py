"""kopf's namespace observer with and without our fix (``opsconductor.kopfpatches``), on kopf's own code."""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.structs import references
from kopf._core.reactor import observation

from opsconductor import kopfpatches

PATTERNS = ["team-*"]


def event(kind: str | None, name: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    return {"type": kind, "object": {"metadata": meta}}


def observe(process: Any, *events: dict[str, Any]) -> set[str]:
    insights = references.Insights()

    async def feed() -> None:
        for raw_event in events:
            await process(raw_event=raw_event, namespaces=PATTERNS, insights=insights)

    asyncio.run(feed())
    return {str(n) for n in insights.namespaces}


def test_kopf_alone_never_serves_a_namespace_first_seen_in_its_watch_listing() -> None:
    # The bug the fix exists for: the watch's own listing (events without a type) is dropped.
    assert observe(kopfpatches._kopf_process_namespace_event, event(None, "team-a")) == set()


def test_with_the_fix_the_watch_listing_adds_matching_namespaces_only() -> None:
    kopfpatches.apply()
    assert observation.process_discovered_namespace_event is kopfpatches.process_namespace_event_with_listings
    seen = observe(
        observation.process_discovered_namespace_event, event(None, "team-a"), event(None, "other")
    )
    assert seen == {"team-a"}


def test_with_the_fix_watch_events_still_add_and_remove_namespaces() -> None:
    kopfpatches.apply()
    process = observation.process_discovered_namespace_event
    assert observe(process, event("ADDED", "team-b"), event(None, "team-c")) == {"team-b", "team-c"}
    assert observe(process, event(None, "team-b"), event("DELETED", "team-b", deleting=True)) == set()
