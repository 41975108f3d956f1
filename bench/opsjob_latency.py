"""Benchmark: OpsJob create → runner pod created → first step started, against Job → Pod.

A burst of N OpsJobs (one ``wait`` step each) and, in the same run on the same local control plane,
N Kubernetes Jobs (kube-controller-manager's Job controller creating their pods), twice: first with
an image no node has (pods are created but never start, so only the controllers are measured), then
for real (every runner pod is a Python process on the same 2 cores as everything else). Times are taken
from watch events as this process receives them (Kubernetes timestamps have 1 s resolution), each
relative to the moment its create call returned.

    .venv/bin/python bench/opsjob_latency.py [--count 100]

Prints p50/p99/max for each phase and the ratio against the Job controller.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import kubernetes

from opsconductor.localcluster.cluster import LocalCluster
from opsconductor.localcluster.operatorprocess import OperatorProcess


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def describe(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<40} no samples"
    return (
        f"{name:<40} n={len(values):<4} p50={percentile(values, 0.5) * 1000:7.0f} ms  "
        f"p99={percentile(values, 0.99) * 1000:7.0f} ms  max={max(values) * 1000:7.0f} ms"
    )


class Watcher:
    """``kubectl get --watch -o json`` in a thread, recording when each object first matches."""

    def __init__(self, kubectl: list[str], resource: str, namespace: str, match) -> None:  # type: ignore[no-untyped-def]
        self.seen: dict[str, float] = {}
        self._match = match
        self._proc = subprocess.Popen(
            [*kubectl, "get", resource, "-n", namespace, "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.strip())
            except ValueError:
                continue
            buffer = buffer.strip()[end:]
            obj = event.get("object", {})
            key = self._match(obj)
            if key and key not in self.seen:
                self.seen[key] = time.monotonic()

    def stop(self) -> None:
        self._proc.terminate()


UNPULLABLE = "opsconductor.invalid/not-pulled:0"


def run_burst(cluster: LocalCluster, count: int, start_pods: bool) -> dict[str, list[float]]:
    """One interleaved burst; with ``start_pods`` False both sides use an image no node has, so the
    pods are created but never run: that isolates the controllers from the pods' CPU."""
    suffix = "run" if start_pods else "create"
    kubectl = [cluster.control_plane.binary("kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}"]
    opsjob_ns, job_ns = f"bench-opsjobs-{suffix}", f"bench-jobs-{suffix}"
    for namespace in (opsjob_ns, job_ns):
        cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "wait",
        "--for=jsonpath={.metadata.name}=default",
        "-n",
        job_ns,
        "serviceaccount/default",
        "--timeout=60s",
    )
    cluster.kubectl(
        "wait",
        "--for=jsonpath={.metadata.name}=default",
        "-n",
        opsjob_ns,
        "serviceaccount/default",
        "--timeout=60s",
    )

    runner_pods = Watcher(
        kubectl, "pods", opsjob_ns, lambda o: o["metadata"].get("labels", {}).get("opsconductor.io/job")
    )
    first_step = Watcher(
        kubectl,
        "opsjobs",
        opsjob_ns,
        lambda o: o["metadata"]["name"] if (o.get("status") or {}).get("steps") else None,
    )
    job_pods = Watcher(kubectl, "pods", job_ns, lambda o: o["metadata"].get("labels", {}).get("job-name"))
    time.sleep(1)  # let the watches establish before the burst (not a synchronisation of results)

    api = kubernetes.config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(api)
    batch = kubernetes.client.BatchV1Api(api)
    opsjob_created: dict[str, float] = {}
    job_created: dict[str, float] = {}
    # Interleaved, so both controllers see the same load.
    for index in range(count):
        name = f"b{index}"
        custom.create_namespaced_custom_object(
            "opsconductor.io",
            "v1alpha1",
            opsjob_ns,
            "opsjobs",
            {
                "apiVersion": "opsconductor.io/v1alpha1",
                "kind": "OpsJob",
                "metadata": {"name": name},
                "spec": {
                    "steps": [{"name": "pause", "type": "wait", "seconds": 1}],
                    **({} if start_pods else {"runner": {"image": UNPULLABLE}}),
                },
            },
        )
        opsjob_created[name] = time.monotonic()
        batch.create_namespaced_job(
            job_ns,
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name},
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "main",
                                    "image": "busybox" if start_pods else UNPULLABLE,
                                    "command": ["sleep", "1"],
                                }
                            ],
                        }
                    }
                },
            },
        )
        job_created[name] = time.monotonic()

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        (start_pods and len(first_step.seen) < count)
        or len(runner_pods.seen) < count
        or len(job_pods.seen) < count
    ):
        time.sleep(0.5)
    for watcher in (runner_pods, first_step, job_pods):
        watcher.stop()
    return {
        "OpsJob create -> runner pod created": [
            runner_pods.seen[k] - t for k, t in opsjob_created.items() if k in runner_pods.seen
        ],
        "OpsJob create -> first step started": [
            first_step.seen[k] - t for k, t in opsjob_created.items() if k in first_step.seen
        ],
        "Job create -> pod created (kcm)": [
            job_pods.seen[k] - t for k, t in job_created.items() if k in job_pods.seen
        ],
    }


def report(title: str, results: dict[str, list[float]], count: int) -> None:
    print(f"\n{title}: burst of {count} OpsJobs and {count} Jobs, interleaved")
    for name, values in results.items():
        if values:
            print(describe(name, values))
    ours = results["OpsJob create -> runner pod created"]
    peer = results["Job create -> pod created (kcm)"]
    if ours and peer:
        print(f"ratio runner-pod/job-pod p50: {statistics.median(ours) / statistics.median(peer):.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opsjob-latency-") as workdir:
        cluster = LocalCluster(workdir=Path(workdir))
        cluster.start()
        operator = OperatorProcess(cluster.control_plane)
        try:
            operator.start()
            created_only = run_burst(cluster, args.count, start_pods=False)
            running = run_burst(cluster, args.count, start_pods=True)
        finally:
            operator.stop()
            cluster.stop()
    print("\n2 cores; local control plane; process kubelet; times from watch events as received")
    report("controllers only (pods created, never started: image not on the node)", created_only, args.count)
    report("pods run (each runner is a Python process on the same 2 cores)", running, args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
