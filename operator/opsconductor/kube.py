"""Thin access to the Kubernetes API for handlers: clients, idempotent creates, status patches.

Uses the synchronous ``kubernetes`` client (kopf runs sync handlers in its thread pool). Handlers
call these functions; the pure decisions live in ``reconcile`` and ``builders``.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from opsconductor.api import GROUP, OPSJOB, VERSION
from opsconductor.config import is_pattern

if TYPE_CHECKING:
    from collections.abc import Callable

    from urllib3 import HTTPResponse

Manifest = dict[str, Any]


def load_configuration() -> None:
    """Configure the client from the pod's service account, else from KUBECONFIG."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def current_namespace() -> str:
    """Return the namespace of the kubeconfig's current context (in a pod: the pod's namespace)."""
    service_account_namespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(service_account_namespace) as handle:
            return handle.read().strip()
    except OSError:
        pass
    try:
        _, context = kubernetes.config.list_kube_config_contexts()
    except (kubernetes.config.ConfigException, OSError):
        return "default"
    return str((context or {}).get("context", {}).get("namespace") or "default")


# Handlers run on kopf's thread pool (up to 32 threads) plus our create pool and the scheduler's fire
# pool (48): keep a TLS connection per thread instead of the client's default of 5 per core, which
# made every burst re-handshake.
CONNECTION_POOL_SIZE = 128


@functools.cache
def _api_client() -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return kubernetes.client.ApiClient(configuration)


# The API objects are cached too: the client resolves its classes through a lazy module
# __getattr__ (an import-lock round trip per access), which showed up under load.
@functools.cache
def core() -> kubernetes.client.CoreV1Api:
    """CoreV1Api on the shared client."""
    return kubernetes.client.CoreV1Api(_api_client())


@functools.cache
def custom() -> kubernetes.client.CustomObjectsApi:
    """CustomObjectsApi on the shared client."""
    return kubernetes.client.CustomObjectsApi(_api_client())


@functools.cache
def rbac() -> kubernetes.client.RbacAuthorizationV1Api:
    """RbacAuthorizationV1Api on the shared client."""
    return kubernetes.client.RbacAuthorizationV1Api(_api_client())


def whoami() -> str:
    """Return the user name the API server authenticates our credentials as (SelfSubjectReview)."""
    review = kubernetes.client.AuthenticationV1Api(_api_client()).create_self_subject_review(
        kubernetes.client.V1SelfSubjectReview()
    )
    user = review.status.user_info if review.status is not None else None
    return str(user.username) if user is not None and user.username else "unknown"


def is_not_found(error: ApiException) -> bool:
    """404."""
    status: int | None = error.status
    return status == 404


def create_if_absent(manifest: Manifest) -> bool:
    """Create a namespaced object; an existing one with the same name is left as is.

    Returns:
        True when created, False when it already existed.
    """
    namespace = manifest["metadata"]["namespace"]
    creators: dict[str, Callable[..., object]] = {
        "ConfigMap": core().create_namespaced_config_map,
        "ServiceAccount": core().create_namespaced_service_account,
        "Pod": core().create_namespaced_pod,
        "Role": rbac().create_namespaced_role,
        "RoleBinding": rbac().create_namespaced_role_binding,
    }
    try:
        # _preload_content=False: skip deserialising the response into client models (slow).
        creators[manifest["kind"]](namespace, manifest, _preload_content=False)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def _json_body(response: object) -> Manifest:
    """Decode the JSON body of a call made with ``_preload_content=False``.

    The client annotates such calls with the model type, but without preloading they return the
    undecoded ``urllib3.HTTPResponse``.
    """
    body: Manifest = json.loads(cast("HTTPResponse", response).data)
    return body


def read_pod(namespace: str, name: str) -> Manifest | None:
    """Read the pod as a dict, or None."""
    try:
        response = core().read_namespaced_pod(name, namespace, _preload_content=False)
    except ApiException as error:
        if is_not_found(error):
            return None
        raise
    return _json_body(response)


def delete_pod(namespace: str, name: str, grace_seconds: int) -> None:
    """Delete a pod (missing is fine)."""
    try:
        core().delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds)
    except ApiException as error:
        if not is_not_found(error):
            raise


