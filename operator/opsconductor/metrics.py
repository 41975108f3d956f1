"""Prometheus metrics of the operator: what is defined, how runs are counted, and the endpoint.

Served on ``OPSCONDUCTOR_METRICS_ADDRESS`` (``host:port``, path ``/metrics``) when set; the Helm chart
sets it and ships a Grafana dashboard built on these names (``charts/opsconductor/files/dashboard.json``).

Runs are counted from OpsJob events (:func:`observe_opsjob`), not inside the reconcile path, so
metrics can never slow or break a run. What must stay true:
- a finished run is counted once per operator process, and only if it finished after the process
  started (a restarted operator does not re-count history; Prometheus handles counter resets);
- labels have bounded cardinality: namespace, result, step type, channel — never job or target names.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from opsconductor import clock

REGISTRY = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

RUNS = Counter(
    "opsconductor_runs_total",
    "OpsJob runs that finished, by result.",
    ["namespace", "result"],
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "opsconductor_run_duration_seconds",
    "Wall time of finished OpsJob runs (runner start to completion).",
    ["namespace", "result"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "opsconductor_step_duration_seconds",
    "Wall time of the steps of finished runs, by step phase.",
    ["namespace", "phase"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
SCHEDULE_LAG = Histogram(
    "opsconductor_schedule_lag_seconds",
    "Delay from an OpsSchedule's fire instant to the creation of its OpsJob.",
    ["namespace"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "opsconductor_notifications_total",
    "Notification deliveries by channel type and result: sent, retry, failed, held, dropped, template_error.",
    ["channel", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "opsconductor_reconcile_errors_total",
    "Handler invocations that raised (kopf retries them), by resource kind.",
    ["kind"],
    registry=REGISTRY,
)
ACTIVE_RUNNER_PODS = Gauge(
    "opsconductor_active_runner_pods",
    "Runner pods that exist and have not finished.",
    registry=REGISTRY,
)

_STARTED = clock.now()
_counted_lock = threading.Lock()
_counted: OrderedDict[str, None] = OrderedDict()  # uids of runs already counted (bounded)
_COUNTED_MAX = 100_000
_active_pods: set[str] = set()
_TERMINAL = ("Succeeded", "Failed", "Cancelled")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def observe_opsjob(job: dict[str, Any]) -> bool:
    """Count a finished run once; return whether this call counted it."""
    status = job.get("status") or {}
    result = status.get("phase")
    completed = _time(status.get("completionTime"))
    if result not in _TERMINAL or completed is None or completed < _STARTED:
        return False
    uid = job["metadata"]["uid"]
    with _counted_lock:
        if uid in _counted:
            return False
        _counted[uid] = None
        if len(_counted) > _COUNTED_MAX:
            _counted.popitem(last=False)
    namespace = job["metadata"]["namespace"]
    RUNS.labels(namespace, result).inc()
    started = _time(status.get("startTime"))
    if started is not None:
        RUN_DURATION.labels(namespace, result).observe(max(0.0, (completed - started).total_seconds()))
    for step in status.get("steps") or []:
        step_start, step_end = _time(step.get("startTime")), _time(step.get("completionTime"))
        if step_start is not None and step_end is not None:
            STEP_DURATION.labels(namespace, step.get("phase", "Unknown")).observe(
                max(0.0, (step_end - step_start).total_seconds())
            )
    return True


def observe_runner_pod(uid: str, pod: dict[str, Any] | None) -> None:
    """Track whether a runner pod is active (exists and has not finished); None = deleted."""
    phase = ((pod or {}).get("status") or {}).get("phase")
    with _counted_lock:
        if pod is None or phase in ("Succeeded", "Failed"):
            _active_pods.discard(uid)
        else:
            _active_pods.add(uid)
        ACTIVE_RUNNER_PODS.set(len(_active_pods))


def count_notification(channel_type: str, result: str) -> None:
    """Count one notification outcome (the notifier calls this; ``any`` when not tied to a channel)."""
    NOTIFICATIONS.labels(channel_type, result).inc()


P = ParamSpec("P")
R = TypeVar("R")


def counting_errors(kind: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a handler so exceptions it raises are counted (a TemporaryError is a planned retry: not)."""

    def wrap(handler: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(handler)
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return handler(*args, **kwargs)
            except kopf.TemporaryError:
                raise
            except Exception:
                RECONCILE_ERRORS.labels(kind).inc()
                raise

        return counted

    return wrap


_serving: set[str] = set()


def serve(address: str) -> None:
    """Serve ``/metrics`` on ``host:port`` in a background thread, once (kopf retries startup handlers)."""
    with _counted_lock:
        if address in _serving:
            return
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
        _serving.add(address)
