"""``opsconductor run``: run an OpsJob on this machine from manifest files, without a cluster.

This module owns local runs. It reads OpsJob, Target, Credential, Secret and ConfigMap manifests
from files, builds the same RunPlan the operator would (:func:`opsconductor.planner.build_run_plan`),
writes the Secrets' values into a private temporary directory laid out like the runner pod's
mounts (``secrets/<secret>/<key>``, mode 0600 in a 0700 directory, removed afterwards), and runs the
same engine as the runner pod, with live progress on stderr, step output on stdout, and a final
table of steps by targets. Exit status: 0 succeeded, 1 failed (or could not start), 2 cancelled.

:func:`add_run_parser` adds the subcommand to the ``opsconductor`` argument parser.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from opsconductor.api import API_VERSION
from opsconductor.planner import JobObject, PlanError, PlannedRun, build_run_plan
from opsconductor.runner.engine import DEFAULT_SESSION_KINDS, Engine, RunResult, SessionKind
from opsconductor.runner.reporting import ConsoleReporter, OutputLog
from opsconductor.runner.results import RunState
from opsconductor.runner.secrets import FileSecretStore

EXIT_CODES = {"Succeeded": 0, "Failed": 1, "Cancelled": 2}


@dataclass
class Manifests:
    """The objects read from the files, by kind and name."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, bytes]] = field(default_factory=dict)


def _yaml_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path


def secret_data(manifest: dict[str, Any]) -> dict[str, bytes]:
    """Return a Secret's values: ``data`` (base64) overlaid by ``stringData``, as Kubernetes does."""
    values = {key: base64.b64decode(value or "") for key, value in (manifest.get("data") or {}).items()}
    values.update({key: str(value).encode() for key, value in (manifest.get("stringData") or {}).items()})
    return values


def config_map_data(manifest: dict[str, Any]) -> dict[str, bytes]:
    """Return a ConfigMap's values: ``data`` as text and ``binaryData`` (base64)."""
    values = {key: str(value).encode() for key, value in (manifest.get("data") or {}).items()}
    values.update({key: base64.b64decode(value) for key, value in (manifest.get("binaryData") or {}).items()})
    return values


def load_manifests(paths: list[Path]) -> Manifests:
    """Read every supported object from files and directories (other documents are ignored).

    Args:
        paths: YAML files or directories (searched recursively for ``*.yaml``/``*.yml``).

    Returns:
        The objects by kind and name.
    """
    found = Manifests()
    for file in _yaml_files(paths):
        with file.open() as handle:
            for document in yaml.safe_load_all(handle):
                if not isinstance(document, dict):
                    continue
                kind, api_version = document.get("kind"), document.get("apiVersion")
                name = str((document.get("metadata") or {}).get("name", ""))
                if api_version == API_VERSION and kind == "OpsJob":
                    found.jobs[name] = document
                elif api_version == API_VERSION and kind == "Target":
                    found.targets[name] = document
                elif api_version == API_VERSION and kind == "Credential":
                    found.credentials[name] = document
                elif api_version == "v1" and kind == "Secret":
                    found.secrets[name] = secret_data(document)
                elif api_version == "v1" and kind == "ConfigMap":
                    found.config_maps[name] = config_map_data(document)
    return found


def write_private_files(root: Path, objects: dict[str, dict[str, bytes]]) -> None:
    """Write ``objects[name][key]`` to ``root/name/key`` (directories 0700, files 0600)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, values in objects.items():
        directory = root / name
        directory.mkdir(mode=0o700, exist_ok=True)
        for key, value in values.items():
            path = directory / key
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(value)


def choose_job(manifests: Manifests, name: str | None) -> dict[str, Any]:
    """Return the OpsJob to run.

    Raises:
        PlanError: no OpsJob, an unknown name, or several without a name given.
    """
    if name is not None:
        if name not in manifests.jobs:
            known = ", ".join(sorted(manifests.jobs)) or "none"
            raise PlanError("InvalidSpec", f"no OpsJob named {name} in the files (found: {known})")
        return manifests.jobs[name]
    if len(manifests.jobs) != 1:
        found = ", ".join(sorted(manifests.jobs)) or "none"
        raise PlanError(
            "InvalidSpec", f"the files must hold exactly one OpsJob, or use --job (found: {found})"
        )
    return next(iter(manifests.jobs.values()))


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` pairs; values are read as YAML (``3`` is a number, ``true`` a boolean)."""
    arguments: dict[str, Any] = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise PlanError("InvalidSpec", f"--param takes NAME=VALUE, got {pair!r}")
        arguments[name] = yaml.safe_load(value) if value else ""
    return arguments


