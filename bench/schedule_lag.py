"""Benchmark: OpsSchedule fire lag against the CronJob controller, N of each firing every minute.

On one local control plane (no kubelet needed: nothing runs), N OpsSchedules and N CronJobs, all
``* * * * *`` with ``concurrencyPolicy: Allow``, fire side by side for ``--minutes`` minutes. Lag is
the time from the scheduled instant (the OpsJob's ``opsconductor.io/scheduled-time`` annotation,
the Job's ``batch.kubernetes.io/cronjob-scheduled-timestamp``) to the moment this process receives
the object's ADDED watch event (Kubernetes timestamps have 1 s resolution, too coarse here).

Both sides create objects that start nothing, so only the controllers are measured: the OpsJob
template has ``cancel: true`` (the operator records it Cancelled at once, no runner pod) and the Job
template ``suspend: true`` (the Job controller creates no pod). History limits are the CronJob
defaults on both sides (3 successful, 1 failed).

Checks: every schedule fires exactly once per minute of the measured window (a missing
(schedule, minute) pair is a missed fire, a second object for one pair a duplicate).

    .venv/bin/python bench/schedule_lag.py [--count 500] [--minutes 3]

Prints p50/p99/max lag per side, missed/duplicate counts, and the operator's and
kube-controller-manager's CPU time and memory over the window. Before the schedules exist it prints
the floor: how long one minute's N run creates take on this machine with nothing else running, with
the real OpsJob CRD and with a twin CRD without validation rules (:func:`burst_floor`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import kubernetes
import yaml

from opsconductor import kube
from opsconductor.api import GROUP, OPSJOB, OPSSCHEDULE, VERSION
from opsconductor.handlers.opsschedule import FIRE_THREADS
from opsconductor.localcluster.cluster import CRDS_DIR, admin_kubectl, install_crds
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from opsconductor.reconcile import opsschedule as rs

OPSJOB_NS = "bench-schedules"
JOB_NS = "bench-cronjobs"
CRON_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
OPSC_ANNOTATION = "opsconductor.io/scheduled-time"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Recorder:
    """Watches one kind in one namespace; records (owner, scheduled minute) -> receipt times."""

    def __init__(self, name: str, list_fn, annotation: str, owner_of) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.seen: dict[str, tuple[str, datetime, float]] = {}
        self._list_fn = list_fn
        self._annotation = annotation
        self._owner_of = owner_of
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        resource_version = None
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()
            try:
                kwargs = {"timeout_seconds": 60}
                if resource_version:
                    kwargs["resource_version"] = resource_version
                for event in watch.stream(self._list_fn, **kwargs):
                    received = time.time()
                    obj = event["object"]
                    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
                    resource_version = meta.get("resourceVersion") or meta.get("resource_version")
                    if event["type"] != "ADDED":
                        continue
                    annotations = meta.get("annotations") or {}
                    stamp = annotations.get(self._annotation)
                    if stamp and meta["name"] not in self.seen:
                        self.seen[meta["name"]] = (self._owner_of(meta), parse_time(stamp), received)
                    if self._stop.is_set():
                        break
            except Exception as error:  # a watch expiring (410) restarts from a fresh list
                print(f"[{self.name}] watch restarted: {error}")
                resource_version = None

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: datetime, end: datetime) -> list[tuple[str, datetime, float]]:
        return [v for v in list(self.seen.values()) if start <= v[1] < end]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def opsschedule(index: int) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "opsconductor.io/v1alpha1",
        "kind": "OpsSchedule",
        "metadata": {"name": f"s{index}"},
        "spec": {
            "schedules": ["* * * * *"],
            "concurrencyPolicy": "Allow",
            "jobTemplate": {"spec": {"cancel": True, "steps": [{"name": "w", "type": "wait", "seconds": 1}]}},
        },
    }


def cronjob(index: int) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": f"c{index}"},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Allow",
            "jobTemplate": {
                "spec": {
                    "suspend": True,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "w", "image": "opsconductor.invalid/none:0"}],
                        }
                    },
                }
            },
        },
    }


def describe(name: str, lags: list[float]) -> str:
    if not lags:
        return f"{name:<30} no samples"
    return (
        f"{name:<30} n={len(lags):<5} p50={percentile(lags, 0.5) * 1000:7.0f} ms  "
        f"p99={percentile(lags, 0.99) * 1000:7.0f} ms  max={max(lags) * 1000:7.0f} ms  "
        f"mean={statistics.fmean(lags) * 1000:7.0f} ms"
    )


def check(
    name: str, records: list[tuple[str, datetime, float]], owners: list[str], minutes: list[datetime]
) -> str:
    pairs = Counter((owner, scheduled) for owner, scheduled, _ in records)
    missed = sum(1 for o in owners for m in minutes if (o, m) not in pairs)
    duplicates = sum(n - 1 for n in pairs.values() if n > 1)
    return f"{name:<28} expected={len(owners) * len(minutes)}  missed={missed}  duplicates={duplicates}"


UNVALIDATED_GROUP = "unvalidated.bench.opsconductor.io"


def install_unvalidated_twin(plane: ControlPlane) -> None:
    """Install a twin of the OpsJob CRD in another group: same schema, none of its CEL rules.

    No admission policy matches it either. Creating the scheduler's run bodies against it shows what
    the same creates cost this machine without the OpsJob's validation.
    """
    crd = yaml.safe_load((CRDS_DIR / f"{GROUP}_{OPSJOB.plural}.yaml").read_text())
    crd["metadata"] = {"name": f"{OPSJOB.plural}.{UNVALIDATED_GROUP}"}
    crd["spec"]["group"] = UNVALIDATED_GROUP
    crd["spec"]["names"].pop("categories", None)

    def strip_rules(node: object) -> None:
        if isinstance(node, dict):
            node.pop("x-kubernetes-validations", None)
            for value in node.values():
                strip_rules(value)
        elif isinstance(node, list):
            for value in node:
                strip_rules(value)

    strip_rules(crd["spec"]["versions"])
    admin_kubectl(plane, "apply", "-f", "-", input=json.dumps(crd))
    admin_kubectl(plane, "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}")


def burst_floor(plane: ControlPlane, count: int, rounds: int = 2) -> float:
    """Print how long one minute's ``count`` run creates take with nothing else going on: the floor.

    The scheduler's own create call, thread count and run bodies (``build_run`` of a suspended
    OpsSchedule, so every run has a live owner and the garbage collector leaves them alone), in a
    namespace the operator does not watch; and the same bodies against the unvalidated twin CRD.
    Each side is warmed up with 100 creates, then the two alternate for ``rounds`` rounds. No burst of
    the scheduler can end sooner than the best OpsJob round on the same machine.

    Returns:
        The best OpsJob round's wall time.
    """
    kubernetes.config.load_kube_config(config_file=str(plane.admin_kubeconfig))
    namespace = "bench-floor"
    kube.core().create_namespace({"metadata": {"name": namespace}})
    template = opsschedule(0)
    schedule = kube.create_custom(
        OPSSCHEDULE.plural, namespace, {**template, "spec": {**template["spec"], "suspend": True}}
    )
    install_unvalidated_twin(plane)
    fire = datetime.now(UTC).replace(second=0, microsecond=0)
    apiserver_pid = next(p.popen.pid for p in plane._processes if p.name == "kube-apiserver")
    sides = {"OpsJob": GROUP, f"unvalidated twin ({UNVALIDATED_GROUP})": UNVALIDATED_GROUP}
    walls: dict[str, list[float]] = {label: [] for label in sides}
    for round_ in range(-1, rounds):  # round -1 warms up
        for label, group in sides.items():
            size = 100 if round_ < 0 else count
            bodies = [
                {
                    **rs.build_run(schedule, f"floor{round_ + 1}-{i}", fire, "opsschedule/s0"),
                    "apiVersion": f"{group}/{VERSION}",
                }
                for i in range(size)
            ]
            cpu_before, client_before = cpu_seconds(apiserver_pid), time.process_time()
            began = time.perf_counter()
            with ThreadPoolExecutor(FIRE_THREADS) as pool:
                list(
                    pool.map(
                        functools.partial(kube.create_custom, OPSJOB.plural, namespace, group=group), bodies
                    )
                )
            if round_ < 0:
                continue
            walls[label].append(time.perf_counter() - began)
            print(
                f"floor round {round_ + 1}: {count} run creates at once, {label}: {walls[label][-1]:.2f}s; "
                f"API server CPU {cpu_seconds(apiserver_pid) - cpu_before:.2f}s, "
                f"client CPU {time.process_time() - client_before:.2f}s"
            )
    return min(walls["OpsJob"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="schedule-lag-") as workdir:
        plane = ControlPlane(workdir=Path(workdir) / "controlplane", scheduler=False)
        plane.start()
        operator = OperatorProcess(plane, env={"OPSCONDUCTOR_NAMESPACES": OPSJOB_NS})
        try:
            install_crds(plane)
            operator.start()
            return run(plane, operator, args.count, args.minutes)
        finally:
            operator.stop()
            plane.stop()


def run(plane: ControlPlane, operator: OperatorProcess, count: int, minutes: int) -> int:
    api = kubernetes.config.new_client_from_config(config_file=str(plane.admin_kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    batch = kubernetes.client.BatchV1Api(api)
    for namespace in (OPSJOB_NS, JOB_NS):
        core.create_namespace({"metadata": {"name": namespace}})

    # What one create costs the API server for each kind (sequential, nothing watching the namespace):
    # OpsJob admission evaluates the CRD's OpenAPI schema and CEL rules, Job admission is built in.
    core.create_namespace({"metadata": {"name": "bench-create-cost"}})
    job_template = cronjob(0)["spec"]["jobTemplate"]
    costs: dict[str, list[float]] = {"OpsJob": [], "Job": []}
    for index in range(50):
        began = time.perf_counter()
        custom.create_namespaced_custom_object(
            "opsconductor.io",
            "v1alpha1",
            "bench-create-cost",
            "opsjobs",
            {
                "apiVersion": "opsconductor.io/v1alpha1",
                "kind": "OpsJob",
                "metadata": {"name": f"cost{index}"},
                "spec": opsschedule(0)["spec"]["jobTemplate"]["spec"],
            },
        )
        costs["OpsJob"].append(time.perf_counter() - began)
        began = time.perf_counter()
        batch.create_namespaced_job(
            "bench-create-cost", {"metadata": {"name": f"cost{index}"}, "spec": job_template["spec"]}
        )
        costs["Job"].append(time.perf_counter() - began)
    for kind, values in costs.items():
        print(describe(f"one {kind} create (sequential)", values))
    floor = burst_floor(plane, count)

    opsjobs = Recorder(
        "OpsSchedule -> OpsJob",
        lambda **kw: custom.list_namespaced_custom_object(
            "opsconductor.io", "v1alpha1", OPSJOB_NS, "opsjobs", **kw
        ),
        OPSC_ANNOTATION,
        lambda meta: (meta.get("labels") or {}).get("opsconductor.io/schedule", "?"),
    )
    jobs = Recorder(
        "CronJob -> Job (kcm)",
        lambda **kw: batch.list_namespaced_job(JOB_NS, **kw),
        CRON_ANNOTATION,
        lambda meta: meta["name"].rsplit("-", 1)[0],  # <cronjob>-<minutes since the epoch>
    )

    began = time.time()
    with ThreadPoolExecutor(8) as pool:
        # Interleaved, so both controllers see the same load while objects are created.
        list(
            pool.map(
                lambda i: (
                    custom.create_namespaced_custom_object(
                        "opsconductor.io", "v1alpha1", OPSJOB_NS, "opsschedules", opsschedule(i)
                    ),
                    batch.create_namespaced_cron_job(JOB_NS, cronjob(i)),
                ),
                range(count),
            )
        )
    print(f"created {count} OpsSchedules and {count} CronJobs in {time.time() - began:.1f}s")

    # Measure whole minutes from the second minute boundary at least 20 s away: the first fire of
    # every schedule is a warm-up (registration work of both controllers may still be running).
    now = time.time()
    first = (int(now) // 60 + 2) * 60
    if first - now < 80:
        first += 60
    window = [datetime.fromtimestamp(first + 60 * m, UTC) for m in range(minutes)]
    end = first + 60 * minutes
    operator_pid = operator._popen.pid if operator._popen else 0
    kcm_pid = next(p.popen.pid for p in plane._processes if p.name == "kube-controller-manager")
    time.sleep(max(0.0, first - 1 - time.time()))  # wall clock: the benchmark measures real fires
    cpu_start = {"operator": cpu_seconds(operator_pid), "kube-controller-manager": cpu_seconds(kcm_pid)}
    rss_samples: dict[str, list[int]] = {"operator": [], "kube-controller-manager": []}
    while time.time() < end + 15:
        for name, pid in (("operator", operator_pid), ("kube-controller-manager", kcm_pid)):
            rss_samples[name].append(memory_kib(pid)[0])
        time.sleep(1)
    cpu_end = {"operator": cpu_seconds(operator_pid), "kube-controller-manager": cpu_seconds(kcm_pid)}
    opsjobs.stop()
    jobs.stop()

    start_dt, end_dt = window[0], datetime.fromtimestamp(end, UTC)
    ours = opsjobs.window(start_dt, end_dt)
    peer = jobs.window(start_dt, end_dt)
    our_lags = [received - scheduled.timestamp() for _, scheduled, received in ours]
    peer_lags = [received - scheduled.timestamp() for _, scheduled, received in peer]
    elapsed = 60 * minutes + 16
    print(
        f"\n{count} OpsSchedules and {count} CronJobs, '* * * * *', {minutes} measured minutes "
        f"({window[0]:%H:%M}-{end_dt:%H:%M} UTC); lag = scheduled instant -> ADDED watch event received"
    )
    print(describe("OpsSchedule -> OpsJob", our_lags))
    for minute in window:  # each minute is one burst of N fires
        print(describe(f"  fires at {minute:%H:%M}", [r - f.timestamp() for _, f, r in ours if f == minute]))
    print(f"  (floor: best of the {count}-create rounds above {floor * 1000:7.0f} ms)")
    print(describe("CronJob -> Job (kcm)", peer_lags))
    if our_lags and peer_lags:
        print(
            f"ratio p99 ours/kcm: {percentile(our_lags, 0.99) / max(percentile(peer_lags, 0.99), 1e-6):.2f}x "
            f"ratio p50: {percentile(our_lags, 0.5) / max(percentile(peer_lags, 0.5), 1e-6):.2f}x"
        )
    # The operator logs each run it creates with its lag when the create call returned: what the
    # scheduler itself saw, apart from watch delivery to this process.
    created_lags = []
    for line in operator.log.read_text().splitlines():
        if "created run" in line and "ms after it" in line:
            fire = parse_time(line.split("(fire ")[1].split(",")[0])
            if start_dt <= fire < end_dt:
                created_lags.append(float(line.rsplit(", ", 1)[1].split(" ms")[0]) / 1000)
    print(describe("  (operator: create returned)", created_lags))
    print(check("OpsSchedule fires", ours, [f"s{i}" for i in range(count)], window))
    print(check("CronJob fires", peer, [f"c{i}" for i in range(count)], window))
    for name in ("operator", "kube-controller-manager"):
        cpu = cpu_end[name] - cpu_start[name]
        pid = operator_pid if name == "operator" else kcm_pid
        peak = memory_kib(pid)[1]
        print(
            f"{name:<24} CPU {cpu:6.1f}s over {elapsed}s ({100 * cpu / elapsed:5.1f}% of a core)  "
            f"RSS median {statistics.median(rss_samples[name]) // 1024} MiB, peak {peak // 1024} MiB"
        )
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
