"""WinRM test servers standing in for the example Windows Targets (used by the examples test and the demo).

One server per Target in ``examples/targets/windows.yaml``, on ``127.0.0.31`` upwards with a free
port, with the scheme the example declares (https servers present a certificate from ``tls``, whose
CA is rendered into the ``corp-ca`` Secret).
"""

from __future__ import annotations

from typing import Any

import yaml

from opsconductor.localcluster.examplehosts import EXAMPLES, ExampleHosts, WindowsEndpoint
from tests.winrm.fixtures import USER, WinrmTls, winrm_password
from tests.winrm.server import WinrmServer

FIRST_ADDRESS = 31


def start_windows_hosts(hosts: ExampleHosts, tls: WinrmTls) -> dict[str, WinrmServer]:
    """Start a server per example Windows Target and point ``hosts.windows`` at them."""
    targets: list[dict[str, Any]] = [
        doc for doc in yaml.safe_load_all((EXAMPLES / "targets" / "windows.yaml").read_text()) if doc
    ]
    servers: dict[str, WinrmServer] = {}
    for index, target in enumerate(targets):
        https = (target["spec"].get("winrm") or {}).get("scheme") == "https"
        server = WinrmServer(
            users={USER: winrm_password()},
            address=f"127.0.0.{FIRST_ADDRESS + index}",
            tls=tls.server_context() if https else None,
            certificate_pem=tls.cert_pem.read_bytes() if https else None,
        ).start()
        name = target["metadata"]["name"]
        servers[name] = server
        hosts.windows[name] = WindowsEndpoint(
            address=server.address,
            port=server.port,
            scheme=server.scheme,
            username=USER,
            password=winrm_password(),
            ca_bundle_pem=tls.ca_pem.read_text() if https else None,
        )
    return servers
