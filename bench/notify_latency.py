"""Benchmark: OpsJob completion → notification delivered, and messages sent for a 200-target fan-out failure.

On a fresh local control plane with the operator, N OpsJobs (one 1 s ``wait`` step, a notify rule to
a generic webhook on a loopback receiver) run in waves. For each run, two times are taken in this
process, on one monotonic clock:

- **watch**: when a ``kubectl get --watch`` of OpsJobs first shows the run finished: the peer, i.e. the
  earliest any client watching the API learns of the outcome;
- **delivered**: when the receiver got the run's webhook.

``delivered - watch`` is what the notifier adds on top of the API's own propagation (it can be
slightly negative: the operator's watch may see the status before this process's). Completion →
delivery from ``status.completionTime`` is printed too, at the API's 1 s resolution.

A burst of ``--burst`` separate failing OpsJobs then notifies one channel per run and another through
a rule with ``groupWindowSeconds: 10``; the messages each receives are counted.

The fan-out part runs one OpsJob over 200 HTTP Targets that all refuse connections, with
``failurePolicy: Continue`` and rules to a webhook and a Slack channel, and counts the messages.

    .venv/bin/python bench/notify_latency.py [--count 100] [--wave 10] [--targets 200] [--burst 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes

# The sibling benchmark (bench/ is on sys.path when a script here runs): same watcher and statistics.
from opsjob_latency import Watcher, describe

from opsconductor.localcluster.cluster import LocalCluster
from opsconductor.localcluster.operatorprocess import OperatorProcess

NAMESPACE = "bench-notify"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


class Receiver:
    """Loopback HTTP receiver: when each job's message arrived, and how many per path."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.by_path: dict[str, int] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.monotonic()
                with owner.lock:
                    owner.by_path[self.path] = owner.by_path.get(self.path, 0) + 1
                    if self.path.endswith("/hook"):
                        owner.arrived.setdefault(json.loads(body)["job"]["name"], now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class FinishedWatcher(Watcher):
    """``kubectl get opsjobs --watch``: when each job was first seen in a terminal phase."""

    def __init__(self, kubectl: list[str]) -> None:
        self.completion: dict[str, datetime] = {}
        super().__init__(kubectl, "opsjobs", NAMESPACE, self._finished)

    def _finished(self, obj: dict[str, Any]) -> str | None:
        status = obj.get("status") or {}
        name = obj.get("metadata", {}).get("name")
        if status.get("phase") not in TERMINAL or not name:
            return None
        self.completion.setdefault(
            name, datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
        )
        return str(name)


def channel(name: str, kind: str, url: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"url": url}},
        {
            "apiVersion": "opsconductor.io/v1alpha1",
            "kind": "Credential",
            "metadata": {"name": name},
            "spec": {"type": kind, "secretRef": {"name": name}},
        },
    ]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_burst(cluster: LocalCluster, custom: Any, receiver: Receiver, count: int) -> dict[str, int]:
    """``count`` separate failing jobs at once, each notifying one channel directly and one grouped."""
    manifests = channel("burst", "Webhook", f"{receiver.url}/burst") + channel(
        "digest", "Webhook", f"{receiver.url}/digest"
    )
    cluster.kubectl(
        "apply",
        "-n",
        NAMESPACE,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
    )
    before = dict(receiver.by_path)
    for index in range(count):
        custom.create_namespaced_custom_object(
            "opsconductor.io",
            "v1alpha1",
            NAMESPACE,
            "opsjobs",
            {
                "apiVersion": "opsconductor.io/v1alpha1",
                "kind": "OpsJob",
                "metadata": {"name": f"burst-{index:03d}"},
                "spec": {
                    "steps": [{"name": "probe", "type": "http.get", "url": "http://127.0.0.1:1/"}],
                    "notify": [
                        {"events": ["Failed"], "channelRef": {"name": "burst"}},
                        {"events": ["Failed"], "channelRef": {"name": "digest"}, "groupWindowSeconds": 10},
                    ],
                },
            },
        )

    def recorded() -> bool:
        jobs = custom.list_namespaced_custom_object("opsconductor.io", "v1alpha1", NAMESPACE, "opsjobs")[
            "items"
        ]
        sent = 0
        for job in jobs:
            if job["metadata"]["name"].startswith("burst-"):
                deliveries = ((job.get("status") or {}).get("notifications") or {}).get("deliveries") or []
                sent += sum(1 for d in deliveries if d["state"] == "Sent")
        return sent >= 2 * count

    wait_for(recorded, 300, "the burst's deliveries")
    return {p: n - before.get(p, 0) for p, n in receiver.by_path.items() if p in ("/burst", "/digest")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--wave", type=int, default=10, help="runs started together")
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--burst", type=int, default=20, help="separate failing jobs at once")
    args = parser.parse_args()
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="notify-latency-") as workdir:
        cluster = LocalCluster(workdir=Path(workdir))
        cluster.start()
        operator = OperatorProcess(cluster.control_plane, env={"OPSCONDUCTOR_NAMESPACES": NAMESPACE})
        try:
            operator.start()
            cluster.kubectl("create", "namespace", NAMESPACE)
            kubectl = [cluster.control_plane.binary("kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}"]
            manifests = channel("hook", "Webhook", f"{receiver.url}/hook") + channel(
                "slack", "SlackWebhook", f"{receiver.url}/slack"
            )
            cluster.kubectl(
                "apply",
                "-n",
                NAMESPACE,
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
            )
            watcher = FinishedWatcher(kubectl)
            time.sleep(1)  # let the watch establish (not a synchronisation of results)
            api = kubernetes.config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
            custom = kubernetes.client.CustomObjectsApi(api)
            for start in range(0, args.count, args.wave):
                names = [f"run-{i:03d}" for i in range(start, min(args.count, start + args.wave))]
                for name in names:
                    custom.create_namespaced_custom_object(
                        "opsconductor.io",
                        "v1alpha1",
                        NAMESPACE,
                        "opsjobs",
                        {
                            "apiVersion": "opsconductor.io/v1alpha1",
                            "kind": "OpsJob",
                            "metadata": {"name": name},
                            "spec": {
                                "steps": [{"name": "pause", "type": "wait", "seconds": 1}],
                                "notify": [{"events": ["Succeeded"], "channelRef": {"name": "hook"}}],
                            },
                        },
                    )
                wait_for(lambda names=names: all(n in receiver.arrived for n in names), 180, f"wave {start}")
            time.sleep(2)  # the watch may trail the receiver slightly
            delivered_minus_watch = [
                receiver.arrived[n] - watcher.seen[n] for n in receiver.arrived if n in watcher.seen
            ]
            # completionTime has 1 s resolution: add the wall clock at delivery, both in UTC.
            wall_offset = datetime.now(UTC).timestamp() - time.monotonic()
            completion_to_delivery = [
                receiver.arrived[n] + wall_offset - watcher.completion[n].timestamp()
                for n in receiver.arrived
                if n in watcher.completion
            ]
            watch_after_completion = [
                watcher.seen[n] + wall_offset - watcher.completion[n].timestamp() for n in watcher.seen
            ]

            # Fan-out failure over many targets.
            targets = [
                {
                    "apiVersion": "opsconductor.io/v1alpha1",
                    "kind": "Target",
                    "metadata": {"name": f"web{i:03d}", "labels": {"role": "web"}},
                    "spec": {"address": "127.0.0.1", "protocol": "http", "port": 1},
                }
                for i in range(args.targets)
            ]
            cluster.kubectl(
                "apply",
                "-n",
                NAMESPACE,
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": targets}),
            )
            before = dict(receiver.by_path)
            custom.create_namespaced_custom_object(
                "opsconductor.io",
                "v1alpha1",
                NAMESPACE,
                "opsjobs",
                {
                    "apiVersion": "opsconductor.io/v1alpha1",
                    "kind": "OpsJob",
                    "metadata": {"name": "fanout"},
                    "spec": {
                        "targetSelector": {"matchLabels": {"role": "web"}},
                        "failurePolicy": {"mode": "Continue"},
                        "steps": [
                            {"name": "health", "type": "http.get", "url": "/healthz", "timeoutSeconds": 5}
                        ],
                        "notify": [
                            {"events": ["Failed"], "channelRef": {"name": "hook"}},
                            {"events": ["Failed"], "channelRef": {"name": "slack"}},
                        ],
                    },
                },
            )
            wait_for(
                lambda: (
                    "fanout" in receiver.arrived
                    and receiver.by_path.get("/slack", 0) > before.get("/slack", 0)
                ),
                300,
                "the fan-out failure notice",
            )
            time.sleep(5)  # anything more than one message per channel would arrive within this
            fanout_messages = {
                p: n - before.get(p, 0) for p, n in receiver.by_path.items() if n - before.get(p, 0)
            }
            job = custom.get_namespaced_custom_object(
                "opsconductor.io", "v1alpha1", NAMESPACE, "opsjobs", "fanout"
            )
            counts = job["status"]["steps"][0]["counts"]
            burst_messages = run_burst(cluster, custom, receiver, args.burst)
            watcher.stop()
        finally:
            operator.stop()
            cluster.stop()
    print(f"\n2 cores; local control plane; process kubelet; {args.count} runs in waves of {args.wave}")
    print(describe("completion -> seen by a watch (peer)", watch_after_completion))
    print(describe("completion -> notification delivered", completion_to_delivery))
    print(describe("seen by a watch -> delivered", delivered_minus_watch))
    print("  (completionTime has 1 s resolution: the first two rows are ±0.5 s)")
    print(
        f"\nfan-out over {args.targets} targets: {counts.get('failed')} failed; messages sent per channel: "
        + ", ".join(f"{p.strip('/')}={n}" for p, n in sorted(fanout_messages.items()))
    )
    print(
        f"burst of {args.burst} separate failing jobs: {burst_messages.get('/burst', 0)} messages without"
        f" grouping, {burst_messages.get('/digest', 0)} with groupWindowSeconds: 10"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
