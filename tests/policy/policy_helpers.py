"""Helpers of the policy tests: compose Hydra configs, tiny run overrides."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir


CONFIG_DIR = Path(__file__).resolve().parents[2] / "diffpolicy" / "configs"


def compose_config(name: str, overrides: list[str]) -> dict:
    """The config Hydra would compose for ``diffpolicy-<name> <overrides>``, as a plain dict."""
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def tiny_overrides(store: Path, run_dir: Path, task: str = "pusht_keypoints", steps: int = 12,
                   **extra) -> list[str]:
    """A few-second run: 2-level-wide tiny UNet, small batches, frequent checkpoints."""
    over = {"task": task, "task.dataset_path": str(store), "run_dir": str(run_dir),
            "policy.down_dims": "[16,32,64]", "policy.step_embed_dim": 16,
            "policy.num_inference_steps": 4, "training.batch_size": 16,
            "training.max_steps": steps, "training.warmup_steps": 2, "training.log_every": 2,
            "training.val_every": 6, "training.checkpoint_every": 4, "training.eval_every": 0,
            "training.num_threads": 1}
    if task == "pusht_image":
        over.update({"task.cameras.image.crop": "[76,76]", "training.batch_size": 4})
    over.update(extra)
    return [f"{k}={v}" for k, v in over.items()]


def copy_demo_episodes(src: Path, dst: Path, n_episodes: int, skip: tuple[str, ...] = ()) -> Path:
    """A new store at ``dst`` with the first ``n_episodes`` of the store ``src``, without the keys ``skip``."""
    import numpy as np

    from diffpolicy.datasets import ReplayBuffer

    source, copy = ReplayBuffer.open(src, mode="r"), ReplayBuffer.create(dst)
    for i in range(n_episodes):
        copy.add_episode({k: np.asarray(v) for k, v in source.get_episode(i).items() if k not in skip})
    return dst
