"""The process kubelet's translation of pod specs, without a cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsconductor.localcluster import podspec, volumes
from opsconductor.localcluster.kubelet import (
    INIT_SCRIPT,
    container_log_path,
    process_tree,
    scan_processes,
    signal_tree,
)
from opsconductor.localcluster.podspec import (
    ContainerConfigError,
    ContainerView,
    CreateContainerError,
    EnvContext,
    ImageEntry,
    build_env,
    container_command,
    expand,
    normalize_image,
    pod_phase,
    resolve_identity,
)

IMAGES_YAML = Path(podspec.__file__).with_name("images.yaml")


def make_pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-1",
            "namespace": "ops",
            "uid": "1234-uid",
            "labels": {"app": "web", "tier": "a b"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {"nodeName": "node-a", "serviceAccountName": "runner", "containers": [], **spec},
    }


def ctx(**kw: Any) -> EnvContext:
    base: dict[str, Any] = {
        "secrets": {},
        "config_maps": {},
        "service_env": podspec.service_env("127.0.0.1", 6443),
        "node_allocatable": {"cpu": "32", "memory": "64Gi"},
    }
    base.update(kw)
    return EnvContext(**base)


# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "repo", "tag", "digest"),
    [
        ("busybox", "docker.io/library/busybox", None, None),
        ("busybox:1.36", "docker.io/library/busybox", "1.36", None),
        ("library/busybox", "docker.io/library/busybox", None, None),
        ("docker.io/busybox", "docker.io/library/busybox", None, None),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox", "1", None),
        ("bitnami/kubectl", "docker.io/bitnami/kubectl", None, None),
        ("ghcr.io/opsconductor/runner:0.1.0", "ghcr.io/opsconductor/runner", "0.1.0", None),
        ("ghcr.io/opsconductor/runner@sha256:abc", "ghcr.io/opsconductor/runner", None, "sha256:abc"),
        ("localhost:5000/x/y:2@sha256:d", "localhost:5000/x/y", "2", "sha256:d"),
        ("localhost/x", "localhost/x", None, None),
    ],
)
def test_normalize_image(ref: str, repo: str, tag: str | None, digest: str | None) -> None:
    assert normalize_image(ref) == podspec.ImageRef(repo, tag, digest)


def test_shipped_image_table_resolves_runner_and_busybox() -> None:
    table = podspec.load_image_table(IMAGES_YAML)
    runner = table.resolve("ghcr.io/opsconductor/runner:0.1.0")
    assert runner is not None
    assert runner.entrypoint == ("{python}", "-m", "opsconductor.runner")
    assert runner.user == "65532:65532"
    busybox = table.resolve("busybox:1.36")
    assert busybox is not None and busybox.cmd == ("sh",)
    assert table.resolve("docker.io/library/busybox@sha256:00") is busybox
    assert table.resolve("nginx") is None
    assert "nginx" in podspec.image_pull_error("nginx", table)
    assert str(IMAGES_YAML) in podspec.image_pull_error("nginx", table)


def test_table_entries_with_a_tag_match_only_that_tag() -> None:
    table = podspec.parse_image_table(
        {"images": [{"repository": "x/y", "tag": "2", "cmd": ["two"]}, {"repository": "x/y", "cmd": ["any"]}]}
    )
    assert table.resolve("x/y:2") is not None and table.resolve("x/y:2").cmd == ("two",)  # type: ignore[union-attr]
    assert table.resolve("x/y:3").cmd == ("any",)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        podspec.parse_image_table({"images": [{"entrypoint": []}]})


# -- $(VAR) and commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)", "a"),
        ("x-$(A)-$(B)", "x-a-b"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$a"),
        ("$$", "$"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("tail$", "tail$"),
        ("", ""),
    ],
)
def test_expand_like_kubernetes(value: str, expected: str) -> None:
    assert expand(value, {"A": "a", "B": "b"}) == expected


def test_command_and_args_follow_docker_semantics() -> None:
    entry = ImageEntry("r", entrypoint=("{python}", "-m", "mod"), cmd=("--default",))
    env = {"X": "1"}
    assert container_command(entry, {}, env, "/py") == ["/py", "-m", "mod", "--default"]
    assert container_command(entry, {"args": ["--x=$(X)"]}, env, "/py") == ["/py", "-m", "mod", "--x=1"]
    assert container_command(entry, {"command": ["sh", "-c", "echo $(X)"]}, env, "/py") == [
        "sh",
        "-c",
        "echo 1",
    ]
    assert container_command(entry, {"command": ["sh"], "args": ["-c", "$$(X)"]}, env, "/py") == [
        "sh",
        "-c",
        "$(X)",
    ]
    with pytest.raises(CreateContainerError):
        container_command(ImageEntry("r"), {}, env, "/py")


# -- environment ------------------------------------------------------------------------------


def test_env_sources_precedence_and_expansion() -> None:
    pod = make_pod()
    container = {
        "name": "main",
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}},
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "sec"}},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            {
                "name": "CPU_LIM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
            },
            {"name": "GREETING", "value": "hi $(POD) in $(NS) via $(KUBERNETES_SERVICE_HOST) $(NOPE)"},
            {"name": "USER", "value": "overrides envFrom"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nokey", "optional": True}}},
        ],
    }
    pod["spec"]["containers"] = [container]
    env = build_env(
        pod,
        container,
        ctx(
            secrets={"sec": {"password": b"s3cret", "USER": b"from-secret", "bad=name": b"x"}},
            config_maps={"cm": {"mode": b"fast", "level": b"3"}},
        ),
    )
    assert env["PASSWORD"] == "s3cret"
    assert env["MODE"] == "fast"
    assert env["CM_level"] == "3" and env["CM_mode"] == "fast"
    assert env["USER"] == "overrides envFrom"
    assert "bad=name" not in env
    assert (env["POD"], env["NS"], env["APP"], env["NODE"], env["SA"], env["IP"]) == (
        "web-1",
        "ops",
        "web",
        "node-a",
        "runner",
        "127.0.0.1",
    )
    assert env["MEM_MI"] == "256"
    assert env["CPU_REQ"] == "1"  # 250m rounded up to whole cores
    assert env["CPU_LIM"] == "32000"  # no limit: node allocatable
    assert env["GREETING"] == "hi web-1 in ops via 127.0.0.1 $(NOPE)"
    assert "OPT" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["KUBERNETES_PORT"] == "tcp://127.0.0.1:6443"
    assert env["KUBERNETES_PORT_6443_TCP_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}],
            'secret "gone" not found',
        ),
        (
            [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nope"}}}],
            "couldn't find key nope in Secret ops/sec",
        ),
        (
            [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}}],
            "couldn't find key nope in ConfigMap ops/cm",
        ),
        (
            [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}}],
            'configmap "x" not found',
        ),
    ],
)
def test_missing_references_are_config_errors(env: list[Any], message: str) -> None:
    with pytest.raises(ContainerConfigError) as err:
        build_env(
            make_pod(),
            {"name": "c", "env": env},
            ctx(secrets={"sec": {}, "gone": None}, config_maps={"cm": {}}),
        )
    assert str(err.value) == message
    assert err.value.reason == "CreateContainerConfigError"


def test_envfrom_missing_non_optional_is_an_error() -> None:
    with pytest.raises(ContainerConfigError, match='configmap "cm" not found'):
        build_env(make_pod(), {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}]}, ctx())


def test_final_environment_leaks_only_path_and_lang() -> None:
    host = {
        "PATH": "/host/bin",
        "LANG": "C.UTF-8",
        "SECRET_OF_KUBELET": "x",
        "PYTHONPATH": "/x",
        "HOME": "/root",
    }
    entry = ImageEntry("r", env=(("IMAGE_VAR", "1"), ("PATH", "/image/bin")))
    env = podspec.final_environment({"A": "b", "IMAGE_VAR": "2"}, entry, "web-1", host, "/home/x")
    assert env == {
        "PATH": "/image/bin",
        "LANG": "C.UTF-8",
        "HOSTNAME": "web-1",
        "IMAGE_VAR": "2",
        "A": "b",
        "HOME": "/home/x",
    }
    assert (
        podspec.final_environment({}, ImageEntry("r"), "h", {"PATH": "/host/bin"}, "/")["PATH"] == "/host/bin"
    )


def test_hostname_is_truncated_to_63() -> None:
    pod = make_pod()
    pod["metadata"]["name"] = "a" * 62 + "-b" + "c" * 10
    assert podspec.pod_hostname(pod) == "a" * 62
    assert podspec.pod_hostname(make_pod(hostname="custom")) == "custom"


# -- security context -------------------------------------------------------------------------


def lookup(name: str) -> tuple[int, int, str] | None:
    users = {"root": (0, 0, "/root"), "nobody": (65534, 65534, "/nonexistent")}
    if name.isdigit():
        return next((u for u in users.values() if u[0] == int(name)), None)
    return users.get(name)


def test_identity_from_image_pod_and_container() -> None:
    entry = ImageEntry("r", user="65532:65532")
    assert resolve_identity(make_pod(), {"name": "c"}, entry, lookup) == podspec.Identity(
        65532, 65532, (), "/"
    )
    pod = make_pod(
        securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4]}
    )
    ident = resolve_identity(pod, {"name": "c", "securityContext": {"runAsUser": 1001}}, entry, lookup)
    assert (ident.uid, ident.gid, ident.groups) == (1001, 3000, (4, 2000))
    assert resolve_identity(make_pod(), {"name": "c"}, ImageEntry("r", user="nobody"), lookup).uid == 65534
    assert resolve_identity(make_pod(), {"name": "c"}, ImageEntry("r"), lookup).uid == 0


def test_run_as_non_root_is_enforced_like_the_kubelet() -> None:
    pod = make_pod(securityContext={"runAsNonRoot": True})
    with pytest.raises(ContainerConfigError) as err:
        resolve_identity(pod, {"name": "c"}, ImageEntry("busybox"), lookup)
    assert str(err.value).startswith("container has runAsNonRoot and image will run as root")
    with pytest.raises(ContainerConfigError, match="runAsUser breaks non-root policy"):
        resolve_identity(pod, {"name": "c", "securityContext": {"runAsUser": 0}}, ImageEntry("x"), lookup)
    with pytest.raises(ContainerConfigError, match="non-numeric user"):
        resolve_identity(pod, {"name": "c"}, ImageEntry("x", user="nobody"), lookup)
    assert resolve_identity(pod, {"name": "c"}, ImageEntry("x", user="65532"), lookup).uid == 65532


def test_capabilities_follow_containerd() -> None:
    pod = make_pod()
    default = podspec.container_capabilities(pod, {"name": "c"})
    assert default is not None and podspec.CAPABILITY_NAMES.index("SYS_ADMIN") not in default
    assert podspec.CAPABILITY_NAMES.index("CHOWN") in default
    dropped = podspec.container_capabilities(
        pod,
        {"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}},
    )
    assert dropped == [podspec.CAPABILITY_NAMES.index("NET_BIND_SERVICE")]
    assert podspec.container_capabilities(pod, {"name": "c", "securityContext": {"privileged": True}}) is None


# -- mounts and termination message -----------------------------------------------------------


def test_mounts_with_sub_paths() -> None:
    container = {
        "name": "c",
        "volumeMounts": [
            {"name": "data", "mountPath": "/data/sub/deeper", "subPathExpr": "$(POD)"},
            {"name": "conf", "mountPath": "/etc/app.conf", "subPath": "app.conf", "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }
    paths = {"data": Path("/v/data"), "conf": Path("/v/conf")}
    mounts = podspec.container_mounts(container, paths, {"POD": "web-1"})
    assert mounts == [
        podspec.Mount("/v/data", "/data"),
        podspec.Mount("/v/conf/app.conf", "/etc/app.conf", True),
        podspec.Mount("/v/data/web-1", "/data/sub/deeper"),
    ]
    with pytest.raises(CreateContainerError):
        podspec.container_mounts({"name": "c", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}, paths, {})
    bad = {"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "../etc"}]}
    with pytest.raises(CreateContainerError):
        podspec.container_mounts(bad, paths, {})


def test_termination_message() -> None:
    assert podspec.termination_message(b"done", b"log", None, 1) == "done"
    assert podspec.termination_message(b"x" * 5000, None, None, 0) == "x" * 4096
    assert podspec.termination_message(b"", b"a\nb\n", "FallbackToLogsOnError", 1) == "a\nb\n"
    assert podspec.termination_message(b"", b"a\nb\n", "FallbackToLogsOnError", 0) == ""
    assert podspec.termination_message(b"", b"a\nb\n", "File", 1) == ""
    log = b"".join(f"line {i}\n".encode() for i in range(200))
    tail = podspec.tail_bytes(log)
    assert tail.startswith(b"line 120\n") and tail.endswith(b"line 199\n")
    assert len(podspec.tail_bytes(b"y" * 5000)) == 2048


# -- phase and conditions ---------------------------------------------------------------------


def v(name: str, state: str, code: int | None = None, last: bool = False) -> ContainerView:
    return ContainerView(name, state, code, last, state == "running")


@pytest.mark.parametrize(
    ("policy", "app", "init_done", "phase"),
    [
        ("Never", [v("a", "waiting")], True, "Pending"),
        ("Never", [v("a", "running")], True, "Running"),
        ("Never", [v("a", "terminated", 0)], True, "Succeeded"),
        ("Never", [v("a", "terminated", 0), v("b", "terminated", 1)], True, "Failed"),
        ("Never", [v("a", "terminated", 1), v("b", "running")], True, "Running"),
        ("OnFailure", [v("a", "terminated", 0)], True, "Succeeded"),
        ("OnFailure", [v("a", "waiting", last=True)], True, "Running"),
        ("Always", [v("a", "terminated", 0)], True, "Running"),
        ("Never", [v("a", "waiting")], False, "Pending"),
    ],
)
def test_pod_phase(policy: str, app: list[ContainerView], init_done: bool, phase: str) -> None:
    assert pod_phase(policy, [], app, init_done) == phase


def test_failed_init_container_fails_a_never_pod() -> None:
    assert pod_phase("Never", [v("i", "terminated", 2)], [v("a", "waiting")], False) == "Failed"
    assert pod_phase("OnFailure", [v("i", "terminated", 2)], [v("a", "waiting")], False) == "Pending"


def test_conditions() -> None:
    conds = {c.type: c for c in podspec.pod_conditions("Running", True, [], True, [v("a", "running")])}
    assert conds["Ready"].status and conds["ContainersReady"].status and conds["Initialized"].status
    conds = {
        c.type: c
        for c in podspec.pod_conditions("Pending", True, [v("i", "running")], False, [v("a", "waiting")])
    }
    assert conds["Initialized"].message == "containers with incomplete status: [i]"
    assert conds["Ready"].reason == "ContainersNotReady"
    conds = {
        c.type: c for c in podspec.pod_conditions("Succeeded", True, [], True, [v("a", "terminated", 0)])
    }
    assert conds["Ready"].reason == "PodCompleted" and not conds["PodReadyToStartContainers"].status


# -- volumes ----------------------------------------------------------------------------------


def inputs(**kw: Any) -> volumes.VolumeInputs:
    base: dict[str, Any] = {
        "secrets": {},
        "config_maps": {},
        "node_allocatable": {"cpu": "32", "memory": "64Gi"},
        "token": lambda aud, exp: f"token-{aud}-{exp}",
    }
    base.update(kw)
    return volumes.VolumeInputs(**base)


def test_secret_and_configmap_layouts() -> None:
    pod = make_pod()
    sec = {
        "secret": {
            "secretName": "s",
            "defaultMode": 0o400,
            "items": [{"key": "k", "path": "d/f", "mode": 0o600}],
        }
    }
    files = volumes.volume_files(sec, pod, inputs(secrets={"s": {"k": b"v", "other": b"o"}}))
    assert files == {"d/f": volumes.VolumeFile(b"v", 0o600)}
    files = volumes.volume_files({"secret": {"secretName": "s"}}, pod, inputs(secrets={"s": {"a": b"1"}}))
    assert files == {"a": volumes.VolumeFile(b"1", 0o644)}
    with pytest.raises(volumes.VolumeError, match='secret "s" not found'):
        volumes.volume_files({"secret": {"secretName": "s"}}, pod, inputs(secrets={"s": None}))
    assert (
        volumes.volume_files(
            {"secret": {"secretName": "s", "optional": True}}, pod, inputs(secrets={"s": None})
        )
        == {}
    )
    cm = {"configMap": {"name": "c", "items": [{"key": "missing", "path": "x"}]}}
    with pytest.raises(volumes.VolumeError, match="non-existent config key: missing"):
        volumes.volume_files(cm, pod, inputs(config_maps={"c": {}}))


def test_projected_service_account_volume_like_admission_injects() -> None:
    pod = make_pod()
    kube_api_access = {
        "name": "kube-api-access-abcde",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }
    files = volumes.volume_files(
        kube_api_access, pod, inputs(config_maps={"kube-root-ca.crt": {"ca.crt": b"PEM"}})
    )
    assert files == {
        "token": volumes.VolumeFile(b"token--3607", 0o644),
        "ca.crt": volumes.VolumeFile(b"PEM", 0o644),
        "namespace": volumes.VolumeFile(b"ops", 0o644),
    }
    assert volumes.volume_references({"spec": {"volumes": [kube_api_access]}}) == (
        set(),
        {"kube-root-ca.crt"},
    )


def test_downward_api_volume() -> None:
    pod = make_pod(containers=[{"name": "c", "resources": {"limits": {"memory": "1Gi"}}}])
    vol = {
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                {
                    "path": "mem",
                    "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"},
                },
            ]
        }
    }
    files = volumes.volume_files(vol, pod, inputs())
    assert files["labels"].data == b'app="web"\ntier="a b"'
    assert files["annotations"].data == b'note="say \\"hi\\""'
    assert files["mem"].data == b"1024"


def test_atomic_writer_layout_and_update(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    assert volumes.write_atomic(
        target, {"a": volumes.VolumeFile(b"1"), "d/b": volumes.VolumeFile(b"2", 0o600)}
    )
    assert (target / "..data").is_symlink()
    assert os.readlink(target / "a") == "..data/a"
    assert (target / "a").read_bytes() == b"1" and (target / "d" / "b").read_bytes() == b"2"
    assert (target / "d" / "b").stat().st_mode & 0o777 == 0o600
    first = (target / "..data").resolve()
    assert not volumes.write_atomic(
        target, {"a": volumes.VolumeFile(b"1"), "d/b": volumes.VolumeFile(b"2", 0o600)}
    )
    assert volumes.write_atomic(target, {"a": volumes.VolumeFile(b"new")})
    assert (target / "a").read_bytes() == b"new"
    assert not (target / "d").exists() and not first.exists()
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith("..")) == ["a"]


def test_atomic_writer_fs_group(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chgrp needs root")
    target = tmp_path / "vol"
    volumes.write_atomic(target, {"a": volumes.VolumeFile(b"1", 0o600)}, fs_group=4321)
    st = (target / "a").stat()
    assert st.st_gid == 4321 and st.st_mode & 0o777 == 0o640


# -- processes and the container init ---------------------------------------------------------


def test_log_path() -> None:
    assert container_log_path(Path("/r"), "u", "c") == Path("/r/pods/u/logs/c.log")


def test_process_tree_and_signal_tree() -> None:
    p = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(p.pid, scan_processes())) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = process_tree(p.pid, scan_processes())
        assert p.pid in tree and len(tree) == 3
        assert all(scan_processes()[pid][2] > 0 for pid in tree if pid in scan_processes())
        signal_tree(p.pid, signal.SIGKILL)
        assert p.wait(timeout=10) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()


def run_init(tmp_path: Path, **spec: Any) -> tuple[int, str, str]:
    log = tmp_path / "log"
    full = {"env": {"PATH": os.environ["PATH"]}, "errorFile": str(tmp_path / "err"), **spec}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(full))
    with open(log, "wb") as f:
        rc = subprocess.run(
            [sys.executable, "-I", str(INIT_SCRIPT), str(spec_file)],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=30,
        ).returncode
    err = (tmp_path / "err").read_text() if (tmp_path / "err").exists() else ""
    return rc, log.read_text(), err


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="kubelet-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_container_init_mounts_user_and_read_only_root(tmp_path: Path, public_dir: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "file").write_text("from-volume")
    writable = tmp_path / "scratch"
    writable.mkdir(mode=0o777)
    os.chmod(writable, 0o777)
    tlog = tmp_path / "termlog"
    tlog.touch()
    os.chmod(tlog, 0o666)
    mnt = public_dir / "mnt"
    script = (
        f"cat {mnt}/ro/file; echo; id -u; id -g; hostname; "
        f"touch {mnt}/ro/x 2>/dev/null || echo ro-ok; "
        f"touch {mnt}/rw/x && echo rw-ok; "
        f"touch {tmp_path}/rootfs 2>/dev/null || echo rootfs-ro; "
        f"printf bye > {mnt}/termination-log; echo $SECRET_OF_KUBELET; echo env=$ONLY; echo pid=$$"
    )
    rc, out, err = run_init(
        tmp_path,
        argv=["sh", "-c", script],
        env={"PATH": os.environ["PATH"], "ONLY": "this"},
        uid=65532,
        gid=65533,
        groups=[5000],
        hostname="web-1",
        workingDir="/",
        mounts=[
            {"source": str(vol), "target": str(mnt / "ro"), "readOnly": True},
            {"source": str(writable), "target": str(mnt / "rw")},
        ],
        terminationLog={"source": str(tlog), "target": str(mnt / "termination-log")},
        readOnlyRootFilesystem=True,
        noNewPrivs=True,
        capabilities=[],
    )
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "from-volume",
        "65532",
        "65533",
        "web-1",
        "ro-ok",
        "rw-ok",
        "rootfs-ro",
        "",
        "env=this",
        "pid=1",
    ]
    assert tlog.read_text() == "bye"
    assert (writable / "x").exists()
    assert not (vol / "x").exists()


@needs_root
def test_container_init_reports_start_errors(tmp_path: Path) -> None:
    rc, _out, err = run_init(tmp_path, argv=["no-such-binary-xyz"])
    assert rc == 128
    assert 'exec: "no-such-binary-xyz": executable file not found in $PATH' in err


def start_init(tmp_path: Path, script: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "log"
    spec = {
        "argv": ["sh", "-c", script],
        "env": {"PATH": os.environ["PATH"]},
        "errorFile": str(tmp_path / "err"),
        "parentPid": os.getpid(),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with open(log, "wb") as f:
        popen = subprocess.Popen(
            [sys.executable, "-I", str(INIT_SCRIPT), str(tmp_path / "spec.json")],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return popen, log


@needs_root
def test_container_init_relays_exit_codes_and_signals(tmp_path: Path) -> None:
    assert run_init(tmp_path, argv=["sh", "-c", "exit 7"])[0] == 7
    rc, out, _ = run_init(tmp_path, argv=["sh", "-c", "sleep 30 & ps -o pid= | wc -l"])
    assert (rc, out.strip()) == (0, "4")  # only its own processes: sh, sleep, ps, wc

    # SIGTERM is forwarded to the container's PID 1, which handles it
    popen, _log = start_init(tmp_path, "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done")
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(timeout=10) == 42

    # PID 1 without a handler ignores SIGTERM; SIGKILL of the relay takes the whole container down
    popen, _log = start_init(tmp_path, "sleep 300 & echo ready; echo bg=$!; wait")
    popen.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        popen.wait(timeout=1)
    tree = process_tree(popen.pid, scan_processes())
    assert len(tree) == 3  # relay, sh (PID 1 inside), sleep
    popen.kill()
    assert popen.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in tree)
