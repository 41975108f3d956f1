"""The API server stamps every new OpsJob with its creator (MutatingAdmissionPolicy), unforgeably."""

from __future__ import annotations

import json

from opsconductor.constants import ANNOTATION_CREATED_BY
from tests.kube import Kubectl

JOB = {
    "apiVersion": "opsconductor.io/v1alpha1",
    "kind": "OpsJob",
    "metadata": {"name": "who", "annotations": {ANNOTATION_CREATED_BY: "someone-else"}},
    "spec": {"steps": [{"name": "w", "type": "wait", "seconds": 1}]},
}


def test_created_by_is_the_authenticated_user_whatever_the_request_says(
    kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.with_namespace(namespace)
    k.run("create", "role", "jobs", "--verb=create,get", "--resource=opsjobs.opsconductor.io")
    k.run("create", "rolebinding", "alice-jobs", "--role=jobs", "--user=alice")
    k.run("create", "-f", "-", "--as=alice", input=json.dumps(JOB))
    assert k.get("opsjob", "who")["metadata"]["annotations"][ANNOTATION_CREATED_BY] == "alice"
    second = {**JOB, "metadata": {"name": "who2"}}
    k.run("create", "-f", "-", input=json.dumps(second))
    admin = k.run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    assert k.get("opsjob", "who2")["metadata"]["annotations"][ANNOTATION_CREATED_BY] == admin