def read_opsjob(namespace: str, name: str) -> Manifest | None:
    """Read the OpsJob, or None when it is gone."""
    try:
        return cast(
            Manifest, custom().get_namespaced_custom_object(GROUP, VERSION, namespace, OPSJOB.plural, name)
        )
    except ApiException as error:
        if is_not_found(error):
            return None
        raise


def patch_status(
    plural: str, namespace: str, name: str, patch: Manifest, resource_version: str | None
) -> bool:
    """Merge-patch an object's status subresource.

    Args:
        plural: the kind's plural.
        namespace: namespace.
        name: object name.
        patch: ``{"status": {...}}``.
        resource_version: when given, the patch applies only to that version (optimistic lock).

    Returns:
        False on a conflict (someone else changed the object first), True when applied.
    """
    body = dict(patch)
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        custom().patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, body, _content_type="application/merge-patch+json"
        )
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def list_custom(plural: str, namespace: str, label_selector: str | None = None) -> list[Manifest]:
    """Objects of one of our kinds in a namespace."""
    result = cast(
        Manifest,
        custom().list_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, label_selector=label_selector or ""
        ),
    )
    return list(result.get("items", []))


def list_custom_watched(plural: str, namespaces: tuple[str, ...]) -> list[Manifest]:
    """List one of our kinds in the watched namespaces.

    One list per namespace when they are exact names (RBAC may be granted per namespace only),
    else one cluster-wide list (cluster-wide operator, or glob patterns).
    """
    if namespaces and not any(is_pattern(ns) for ns in namespaces):
        return [item for namespace in namespaces for item in list_custom(plural, namespace)]
    response = custom().list_cluster_custom_object(GROUP, VERSION, plural)
    return list(response.get("items", [])) if isinstance(response, dict) else []


def get_custom(plural: str, namespace: str, name: str) -> Manifest | None:
    """One object of one of our kinds, or None."""
    try:
        return cast(Manifest, custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))
    except ApiException as error:
        if is_not_found(error):
            return None
        raise


def secret_keys(namespace: str, name: str) -> set[str] | None:
    """Read the data keys of a Secret (never its values), or None when it does not exist."""
    try:
        response = core().read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as error:
        if is_not_found(error):
            return None
        raise
    return set((_json_body(response).get("data") or {}).keys())


def config_map_data(namespace: str, name: str) -> dict[str, str] | None:
    """Read a ConfigMap's data, or None when it does not exist."""
    try:
        response = core().read_namespaced_config_map(name, namespace, _preload_content=False)
    except ApiException as error:
        if is_not_found(error):
            return None
        raise
    return dict(_json_body(response).get("data") or {})


CREATE_TIMEOUT_SECONDS = 30.0
"""How long :func:`create_custom` waits for the API server (the generated client sets no timeout)."""


def create_custom(plural: str, namespace: str, body: Manifest, group: str = GROUP) -> Manifest:
    """Create one of our objects; returns it as created (409 and other errors raise ``ApiException``).

    This is the scheduler's hot path (hundreds of creates at one instant), so it skips the generated
    client: that spends about 4 ms of CPU per call on parameter handling and serialisation, while the
    API server spends about as much on the create itself (``bench/schedule_lag.py``). The request
    goes through the same client's connection pool, TLS settings and credentials (a bearer token
    is read through the configuration, which refreshes in-cluster tokens). ``group`` is for the
    benchmark's twin CRD; everything else creates in ours.
    """
    client = _api_client()
    configuration = client.configuration
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": client.user_agent,
    }
    token = configuration.get_api_key_with_prefix("authorization")
    if token:
        headers["Authorization"] = token
    response = client.rest_client.pool_manager.request(
        "POST",
        f"{configuration.host}/apis/{group}/{VERSION}/namespaces/{namespace}/{plural}",
        body=json.dumps(body).encode(),
        headers=headers,
        timeout=CREATE_TIMEOUT_SECONDS,
    )
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    return cast(Manifest, json.loads(response.data))


def post_event(obj: Manifest, event_type: str, reason: str, message: str, when: datetime) -> None:
    """Record a core/v1 Event about ``obj`` (outside kopf handlers ``kopf.event`` has no context)."""
    meta = obj["metadata"]
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: Manifest = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": "opsconductor"},
        "reportingComponent": "opsconductor",
        "reportingInstance": "opsconductor",
    }
    # A plain dict body is sent as is (the client serialises dicts unchanged).
    core().create_namespaced_event(meta["namespace"], body, _preload_content=False)  # type: ignore[arg-type]
