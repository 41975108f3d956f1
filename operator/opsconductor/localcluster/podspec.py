"""Pure translation of a pod spec into what the process kubelet runs.

Nothing here talks to the API server or starts a process: every function takes the pod (as the
JSON dict the API server returns), the objects it references and the kubelet's facts, and
returns plain values. This keeps the Kubernetes semantics that the process kubelet emulates
(image defaults, ``$(VAR)`` expansion, environment precedence, security context, sub-paths,
termination messages, pod phase) unit-testable without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import math
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import yaml
from kubernetes.utils import parse_quantity

JSON = dict[str, Any]

PYTHON_PLACEHOLDER = "{python}"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
HOSTNAME_MAX = 63


class ContainerConfigError(Exception):
    """The container cannot be configured (real kubelet: ``CreateContainerConfigError``)."""

    reason = "CreateContainerConfigError"


class CreateContainerError(Exception):
    """The runtime cannot create the container (real kubelet: ``CreateContainerError``)."""

    reason = "CreateContainerError"


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference, e.g. ``docker.io/library/busybox:1.36``."""

    repository: str
    tag: str | None = None
    digest: str | None = None


def normalize_image(ref: str) -> ImageRef:
    """Normalise an image reference the way Docker/containerd do.

    ``busybox`` -> ``docker.io/library/busybox`` (tag ``latest`` implied), ``ghcr.io/x/y:1@sha256:..``
    keeps its registry, tag and digest.

    Args:
        ref: The image reference as written in a pod spec.

    Returns:
        The normalised reference (tag is ``None`` when only a digest or nothing was given).
    """
    ref = ref.strip()
    digest: str | None = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag: str | None = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
    parts = ref.split("/")
    if len(parts) == 1 or not ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = ["docker.io", *parts]
    if parts[0] in ("index.docker.io", "registry-1.docker.io"):
        parts[0] = "docker.io"
    if parts[0] == "docker.io" and len(parts) == 2:
        parts = ["docker.io", "library", parts[1]]
    return ImageRef("/".join(parts).lower(), tag, digest)


@dataclass(frozen=True)
class ImageEntry:
    """What an image of the table would run (its config: entrypoint, cmd, user, workdir, env)."""

    repository: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str | None = None
    working_dir: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    tag: str | None = None

    def image_id(self) -> str:
        """Return a stable image ID (``<repository>@sha256:<digest of this entry>``)."""
        payload = json.dumps(
            [self.repository, self.tag, self.entrypoint, self.cmd, self.user, self.working_dir, self.env]
        )
        return f"{self.repository}@sha256:{hashlib.sha256(payload.encode()).hexdigest()}"


