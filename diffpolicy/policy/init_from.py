"""Start a training run from another policy's weights (``training.init_from``: fine-tuning).

``training.init_from`` names a training checkpoint (``.pt``; its EMA weights are taken,
the ones evaluation uses) or a pretrained folder (its one set of weights).  The new run
starts from those weights, its EMA starts as a copy of them, and the optimiser and the
learning-rate schedule start fresh.  The normaliser comes with the weights: the network
was trained on data scaled by it, so the new data are scaled the same way
(:func:`range_overshoot` tells how far they leave the normalised range [-1, 1]).

Only the network has to match: the policy config may differ in how plans are executed
and sampled (:data:`~diffpolicy.policy.diffusion_policy.EXECUTION_KEYS`) and in the training loss.  A run that resumes from
its own ``latest.pt`` ignores ``init_from``: its own weights have moved on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from diffpolicy.datasets import DemoData
from diffpolicy.datasets.normalizer import LinearNormalizer
from diffpolicy.policy.checkpoint import CheckpointError, load_checkpoint
from diffpolicy.policy.diffusion_policy import EXECUTION_KEYS, PolicyConfig
from diffpolicy.policy.pretrained import is_pretrained_path, load_pretrained


def initial_weights(path: str | Path, config: PolicyConfig, task: str) -> dict[str, torch.Tensor]:
    """The state dict (normaliser included) that ``training.init_from=path`` starts from.

    Raises :class:`CheckpointError` when ``path`` is missing, not a checkpoint or
    pretrained folder, from another task, or holds a different network than ``config``
    (the differing fields named).
    """
    if is_pretrained_path(path):
        policy, info = load_pretrained(path, task=task)
        saved, state = info["policy_config"], policy.state_dict()
    else:
        ckpt = load_checkpoint(path, task=task)
        saved, state = ckpt["policy_config"], ckpt["ema"]["averaged"]
    diff = config.differences(saved, ignore=EXECUTION_KEYS | {"loss"})
    if diff:
        raise CheckpointError(f"training.init_from={path} holds a different network (differs in: "
                              + ", ".join(f"{k} {there!r} there, {here!r} here" for k, (there, here) in diff.items())
                              + "): give the policy it was trained with")
    return state


def range_overshoot(normalizer: LinearNormalizer, data: DemoData) -> dict[str, float]:
    """How far ``data``'s low-dim fields, scaled by ``normalizer``, leave [-1, 1]: field ->
    0.0 (not at all) or e.g. 0.1 (the furthest value lies at 1.1 or -1.1)."""
    out = {}
    for key, values in data.frames.items():
        if key in data.cameras or key not in normalizer.keys:
            continue
        scaled = normalizer.normalize(key, values.float())
        out[key] = max(0.0, float(scaled.abs().max()) - 1.0)
    return out
