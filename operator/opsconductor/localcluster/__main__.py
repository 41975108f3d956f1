"""``python -m opsconductor.localcluster up``: run a local cluster in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from opsconductor.localcluster.cluster import LocalCluster


def main(argv: list[str] | None = None) -> int:
    """Start the local cluster, print how to reach it, and wait for SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m opsconductor.localcluster")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--dir", type=Path, default=Path(".local/cluster"), help="work directory")
    args = parser.parse_args(argv)
    cluster = LocalCluster(workdir=args.dir.resolve())
    cluster.start()
    kubectl = cluster.control_plane.binary("kubectl")
    print(f"local cluster up in {cluster.startup_seconds['cluster']:.1f}s: {cluster.control_plane.api_url}")
    print(f"  export KUBECONFIG={cluster.admin_kubeconfig}")
    print(f"  {kubectl} get nodes,opsconductor")
    print("Ctrl-C stops it.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
