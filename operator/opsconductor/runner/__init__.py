"""The runner: executes a RunPlan's steps against targets (runs in the runner pod, or locally)."""
