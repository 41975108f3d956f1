"""Benchmark: ``uname -a`` on N local sshd targets with OpsConductor, Ansible, parallel-ssh and OpenSSH.

Every tool runs as its own process against the same sshd servers (one loopback address per target,
127.0.1.1 ... 127.0.1.N, one port; sshd accepts at most 16 listen addresses, so ceil(N/16) daemons),
with fresh connections in every run and an Ed25519 client key:

- ``opsconductor``: ``python -m opsconductor.runner`` (the runner pod's entrypoint) on a RunPlan built
  by ``build_run_plan`` (one ``ssh.exec`` step, Targets with ``spec.ssh.hostKeys``), with the engine's
  default concurrency and explicit ``concurrency`` values (``--opsc-concurrency``);
- ``ansible``: ``ansible all -m raw -a 'uname -a' -f FORKS`` (ansible-core), host keys checked against a
  generated known_hosts file, no ControlMaster/ControlPersist (fresh connections);
- ``pssh``: parallel-ssh's ``ParallelSSHClient(pool_size=FORKS)`` (libssh2; it has no host key check);
- ``openssh``: ``xargs -P FORKS ssh ... 'uname -a'``, the floor; ``openssh-x25519`` the same with
  ``KexAlgorithms=curve25519-sha256`` (what paramiko and libssh2 negotiate; OpenSSH's default
  post-quantum sntrup761x25519 costs the ssh client ~90 ms CPU more per connection).

ansible-core and parallel-ssh are installed into a separate virtualenv (``~/.cache/opsconductor/
bench-venv``, or ``$OPSC_BENCH_VENV``) on first use. Needs root (sshd, the test user) and Debian's
openssh-server/openssh-client.

Measured per run: wall time; client CPU = user+sys of the tool's process and every descendant it
waited for (``os.wait4`` rusage: ansible's forks and their ssh processes, xargs' ssh processes);
peak memory = the largest sum of PSS over the tool's process tree (sampled every 0.2 s) and the
largest single process's VmHWM; sshd CPU = what the servers spent on the run's connections. Every
run's output is parsed and the successful targets counted; failures are printed. Runs are
interleaved (repetition by repetition, tool order rotated) so background load hits every tool
alike. The table shows medians.

    .venv/bin/python bench/ssh_fanout.py [--targets 50,200] [--tools opsconductor,ansible,pssh,openssh]
        [--repeat 3] [--forks 50] [--opsc-concurrency default,10,25,50] [--remote-sleep 0.2]
        [--json results.json]

``--remote-sleep S`` runs ``sleep S; uname -a``: per-target latency that costs no CPU on this machine,
as remote hosts and real networks would (loopback with sshd on the client's cores is the worst
case for high concurrency).

``--profile N:C`` instead runs the engine in-process on N targets with concurrency C (``default``
for the engine's default) under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:  # the sshd helpers (they moved from tests/fixtures/sshd.py into the package)
    from opsconductor.localcluster.sshd import (
        SSH_KEYGEN,
        SSHD,
        ensure_test_user,
        generate_host_keys,
        sshd_version,
    )
except ImportError:  # pragma: no cover - older trees
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.fixtures.sshd import (  # type: ignore[no-redef]
        SSH_KEYGEN,
        SSHD,
        ensure_test_user,
        generate_host_keys,
        sshd_version,
    )

BENCH_VENV = Path(os.environ.get("OPSC_BENCH_VENV") or "~/.cache/opsconductor/bench-venv").expanduser()
BENCH_PACKAGES = ("ansible-core==2.19.14", "parallel-ssh==2.16.0.post1")
ADDRESS_PREFIX = "127.0.1."
MAX_LISTEN_PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS
COMMAND = "uname -a"  # --remote-sleep S makes it "sleep S; uname -a"
STEP_NAME = "uname"
SAMPLE_SECONDS = 0.2
RUN_TIMEOUT = 600.0
ALL_TOOLS = ("opsconductor", "ansible", "pssh", "openssh", "openssh-x25519")
"""``openssh-x25519`` is the floor with ``KexAlgorithms=curve25519-sha256``, the key exchange paramiko
and libssh2 negotiate: OpenSSH 9's default (sntrup761x25519, post-quantum) costs the client ~90 ms
CPU per connection more."""
PYC_CACHE = Path("~/.cache/opsconductor/bench-pycache").expanduser()
"""Bytecode cache for the runner's own modules (an installed runner has .pyc files; a source tree
under PYTHONDONTWRITEBYTECODE=1 would recompile them in every run, ~0.2 s CPU)."""


# --- measuring one process tree ---------------------------------------------------------------
@dataclass
class Measurement:
    wall: float
    cpu_user: float
    cpu_sys: float
    max_rss_kib: int
    peak_pss_kib: int
    peak_processes: int
    returncode: int
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


def _children(pid: int) -> list[int]:
    """Children of a process's main thread (enough here: every tool forks from its main thread)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    pids, stack = [pid], [pid]
    while stack:
        for child in _children(stack.pop()):
            pids.append(child)
            stack.append(child)
    return pids


