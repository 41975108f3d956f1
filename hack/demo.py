"""`make demo`: a local control plane, the CRDs, a process-kubelet Node, and the examples applied.

Prints what a user would see: the Node, the CRDs' categories (`kubectl get opsconductor`), and
the startup timings. Stops everything at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from opsconductor.localcluster.cluster import LocalCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the cluster running until Ctrl-C")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".local" / "demo")
    args = parser.parse_args()

    banner("starting the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)")
    cluster = LocalCluster(workdir=args.dir)
    began = time.monotonic()
    cluster.start()
    try:
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.startup_seconds.items())
        print(f"up in {time.monotonic() - began:.1f}s ({timings})")
        print(f"API server {cluster.control_plane.api_url}; KUBECONFIG={cluster.admin_kubeconfig}")

        banner("kubectl get nodes")
        print(cluster.kubectl("get", "nodes", "-o", "wide"), end="")

        banner("applying examples/ (validated at admission by the generated CRD schemas)")
        cluster.kubectl("create", "namespace", "demo")
        print(cluster.kubectl("apply", "-n", "demo", "-R", "-f", str(EXAMPLES)), end="")

        banner("kubectl get opsconductor -n demo")
        print(cluster.kubectl("get", "opsconductor", "-n", "demo"), end="")

        if args.keep:
            banner("cluster kept running; Ctrl-C stops it")
            print(f"export KUBECONFIG={cluster.admin_kubeconfig}")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