@dataclass(frozen=True)
class ImageTable:
    """The declared image -> local command table (``images.yaml``)."""

    entries: tuple[ImageEntry, ...]
    source: Path | None = None

    def resolve(self, image: str) -> ImageEntry | None:
        """Find the entry for an image reference (an entry with a tag only matches that tag).

        Args:
            image: The image as written in the pod spec.

        Returns:
            The matching entry or ``None`` (the image "cannot be pulled").
        """
        ref = normalize_image(image)
        fallback: ImageEntry | None = None
        for entry in self.entries:
            if entry.repository != ref.repository:
                continue
            if entry.tag is not None:
                if entry.tag == (ref.tag or "latest"):
                    return entry
            elif fallback is None:
                fallback = entry
        return fallback


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def parse_image_table(data: Any, source: Path | None = None) -> ImageTable:
    """Build an :class:`ImageTable` from the parsed YAML document.

    Args:
        data: The parsed document (``{"images": [...]}``).
        source: The file it came from (named in pull errors).

    Returns:
        The table.

    Raises:
        ValueError: The document is malformed.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError("image table must be a mapping with an 'images' list")
    entries: list[ImageEntry] = []
    for i, raw in enumerate(data["images"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("repository"), str):
            raise ValueError(f"images[{i}] needs a 'repository' string")
        ref = normalize_image(raw["repository"])
        user = raw.get("user")
        env_raw = raw.get("env") or {}
        if not isinstance(env_raw, dict):
            raise ValueError(f"images[{i}].env must be a mapping")
        entries.append(
            ImageEntry(
                repository=ref.repository,
                tag=str(raw["tag"]) if raw.get("tag") is not None else ref.tag,
                entrypoint=_str_tuple(raw.get("entrypoint"), f"images[{i}].entrypoint"),
                cmd=_str_tuple(raw.get("cmd"), f"images[{i}].cmd"),
                user=None if user is None else str(user),
                working_dir=str(raw.get("workingDir") or "/"),
                env=tuple((str(k), str(v)) for k, v in env_raw.items()),
            )
        )
    return ImageTable(tuple(entries), source)


def load_image_table(path: Path) -> ImageTable:
    """Load ``images.yaml``.

    Args:
        path: The table file.

    Returns:
        The table (its ``source`` is ``path``).
    """
    with open(path, encoding="utf-8") as f:
        return parse_image_table(yaml.safe_load(f), Path(path))


def image_pull_error(image: str, table: ImageTable) -> str:
    """Return the ErrImagePull message for an image missing from the table."""
    ref = normalize_image(image)
    return (
        f'Failed to pull image "{image}": image {ref.repository} is not in the process kubelet\'s '
        f"image table {table.source or '<in-memory>'}; add an entry for it"
    )


# --------------------------------------------------------------------------------------------
# $(VAR) expansion and commands
# --------------------------------------------------------------------------------------------


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references like Kubernetes (``$$`` escapes, unknown refs stay as is).

    Args:
        value: The string from the pod spec.
        env: The variables visible to the expansion.

    Returns:
        The expanded string.
    """
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = value[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = value.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = value[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def container_command(
    entry: ImageEntry, container: Mapping[str, Any], env: Mapping[str, str], python: str
) -> list[str]:
    """Compute argv with Docker semantics (command replaces ENTRYPOINT, args replace CMD).

    Args:
        entry: The image's entry from the table.
        container: The container spec.
        env: The container's final environment (for ``$(VAR)`` in command/args).
        python: What ``{python}`` in the table stands for.

    Returns:
        The argv.

    Raises:
        CreateContainerError: Nothing to run.
    """
    command = container.get("command")
    args = container.get("args")
    if command:
        entrypoint = [expand(a, env) for a in command]
        cmd = [expand(a, env) for a in args] if args else []
    else:
        entrypoint = [a.replace(PYTHON_PLACEHOLDER, python) for a in entry.entrypoint]
        cmd = (
            [expand(a, env) for a in args]
            if args
            else [a.replace(PYTHON_PLACEHOLDER, python) for a in entry.cmd]
        )
    argv = entrypoint + cmd
    if not argv:
        raise CreateContainerError("failed to generate container spec: no command specified")
    return argv


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def service_env(host: str, port: int) -> dict[str, str]:
    """Return the ``kubernetes`` service variables (pointing straight at the API server).

    Args:
        host: API server address.
        port: API server port.

    Returns:
        ``KUBERNETES_SERVICE_HOST`` and friends.
    """
    p = str(port)
    url = f"tcp://{host}:{p}"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": p,
        "KUBERNETES_SERVICE_PORT_HTTPS": p,
        "KUBERNETES_PORT": url,
        f"KUBERNETES_PORT_{p}_TCP": url,
        f"KUBERNETES_PORT_{p}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{p}_TCP_PORT": p,
        f"KUBERNETES_PORT_{p}_TCP_ADDR": host,
    }


_FIELD_REF_KEYED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def format_map(m: Mapping[str, str]) -> str:
    """Format labels/annotations like the downward API (``k="v"`` lines, sorted)."""
    return "\n".join(f"{k}={json.dumps(m[k], ensure_ascii=False)}" for k in sorted(m))


def resolve_field_ref(
    pod: Mapping[str, Any], field_path: str, pod_ip: str, host_ip: str, *, whole_maps: bool = False
) -> str:
    """Resolve a downward-API ``fieldRef``.

    Args:
        pod: The pod.
        field_path: E.g. ``metadata.name`` or ``metadata.labels['app']``.
        pod_ip: The pod IP the kubelet assigns.
        host_ip: The node IP.
        whole_maps: Allow ``metadata.labels``/``metadata.annotations`` (volumes only).

    Returns:
        The value.

    Raises:
        ContainerConfigError: Unsupported field path.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    m = _FIELD_REF_KEYED.match(field_path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return str(simple[field_path])
    if whole_maps and field_path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(field_path.split(".")[1]) or {})
    raise ContainerConfigError(f'unsupported fieldRef fieldPath "{field_path}"')


def resolve_resource_ref(
    pod: Mapping[str, Any],
    container_name: str,
    resource: str,
    divisor: str | None,
    node_allocatable: Mapping[str, str],
) -> str:
    """Resolve a ``resourceFieldRef`` (limits default to node allocatable, as the kubelet does).

    Args:
        pod: The pod.
        container_name: The container whose resources are read.
        resource: E.g. ``limits.memory``.
        divisor: The divisor quantity (default ``1``).
        node_allocatable: Node allocatable, used for unset limits.

    Returns:
        The value as a decimal integer string (rounded up).

    Raises:
        ContainerConfigError: Unknown container or resource.
    """
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    found = [c for c in containers if c.get("name") == container_name]
    if not found:
        raise ContainerConfigError(f"container {container_name} not found in pod")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise ContainerConfigError(f"unsupported resourceFieldRef resource {resource}")
    resources = found[0].get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(name)
    if raw is None:
        raw = node_allocatable.get(name, "0") if kind == "limits" else "0"
    value = quantity(str(raw))
    div = quantity(str(divisor or "1"))
    if div == 0:
        raise ContainerConfigError(f"invalid divisor for {resource}")
    if name == "cpu":  # as the kubelet: compare milli-values, round up
        milli = (value * 1000).to_integral_value(rounding=ROUND_CEILING)
        div_milli = (div * 1000).to_integral_value(rounding=ROUND_CEILING)
        return str(math.ceil(milli / div_milli))
    return str(math.ceil(value.to_integral_value(rounding=ROUND_CEILING) / div))


def quantity(value: str) -> Decimal:
    """Parse a Kubernetes quantity (``500m``, ``64Gi``, ``1e3``)."""
    return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def env_references(container: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Return the (secret names, configmap names) a container's env/envFrom reference."""
    secrets: set[str] = set()
    cms: set[str] = set()
    for e in container.get("env") or []:
        vf = e.get("valueFrom") or {}
        if vf.get("secretKeyRef"):
            secrets.add(vf["secretKeyRef"].get("name", ""))
        if vf.get("configMapKeyRef"):
            cms.add(vf["configMapKeyRef"].get("name", ""))
    for ef in container.get("envFrom") or []:
        if ef.get("secretRef"):
            secrets.add(ef["secretRef"].get("name", ""))
        if ef.get("configMapRef"):
            cms.add(ef["configMapRef"].get("name", ""))
    return secrets, cms


def _valid_env_name(name: str) -> bool:
    return bool(name) and "=" not in name and all(" " <= ch <= "~" for ch in name)


@dataclass(frozen=True)
class EnvContext:
    """The facts env resolution needs besides the pod and container."""

    secrets: Mapping[str, Mapping[str, bytes] | None]
    config_maps: Mapping[str, Mapping[str, bytes] | None]
    service_env: Mapping[str, str]
    node_allocatable: Mapping[str, str]
    pod_ip: str = "127.0.0.1"
    host_ip: str = "127.0.0.1"


def build_env(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: EnvContext) -> dict[str, str]:
    """Build the Kubernetes-provided environment of a container (as the kubelet's makeEnvironmentVariables).

    Order of precedence: ``env`` over ``envFrom`` over the service variables.

    Args:
        pod: The pod.
        container: The container spec.
        ctx: Referenced objects (``None`` = not found) and node facts.

    Returns:
        The variables, in declaration order.

    Raises:
        ContainerConfigError: A non-optional reference is missing (as the real kubelet).
    """
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    result: dict[str, str] = {}
    for ef in container.get("envFrom") or []:
        prefix = ef.get("prefix") or ""
        for ref_key, kind, store in (
            ("configMapRef", "configmap", ctx.config_maps),
            ("secretRef", "secret", ctx.secrets),
        ):
            ref = ef.get(ref_key)
            if not ref:
                continue
            data = store.get(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind} "{ref.get("name", "")}" not found')
            for k, v in data.items():
                if _valid_env_name(prefix + k):
                    result[prefix + k] = _decode(v)
    mapping_env: dict[str, str] = {**ctx.service_env, **result}
    for e in container.get("env") or []:
        name = e["name"]
        vf = e.get("valueFrom")
        if not vf:
            value = expand(e.get("value") or "", mapping_env)
        elif vf.get("fieldRef"):
            value = resolve_field_ref(pod, vf["fieldRef"].get("fieldPath", ""), ctx.pod_ip, ctx.host_ip)
        elif vf.get("resourceFieldRef"):
            rf = vf["resourceFieldRef"]
            value = resolve_resource_ref(
                pod,
                rf.get("containerName") or container["name"],
                rf.get("resource", ""),
                rf.get("divisor"),
                ctx.node_allocatable,
            )
        elif vf.get("secretKeyRef") or vf.get("configMapKeyRef"):
            is_secret = bool(vf.get("secretKeyRef"))
            ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
            store = ctx.secrets if is_secret else ctx.config_maps
            kind_lc, kind = ("secret", "Secret") if is_secret else ("configmap", "ConfigMap")
            obj_name, key = ref.get("name", ""), ref.get("key", "")
            data = store.get(obj_name)
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind_lc} "{obj_name}" not found')
            if key not in data:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f"couldn't find key {key} in {kind} {namespace}/{obj_name}")
            value = _decode(data[key])
        else:
            raise ContainerConfigError(f"unsupported valueFrom for env {name}")
        result[name] = value
        mapping_env[name] = value
    for svc_name, svc_value in ctx.service_env.items():
        result.setdefault(svc_name, svc_value)
    return result


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """Return the pod's hostname (``spec.hostname`` or its name, truncated to 63 chars)."""
    name = str((pod.get("spec") or {}).get("hostname") or (pod.get("metadata") or {}).get("name", ""))
    if len(name) > HOSTNAME_MAX:
        name = name[:HOSTNAME_MAX].rstrip("-.")
    return name