def _hwm_kib(pid: int) -> int:
    """A process's peak RSS (VmHWM) so far."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measure(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    out_dir: Path,
    label: str,
    stdin: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Measurement:
    """Run a command to completion; wall time, rusage of its waited-for tree, peak PSS of the tree."""
    out_path, err_path = out_dir / f"{label}.out", out_dir / f"{label}.err"
    peak = {"pss": 0, "procs": 0, "hwm": 0}
    done = threading.Event()
    with (
        out_path.open("wb") as out,
        err_path.open("wb") as err,
        stdin.open("rb") if stdin else open(os.devnull, "rb") as inp,
    ):
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd), stdin=inp, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )

        def sample() -> None:
            while not done.wait(SAMPLE_SECONDS):
                pids = _tree(proc.pid)
                total = sum(_pss_kib(p) for p in pids)
                peak["pss"] = max(peak["pss"], total)
                peak["procs"] = max(peak["procs"], len(pids))
                peak["hwm"] = max([peak["hwm"], *(_hwm_kib(p) for p in pids)])

        def watchdog() -> None:
            if not done.wait(timeout):
                timed_out.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        timed_out = threading.Event()
        threads = [
            threading.Thread(target=sample, daemon=True),
            threading.Thread(target=watchdog, daemon=True),
        ]
        for thread in threads:
            thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        for thread in threads:
            thread.join()
    return Measurement(
        wall=wall,
        cpu_user=usage.ru_utime,
        cpu_sys=usage.ru_stime,
        # ru_maxrss would include the forking Python parent's RSS (kept across exec): sample VmHWM instead
        max_rss_kib=peak["hwm"],
        peak_pss_kib=peak["pss"],
        peak_processes=peak["procs"],
        returncode=proc.returncode,
        timed_out=timed_out.is_set(),
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


# --- the servers --------------------------------------------------------------------------------
class SshdFleet:
    """ceil(N/16) sshd daemons on 127.0.1.1..N, one port, Ed25519 host key, key logins only."""

    def __init__(self, root: Path, count: int, *, use_pam: bool = False) -> None:
        self.root = root
        self.use_pam = use_pam
        self.addresses = [f"{ADDRESS_PREFIX}{i}" for i in range(1, count + 1)]
        self.user = ensure_test_user(root / "credentials")
        host_keys = generate_host_keys(root / "hostkeys")
        self.host_key_path = next(p for p in host_keys.paths if "ed25519" in p.name)
        self.host_key_line = host_keys.public_lines["ssh-ed25519"]
        client = root / "client"
        client.mkdir()
        self.client_key = client / "id_ed25519"
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(self.client_key)],
            check=True,
            capture_output=True,
        )
        authorized = root / "authorized_keys"
        authorized.mkdir()
        authorized.chmod(0o755)
        (authorized / self.user.name).write_text(self.client_key.with_suffix(".pub").read_text())
        (authorized / self.user.name).chmod(0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = 0
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def known_hosts(self, path: Path) -> Path:
        path.write_text(
            "".join(f"[{address}]:{self.port} {self.host_key_line}\n" for address in self.addresses)
        )
        return path

    def _config(self, index: int, addresses: Sequence[str]) -> str:
        lines = [
            *(f"ListenAddress {address}:{self.port}" for address in addresses),
            f"HostKey {self.host_key_path}",
            f"PidFile {self.root / f'sshd-{index}.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}/%u",
            f"AllowUsers {self.user.name}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"UsePAM {'yes' if self.use_pam else 'no'}",
            "StrictModes no",
            "PermitRootLogin no",
            "MaxStartups 1000:30:2000",
            "MaxSessions 50",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "LogLevel INFO",
        ]
        if sshd_version() >= (9, 8):
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        for _attempt in range(5):
            with socket.socket() as sock:
                sock.bind((self.addresses[0], 0))
                self.port = sock.getsockname()[1]
            if self._start_all():
                return
            self.stop()
        raise RuntimeError("could not start the sshd servers:\n" + self.log_text())

    def _start_all(self) -> bool:
        self.processes, self.logs = [], []
        groups = [
            self.addresses[i : i + MAX_LISTEN_PER_SSHD]
            for i in range(0, len(self.addresses), MAX_LISTEN_PER_SSHD)
        ]
        for index, group in enumerate(groups):
            config = self.root / f"sshd-{index}.conf"
            config.write_text(self._config(index, group))
            log = self.root / f"sshd-{index}.log"
            with log.open("wb") as err:
                self.processes.append(
                    subprocess.Popen(
                        [str(SSHD), "-D", "-e", "-f", str(config)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
            self.logs.append(log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = self.log_text()
            if "Address already in use" in text or any(p.poll() is not None for p in self.processes):
                return False
            if text.count("Server listening on") >= len(self.addresses):
                return True
            time.sleep(0.05)
        return False

    def log_text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def log_size(self) -> int:
        return sum(log.stat().st_size for log in self.logs if log.exists())

    def log_since(self, offset: int) -> str:
        return self.log_text()[offset:]

    def connections(self) -> int:
        return sum(len(_children(p.pid)) for p in self.processes)

    def children_cpu(self) -> float:
        """CPU seconds used by the connections the daemons served and reaped so far (cutime+cstime)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for process in self.processes:
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[13]) + int(fields[14])  # fields 16 and 17 of stat(5)
        return total / ticks

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until no connection from an earlier run is still being served."""
        deadline = time.monotonic() + timeout
        while self.connections() and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the tools ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: int
    failures: list[str]


@dataclass
class Tool:
    name: str
    label: str
    command: Callable[[int], tuple[list[str], dict[str, str], Path | None]]
    parse: Callable[[Measurement, list[str]], Outcome]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "ANSIBLE_", "SSH_AUTH"))}
    env["LC_ALL"] = "C.UTF-8"
    return env


def _runner_env() -> dict[str, str]:
    env = _base_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYC_CACHE)
    return env


def warm_runner_bytecode() -> None:
    """Compile the runner's modules into :data:`PYC_CACHE` once (not measured)."""
    modules = "opsconductor.runner.__main__, opsconductor.runner.protocols.ssh, opsconductor.planner"
    subprocess.run([sys.executable, "-c", f"import {modules}"], env=_runner_env(), check=True)


