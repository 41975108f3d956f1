"""Volume contents for the process kubelet: pure layouts plus the kubelet's atomic writer.

``secret``, ``configMap``, ``downwardAPI`` and ``projected`` volumes are computed as a mapping
``relative path -> (bytes, mode)`` by pure functions, then written with :func:`write_atomic` the way
the kubelet's AtomicWriter does (a timestamped ``..<ts>`` directory, an atomically swapped
``..data`` symlink and one top-level symlink per entry), so updates (e.g. a refreshed service
account token) appear at once inside containers that bind-mounted the volume directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsconductor.localcluster.podspec import ContainerConfigError, resolve_field_ref, resolve_resource_ref

DEFAULT_MODE = 0o644
DATA_DIR = "..data"


class VolumeError(Exception):
    """A volume cannot be set up (real kubelet: ``FailedMount`` event, pod stays ContainerCreating)."""


@dataclass(frozen=True)
class VolumeFile:
    """One file of a volume."""

    data: bytes
    mode: int = DEFAULT_MODE


Files = dict[str, VolumeFile]


def _check_path(path: str) -> str:
    if not path or path.startswith("/") or ".." in Path(path).parts:
        raise VolumeError(f"invalid volume file path {path!r}")
    return path


def key_to_files(
    data: Mapping[str, bytes] | None,
    items: list[Any] | None,
    default_mode: int | None,
    optional: bool,
    kind: str,
    name: str,
) -> Files:
    """Lay out a Secret/ConfigMap as files (``items`` select keys and paths, ``mode`` overrides).

    Args:
        data: The object's data (``None`` = not found).
        items: ``items`` of the volume source.
        default_mode: ``defaultMode`` (0644 if unset).
        optional: ``optional`` of the source.
        kind: ``secret`` or ``configmap``.
        name: The object name.

    Returns:
        The files.

    Raises:
        VolumeError: Not found or a referenced key is missing, and not optional.
    """
    mode = DEFAULT_MODE if default_mode is None else int(default_mode)
    if data is None:
        if optional:
            return {}
        raise VolumeError(f'{kind} "{name}" not found')
    files: Files = {}
    if not items:
        for key, value in data.items():
            files[_check_path(key)] = VolumeFile(value, mode)
        return files
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if optional:
                continue
            what = "config key" if kind == "configmap" else "secret key"
            raise VolumeError(f"{kind} references non-existent {what}: {key}")
        item_mode = item.get("mode")
        files[_check_path(item.get("path") or key)] = VolumeFile(
            data[key], mode if item_mode is None else int(item_mode)
        )
    return files


def downward_api_files(
    items: list[Any] | None,
    default_mode: int | None,
    pod: Mapping[str, Any],
    node_allocatable: Mapping[str, str],
    pod_ip: str = "127.0.0.1",
    host_ip: str = "127.0.0.1",
) -> Files:
    """Lay out a downward API volume (or projected source).

    Args:
        items: The ``items``.
        default_mode: ``defaultMode``.
        pod: The pod.
        node_allocatable: For unset limits in ``resourceFieldRef``.
        pod_ip: Pod IP.
        host_ip: Node IP.

    Returns:
        The files.

    Raises:
        VolumeError: An unsupported field.
    """
    mode = DEFAULT_MODE if default_mode is None else int(default_mode)
    files: Files = {}
    for item in items or []:
        try:
            if item.get("fieldRef"):
                value = resolve_field_ref(
                    pod, item["fieldRef"].get("fieldPath", ""), pod_ip, host_ip, whole_maps=True
                )
            elif item.get("resourceFieldRef"):
                rf = item["resourceFieldRef"]
                value = resolve_resource_ref(
                    pod,
                    rf.get("containerName", ""),
                    rf.get("resource", ""),
                    rf.get("divisor"),
                    node_allocatable,
                )
            else:
                raise VolumeError(f"downward API item {item.get('path')!r} has no fieldRef/resourceFieldRef")
        except ContainerConfigError as e:
            raise VolumeError(str(e)) from e
        item_mode = item.get("mode")
        files[_check_path(item.get("path", ""))] = VolumeFile(
            value.encode(), mode if item_mode is None else int(item_mode)
        )
    return files


TokenFetcher = Callable[[str, int], str]
"""(audience, expirationSeconds) -> token bound to the pod."""


@dataclass(frozen=True)
class VolumeInputs:
    """Objects a pod's volumes reference, fetched by the kubelet (``None`` = not found)."""

    secrets: Mapping[str, Mapping[str, bytes] | None]
    config_maps: Mapping[str, Mapping[str, bytes] | None]
    node_allocatable: Mapping[str, str]
    token: TokenFetcher


