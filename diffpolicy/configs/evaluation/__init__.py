"""Hydra config of diffpolicy-eval (kept apart from the training groups: `task=` here is a plain option)."""