def _linux(line: str) -> bool:
    return line.startswith("Linux ")


def ensure_bench_venv() -> Path:
    """Create the benchmark virtualenv with ansible-core and parallel-ssh if it is missing."""
    python = BENCH_VENV / "bin" / "python"
    check = "import ansible, pssh.clients; print(ansible.__version__)"
    if python.exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
        return BENCH_VENV
    print(f"installing {', '.join(BENCH_PACKAGES)} into {BENCH_VENV} ...", flush=True)
    BENCH_VENV.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *BENCH_PACKAGES], check=True)
    return BENCH_VENV


PSSH_SCRIPT = """
import sys
from pssh.clients import ParallelSSHClient
hosts_file, user, key, port, pool, command = sys.argv[1:7]
hosts = open(hosts_file).read().split()
client = ParallelSSHClient(hosts, user=user, pkey=key, port=int(port), pool_size=int(pool),
                           num_retries=1, timeout=60, allow_agent=False, identity_auth=False)
output = client.run_command(command, stop_on_errors=False)
client.join(output)
for host_out in output:
    if host_out.exception is not None:
        print("FAIL", host_out.host, repr(host_out.exception).replace("\\n", " "))
        continue
    lines = list(host_out.stdout)
    status = "OK" if host_out.exit_code == 0 else "FAIL"
    print(status, host_out.host, host_out.exit_code, lines[0] if lines else "")
"""


