"""`make demo`: a real OpsJob run on a local control plane, against real local SSH hosts.

Starts the control plane, installs the CRDs, starts the process kubelet and the operator (under its
least-privilege RBAC), starts real OpenSSH servers standing in for the example Targets (and the
WinRM test server from ``tests/winrm`` for the Windows ones: no Windows host runs here), applies the
examples' Secret/Credential/Targets re-pointed at those servers, runs the example OpsJobs unchanged,
and prints what a user sees: `kubectl get opsconductor` and the main job's results. Stops
everything at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from opsconductor.localcluster.cluster import LocalCluster
from opsconductor.localcluster.examplehosts import ExampleHosts
from opsconductor.localcluster.operatorprocess import OperatorProcess
from opsconductor.results import format_results

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the WinRM test server lives with the tests

from tests.winrm.examples import start_windows_hosts  # noqa: E402 -- needs the path above
from tests.winrm.fixtures import make_tls  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"
MAIN_JOB = "web-group-inventory"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def banner(text: str) -> None:
    """Print a section heading."""
    print(f"\n=== {text}", flush=True)


def wait_for_jobs(cluster: LocalCluster, namespace: str, timeout: float = 180) -> list[dict]:
    """Wait until every OpsJob in ``namespace`` is finished (or ``timeout`` passes); return them all."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = json.loads(cluster.kubectl("get", "opsjobs", "-n", namespace, "-o", "json"))["items"]
        if jobs and all((j.get("status") or {}).get("phase") in TERMINAL for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def main() -> int:
    """Run the demo; exit status 1 when an example OpsJob did not succeed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".local" / "demo")
    args = parser.parse_args()

    banner("starting the local control plane, the process kubelet and the operator")
    began = time.monotonic()
    shutil.rmtree(args.dir, ignore_errors=True)  # every demo starts from an empty cluster
    cluster = LocalCluster(workdir=args.dir)
    cluster.start()
    operator = OperatorProcess(cluster.control_plane)
    hosts = ExampleHosts()
    windows = {}
    try:
        operator.start()
        hosts.start()
        windows = start_windows_hosts(hosts, make_tls(args.dir / "winrm-pki"))
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.startup_seconds.items())
        print(f"up in {time.monotonic() - began:.1f}s ({timings})")
        print(f"API server {cluster.control_plane.api_url}; KUBECONFIG={cluster.admin_kubeconfig}")
        print("local SSH hosts: " + ", ".join(f"{name}={s.where}" for name, s in hosts.servers.items()))
        print("local WinRM hosts: " + ", ".join(f"{name}={s.endpoint}" for name, s in windows.items()))

        banner("applying the example Targets and Credential (re-pointed at the local hosts)")
        cluster.kubectl("create", "namespace", "demo")
        print(cluster.kubectl("apply", "-n", "demo", "-f", "-", input=hosts.manifests()), end="")

        banner("applying examples/opsjobs and examples/opsschedules unchanged")
        print(cluster.kubectl("apply", "-n", "demo", "-f", str(EXAMPLES / "opsjobs")), end="")
        print(cluster.kubectl("apply", "-n", "demo", "-f", str(EXAMPLES / "opsschedules")), end="")
        jobs = wait_for_jobs(cluster, "demo")

        banner("kubectl get opsconductor -n demo")
        print(cluster.kubectl("get", "opsconductor", "-n", "demo"), end="")

        banner(f"results of the main job ({MAIN_JOB}: a fan-out over the Targets labelled role=web)")
        main_job = next(j for j in jobs if j["metadata"]["name"] == MAIN_JOB)
        print(format_results(main_job))
        failed = [j["metadata"]["name"] for j in jobs if (j.get("status") or {}).get("phase") != "Succeeded"]
        if failed:
            print(f"\nnot succeeded: {', '.join(failed)}")

        if args.keep:
            banner("kept running; Ctrl-C stops it")
            print(f"export KUBECONFIG={cluster.admin_kubeconfig}")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 1 if failed else 0
    finally:
        for server in windows.values():
            server.stop()
        hosts.stop()
        operator.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
