"""Thin Hydra entry points: ``diffpolicy-train`` and ``diffpolicy-eval`` (no logic here)."""