class Bench:
    def __init__(self, args: argparse.Namespace, fleet: SshdFleet, work: Path) -> None:
        self.args = args
        self.fleet = fleet
        self.work = work
        self.known_hosts = fleet.known_hosts(work / "known_hosts")
        self.runs_dir = work / "runs"
        self.runs_dir.mkdir()
        self.venv = BENCH_VENV
        self.command = f"sleep {args.remote_sleep:g}; {COMMAND}" if args.remote_sleep else COMMAND

    def hosts_file(self, n: int) -> Path:
        path = self.work / f"hosts-{n}.txt"
        if not path.exists():
            path.write_text("".join(f"{a}\n" for a in self.fleet.addresses[:n]))
        return path

    # opsconductor
    def plan_file(self, n: int, concurrency: int | None) -> Path:
        from opsconductor.planner import build_run_plan

        path = self.work / f"plan-{n}-{concurrency or 'default'}.json"
        if path.exists():
            return path
        secrets_root = self.work / "secrets"
        (secrets_root / "bench-key").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.fleet.client_key, secrets_root / "bench-key" / "ssh-privatekey")
        workspace = self.work / "workspace"
        workspace.mkdir(exist_ok=True)
        names = [f"t{i:03d}" for i in range(1, n + 1)]
        targets = [
            {
                "metadata": {"name": name},
                "spec": {
                    "address": address,
                    "protocol": "ssh",
                    "port": self.fleet.port,
                    "credentialRef": {"name": "bench-key"},
                    "ssh": {"hostKeys": [self.fleet.host_key_line]},
                },
            }
            for name, address in zip(names, self.fleet.addresses, strict=False)
        ]
        spec: dict[str, object] = {
            "targets": names,
            "steps": [{"name": STEP_NAME, "type": "ssh.exec", "command": self.command}],
        }
        if concurrency:
            spec["concurrency"] = concurrency
        job = {"metadata": {"name": f"fanout-{n}", "namespace": "bench", "uid": "bench"}, "spec": spec}
        credentials = {
            "bench-key": {
                "type": "SSHKey",
                "secretRef": {"name": "bench-key"},
                "username": self.fleet.user.name,
            }
        }
        planned = build_run_plan(
            job,
            targets,
            credentials,
            {"bench-key": ["ssh-privatekey"]},
            secrets_root=str(secrets_root),
            workspace=str(workspace),
        )
        path.write_text(planned.plan.model_dump_json())
        return path

    def opsconductor_tool(self, concurrency: int | None) -> Tool:
        name = "opsconductor" if concurrency is None else f"opsconductor c={concurrency}"

        def command(n: int) -> tuple[list[str], dict[str, str], Path | None]:
            env = _runner_env()
            env["OPSCONDUCTOR_PLAN"] = str(self.plan_file(n, concurrency))
            env["OPSCONDUCTOR_TERMINATION_LOG"] = str(self.work / "termination.log")
            return [sys.executable, "-m", "opsconductor.runner"], env, None

        def parse(m: Measurement, _hosts: list[str]) -> Outcome:
            ok: set[str] = set()
            failures = []
            pattern = re.compile(rf"^\[{STEP_NAME}/(t\d+)\] (?:stdout: )?(.*)$")
            for line in m.stdout.splitlines():
                match = pattern.match(line)
                if not match:
                    continue
                target, text = match.groups()
                if _linux(text):
                    ok.add(target)
                elif "failed" in text:
                    failures.append(f"{target}: {text}")
            return Outcome(len(ok), failures)

        if concurrency is None:
            label = "OpsConductor runner, engine default concurrency"
        else:
            label = f"OpsConductor runner, concurrency {concurrency}"
        return Tool(name, label, command, parse)

    # ansible
    def ansible_tool(self) -> Tool:
        def command(n: int) -> tuple[list[str], dict[str, str], Path | None]:
            inventory = self.work / f"inventory-{n}.ini"
            if not inventory.exists():
                lines = ["[bench]", *self.fleet.addresses[:n], "", "[bench:vars]"]
                lines += [
                    f"ansible_port={self.fleet.port}",
                    f"ansible_user={self.fleet.user.name}",
                    f"ansible_ssh_private_key_file={self.fleet.client_key}",
                ]
                inventory.write_text("\n".join(lines) + "\n")
            home = self.work / "ansible-home"
            home.mkdir(exist_ok=True)
            env = _base_env()
            env |= {
                "ANSIBLE_HOME": str(home),
                "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                # Ansible's default is "-C -o ControlMaster=auto -o ControlPersist=60s": keep -C, but no
                # connection reuse, and check host keys against our known_hosts file only.
                "ANSIBLE_SSH_ARGS": (
                    f"-C -o ControlMaster=no -o ControlPersist=no -o UserKnownHostsFile={self.known_hosts} "
                    "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"
                ),
                "ANSIBLE_SSH_RETRIES": "0",
                "ANSIBLE_TIMEOUT": "60",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_DEPRECATION_WARNINGS": "False",
                "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
            }
            cmd = [
                str(self.venv / "bin" / "ansible"),
                "all",
                "-i",
                str(inventory),
                "-m",
                "raw",
                "-a",
                self.command,
                "-f",
                str(self.args.forks),
            ]
            return cmd, env, None

        def parse(m: Measurement, _hosts: list[str]) -> Outcome:
            ok = 0
            failures = []
            lines = m.stdout.splitlines()
            for i, line in enumerate(lines):
                if (
                    re.match(r"^\S+ \| CHANGED \| rc=0 >>$", line)
                    and i + 1 < len(lines)
                    and _linux(lines[i + 1])
                ):
                    ok += 1
                elif re.match(r"^\S+ \| (UNREACHABLE!|FAILED)", line):
                    failures.append(line)
            return Outcome(ok, failures)

        return Tool("ansible", f"ansible -m raw -f {self.args.forks}", command, parse)

    # parallel-ssh
    def pssh_tool(self) -> Tool:
        script = self.work / "pssh_run.py"
        script.write_text(PSSH_SCRIPT)

        def command(n: int) -> tuple[list[str], dict[str, str], Path | None]:
            cmd = [
                str(self.venv / "bin" / "python"),
                str(script),
                str(self.hosts_file(n)),
                self.fleet.user.name,
                str(self.fleet.client_key),
                str(self.fleet.port),
                str(self.args.forks),
                self.command,
            ]
            return cmd, _base_env(), None

        def parse(m: Measurement, _hosts: list[str]) -> Outcome:
            ok = 0
            failures = []
            for line in m.stdout.splitlines():
                parts = line.split(" ", 3)
                if parts[0] == "OK" and len(parts) == 4 and _linux(parts[3]):
                    ok += 1
                elif parts[0] in ("OK", "FAIL"):
                    failures.append(line)
            return Outcome(ok, failures)

        return Tool("pssh", f"parallel-ssh pool_size {self.args.forks}", command, parse)

    # plain OpenSSH
    def openssh_tool(self, kex: str | None = None) -> Tool:
        def command(n: int) -> tuple[list[str], dict[str, str], Path | None]:
            kex_options = ["-o", f"KexAlgorithms={kex}"] if kex else []
            cmd = [
                "xargs",
                "-P",
                str(self.args.forks),
                "-I{}",
                "ssh",
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ControlMaster=no",
                *kex_options,
                "-i",
                str(self.fleet.client_key),
                "-p",
                str(self.fleet.port),
                "-l",
                self.fleet.user.name,
                "{}",
                self.command,
            ]
            return cmd, _base_env(), self.hosts_file(n)

        def parse(m: Measurement, _hosts: list[str]) -> Outcome:
            ok = sum(1 for line in m.stdout.splitlines() if _linux(line))
            failures = [line for line in m.stderr.splitlines() if line.strip()]
            return Outcome(ok, failures)

        if kex:
            return Tool(
                "openssh-x25519", f"xargs -P {self.args.forks} ssh -o KexAlgorithms={kex}", command, parse
            )
        return Tool("openssh", f"xargs -P {self.args.forks} ssh", command, parse)


