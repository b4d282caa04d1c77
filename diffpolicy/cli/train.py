"""``diffpolicy-train task=pusht_keypoints policy=cpu training=demo [key=value ...]``.

Multi-process: ``torchrun --nproc_per_node=2 -m diffpolicy.cli.train ...``.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from diffpolicy.cli._errors import run_cli
from diffpolicy.policy.train import train


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def _main(cfg: DictConfig) -> None:
    run_cli(lambda: train(cfg), run_dir=cfg.run_dir)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
