"""The ``opsconductor`` command line (also installed as ``kubectl-opsconductor``: ``kubectl opsconductor``).

Subcommands stay thin layers over library functions. Commands that read the cluster use the
kubeconfig (or in-cluster) credentials of whoever runs them, so RBAC decides what they may do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from opsconductor import kube
from opsconductor.api import API_VERSION, GROUP, KINDS, OPSJOB, OPSSCHEDULE, VERSION, Kind
from opsconductor.api.opsjob import step_types
from opsconductor.constants import (
    ANNOTATION_CREATED_BY,
    ANNOTATION_STARTED_BY,
    ANNOTATION_TRIGGER,
    ANNOTATION_TRIGGERED_BY,
    runner_pod_name,
)
from opsconductor.localrun import add_run_parser
from opsconductor.notify.cli import add_notify_parser
from opsconductor.probecli import ProbeCommandError, format_probe, probe_target
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


ANNOTATION_RERUN_OF = f"{OPSJOB.group}/rerun-of"
_TERMINAL = ("Succeeded", "Failed", "Cancelled")


def parse_ref(ref: str, kind: Kind) -> str | None:
    """Return the NAME of ``kind/NAME`` (plural, singular or short names accepted), or None."""
    given, _, name = ref.partition("/")
    names = {kind.singular, kind.plural, *kind.short_names}
    return name if given.lower() in names and name else None


def render(value: Any, output: str) -> str:
    """``value`` as json or yaml (the ``-o`` formats every command shares besides its table)."""
    if output == "yaml":
        return yaml.safe_dump(value, sort_keys=False).rstrip()
    return json.dumps(value, indent=2)


def _job_or_complain(ref: str, namespace: str | None) -> tuple[str, dict[str, Any] | None]:
    name = parse_ref(ref, OPSJOB)
    if name is None:
        print(f"expected opsjob/NAME, got {ref!r}", file=sys.stderr)
        return "", None
    kube.load_configuration()
    namespace = namespace or kube.current_namespace()
    job = kube.get_custom(OPSJOB.plural, namespace, name)
    if job is None:
        print(f"opsjob {namespace}/{name} not found", file=sys.stderr)
    return namespace, job


def _cmd_results(args: argparse.Namespace) -> int:
    _, job = _job_or_complain(args.ref, args.namespace)
    if job is None:
        return 1
    print(format_results(job) if args.output == "table" else render(job.get("status") or {}, args.output))
    return 0


def rerun_manifest(job: dict[str, Any], user: str) -> dict[str, Any]:
    """Build a new OpsJob with the same spec, labels and user annotations, linked to the original run."""
    meta = job["metadata"]
    annotations = {
        key: value
        for key, value in (meta.get("annotations") or {}).items()
        # kopf's bookkeeping and the admission-stamped creator belong to the original object.
        if not key.startswith(f"{OPSJOB.group}/")
        and key != "kubectl.kubernetes.io/last-applied-configuration"
    }
    annotations[ANNOTATION_RERUN_OF] = meta["name"]
    annotations[ANNOTATION_STARTED_BY] = user
    spec = {key: value for key, value in job["spec"].items() if key != "cancel"}
    return {
        "apiVersion": API_VERSION,
        "kind": OPSJOB.kind,
        "metadata": {
            "generateName": f"{meta['name'][:52]}-",
            "namespace": meta["namespace"],
            "labels": meta.get("labels") or {},
            "annotations": annotations,
        },
        "spec": spec,
    }


def follow_progress(namespace: str, name: str, timeout: float, out: Any = sys.stdout) -> dict[str, Any]:
    """Print the run's phase and progress whenever they change, until it ends; return the job."""
    last = None
    deadline = time.monotonic() + timeout
    while True:
        job = kube.get_custom(OPSJOB.plural, namespace, name) or {}
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        line = (
            f"{name}: {status.get('phase', 'Pending')}  steps {progress.get('steps', '0/0')}"
            f"  targets ok/failed {progress.get('targets', '0/0')}"
        )
        if line != last:
            print(line, file=out, flush=True)
            last = line
        if status.get("phase") in _TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(1)