# --- running and reporting ---------------------------------------------------------------------
@dataclass
class Result:
    tool: str
    targets: int
    rep: int
    wall: float
    cpu: float
    cpu_user: float
    cpu_sys: float
    peak_pss_mib: float
    max_rss_mib: float
    peak_processes: int
    server_cpu: float
    ok: int
    failures: list[str] = field(default_factory=list)
    returncode: int = 0
    sshd_errors: list[str] = field(default_factory=list)


SSHD_BENIGN = "syslogin_perform_logout: logout() returned an error"
"""sshd says this when a tty session ends (Ansible's raw module asks for a tty)."""


def _benign(line: str) -> bool:
    """Whether an sshd log line (or a fragment of one: forked sshds share a log file) is harmless."""
    text = line.strip()
    return SSHD_BENIGN in text or (len(text) >= 8 and SSHD_BENIGN.endswith(text))


def run_one(bench: Bench, tool: Tool, n: int, rep: int) -> Result:
    fleet = bench.fleet
    fleet.wait_idle()
    time.sleep(0.5)
    cmd, env, stdin = tool.command(n)
    offset = len(fleet.log_text())
    server_before = fleet.children_cpu()
    label = f"{tool.name.replace(' ', '_').replace('=', '')}-{n}-{rep}"
    m = measure(cmd, env=env, cwd=bench.work, out_dir=bench.runs_dir, label=label, stdin=stdin)
    fleet.wait_idle()
    server_cpu = fleet.children_cpu() - server_before
    outcome = tool.parse(m, fleet.addresses[:n])
    failures = list(outcome.failures)
    if m.timed_out:
        failures.insert(0, f"timed out after {RUN_TIMEOUT:.0f}s")
    if outcome.ok < n and not failures:
        tail = (m.stderr.strip().splitlines() or m.stdout.strip().splitlines() or ["no output"])[-5:]
        failures.extend(tail)
    sshd_errors = [
        line
        for line in fleet.log_since(offset).splitlines()
        if re.search(r"MaxStartups|drop|[Ee]rror|fatal|refused|Timeout", line) and not _benign(line)
    ]
    return Result(
        tool=tool.name,
        targets=n,
        rep=rep,
        wall=m.wall,
        cpu=m.cpu,
        cpu_user=m.cpu_user,
        cpu_sys=m.cpu_sys,
        peak_pss_mib=m.peak_pss_kib / 1024,
        max_rss_mib=m.max_rss_kib / 1024,
        peak_processes=m.peak_processes,
        server_cpu=server_cpu,
        ok=outcome.ok,
        failures=failures,
        returncode=m.returncode,
        sshd_errors=sshd_errors,
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def report(results: list[Result], tools: list[Tool], targets: list[int], forks: int) -> None:
    for n in targets:
        rows = {t.name: [r for r in results if r.tool == t.name and r.targets == n] for t in tools}
        med = {
            name: {
                "wall": _median([r.wall for r in rs]),
                "cpu": _median([r.cpu for r in rs]),
                "pss": _median([r.peak_pss_mib for r in rs]),
                "rss": _median([r.max_rss_mib for r in rs]),
                "srv": _median([r.server_cpu for r in rs]),
            }
            for name, rs in rows.items()
            if rs
        }
        ansible = med.get("ansible")
        floor = med.get("openssh")
        print()
        print(f"=== {n} targets (median of {max((len(r) for r in rows.values()), default=0)} runs) ===")
        header = (
            f"{'tool':<20} {'ok':>9} {'wall s':>7} {'(min-max)':>13} {'CPU s':>6} {'usr/sys':>11} "
            f"{'PSS MiB':>8} {'maxRSS':>7} {'procs':>5} {'sshd CPU':>8} {'vs ansible':>10} {'vs ssh':>7} "
            f"{'CPU/ans':>7}"
        )
        print(header)
        print("-" * len(header))
        for tool in tools:
            rs = rows[tool.name]
            if not rs:
                continue
            m = med[tool.name]
            walls = [r.wall for r in rs]
            ok = f"{min(r.ok for r in rs)}/{n}"
            usr = _median([r.cpu_user for r in rs])
            sys_ = _median([r.cpu_sys for r in rs])
            speedup = f"{ansible['wall'] / m['wall']:.2f}x" if ansible else "-"
            vs_floor = f"{m['wall'] / floor['wall']:.2f}" if floor else "-"
            cpu_share = f"{m['cpu'] / ansible['cpu']:.3f}" if ansible and ansible["cpu"] else "-"
            print(
                f"{tool.name:<20} {ok:>9} {m['wall']:7.2f} {f'({min(walls):.1f}-{max(walls):.1f})':>13} "
                f"{m['cpu']:6.2f} {f'{usr:.1f}/{sys_:.1f}':>11} {m['pss']:8.0f} {m['rss']:7.0f} "
                f"{max(r.peak_processes for r in rs):>5} {m['srv']:8.2f} {speedup:>10} {vs_floor:>7} "
                f"{cpu_share:>7}"
            )
        print(
            "ok = fewest targets with a 'Linux ...' output in any run; CPU = user+sys of the tool and its "
            "waited-for children;\nPSS = peak summed PSS of the process tree (MiB); maxRSS = largest "
            "single process (MiB);\nprocs = most processes at once; sshd CPU = CPU the servers spent on the "
            "run's connections; vs ansible = Ansible wall / tool wall (speed-up);\n"
            "vs ssh = tool wall / OpenSSH xargs wall (<= 1 is at least as fast as the floor); "
            f"CPU/ans = tool CPU / Ansible CPU. forks={forks}"
        )
        opsc = {name: m for name, m in med.items() if name.startswith("opsconductor")}
        incomplete = sorted({r.tool for rs in rows.values() for r in rs if r.ok < n})
        if incomplete:
            print(f"goal check: not valid, these did not reach every target: {', '.join(incomplete)}")
        elif opsc and ansible and floor:
            best = min(opsc, key=lambda name: opsc[name]["wall"])
            b = opsc[best]
            print(
                f"goal check ({best}): {ansible['wall'] / b['wall']:.2f}x faster than Ansible (goal >= 4): "
                f"{'PASS' if ansible['wall'] / b['wall'] >= 4 else 'FAIL'}; wall / OpenSSH floor "
                f"{b['wall'] / floor['wall']:.2f} (goal <= 1): "
                f"{'PASS' if b['wall'] <= floor['wall'] else 'FAIL'}; "
                f"CPU {b['cpu'] / ansible['cpu']:.3f} of Ansible's (goal < 0.1): "
                f"{'PASS' if b['cpu'] < 0.1 * ansible['cpu'] else 'FAIL'}"
            )
            if "opsconductor" in opsc and best != "opsconductor":
                d = opsc["opsconductor"]
                print(
                    f"            (default concurrency: {ansible['wall'] / d['wall']:.2f}x vs Ansible, "
                    f"{d['wall'] / floor['wall']:.2f} of the floor, CPU {d['cpu'] / ansible['cpu']:.3f})"
                )
    failed = [r for r in results if r.ok < r.targets or r.failures]
    if failed:
        print("\nFAILURES (a tool that did not reach every target does not count as fast):")
        for r in failed:
            print(f"  {r.tool} n={r.targets} rep={r.rep}: {r.ok}/{r.targets} ok, exit {r.returncode}")
            for line in r.failures[:8]:
                print(f"      {line[:300]}")
            if len(r.failures) > 8:
                print(f"      ... {len(r.failures) - 8} more")
    sshd_noise = [r for r in results if r.sshd_errors]
    if sshd_noise:
        print("\nsshd reported problems during these runs:")
        for r in sshd_noise:
            print(
                f"  {r.tool} n={r.targets} rep={r.rep}: {len(r.sshd_errors)} line(s), "
                f"e.g. {r.sshd_errors[0][:200]}"
            )


def _versions(venv: Path | None) -> str:
    import paramiko

    parts = [f"Python {platform.python_version()}", f"paramiko {paramiko.__version__}"]
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    parts.append((ssh.stderr or ssh.stdout).strip().split(",")[0])
    if venv is not None:
        code = (
            "import ansible, importlib.metadata as m; "
            "print('ansible-core', ansible.__version__ + ',', "
            "'parallel-ssh', m.version('parallel-ssh') + ',', "
            "'ssh2-python', m.version('ssh2-python'))"
        )
        out = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True)
        parts.append(out.stdout.strip())
    return ", ".join(parts)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- profiling --------------------------------------------------------------------------------------