def volume_references(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Return the (secret names, configmap names) the pod's volumes reference."""
    secrets: set[str] = set()
    cms: set[str] = set()
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        if vol.get("secret"):
            secrets.add(vol["secret"].get("secretName", ""))
        if vol.get("configMap"):
            cms.add(vol["configMap"].get("name", ""))
        for src in (vol.get("projected") or {}).get("sources") or []:
            if src.get("secret"):
                secrets.add(src["secret"].get("name", ""))
            if src.get("configMap"):
                cms.add(src["configMap"].get("name", ""))
    return secrets, cms


def is_atomic_volume(volume: Mapping[str, Any]) -> bool:
    """Return whether the volume is written by the atomic writer (secret/configMap/downwardAPI/projected)."""
    return any(volume.get(k) for k in ("secret", "configMap", "downwardAPI", "projected"))


def volume_files(volume: Mapping[str, Any], pod: Mapping[str, Any], inputs: VolumeInputs) -> Files:
    """Compute the files of an atomic-writer volume.

    Args:
        volume: The pod volume.
        pod: The pod.
        inputs: Referenced objects and the token fetcher.

    Returns:
        The files.

    Raises:
        VolumeError: The volume cannot be set up.
    """
    if volume.get("secret"):
        s = volume["secret"]
        name = s.get("secretName", "")
        return key_to_files(
            inputs.secrets.get(name),
            s.get("items"),
            s.get("defaultMode"),
            bool(s.get("optional")),
            "secret",
            name,
        )
    if volume.get("configMap"):
        c = volume["configMap"]
        name = c.get("name", "")
        return key_to_files(
            inputs.config_maps.get(name),
            c.get("items"),
            c.get("defaultMode"),
            bool(c.get("optional")),
            "configmap",
            name,
        )
    if volume.get("downwardAPI"):
        d = volume["downwardAPI"]
        return downward_api_files(d.get("items"), d.get("defaultMode"), pod, inputs.node_allocatable)
    if volume.get("projected"):
        p = volume["projected"]
        mode = p.get("defaultMode")
        files: Files = {}
        for src in p.get("sources") or []:
            if src.get("secret"):
                s = src["secret"]
                name = s.get("name", "")
                files.update(
                    key_to_files(
                        inputs.secrets.get(name),
                        s.get("items"),
                        mode,
                        bool(s.get("optional")),
                        "secret",
                        name,
                    )
                )
            elif src.get("configMap"):
                c = src["configMap"]
                name = c.get("name", "")
                files.update(
                    key_to_files(
                        inputs.config_maps.get(name),
                        c.get("items"),
                        mode,
                        bool(c.get("optional")),
                        "configmap",
                        name,
                    )
                )
            elif src.get("downwardAPI"):
                files.update(
                    downward_api_files(src["downwardAPI"].get("items"), mode, pod, inputs.node_allocatable)
                )
            elif src.get("serviceAccountToken"):
                t = src["serviceAccountToken"]
                token = inputs.token(t.get("audience") or "", int(t.get("expirationSeconds") or 3600))
                files[_check_path(t.get("path", ""))] = VolumeFile(
                    token.encode(), DEFAULT_MODE if mode is None else int(mode)
                )
            else:
                raise VolumeError(f"unsupported projected volume source {sorted(src)}")
        return files
    raise VolumeError(f"volume {volume.get('name')!r} is not an atomic-writer volume")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def read_current(target: Path) -> Files | None:
    """Read what ``..data`` of an atomic-writer volume currently holds (``None`` if never written)."""
    data_dir = target / DATA_DIR
    if not data_dir.is_symlink():
        return None
    base = data_dir.resolve()
    files: Files = {}
    for root, _dirs, names in os.walk(base):
        for n in names:
            p = Path(root) / n
            files[str(p.relative_to(base))] = VolumeFile(p.read_bytes(), p.stat().st_mode & 0o7777)
    return files


def _owned_mode(mode: int, fs_group: int | None) -> int:
    return mode | 0o440 if fs_group is not None else mode


def write_atomic(target: Path, files: Mapping[str, VolumeFile], fs_group: int | None = None) -> bool:
    """Write a volume like the kubelet's AtomicWriter.

    Args:
        target: The volume directory.
        files: Relative path -> content.
        fs_group: ``fsGroup``: files get that group and group-read (as SetVolumeOwnership).

    Returns:
        Whether anything changed.
    """
    target.mkdir(parents=True, exist_ok=True)
    wanted = {k: VolumeFile(v.data, _owned_mode(v.mode, fs_group)) for k, v in files.items()}
    current = read_current(target)
    if current == wanted:
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    os.chmod(new_dir, 0o755)
    for rel, vf in wanted.items():
        path = new_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(vf.data)
        os.chmod(path, vf.mode)
    if fs_group is not None:
        for root, dirs, names in os.walk(new_dir):
            for n in [*dirs, *names]:
                os.chown(Path(root) / n, -1, fs_group)
            os.chown(root, -1, fs_group)
    old = (target / DATA_DIR).resolve() if (target / DATA_DIR).is_symlink() else None
    tmp_link = target / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(new_dir.name, tmp_link)
    os.rename(tmp_link, target / DATA_DIR)
    tops = {Path(rel).parts[0] for rel in wanted}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            os.symlink(f"{DATA_DIR}/{top}", link)
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.is_symlink() and entry.name not in tops:
            entry.unlink()
    if old is not None and old != new_dir and old.parent == target:
        shutil.rmtree(old, ignore_errors=True)
    return True


def make_empty_dir(target: Path, fs_group: int | None = None) -> None:
    """Create an ``emptyDir`` (mode 0777, like the kubelet; setgid + group with ``fsGroup``)."""
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o777)
    if fs_group is not None:
        os.chown(target, -1, fs_group)
        os.chmod(target, 0o2777)


def host_path(source: Mapping[str, Any]) -> Path:
    """Check/create a ``hostPath`` volume according to its ``type``.

    Args:
        source: The ``hostPath`` source.

    Returns:
        The host path.

    Raises:
        VolumeError: The type check fails.
    """
    path = Path(source.get("path", ""))
    kind = source.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    elif kind == "Directory" and not path.is_dir():
        raise VolumeError(f"hostPath type check failed: {path} is not a directory")
    elif kind == "File" and not path.is_file():
        raise VolumeError(f"hostPath type check failed: {path} is not a file")
    elif kind == "Socket" and not path.is_socket():
        raise VolumeError(f"hostPath type check failed: {path} is not a socket")
    return path
