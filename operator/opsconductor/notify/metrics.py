"""Delivery counters: the one place notification outcomes are counted (exported later as metrics).

Counts are per process, keyed by (channel type, result); result is ``sent``, ``retry``, ``failed``,
``held``, ``dropped`` or ``template_error``. Thread-safe: the notifier counts from its worker threads.
"""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_deliveries: Counter[tuple[str, str]] = Counter()


def count(channel_type: str, result: str, amount: int = 1) -> None:
    """Add ``amount`` to the (channel type, result) counter."""
    with _lock:
        _deliveries[(channel_type, result)] += amount


def snapshot() -> dict[tuple[str, str], int]:
    """Return a copy of all counters."""
    with _lock:
        return dict(_deliveries)
