"""Pretrained folders: the inference part of a checkpoint as safetensors + JSON, no pickle.

A pretrained folder holds two files::

    model.safetensors  the policy's state_dict (EMA weights by default), normaliser buffers
                       included: every tensor contiguous, on the CPU
    config.json        format + format_version, name, task, task_config (keys, dims, env ...),
                       policy_config, step, training_seed, source_checkpoint (file name),
                       ema_weights (true: EMA, false: raw), model_sha256 (of model.safetensors)

:func:`export_pretrained` writes one from a training checkpoint (the only place that
unpickles: do it on the machine that trained).  :func:`load_pretrained` reads one with
``json`` and ``safetensors`` alone and checks, before any weight is used: both files
present, config.json valid and of a known format, the SHA-256 of model.safetensors,
every tensor's name and shape against the policy ``policy_config`` builds, and the task.

Command line::

    diffpolicy-export [export] CHECKPOINT OUT_DIR [--raw] [--overwrite] [--name NAME]
                      [--action-stride K] [--n-action-steps N] [--num-inference-steps S]
    python -m diffpolicy.policy.pretrained export CHECKPOINT OUT_DIR ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from diffpolicy.datasets.normalizer import STAT_NAMES
from diffpolicy.policy.checkpoint import CheckpointError, atomic_write, load_checkpoint
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig, with_execution
from diffpolicy.policy.run_config import ConfigError, task_config

FORMAT = "diffpolicy-pretrained"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# config.json key -> the JSON types it may hold
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "name": (str,), "task": (str,),
    "task_config": (dict,), "policy_config": (dict,), "step": (int,),
    "training_seed": (int, type(None)), "source_checkpoint": (str,), "ema_weights": (bool,),
    "model_sha256": (str,)}
_SHOWN = 3  # offending tensor names shown per kind


def export_pretrained(checkpoint_path: str | Path, out_dir: str | Path, use_ema: bool = True,
                      name: str | None = None, overwrite: bool = False,
                      n_action_steps: int | None = None, action_stride: int | None = None,
                      num_inference_steps: int | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` from a training checkpoint.

    ``use_ema`` picks the EMA weights (default) or the raw ones; ``name`` (default: the
    folder's name) is recorded in config.json.  ``n_action_steps`` / ``action_stride``
    (None: the checkpoint's) set how the exported policy executes its plans
    (:func:`~diffpolicy.policy.diffusion_policy.with_execution`), ``num_inference_steps``
    (None: the checkpoint's) the sampler's denoising steps per call.  An ``out_dir`` that
    exists and is not empty is refused unless ``overwrite``.  Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"cannot export to {out}: it exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"cannot export to {out}: the folder exists and is not empty "
                              f"(choose a new folder, or overwrite=True / --overwrite)")
    ckpt = load_checkpoint(checkpoint_path)
    where = Path(checkpoint_path)
    if use_ema and not isinstance(ckpt.get("ema"), dict):
        raise CheckpointError(f"{checkpoint_path} holds no EMA weights (key 'ema'); export the raw "
                              f"weights with use_ema=False / --raw")
    state = ckpt["ema"]["averaged"] if use_ema else ckpt["model"]
    policy = build_policy(ckpt["policy_config"], where)
    try:
        policy.config = with_execution(policy.config, n_action_steps, action_stride)
        if num_inference_steps is not None:
            policy.config = replace(policy.config, num_inference_steps=num_inference_steps)
    except ValueError as exc:
        raise CheckpointError(f"cannot export {where}: {exc}") from None
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in state.items()}
    _check_tensors(tensors, policy, where)
    blob = save_safetensors(tensors, metadata={"format": "pt"})
    task_config = {k: v for k, v in ckpt["config"]["task"].items()
                   if k != "dataset_path"}  # a path on the training machine
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "name": name or out.resolve().name, "task": ckpt["task"], "task_config": task_config,
              # the kernel path is chosen on the machine that loads it, not the one that trained
              "policy_config": {**policy.config.to_dict(), "fast_unet": "auto"}, "step": int(ckpt["step"]),
              "training_seed": ckpt["config"].get("seed"), "source_checkpoint": where.name,
              "ema_weights": bool(use_ema), "model_sha256": hashlib.sha256(blob).hexdigest()}
    # weights first: a crash in between leaves no config.json (or an old one whose hash fails)
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(blob))
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(out / CONFIG_NAME, lambda f: f.write(text.encode()))
    return out


def load_pretrained(path: str | Path, task: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[DiffusionPolicy, dict]:
    """Rebuild the policy of a pretrained folder; returns ``(policy in eval mode, info)``.

    ``path`` is the folder, or its config.json or model.safetensors.  ``info`` is
    config.json's content laid out like a checkpoint where evaluation reads one:
    ``task``, ``step``, ``policy_config``, ``config = {"task": task_config, "seed":
    training_seed}``, plus ``path`` (the folder, absolute).  With ``task`` given, a folder of
    another task is refused.  Every problem raises :class:`CheckpointError`.
    """
    folder = pretrained_folder(path)
    if folder is None and not Path(path).exists():
        raise CheckpointError(f"pretrained folder not found: {path}")
    if folder is None:
        raise CheckpointError(f"{path} is not a pretrained folder: give the folder holding "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}, or one of those two files")
    cfg_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"pretrained folder {folder}: {p.name} not found")
    config = read_config(cfg_path)
    if task is not None and config["task"] != task:
        raise CheckpointError(f"pretrained policy {folder} was trained on task {config['task']!r}, "
                              f"but task {task!r} was asked for")
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != config["model_sha256"]:
        raise CheckpointError(f"{weights_path}: {WEIGHTS_NAME} does not match the hash in {CONFIG_NAME}: "
                              f"tampered or a partial copy")
    try:  # the bytes just hashed, parsed by safetensors (no pickle)
        tensors = load_safetensors(blob)
    except SafetensorError as exc:
        raise CheckpointError(f"cannot read {weights_path}: {exc}") from exc
    policy = build_policy(config["policy_config"], cfg_path)
    _check_tensors(tensors, policy, weights_path)
    policy.load_state_dict(tensors)
    info = {**config, "config": {"task": config["task_config"], "seed": config["training_seed"]},
            "path": str(folder.resolve())}
    return policy.to(device).eval(), info


def pretrained_folder(path: str | Path) -> Path | None:
    """The pretrained folder ``path`` names (itself, or the parent of its config.json /
    model.safetensors), or None when ``path`` names no such thing."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.name in (CONFIG_NAME, WEIGHTS_NAME):
        return p.parent
    return None


