"""Benchmark: an on-demand Target probe, request → status, against a bare pod's create → Succeeded.

On a local control plane with the operator and the example hosts (real sshd on 127.0.0.21, an HTTP
server), N sequential on-demand probes of the SSH Target ``web01`` and of the HTTP Target ``api01``
(the CLI's path: set the annotation, wait for the status). In the same run, N bare pods (the
``busybox`` image running ``true``) created and waited for on the same process kubelet: the floor any
pod-based probe pays. The probe's own latency (connect + login + facts command, measured in the pod)
is read from the status.

    .venv/bin/python bench/probe_latency.py [--count 10]

Takes the examples' lock (``/tmp/opsc-examples.lock``: the example hosts use fixed addresses).
"""

from __future__ import annotations

import argparse
import fcntl
import statistics
import tempfile
import time
from pathlib import Path

import kubernetes

from opsconductor.localcluster.cluster import LocalCluster
from opsconductor.localcluster.examplehosts import ExampleHosts
from opsconductor.localcluster.operatorprocess import OperatorProcess
from opsconductor.probecli import probe_target

NAMESPACE = "bench-probes"


def describe(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"{name:<42} n={len(values):<3} p50={statistics.median(values) * 1000:6.0f} ms  "
        f"min={ordered[0] * 1000:6.0f} ms  max={ordered[-1] * 1000:6.0f} ms"
    )


def probe_times(target: str, count: int) -> tuple[list[float], list[float]]:
    """Wall time of ``count`` on-demand probes, and the latency each probe measured itself."""
    wall: list[float] = []
    inside: list[float] = []
    for _ in range(count):
        began = time.monotonic()
        outcome = probe_target(NAMESPACE, target, wait=True, timeout=120)
        wall.append(time.monotonic() - began)
        assert outcome["reachable"], outcome
        inside.append(float(outcome["latencyMilliseconds"]) / 1000)
    return wall, inside


def bare_pod_times(core: kubernetes.client.CoreV1Api, count: int) -> list[float]:
    """Create → Succeeded of a pod that runs ``true``, one at a time."""
    times: list[float] = []
    for index in range(count):
        name = f"bare-{index}"
        began = time.monotonic()
        core.create_namespaced_pod(
            NAMESPACE,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
                },
            },
        )
        while core.read_namespaced_pod(name, NAMESPACE).status.phase not in ("Succeeded", "Failed"):
            time.sleep(0.05)
        times.append(time.monotonic() - began)
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    with open("/tmp/opsc-examples.lock", "w") as lock, tempfile.TemporaryDirectory() as workdir:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = LocalCluster(Path(workdir))
        cluster.start()
        hosts = ExampleHosts()
        operator = OperatorProcess(cluster.control_plane, env={"OPSCONDUCTOR_NAMESPACES": NAMESPACE})
        try:
            hosts.start()
            operator.start()
            cluster.kubectl("create", "namespace", NAMESPACE)
            cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=hosts.manifests())
            kubernetes.config.load_kube_config(config_file=str(cluster.admin_kubeconfig))
            core = kubernetes.client.CoreV1Api()
            probe_target(NAMESPACE, "api01", wait=True, timeout=120)  # warm-up: first pod, imports
            results = {}
            for target in ("web01", "api01"):
                wall, inside = probe_times(target, args.count)
                results[f"probe {target}: request -> status"] = wall
                results[f"probe {target}: in-pod latency"] = inside
            results["peer: bare pod create -> Succeeded"] = bare_pod_times(core, args.count)
            print(f"\n{args.count} sequential on-demand probes per Target, then {args.count} bare pods")
            for name, values in results.items():
                print(describe(name, values))
            floor = statistics.median(results["peer: bare pod create -> Succeeded"])
            for target in ("web01", "api01"):
                ratio = statistics.median(results[f"probe {target}: request -> status"]) / floor
                print(f"ratio probe {target} / bare pod p50: {ratio:.2f}x")
        finally:
            operator.stop()
            hosts.stop()
            cluster.stop()


if __name__ == "__main__":
    main()