def _cmd_rerun(args: argparse.Namespace) -> int:
    namespace, job = _job_or_complain(args.ref, args.namespace)
    if job is None:
        return 1
    created = cast(
        dict[str, Any],
        kube.custom().create_namespaced_custom_object(
            OPSJOB.group, OPSJOB.version, namespace, OPSJOB.plural, rerun_manifest(job, kube.whoami())
        ),
    )
    name = created["metadata"]["name"]
    if args.output == "name":
        print(f"opsjob/{name}")
    else:
        creator = (created["metadata"].get("annotations") or {}).get(ANNOTATION_CREATED_BY, "?")
        print(f"opsjob/{name} created (rerun of {job['metadata']['name']}, by {creator})")
    if args.wait:
        done = follow_progress(
            namespace, name, args.timeout, sys.stderr if args.output == "name" else sys.stdout
        )
        return 0 if (done.get("status") or {}).get("phase") == "Succeeded" else 1
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    namespace, job = _job_or_complain(args.ref, args.namespace)
    if job is None:
        return 1
    pod = (job.get("status") or {}).get("runnerPod") or runner_pod_name(job["metadata"]["name"])
    try:
        response: Any = kube.core().read_namespaced_pod_log(
            pod, namespace, container="runner", follow=args.follow, _preload_content=False
        )
    except ApiException as error:
        reason = (
            "gone (results stay in the OpsJob's status: opsconductor results)"
            if error.status == 404
            else error.reason
        )
        print(f"runner pod {namespace}/{pod}: {reason}", file=sys.stderr)
        return 1
    for chunk in response.stream(1024):  # urllib3 response (_preload_content=False), typed as str
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    kind, _, name = args.ref.partition("/")
    if kind.lower() not in ("target", "targets", "tgt") or not name:
        print("usage: opsconductor probe target/NAME [-n NAMESPACE] [--wait]", file=sys.stderr)
        return 2
    kube.load_configuration()
    namespace = args.namespace or kube.current_namespace()
    try:
        outcome = probe_target(namespace, name, wait=args.wait, timeout=args.timeout)
    except ProbeCommandError as error:
        print(error, file=sys.stderr)
        return 1
    if not args.wait:
        print(f"target/{name}: probe requested ({outcome['request']})")
        return 0
    if args.output == "json":
        print(json.dumps(outcome, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(outcome, sort_keys=False), end="")
    else:
        print(format_probe(outcome))
    return 0 if outcome.get("reachable") else 3


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


def _object_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, ref: str
) -> argparse.ArgumentParser:
    """Add a subcommand about one object: ``ref`` (``kind/NAME``) and ``-n/--namespace``."""
    command = sub.add_parser(name, help=help)
    command.add_argument("ref", help=ref)
    command.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    return command


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
    results = _object_command(
        sub, "results", "an OpsJob's results: steps × targets with status and output", "opsjob/NAME"
    )
    results.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    results.set_defaults(func=_cmd_results)
    rerun = _object_command(
        sub, "rerun", "run an OpsJob again: a new OpsJob with the same spec", "opsjob/NAME"
    )
    rerun.add_argument("-w", "--wait", action="store_true", help="show progress until the run ends")
    rerun.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    rerun.add_argument("-o", "--output", choices=["text", "name"], default="text")
    rerun.set_defaults(func=_cmd_rerun)
    logs = _object_command(sub, "logs", "the runner pod's log of an OpsJob", "opsjob/NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming until the runner ends")
    logs.set_defaults(func=_cmd_logs)
    probe = _object_command(
        sub, "probe", "test the connection to a Target now and show its facts", "target/NAME"
    )
    probe.add_argument("--wait", action="store_true", help="wait for the result and print it")
    probe.add_argument("--timeout", type=float, default=120, help="seconds to wait with --wait")
    probe.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    probe.set_defaults(func=_cmd_probe)
    add_notify_parser(sub)
    trigger = _object_command(
        sub, "trigger", "start a run of an OpsSchedule now; prints the OpsJob's name", "opsschedule/NAME"
    )
    trigger.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the run to appear")
    trigger.set_defaults(func=_cmd_trigger)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``opsconductor`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
