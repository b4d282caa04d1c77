"""``diffpolicy-eval checkpoint=runs/.../checkpoints/latest.pt [n_episodes=50 ...]``."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from diffpolicy.cli._errors import run_cli
from diffpolicy.eval.evaluate import evaluate


@hydra.main(config_path="../configs/evaluation", config_name="eval", version_base=None)
def _main(cfg: DictConfig) -> None:
    run_cli(lambda: evaluate(cfg))


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