def profile(bench: Bench, n: int, concurrency: int | None, out: Path | None) -> None:
    """Run the engine in-process under cProfile (every thread, paramiko's too) and print the top."""
    import cProfile
    import io
    import pstats

    from opsconductor.plan import RunPlan
    from opsconductor.runner.engine import Engine
    from opsconductor.runner.reporting import OutputLog
    from opsconductor.runner.secrets import FileSecretStore

    plan = RunPlan.model_validate_json(bench.plan_file(n, concurrency).read_bytes())
    sink = io.StringIO()
    profilers: list[cProfile.Profile] = []
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled(thread: threading.Thread) -> None:
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()
        try:
            bootstrap(thread)
        finally:
            profiler.disable()

    threading.Thread._bootstrap_inner = profiled  # type: ignore[attr-defined]
    main_profiler = cProfile.Profile()
    before = os.times()
    started = time.monotonic()
    main_profiler.enable()
    try:
        result = Engine(plan, FileSecretStore(), output=OutputLog(sink)).run()
    finally:
        main_profiler.disable()
        threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]
    wall = time.monotonic() - started
    after = os.times()
    ok = sum(1 for line in sink.getvalue().splitlines() if "stdout: Linux" in line)
    cpu = after.user - before.user + after.system - before.system
    print(
        f"profile: {n} targets, concurrency {concurrency or 'default'}: {result.summary.phase}, {ok}/{n} ok, "
        f"wall {wall:.2f}s, CPU {cpu:.2f}s (under cProfile, {len(profilers)} threads profiled)"
    )
    stats = pstats.Stats(main_profiler)
    for profiler in profilers:
        with contextlib.suppress(TypeError):  # a thread that never ran
            stats.add(profiler)
    if out is not None:
        stats.dump_stats(str(out))
        print(f"profile written to {out}")
    for key in ("tottime", "cumulative"):
        print(f"\n--- top 30 by {key} (summed over threads; waits count in cumulative) ---")
        stats.sort_stats(key).print_stats(30)


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="50,200", help="comma-separated target counts (max 250)")
    parser.add_argument(
        "--tools", default=",".join(ALL_TOOLS), help="comma-separated: " + ", ".join(ALL_TOOLS)
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and target count (median shown)")
    parser.add_argument("--forks", type=int, default=50, help="Ansible -f, parallel-ssh pool_size, xargs -P")
    parser.add_argument(
        "--opsc-concurrency",
        default="default,10,25,50",
        help="OpsConductor variants: 'default' (the engine's choice) and/or explicit concurrency values",
    )
    parser.add_argument(
        "--remote-sleep",
        type=float,
        default=0.0,
        help="run 'sleep S; uname -a': per-target latency that costs no CPU here (as remote hosts would)",
    )
    parser.add_argument("--use-pam", action="store_true", help="sshd with UsePAM yes (costlier logins)")
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (outputs, sshd logs)")
    parser.add_argument(
        "--profile", metavar="N:C", help="profile the engine in-process instead (e.g. 200:default)"
    )
    parser.add_argument("--profile-out", type=Path, help="write the cProfile stats here")
    args = parser.parse_args(argv)
    args.target_counts = [int(x) for x in args.targets.split(",") if x]
    args.tool_names = [x.strip() for x in args.tools.split(",") if x.strip()]
    unknown = set(args.tool_names) - set(ALL_TOOLS)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    args.concurrencies = [
        None if c.strip() == "default" else int(c) for c in args.opsc_concurrency.split(",") if c.strip()
    ]
    if max(args.target_counts, default=0) > 250 or min(args.target_counts, default=1) < 1:
        parser.error("--targets: 1..250 per run (127.0.1.1..127.0.1.250)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("ssh_fanout needs root (it starts sshd and creates the test user)", file=sys.stderr)
        return 2
    if not SSHD.exists() or shutil.which("ssh") is None:
        print("needs openssh-server and openssh-client (hack/install-system-deps.sh)", file=sys.stderr)
        return 2
    needs_venv = bool({"ansible", "pssh"} & set(args.tool_names)) and not args.profile
    venv = ensure_bench_venv() if needs_venv else None
    work = Path(tempfile.mkdtemp(prefix="opsc-fanout-"))
    work.chmod(0o755)
    count = max(args.target_counts)
    if args.profile:
        n_text, _, c_text = args.profile.partition(":")
        count = int(n_text)
    fleet = SshdFleet(work, count, use_pam=args.use_pam)
    started = time.monotonic()
    try:
        fleet.start()
        bench = Bench(args, fleet, work)
        if args.profile:
            profile(bench, count, None if c_text in ("", "default") else int(c_text), args.profile_out)
            return 0
        tools: list[Tool] = []
        for name in args.tool_names:
            if name == "opsconductor":
                tools.extend(bench.opsconductor_tool(c) for c in args.concurrencies)
            elif name == "ansible":
                tools.append(bench.ansible_tool())
            elif name == "pssh":
                tools.append(bench.pssh_tool())
            elif name == "openssh":
                tools.append(bench.openssh_tool())
            elif name == "openssh-x25519":
                tools.append(bench.openssh_tool("curve25519-sha256"))
        if "opsconductor" in args.tool_names:
            warm_runner_bytecode()
        print(
            f"ssh fan-out benchmark: '{bench.command}' on {args.targets} targets, {args.repeat} repetition(s)"
        )
        print(f"versions: {_versions(venv)}")
        print(
            f"machine: {os.cpu_count()} CPUs, load average {_loadavg()} at start; "
            f"sshd: {len(fleet.processes)} "
            f"daemon(s) on {ADDRESS_PREFIX}1-{count} port {fleet.port}, MaxStartups 1000:30:2000, "
            f"UsePAM {'yes' if args.use_pam else 'no'}"
        )
        results: list[Result] = []
        for rep in range(1, args.repeat + 1):
            for n in args.target_counts:
                shift = (rep - 1) % len(tools)
                for tool in tools[shift:] + tools[:shift]:
                    result = run_one(bench, tool, n, rep)
                    results.append(result)
                    print(
                        f"  rep {rep} n={n:<4} {tool.name:<20} {result.ok:>4}/{n} ok  "
                        f"wall {result.wall:6.2f}s  CPU {result.cpu:6.2f}s  "
                        f"PSS {result.peak_pss_mib:6.0f} MiB  sshd CPU {result.server_cpu:5.1f}s  "
                        f"load {_loadavg()}",
                        flush=True,
                    )
        report(results, tools, args.target_counts, args.forks)
        print(f"\ntotal benchmark time {time.monotonic() - started:.0f}s; load average at end {_loadavg()}")
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
        return 0 if all(r.ok == r.targets for r in results) else 1
    finally:
        fleet.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