def plan_local_run(
    manifests: Manifests,
    root: Path,
    *,
    job_name: str | None = None,
    arguments: dict[str, Any] | None = None,
    workspace: Path | None = None,
) -> PlannedRun:
    """Write the Secrets and ConfigMaps under ``root`` and build the plan reading them from there.

    Args:
        manifests: the objects read from the files.
        root: a private directory (``secrets/`` and ``configmaps/`` are created in it).
        job_name: the OpsJob to run (needed when the files hold several).
        arguments: arguments overriding the job's.
        workspace: the run's workspace (default ``root/workspace``).

    Returns:
        The plan.

    Raises:
        PlanError: the job cannot run as specified.
    """
    job = dict(choose_job(manifests, job_name))
    if arguments:
        spec = dict(job.get("spec") or {})
        spec["arguments"] = {**(spec.get("arguments") or {}), **arguments}
        job["spec"] = spec
    metadata = dict(job.get("metadata") or {})
    metadata.setdefault("uid", f"local-{uuid.uuid4()}")
    metadata.setdefault("namespace", "default")
    job["metadata"] = metadata
    secrets_root, config_maps_root = root / "secrets", root / "configmaps"
    write_private_files(secrets_root, manifests.secrets)
    write_private_files(config_maps_root, manifests.config_maps)
    work = workspace or root / "workspace"
    work.mkdir(parents=True, exist_ok=True)
    try:
        job_object = JobObject.from_manifest(job)
    except ValueError as error:
        raise PlanError("InvalidSpec", f"invalid OpsJob: {error}") from error
    return build_run_plan(
        job_object,
        list(manifests.targets.values()),
        {name: manifest for name, manifest in manifests.credentials.items()},
        {name: set(values) for name, values in manifests.secrets.items()},
        {
            name: {k: v.decode(errors="replace") for k, v in data.items()}
            for name, data in manifests.config_maps.items()
        },
        secrets_root=str(secrets_root),
        config_maps_root=str(config_maps_root),
        workspace=str(work),
    )


def result_table(state: RunState) -> list[list[str]]:
    """Return the final table rows: step, target, status, exit code, attempts, duration, error."""
    rows = [["STEP", "TARGET", "STATUS", "EXIT", "ATTEMPTS", "DURATION", "ERROR"]]
    with state.lock:
        for step in state.steps:
            for record in step.targets:
                error = record.error.splitlines()[0] if record.error else ""
                if not error and record.phase in ("Skipped", "Cancelled") and step.message:
                    error = step.message.splitlines()[0]
                rows.append(
                    [
                        step.name,
                        record.target,
                        record.phase,
                        "" if record.exit_code is None else str(record.exit_code),
                        str(record.attempts) if record.attempts else "",
                        ""
                        if record.duration_milliseconds is None
                        else f"{record.duration_milliseconds / 1000:.1f}s",
                        error[:120],
                    ]
                )
    return rows


def print_table(rows: list[list[str]], stream: TextIO) -> None:
    """Print rows as aligned columns."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        stream.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    stream.flush()


def run_local(
    paths: list[Path],
    *,
    job_name: str | None = None,
    arguments: dict[str, Any] | None = None,
    workspace: Path | None = None,
    quiet: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    cancel: threading.Event | None = None,
    session_kinds: tuple[SessionKind, ...] = DEFAULT_SESSION_KINDS,
) -> int:
    """Run an OpsJob from manifest files; return the exit status (0, 1 or 2).

    Args:
        paths: manifest files or directories.
        job_name: which OpsJob to run when the files hold several.
        arguments: arguments overriding the job's (``--param``).
        workspace: keep the run's workspace here (default: a temporary directory).
        quiet: do not print step output.
        stdout: step output and the final table (default: standard output).
        stderr: progress and errors (default: standard error).
        cancel: set to cancel the run.
        session_kinds: protocol sessions (tests substitute their own).
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    secrets = FileSecretStore()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opsconductor-run-")))
        root.chmod(0o700)
        try:
            planned = plan_local_run(
                load_manifests(paths), root, job_name=job_name, arguments=arguments, workspace=workspace
            )
        except (PlanError, OSError, yaml.YAMLError) as error:
            reason = f"{error.reason}: " if isinstance(error, PlanError) else ""
            err.write(f"error: {reason}{error}\n")
            return EXIT_CODES["Failed"]
        engine = Engine(
            planned.plan,
            secrets,
            reporter=ConsoleReporter(err),
            cancel=cancel,
            output=OutputLog(stack.enter_context(open(os.devnull, "w")) if quiet else out),
            session_kinds=session_kinds,
            workspace=Path(planned.plan.workspace),
        )
        result: RunResult = engine.run()
    out.write("\n")
    print_table(result_table(result.state), out)
    return EXIT_CODES[result.summary.phase]


def _cmd_run(args: argparse.Namespace) -> int:
    cancel = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        sys.stderr.write("cancelling: running commands are being stopped\n")
        cancel.set()

    previous_int = signal.signal(signal.SIGINT, handle)
    previous_term = signal.signal(signal.SIGTERM, handle)
    try:
        try:
            arguments = parse_arguments(args.param)
        except PlanError as error:
            sys.stderr.write(f"error: {error}\n")
            return EXIT_CODES["Failed"]
        return run_local(
            args.filename,
            job_name=args.job,
            arguments=arguments,
            workspace=args.workspace,
            quiet=args.quiet,
            cancel=cancel,
        )
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to an ``argparse`` subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``run`` parser (its ``func`` default runs the command and returns the exit status).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run an OpsJob locally from manifest files",
        description="Run an OpsJob on this machine: the OpsJob, its Targets, Credentials and Secrets "
        "come from the files; output and results are printed. Exit status 0 succeeded, 1 failed, "
        "2 cancelled.",
    )
    parser.add_argument(
        "-f", "--filename", type=Path, action="append", required=True, help="manifest file or directory"
    )
    parser.add_argument("--job", help="the OpsJob to run when the files hold several")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an argument for a declared parameter (VALUE is read as YAML); repeatable",
    )
    parser.add_argument(
        "--workspace", type=Path, help="keep the run's workspace (downloads) in this directory"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print step output")
    parser.set_defaults(func=_cmd_run)
    return parser
