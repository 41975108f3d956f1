"""API models: the single source of truth for the custom resources' schemas.

``kinds`` names the four kinds; each kind's spec/status models live in a module of its own.
"""

from opsconductor.api._base import API_VERSION, GROUP, VERSION
from opsconductor.api.kinds import (
    CREDENTIAL,
    KINDS,
    MAINTENANCEWINDOW,
    NOTIFICATIONPOLICY,
    OPSJOB,
    OPSSCHEDULE,
    TARGET,
    Kind,
)

__all__ = [
    "API_VERSION",
    "CREDENTIAL",
    "GROUP",
    "KINDS",
    "MAINTENANCEWINDOW",
    "NOTIFICATIONPOLICY",
    "OPSJOB",
    "OPSSCHEDULE",
    "TARGET",
    "VERSION",
    "Kind",
]
