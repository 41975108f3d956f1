"""Container init step of the process kubelet (stands in for runc's init).

Run by the kubelet as ``python -I containerinit.py <spec.json>`` with stdout/stderr already going to
the container log, in a new session. It unshares a mount, UTS and PID namespace and forks: the
child is PID 1 of the new PID namespace (so, as in a real container, it only gets the signals it
handles, and when it dies the kernel kills every other process of the container); this process
stays outside as a *relay* (the ``process://<pid>`` of the container status) that forwards
SIGTERM & co. to it and exits the way it exits. Both ask for SIGKILL when their parent dies, so no
container outlives the kubelet (a process kubelet cannot re-adopt containers after a restart).

The child, in this order:

1. makes its mounts private, mounts a fresh ``/proc`` and sets the hostname to the pod hostname;
2. creates missing mount points (only empty directories, or empty files for file bind mounts, are
   ever created on the host file system) and the working directory;
3. bind-mounts the volumes (parents first), remounting ``readOnly`` ones read-only, and the
   per-container termination-log file at ``terminationMessagePath``;
4. remounts ``/`` read-only for ``readOnlyRootFilesystem`` (after the writable volume binds);
5. reduces the capability bounding set to the container's capabilities;
6. switches to the supplementary groups, gid and uid;
7. sets ``no_new_privs`` when ``allowPrivilegeEscalation: false``;
8. changes to the working directory and execs the command with exactly the given environment.

Any failure before the exec is written to the spec's ``errorFile`` and the container exits 128,
which the kubelet reports as ``StartError`` like a real runtime. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT = 128
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(
        _libc.mount(source.encode() if source else None, target.encode(), None, ctypes.c_ulong(flags), None),
        f"mount {source or ''} -> {target}",
    )


def _ensure_target(source_is_dir: bool, target: Path) -> None:
    if source_is_dir:
        target.mkdir(parents=True, exist_ok=True)
    elif not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def _open_source(source: str) -> int:
    """Hold a mount source open (O_PATH) so a later mount over its path cannot hide it.

    For example an emptyDir at ``/tmp`` when the kubelet's root is under ``/tmp``.
    """
    try:
        return os.open(source, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(f"mount source {source} does not exist") from None


def _bind(source_fd: int, target: str, read_only: bool) -> None:
    is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
    _ensure_target(is_dir, Path(target))
    _mount(f"/proc/self/fd/{source_fd}", target, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _blocked_ancestor(path: Path) -> Path | None:
    """Find the topmost ancestor of ``path`` that other users cannot traverse (e.g. ``/root``, 0700)."""
    for ancestor in reversed(path.parents):
        if ancestor != Path("/") and not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _hold_image_paths(paths: list[str]) -> list[tuple[Path, int, Path | None]]:
    """Open the "image" paths before any mount, so they can be put back if a volume hides them.

    Also notes, for each, the ancestor other users cannot traverse, if any (as seen before any mount).
    """
    held = []
    for raw in paths:
        path = Path(raw).resolve()
        if path.exists():
            held.append((path, _open_source(str(path)), _blocked_ancestor(path)))
    return held


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _expose_image_paths(held: list[tuple[Path, int, Path | None]]) -> None:
    """Make the "image" content (the host's Python runtime and the package) reachable in the container.

    The host file system stands in for the image's, which goes wrong in two ways a real image never
    does, both fixed in this container's mount namespace only:

    - the interpreter lives under a home directory other users cannot traverse (pyenv under
      ``/root``, 0700): that directory is covered by a read-only tmpfs into which just these paths
      are bind-mounted back (which also hides the rest of that home directory);
    - a volume mounted over a parent (an emptyDir at ``/tmp`` while the checkout is under ``/tmp``)
      hides them: they are bind-mounted back, read-only, on top of the volume.
    """
    blocked_groups: dict[Path, list[tuple[Path, int]]] = {}
    for path, fd, blocked in held:
        if blocked is not None:
            blocked_groups.setdefault(blocked, []).append((path, fd))
        elif not _same_file(path, fd):
            _bind(fd, str(path), True)
    for blocked, entries in blocked_groups.items():
        _check(
            _libc.mount(
                b"tmpfs", str(blocked).encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), b"mode=0755"
            ),
            f"mount tmpfs {blocked}",
        )
        for path, fd in entries:
            _bind(fd, str(path), True)
        _mount(None, str(blocked), MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for _path, fd, _blocked in held:
        os.close(fd)


def _find_executable(name: str, path_env: str) -> str:
    if "/" in name:
        return name
    for d in path_env.split(":"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OSError(f'exec: "{name}": executable file not found in $PATH')


def setup_and_exec(spec: dict[str, Any]) -> None:
    """Inside the new namespaces: set the container up as ``spec`` says and exec it (never returns)."""
    if spec.get("parentPid"):  # PID 1 of the namespace: its death takes every container process
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    _mount(None, "/", MS_REC | MS_PRIVATE)
    _check(
        _libc.mount(b"proc", b"/proc", b"proc", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC), None),
        "mount /proc",
    )
    if spec.get("hostname"):
        socket.sethostname(spec["hostname"])
    workdir = spec.get("workingDir") or "/"
    Path(workdir).mkdir(parents=True, exist_ok=True)
    image_paths = _hold_image_paths(list(spec.get("imagePaths", [])))
    mounts = list(spec.get("mounts", []))
    tlog = spec.get("terminationLog")
    if tlog:
        mounts.append({"source": tlog["source"], "target": tlog["target"], "readOnly": False})
    sources = [_open_source(m["source"]) for m in mounts]
    for m, fd in zip(mounts, sources, strict=True):
        _bind(fd, m["target"], bool(m.get("readOnly")))
    for fd in sources:
        os.close(fd)
    _expose_image_paths(image_paths)
    if spec.get("readOnlyRootFilesystem"):
        _mount(None, "/", MS_BIND | MS_REMOUNT | MS_RDONLY)
    keep = spec.get("capabilities")
    if keep is not None:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            if cap not in keep:
                _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    os.setgroups([int(g) for g in spec.get("groups", [])])
    os.setgid(int(spec.get("gid", 0)))
    os.setuid(int(spec.get("uid", 0)))
    if spec.get("parentPid"):  # changing credentials cleared it
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if spec.get("noNewPrivs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.chdir(workdir)
    env: dict[str, str] = spec["env"]
    argv: list[str] = spec["argv"]
    exe = _find_executable(argv[0], env.get("PATH", ""))
    os.execve(exe, argv, env)


def relay(child: int) -> None:
    """Outside the PID namespace: forward signals to the container's PID 1, exit as it exits."""
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    while True:
        try:
            _pid, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(START_ERROR_EXIT)
    if os.WIFSIGNALED(status):
        term_sig = os.WTERMSIG(status)
        signal.signal(term_sig, signal.SIG_DFL)
        os.kill(os.getpid(), term_sig)
        os._exit(128 + term_sig)
    os._exit(os.WEXITSTATUS(status))


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        if e.filename:
            return f"{e.strerror}: {e.filename}"
        if len(e.args) == 2 and isinstance(e.args[1], str):
            return e.args[1]
        return str(e.args[0]) if e.args else repr(e)
    return repr(e)


def main() -> None:
    """Entry point: ``containerinit.py <spec.json>``."""
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    # Opened while still root (the pod directory may not be reachable by the container user);
    # close-on-exec, so the container never sees it.
    error_fd = os.open(spec["errorFile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if spec.get("parentPid"):
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
            if os.getppid() != int(spec["parentPid"]):
                raise OSError("the kubelet exited before the container started")
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
        child = os.fork()
        if child == 0:
            setup_and_exec(spec)
        relay(child)
    except BaseException as e:  # report every failure as a start error
        os.write(error_fd, f"failed to start container process: {_describe(e)}".encode())
        os._exit(START_ERROR_EXIT)


if __name__ == "__main__":
    main()