def final_environment(
    kube_env: Mapping[str, str],
    entry: ImageEntry,
    hostname: str,
    host_env: Mapping[str, str],
    home: str,
) -> dict[str, str]:
    """Merge what a container runtime gives a process: runtime + image defaults, then pod env.

    Only ``PATH`` (and ``LANG`` if set) come from the host: the host file system is the image.

    Args:
        kube_env: From :func:`build_env`.
        entry: The image entry (its ``env`` is the image's ``ENV``).
        hostname: The pod hostname (``HOSTNAME``).
        host_env: The kubelet's environment (only PATH/LANG are read).
        home: ``HOME`` if nothing sets it.

    Returns:
        The process environment.
    """
    env: dict[str, str] = {"PATH": host_env.get("PATH") or DEFAULT_PATH}
    if host_env.get("LANG"):
        env["LANG"] = host_env["LANG"]
    env["HOSTNAME"] = hostname
    env.update(dict(entry.env))
    env.update(kube_env)
    env.setdefault("HOME", home)
    return env


# --------------------------------------------------------------------------------------------
# Security context
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The uid/gid/supplementary groups a container process runs with."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


def _lookup_user(name: str) -> tuple[int, int, str] | None:
    try:
        pw = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid, pw.pw_dir


def effective_security(pod: Mapping[str, Any], container: Mapping[str, Any]) -> JSON:
    """Merge the pod and container security contexts (the container's fields win)."""
    psc = dict((pod.get("spec") or {}).get("securityContext") or {})
    csc = container.get("securityContext") or {}
    merged = {k: psc[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot") if k in psc}
    merged.update(csc)
    return merged


def resolve_identity(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    entry: ImageEntry,
    lookup: Callable[[str], tuple[int, int, str] | None] = _lookup_user,
) -> Identity:
    """Work out the process identity and enforce ``runAsNonRoot`` like the kubelet.

    Args:
        pod: The pod.
        container: The container spec.
        entry: The image entry (its ``user`` is the image's ``USER``).
        lookup: ``/etc/passwd`` look-up of the "image" (the host): name or uid -> (uid, gid, home).

    Returns:
        The identity.

    Raises:
        ContainerConfigError: ``runAsNonRoot`` would be violated, or the image user is unknown.
    """
    meta = pod.get("metadata") or {}
    pod_ref = f"{meta.get('name', '')}_{meta.get('namespace', '')}({meta.get('uid', '')})"
    cname = container.get("name", "")
    sc = effective_security(pod, container)
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    image_uid: int | None = None
    image_gid: int | None = None
    home = "/"
    image_user_name: str | None = None
    if entry.user:
        user_part, _, group_part = entry.user.partition(":")
        if user_part.isdigit():
            image_uid = int(user_part)
            found = lookup(user_part)
            if found:
                image_gid, home = found[1], found[2]
        else:
            image_user_name = user_part
            found = lookup(user_part)
            if found:
                image_uid, image_gid, home = found
        if group_part.isdigit():
            image_gid = int(group_part)
    uid = sc.get("runAsUser")
    if sc.get("runAsNonRoot"):
        if uid is not None:
            if int(uid) == 0:
                raise ContainerConfigError(
                    f'container\'s runAsUser breaks non-root policy (pod: "{pod_ref}", container: {cname})'
                )
        elif image_user_name is not None:
            raise ContainerConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({image_user_name}), "
                f'cannot verify user is non-root (pod: "{pod_ref}", container: {cname})'
            )
        elif not image_uid:
            raise ContainerConfigError(
                "container has runAsNonRoot and image will run as root "
                f'(pod: "{pod_ref}", container: {cname})'
            )
    if uid is None:
        if image_user_name is not None and image_uid is None:
            raise CreateContainerError(
                f"unable to find user {image_user_name}: no matching entries in passwd"
            )
        uid = image_uid or 0
    elif sc.get("runAsUser") is not None:
        found = lookup(str(uid))
        home = found[2] if found else "/"
    gid = sc.get("runAsGroup")
    if gid is None:
        gid = image_gid if image_gid is not None else 0
    groups: list[int] = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None:
        groups.append(int(psc["fsGroup"]))
    return Identity(int(uid), int(gid), tuple(dict.fromkeys(groups)), home)


# --------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A bind mount: ``source`` on the host to ``target`` in the container."""

    source: str
    target: str
    read_only: bool = False


def _safe_join(base: Path, sub: str) -> Path:
    if sub.startswith("/") or ".." in Path(sub).parts:
        raise CreateContainerError(f"subPath {sub!r} must be a relative path without '..'")
    return base / sub


def container_mounts(
    container: Mapping[str, Any], volume_paths: Mapping[str, Path], env: Mapping[str, str]
) -> list[Mount]:
    """Translate ``volumeMounts`` into bind mounts (``subPath``/``subPathExpr`` applied).

    Args:
        container: The container spec.
        volume_paths: Volume name -> its materialised directory (or host path).
        env: The container environment (for ``subPathExpr``).

    Returns:
        Mounts sorted so that parents are mounted before children.

    Raises:
        CreateContainerError: A mount names an unknown volume or a bad sub-path.
    """
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        name = vm.get("name", "")
        if name not in volume_paths:
            raise CreateContainerError(
                f"cannot find volume {name!r} to mount into container {container['name']!r}"
            )
        source = Path(volume_paths[name])
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand(vm["subPathExpr"], env)
        if sub:
            source = _safe_join(source, sub)
        mounts.append(Mount(str(source), vm["mountPath"], bool(vm.get("readOnly"))))
    mounts.sort(key=lambda m: len(Path(m.target).parts))
    return mounts


# --------------------------------------------------------------------------------------------
# Termination message
# --------------------------------------------------------------------------------------------


def tail_bytes(
    data: bytes, max_lines: int = FALLBACK_LOG_LINES, max_bytes: int = FALLBACK_LOG_BYTES
) -> bytes:
    """Return the last ``max_lines`` lines of ``data``, at most ``max_bytes`` bytes."""
    lines = data.splitlines(keepends=True)[-max_lines:]
    return b"".join(lines)[-max_bytes:]


def termination_message(
    file_content: bytes, log_tail: bytes | None, policy: str | None, exit_code: int
) -> str:
    """Compute ``state.terminated.message`` like the kubelet.

    Args:
        file_content: The termination-log file (already capped or not).
        log_tail: The tail of the container log (for ``FallbackToLogsOnError``).
        policy: ``terminationMessagePolicy``.
        exit_code: The container's exit code.

    Returns:
        The message (may be empty).
    """
    msg = file_content[:MAX_TERMINATION_MESSAGE_BYTES]
    if not msg and policy == "FallbackToLogsOnError" and exit_code != 0 and log_tail:
        msg = tail_bytes(log_tail)
    return msg.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# Pod phase
# --------------------------------------------------------------------------------------------


@dataclass
class ContainerView:
    """The facts about one container that pod phase and conditions depend on."""

    name: str
    state: str  # "waiting" | "running" | "terminated"
    exit_code: int | None = None
    has_last_termination: bool = False
    ready: bool = False


def pod_phase(
    restart_policy: str, init: Sequence[ContainerView], app: Sequence[ContainerView], init_done: bool
) -> str:
    """Compute the pod phase as the kubelet's getPhase does.

    Args:
        restart_policy: ``Always`` / ``OnFailure`` / ``Never``.
        init: Regular init container views.
        app: App container views.
        init_done: All init containers completed.

    Returns:
        ``Pending``, ``Running``, ``Succeeded`` or ``Failed``.
    """
    if not init_done:
        failed_init = any(c.state == "terminated" and c.exit_code not in (0, None) for c in init)
        if failed_init and restart_policy == "Never":
            return "Failed"
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for c in app:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            if c.exit_code == 0:
                succeeded += 1
        elif c.has_last_termination:
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


@dataclass
class Condition:
    """A pod condition (the kubelet-owned ones)."""

    type: str
    status: bool
    reason: str | None = None
    message: str | None = None
    extra: JSON = field(default_factory=dict)


def pod_conditions(
    phase: str,
    sandbox_ready: bool,
    init: Sequence[ContainerView],
    init_done: bool,
    app: Sequence[ContainerView],
) -> list[Condition]:
    """Compute PodReadyToStartContainers, Initialized, ContainersReady and Ready.

    Args:
        phase: The pod phase.
        sandbox_ready: Volumes are set up (the emulated sandbox exists).
        init: Regular init container views.
        init_done: All init containers completed.
        app: App container views.

    Returns:
        The conditions (status as bool).
    """
    conds = [Condition("PodReadyToStartContainers", sandbox_ready and phase not in ("Succeeded", "Failed"))]
    if init_done:
        conds.append(Condition("Initialized", True))
    else:
        pending = [c.name for c in init if not (c.state == "terminated" and c.exit_code == 0)]
        conds.append(
            Condition(
                "Initialized",
                False,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending)}]",
            )
        )
    unready = [c.name for c in app if not c.ready]
    if phase == "Succeeded":
        ready = Condition("ContainersReady", False, "PodCompleted")
    elif unready:
        ready = Condition(
            "ContainersReady",
            False,
            "ContainersNotReady",
            f"containers with unready status: [{' '.join(unready)}]",
        )
    else:
        ready = Condition("ContainersReady", True)
    conds.append(ready)
    conds.append(Condition("Ready", ready.status, ready.reason, ready.message))
    return conds


