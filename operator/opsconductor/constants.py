"""Label, annotation and name constants under our API group; one place for every key we write."""

from __future__ import annotations

from opsconductor.api import GROUP

# Labels on objects the operator creates.
LABEL_JOB = f"{GROUP}/job"
LABEL_JOB_UID = f"{GROUP}/job-uid"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
MANAGED_BY = "opsconductor"
COMPONENT_RUNNER = "runner"

# Annotations users (or the CLI) set.
ANNOTATION_STARTED_BY = f"{GROUP}/started-by"
# Set by the API server (MutatingAdmissionPolicy, see opsconductor.admission): the authenticated
# user that created an OpsJob; not forgeable.
ANNOTATION_CREATED_BY = f"{GROUP}/created-by"

# Names derived from an OpsJob's name (OpsJob names are at most 63 characters).
RUNNER_CONTAINER = "runner"
FIELD_MANAGER = "opsconductor-operator"


def runner_pod_name(job_name: str) -> str:
    """Name the runner pod of an OpsJob (deterministic: a restart never creates a second one)."""
    return f"{job_name}-runner"


def plan_config_map_name(job_name: str) -> str:
    """Name the ConfigMap carrying the job's plan."""
    return f"{job_name}-plan"


def runner_service_account_name(job_name: str) -> str:
    """Name the per-job service account whose Role allows patching only this job's status."""
    return f"{job_name}-runner"


# OpsSchedule → OpsJob links (issue 5 owns their use; notifications read them).
LABEL_SCHEDULE = f"{GROUP}/schedule"
"""On OpsJobs an OpsSchedule created: the schedule's name."""
ANNOTATION_SCHEDULED_TIME = f"{GROUP}/scheduled-time"
"""On OpsJobs an OpsSchedule created: the fire (RFC 3339, UTC) the run belongs to."""

# Target probes (docs/targets.md).
ANNOTATION_PROBE = f"{GROUP}/probe"
"""On Targets: any new value asks for a probe now (``opsconductor probe target/NAME`` sets it)."""
LABEL_TARGET = f"{GROUP}/target"
"""On probe pods: the Target's name."""
LABEL_TARGET_UID = f"{GROUP}/target-uid"
"""On probe pods: the Target's uid (a Target re-created under the same name is another Target)."""
COMPONENT_PROBE = "probe"
PROBE_CONTAINER = "probe"

# Notifications (issue 6): test notifications through a channel Credential's annotations.
ANNOTATION_NOTIFY_TEST = f"{GROUP}/notify-test"
"""On a channel Credential: a new value (a nonce) asks the operator for a test notification."""
ANNOTATION_NOTIFY_TEST_TO = f"{GROUP}/notify-test-to"
"""On an SMTP Credential: comma-separated addresses the test notification goes to."""
ANNOTATION_NOTIFY_TEST_RESULT = f"{GROUP}/notify-test-result"
"""Written by the operator: ``<nonce> Sent`` or ``<nonce> Failed: <why>``."""

ANNOTATION_ATTEMPT = f"{GROUP}/attempt"
"""On OpsJobs an OpsSchedule created: 1 for a fire's first run, 2… for its retries."""
ANNOTATION_RETRY_OF = f"{GROUP}/retry-of"
"""On retry attempts: the first run of the fire this attempt re-runs (all attempts share it)."""
ANNOTATION_TRIGGER = f"{GROUP}/trigger"
"""On an OpsSchedule: set (to a new token) to start a run now (``opsconductor trigger``)."""
ANNOTATION_TRIGGERED_BY = f"{GROUP}/triggered-by"
"""On an OpsSchedule, next to the trigger: the user who asked (the CLI fills it in)."""