def is_pretrained_path(path: str | Path) -> bool:
    """Whether ``path`` is meant as a pretrained folder (a folder, a ``.json`` or a
    ``.safetensors`` file) rather than a ``.pt`` training checkpoint."""
    p = Path(path)
    return p.is_dir() or p.suffix in (".json", ".safetensors")


def read_config(path: Path) -> dict:
    """config.json of a pretrained folder, its keys, types and format checked."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{path} is not a diffpolicy pretrained config "
                              f"(expected format {FORMAT!r}, found {found!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config.get('format_version')!r} is unknown "
                              f"(this diffpolicy reads {FORMAT_VERSION})")
    for key, types in CONFIG_KEYS.items():
        if key not in config:
            raise CheckpointError(f"{path}: key {key!r} is missing")
        value = config[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CheckpointError(f"{path}: key {key!r} must be "
                                  f"{' or '.join(_json_type(t) for t in types)}, found {value!r}")
    try:
        task_config(config["task_config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: key 'task_config' does not describe a task: {exc}") from None
    return config


def _json_type(t: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", dict: "an object",
            type(None): "null"}[t]


def build_policy(policy_config: dict, where: str | Path) -> DiffusionPolicy:
    """A fresh policy (unfitted normaliser) from ``policy_config``; missing keys take their defaults."""
    try:
        return DiffusionPolicy(PolicyConfig.from_dict(policy_config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: policy_config does not describe a policy: {exc}") from exc


def expected_shapes(policy: DiffusionPolicy) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a trained ``policy``'s state_dict holds: its own, and
    the fitted normaliser's buffers (low-dim keys ``(D,)``, the image key ``()``) that an
    unfitted one lacks."""
    cfg = policy.config
    shapes = {k: tuple(v.shape) for k, v in policy.state_dict().items()
              if not k.startswith("normalizer.")}
    norm = {name: () for name in cfg.cameras}
    if cfg.obs_dim:
        norm["obs"] = (cfg.obs_dim,)
    norm["action"] = (cfg.action_dim,)
    for key, shape in norm.items():
        shapes.update({f"normalizer.params.{key}.{s}": shape for s in STAT_NAMES})
    return shapes


