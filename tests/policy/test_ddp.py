"""Two CPU processes (gloo) under torchrun train one tiny policy with DDP."""
import socket
import subprocess
import sys
from pathlib import Path

import torch

from diffpolicy.policy.checkpoint import load_checkpoint

from policy_helpers import tiny_overrides

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical(small_store, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           str(HERE / "ddp_worker.py"), str(tmp_path),
           *tiny_overrides(small_store, run_dir, steps=6, **{"training.val_every": 3})]
    out = subprocess.run(cmd, cwd=HERE.parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == 2 and r0["step"] == r1["step"] == 6
    for key, a in r0["policy"].items():
        assert torch.equal(a, r1["policy"][key]), key           # gradients were averaged
    for key, a in r0["ema"].items():
        assert torch.equal(a, r1["ema"][key]), key
    # weights moved away from the initialisation (training happened)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 6 and len(ckpt["rng"]) == 2          # both ranks' RNG states
    torch.testing.assert_close(ckpt["model"]["unet.final_conv.weight"],
                               r0["policy"]["unet.final_conv.weight"])
    saves = (tmp_path / "saves.log").read_text().split()
    assert saves == ["rank0", "step4", "rank0", "step6"]        # only rank 0 writes


def test_two_process_ddp_with_in_training_eval_off_the_checkpoint_grid(small_store, tmp_path):
    """eval_every not a multiple of checkpoint_every: rank 0 evaluates alone, then every rank
    checkpoints together (this deadlocked when only rank 0 knew it had evaluated)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           str(HERE / "ddp_worker.py"), str(tmp_path),
           *tiny_overrides(small_store, run_dir, steps=9, **{"training.eval_every": 3,
                                                               "training.checkpoint_every": 2,
                                                               "training.eval_episodes": 1,
                                                               "training.eval_max_steps": 8,
                                                               "training.val_every": 0})]
    out = subprocess.run(cmd, cwd=HERE.parents[1], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    saves = (tmp_path / "saves.log").read_text().split()
    assert saves[1::2] == [f"step{s}" for s in (2, 3, 4, 6, 8, 9)]   # the grid plus the eval steps
    assert set(saves[0::2]) == {"rank0"}
