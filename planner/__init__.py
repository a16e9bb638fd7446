"""Planner: picks stage boundaries and per-stage recompute from a profile. Never imports torch."""