def _check_tensors(tensors: dict[str, torch.Tensor], policy: DiffusionPolicy, where: str | Path) -> None:
    """Refuse tensors missing, unexpected or of the wrong shape for ``policy`` (built from
    policy_config, not yet loaded)."""
    want = expected_shapes(policy)
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    wrong = [f"{k}: expected {want[k]}, found {tuple(tensors[k].shape)}"
             for k in sorted(set(want) & set(tensors)) if tuple(tensors[k].shape) != want[k]]
    problems = [f"{what} ({len(items)}): {'; '.join(items[:_SHOWN])}{' ...' if len(items) > _SHOWN else ''}"
                for what, items in (("missing tensors", missing), ("unexpected tensors", unexpected),
                                    ("wrong shapes", wrong)) if items]
    if problems:
        raise CheckpointError(f"{where}: the weights do not fit the policy that policy_config builds: "
                              + " | ".join(problems))


def main(argv: list[str] | None = None) -> None:
    """``diffpolicy-export [export] CHECKPOINT OUT_DIR [--raw] [--overwrite] [--name NAME]
    [--action-stride K] [--n-action-steps N] [--num-inference-steps S]``."""
    import sys  # noqa: PLC0415

    from diffpolicy.cli._errors import run_cli  # noqa: PLC0415 (the policy package needs no CLI)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="diffpolicy-export",
        usage="diffpolicy-export [export] CHECKPOINT OUT_DIR [--raw] [--overwrite] [--name NAME] "
              "[--action-stride K] [--n-action-steps N] [--num-inference-steps S]",
        description="Export the inference part of a training checkpoint as a pretrained folder "
                    f"({WEIGHTS_NAME} + {CONFIG_NAME}, no pickle).")
    parser.add_argument("checkpoint", help="a .pt file written by diffpolicy-train")
    parser.add_argument("out_dir", help="the folder to write (must be new or empty)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA ones")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    parser.add_argument("--name", default=None, help="name recorded in config.json (default: the folder's)")
    parser.add_argument("--action-stride", type=int, default=None,
                        help="execute every K-th planned action (default: the checkpoint's)")
    parser.add_argument("--n-action-steps", type=int, default=None,
                        help="actions executed per policy call (default: the checkpoint's, or with "
                             "--action-stride alone the most that fit in the plan)")
    parser.add_argument("--num-inference-steps", type=int, default=None,
                        help="the sampler's denoising steps per call (default: the checkpoint's)")
    args = parser.parse_args(argv)

    def export() -> None:
        out = export_pretrained(args.checkpoint, args.out_dir, use_ema=not args.raw, name=args.name,
                                overwrite=args.overwrite, n_action_steps=args.n_action_steps,
                                action_stride=args.action_stride,
                                num_inference_steps=args.num_inference_steps)
        config = read_config(out / CONFIG_NAME)
        print(f"[export] {out}: {config['task']}, step {config['step']}, "
              f"{'EMA' if config['ema_weights'] else 'raw'} weights, sha256 {config['model_sha256'][:12]}")

    run_cli(export)


if __name__ == "__main__":
    main()
