"""Run one WinRM test server in its own process: ``python -m tests.winrm [--address A] [--https DIR]``.

Prints one JSON line (``endpoint``, ``user``, ``password``, ``ca``) and serves until stdin closes.
Used by ``bench/winrm_overhead.py`` so the server's work does not share the client's interpreter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.winrm.fixtures import USER, make_tls, winrm_password
from tests.winrm.server import WinrmServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument(
        "--https", type=Path, help="issue a CA and certificate in this directory; serve https"
    )
    args = parser.parse_args()
    tls = make_tls(args.https) if args.https else None
    server = WinrmServer(
        users={USER: winrm_password()},
        address=args.address,
        tls=tls.server_context() if tls else None,
        certificate_pem=tls.cert_pem.read_bytes() if tls else None,
    ).start()
    info = {"endpoint": server.endpoint, "address": server.address, "port": server.port, "user": USER}
    info |= {"password": winrm_password(), "ca": str(tls.ca_pem) if tls else None}
    print(json.dumps(info), flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
