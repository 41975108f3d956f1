"""Pure reconciliation logic: next status from the spec and the observed world (no API calls)."""