# --------------------------------------------------------------------------------------------
# Capabilities
# --------------------------------------------------------------------------------------------

CAPABILITY_NAMES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
# containerd's default set for unprivileged containers.
DEFAULT_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
]


def container_capabilities(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[int] | None:
    """Return the capability bounding set (numbers) of a container, ``None`` for privileged.

    The runtime's default set, then (as containerd) ``drop: [ALL]`` empties it, ``add`` adds and the
    named ``drop`` entries remove.

    Args:
        pod: The pod.
        container: The container spec.

    Returns:
        Sorted capability numbers, or ``None`` to keep all (``privileged: true``).
    """
    sc = effective_security(pod, container)
    if sc.get("privileged"):
        return None
    caps = sc.get("capabilities") or {}

    def names(values: Any) -> set[str]:
        return {str(v).upper().removeprefix("CAP_") for v in values or []}

    added, dropped = names(caps.get("add")), names(caps.get("drop"))
    keep = set(CAPABILITY_NAMES) if "ALL" in added else set(DEFAULT_CAPABILITIES)
    if "ALL" in dropped:  # containerd: drop ALL first, then add, then drop the named ones
        keep = set()
    keep = (keep | (added - {"ALL"})) - (dropped - {"ALL"})
    return sorted(CAPABILITY_NAMES.index(n) for n in keep if n in CAPABILITY_NAMES)
