"""``python -m opsconductor``: run the operator (the operator image's entrypoint).

Watches the namespaces in ``OPSCONDUCTOR_NAMESPACES`` (comma-separated) or the whole cluster.
Liveness/readiness: kopf's health endpoint on ``OPSCONDUCTOR_HEALTH_ADDRESS`` (default
``0.0.0.0:8080``, path ``/healthz``). Several replicas coordinate through a kopf peering object
(``--peering NAME``; the Helm chart creates it): the oldest replica works, the others stand by.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import kopf

from opsconductor import main as registrations  # noqa: F401  (registers the handlers)
from opsconductor.config import Config


def main(argv: list[str] | None = None) -> int:
    """Run kopf with our handlers until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m opsconductor", description=__doc__.splitlines()[0])
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="no peering (one replica, tests)")
    peering.add_argument(
        "--peering", metavar="NAME", help="kopf peering object shared by the replicas (one is active)"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = Config.from_env()
    health = os.environ.get("OPSCONDUCTOR_HEALTH_ADDRESS", "0.0.0.0:8080")
    kopf.run(
        standalone=args.standalone,
        peering_name=args.peering,
        # kopf pauses every peer that sees another live peer of equal or higher priority. The oldest
        # replica should keep working while newer ones (a rolling update, a second replica) stand
        # by: priority falls with the start time in milliseconds.
        priority=-int(time.time() * 1000),
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=f"http://{health}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
