"""OpsConductor: a kopf operator that runs IT operations (WinRM, SSH, HTTP, ...) from custom resources."""

__version__ = "0.1.0"
