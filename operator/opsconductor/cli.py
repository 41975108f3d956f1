"""The ``opsconductor`` command line (also usable as ``kubectl opsconductor``).

Subcommands grow with the product; each stays a thin layer over library functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from opsconductor import kube
from opsconductor.api import API_VERSION, GROUP, KINDS, OPSJOB, OPSSCHEDULE, VERSION, Kind
from opsconductor.api.opsjob import step_types
from opsconductor.constants import ANNOTATION_TRIGGER, ANNOTATION_TRIGGERED_BY
from opsconductor.localrun import add_run_parser
from opsconductor.reconcile.opsschedule import manual_key, run_name
from opsconductor.results import format_results

_KIND_BY_NAME: dict[str, Kind] = {kind.kind: kind for kind in KINDS}
_STEP_TYPES = frozenset(step_types())


def iter_documents(paths: list[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Yield ``(file, index, document)`` for every YAML document in files and directories."""
    for path in paths:
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
        )
        for file in files:
            with file.open() as handle:
                for index, document in enumerate(yaml.safe_load_all(handle)):
                    if isinstance(document, dict):
                        yield file, index, document


def validate_document(document: dict[str, Any]) -> list[str]:
    """Validate one manifest against its kind's model offline.

    Args:
        document: a parsed manifest.

    Returns:
        Error messages naming the field (empty when valid or not one of our kinds).
    """
    kind = _KIND_BY_NAME.get(str(document.get("kind")))
    if kind is None or document.get("apiVersion") != API_VERSION:
        return []
    try:
        kind.spec.model_validate(document.get("spec") or {})
    except ValidationError as error:
        return [f"{field_path(item['loc'])}: {item['msg']}" for item in error.errors()]
    return []


def field_path(location: tuple[int | str, ...]) -> str:
    """``spec.steps[0].url`` from a pydantic error location (union tags such as ``ssh.exec`` dropped)."""
    path = "spec"
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _STEP_TYPES:
            path += f".{part}"
    return path


def _cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    for file, index, document in iter_documents(args.filename):
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name', '?')}"
        errors = validate_document(document)
        if errors:
            failures += 1
            print(f"{file} [{index}] {name}: invalid")
            for message in errors:
                print(f"  - {message}")
        elif args.verbose:
            print(f"{file} [{index}] {name}: ok")
    if failures:
        print(f"{failures} invalid object(s)", file=sys.stderr)
    return 1 if failures else 0


def _cmd_results(args: argparse.Namespace) -> int:
    kind, _, name = args.ref.partition("/")
    if kind.lower() not in ("opsjob", "opsjobs", "oj") or not name:
        print("usage: opsconductor results opsjob/NAME", file=sys.stderr)
        return 2
    kube.load_configuration()
    namespace = args.namespace or kube.current_namespace()
    job = kube.get_custom(OPSJOB.plural, namespace, name)
    if job is None:
        print(f"opsjob {namespace}/{name} not found", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(job.get("status") or {}, indent=2))
    else:
        print(format_results(job))
    return 0


def _whoami() -> str:
    """Return the user name the API server knows us by (SelfSubjectReview), or "unknown"."""
    try:
        review = kubernetes.client.AuthenticationV1Api(kube.custom().api_client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview(
                api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"
            )
        )
        user = review.status.user_info if review.status else None
        return str(user.username) if user and user.username else "unknown"
    except ApiException:
        return "unknown"


def _cmd_trigger(args: argparse.Namespace) -> int:
    kind, _, name = args.ref.partition("/")
    if kind.lower() not in ("opsschedule", "opsschedules", "osch") or not name:
        print("usage: opsconductor trigger opsschedule/NAME", file=sys.stderr)
        return 2
    kube.load_configuration()
    namespace = args.namespace or kube.current_namespace()
    if kube.get_custom(OPSSCHEDULE.plural, namespace, name) is None:
        print(f"opsschedule {namespace}/{name} not found", file=sys.stderr)
        return 1
    token = uuid.uuid4().hex[:16]
    annotations = {ANNOTATION_TRIGGER: token, ANNOTATION_TRIGGERED_BY: _whoami()}
    kube.custom().patch_namespaced_custom_object(
        GROUP, VERSION, namespace, OPSSCHEDULE.plural, name, {"metadata": {"annotations": annotations}}
    )
    expected = run_name(name, manual_key(token))
    deadline = time.monotonic() + args.timeout
    while kube.get_custom(OPSJOB.plural, namespace, expected) is None:
        if time.monotonic() > deadline:
            print(f"the operator has not created {expected} within {args.timeout}s", file=sys.stderr)
            return 1
        time.sleep(0.3)
    print(f"opsjob/{expected}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="opsconductor", description="OpsConductor command line")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="validate manifests offline against the API models")
    validate.add_argument(
        "-f", "--filename", type=Path, action="append", required=True, help="file or directory"
    )
    validate.add_argument("-v", "--verbose", action="store_true", help="also list valid objects")
    validate.set_defaults(func=_cmd_validate)
    add_run_parser(sub)
    results = sub.add_parser("results", help="an OpsJob's results: steps × targets with status and output")
    results.add_argument("ref", help="opsjob/NAME")
    results.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    results.add_argument("-o", "--output", choices=["table", "json"], default="table")
    results.set_defaults(func=_cmd_results)
    trigger = sub.add_parser("trigger", help="start a run of an OpsSchedule now; prints the OpsJob's name")
    trigger.add_argument("ref", help="opsschedule/NAME")
    trigger.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    trigger.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the run to appear")
    trigger.set_defaults(func=_cmd_trigger)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``opsconductor`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
