"""An OpsJob deleted between the handler's read and its status write ends the sync quietly.

Pod events can still arrive for a job whose namespace is being deleted: the handler reads the job,
the job goes away, and the status patch answers 404. That is the end of the job, not an error (the
operator logged a traceback for it). The handler runs in a child process against the real API
server, with its first read returning the job as it was before the deletion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from opsconductor.localcluster.controlplane import ControlPlane
from tests.kube import Kubectl

JOB = {
    "apiVersion": "opsconductor.io/v1alpha1",
    "kind": "OpsJob",
    "metadata": {"name": "gone"},
    "spec": {"steps": [{"name": "w", "type": "wait", "seconds": 1}]},
}
SYNC_WITH_A_STALE_READ = """
import json, sys
from opsconductor import kube
from opsconductor.handlers import opsjob
kube.load_configuration()
namespace, stale = sys.argv[1], json.loads(sys.argv[2])
reads = iter([stale])  # the first read sees the job as it was; later reads find it gone
kube.read_opsjob = lambda namespace, name: next(reads, None)
opsjob.sync_with_runner(namespace, stale["metadata"]["name"])
print("sync ended")
"""


def test_sync_of_a_job_deleted_after_it_was_read_ends_without_error(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.with_namespace(namespace)
    k.run("create", "-f", "-", input=json.dumps(JOB))
    stale = k.get("opsjob", "gone")
    k.run("delete", "opsjob", "gone", "--wait")
    result = subprocess.run(
        [sys.executable, "-c", SYNC_WITH_A_STALE_READ, namespace, json.dumps(stale)],
        env={**os.environ, "KUBECONFIG": str(control_plane.admin_kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sync ended"
