"""Run by ``torchrun`` in test_ddp.py: train, log which ranks saved checkpoints, dump final weights.

Usage: ddp_worker.py OUT_DIR key=value ...
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from policy_helpers import compose_config  # noqa: E402

from diffpolicy.policy import train as train_mod  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    original = train_mod.CheckpointDir.save_latest

    def logged_save(self, ckpt):
        with open(out / "saves.log", "a") as f:
            f.write(f"rank{rank} step{ckpt['step']}\n")
        return original(self, ckpt)

    train_mod.CheckpointDir.save_latest = logged_save
    result = train_mod.train(compose_config("train", sys.argv[2:]), progress=False)
    torch.save({"policy": result.policy.state_dict(), "ema": result.ema.averaged.state_dict(),
                "step": result.step, "world": torch.distributed.get_world_size()},
               out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
