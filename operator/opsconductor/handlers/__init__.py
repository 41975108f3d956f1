"""Thin kopf adapters per resource: read what they need, call pure functions, apply the result."""
