"""``opsconductor notify test CREDENTIAL``: ask the operator to send a test notification and wait.

The command only writes annotations on the channel Credential (it never reads the channel's Secret):
the operator sends the message and answers in ``notify-test-result``.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from opsconductor import kube
from opsconductor.api import CREDENTIAL, GROUP, VERSION
from opsconductor.constants import (
    ANNOTATION_NOTIFY_TEST,
    ANNOTATION_NOTIFY_TEST_RESULT,
    ANNOTATION_NOTIFY_TEST_TO,
)


def _cmd_notify_test(args: argparse.Namespace) -> int:
    kube.load_configuration()
    namespace = args.namespace or kube.current_namespace()
    nonce = uuid.uuid4().hex[:12]
    annotations = {ANNOTATION_NOTIFY_TEST: nonce}
    if args.to:
        annotations[ANNOTATION_NOTIFY_TEST_TO] = ",".join(args.to)
    if kube.get_custom(CREDENTIAL.plural, namespace, args.credential) is None:
        print(f"credential {namespace}/{args.credential} not found", file=sys.stderr)
        return 1
    kube.custom().patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        CREDENTIAL.plural,
        args.credential,
        {"metadata": {"annotations": annotations}},
        _content_type="application/merge-patch+json",
    )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        credential: dict[str, Any] = kube.get_custom(CREDENTIAL.plural, namespace, args.credential) or {}
        result = (credential.get("metadata", {}).get("annotations") or {}).get(
            ANNOTATION_NOTIFY_TEST_RESULT, ""
        )
        if result.startswith(nonce + " "):
            outcome = result[len(nonce) + 1 :]
            print(f"credential {namespace}/{args.credential}: {outcome}")
            return 0 if outcome == "Sent" else 1
        time.sleep(0.5)
    print(
        f"no answer from the operator within {args.timeout}s (is it running and watching {namespace}?)",
        file=sys.stderr,
    )
    return 1


def add_notify_parser(sub: Any) -> None:
    """Register ``notify test`` on the CLI's subparsers."""
    notify = sub.add_parser("notify", help="notification channels")
    actions = notify.add_subparsers(dest="action", required=True)
    test = actions.add_parser("test", help="send a test notification through a channel Credential")
    test.add_argument("credential", help="a Credential of type SMTP, SlackWebhook, TeamsWebhook or Webhook")
    test.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    test.add_argument("--to", action="append", default=[], help="email address (SMTP channels; repeatable)")
    test.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the operator")
    test.set_defaults(func=_cmd_notify_test)
