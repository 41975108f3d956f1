"""`helm install` into the local control plane: the chart's operator pod runs an example OpsJob.

The process kubelet runs the chart's operator pod (image mapped to ``python -m opsconductor``) under
the chart's ServiceAccount and RBAC, watching one namespace. Its metrics endpoint is scraped after the
run, and ``helm uninstall`` must leave nothing of the release behind but the CRDs (Helm's CRD policy).
Pods share the host network here, so the release uses free ports and one replica.
"""

from __future__ import annotations

import json
import os
import re

import httpx

from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.controlplane import free_port
from opsconductor.localcluster.examplehosts import EXAMPLES, ExampleHosts
from tests.e2e.conftest import wait_phase
from tests.helm import CHART, Helm
from tests.kube import Kubectl, wait_until

RELEASE = "ops"
NAMESPACED_KINDS = (
    "deployments,replicasets,serviceaccounts,services,configmaps,rolebindings,poddisruptionbudgets"
)


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return None


def test_helm_install_runs_an_example_job_and_uninstall_leaves_nothing(
    helm: Helm, kubectl: Kubectl, kubelet: KubeletProcess, example_hosts: ExampleHosts
) -> None:
    suffix = os.getpid() % 10000
    release_ns, jobs_ns = f"helm-system-{suffix}", f"helm-jobs-{suffix}"
    kubectl.run("create", "namespace", jobs_ns)
    metrics_port = free_port()
    helm.run(
        "install", RELEASE, str(CHART), "--namespace", release_ns, "--create-namespace",
        "--set", "replicaCount=1", "--set", f"watchNamespaces={{{jobs_ns}}}",
        "--set", f"healthPort={free_port()}", "--set", f"metrics.port={metrics_port}",
        "--set", "resyncSeconds=5", "--wait", "--timeout", "180s",
        # The local control plane already has the created-by policy (install_crds): not a second owner.
        "--set", "recordCreator=false",
    )  # fmt: skip
    try:
        pods = json.loads(kubectl.with_namespace(release_ns).run("get", "pods", "-o", "json").stdout)["items"]
        assert [p["status"]["phase"] for p in pods] == ["Running"]
        assert pods[0]["spec"]["serviceAccountName"] == f"{RELEASE}-opsconductor"

        k = kubectl.with_namespace(jobs_ns)
        k.apply(example_hosts.manifests())
        k.run("apply", "-f", str(EXAMPLES / "opsjobs" / "linux-system-info.yaml"))
        done = wait_phase(k, "linux-system-info", timeout=180)
        assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)[:3000]
        assert "Linux" in done["status"]["steps"][0]["targets"][0]["stdout"]

        def scraped() -> str | None:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            return text if _metric(text, "opsconductor_runs_total", namespace=jobs_ns) else None

        text = wait_until(scraped, timeout=30, what="the run to be counted in the metrics")
        assert _metric(text, "opsconductor_runs_total", namespace=jobs_ns, result="Succeeded") == 1.0
        assert (
            _metric(text, "opsconductor_run_duration_seconds_count", namespace=jobs_ns, result="Succeeded")
            == 1.0
        )
        assert (
            _metric(text, "opsconductor_step_duration_seconds_count", namespace=jobs_ns, phase="Succeeded")
            == 1.0
        )
    finally:
        helm.run("uninstall", RELEASE, "--namespace", release_ns, "--wait", "--timeout", "120s")

    selector = f"app.kubernetes.io/instance={RELEASE}"
    left = (
        kubectl.with_namespace(release_ns).run("get", NAMESPACED_KINDS, "-l", selector, "-o", "name").stdout
    )
    assert left.strip() == ""
    cluster_left = kubectl.run("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").stdout
    assert cluster_left.strip() == ""
    watched = kubectl.with_namespace(jobs_ns)
    assert watched.run("get", "rolebindings", "-l", selector, "-o", "name").stdout.strip() == ""
    assert watched.run("get", "kopfpeerings", "-o", "name").stdout.strip() == ""
    # What runs created (the OpsJob and the runner objects it owns) is user data and stays.
    assert watched.run("get", "opsjob", "linux-system-info", "-o", "name").stdout.strip()
    # The CRDs stay (deleting them would delete every user object): Helm's crds/ policy, documented.
    assert kubectl.run("get", "crd", "opsjobs.opsconductor.io", "-o", "name").stdout.strip()
    kubectl.run("delete", "namespace", release_ns, jobs_ns, "--wait=false")
