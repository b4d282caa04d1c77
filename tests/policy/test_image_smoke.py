"""The whole image path on CPU: train a few steps (with an in-training rollout), then evaluate."""
import json

from diffpolicy.eval.evaluate import evaluate
from diffpolicy.policy.checkpoint import load_checkpoint
from diffpolicy.policy.train import train

from policy_helpers import compose_config, tiny_overrides


def test_image_policy_trains_and_evaluates(small_store, tmp_path):
    run_dir = tmp_path / "img"
    over = tiny_overrides(small_store, run_dir, task="pusht_image", steps=3,
                          **{"training.eval_every": 3, "training.eval_episodes": 1,
                             "training.eval_max_steps": 16, "training.val_every": 0,
                             "policy.num_inference_steps": 2})
    result = train(compose_config("train", over), progress=False)
    assert result.step == 3
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt", task="pusht_image")
    assert ckpt["policy_config"]["cameras"] == {"image": {"shape": [3, 96, 96], "crop": [76, 76]}}
    assert "eval_score" in ckpt["metrics"]                        # the in-training rollout ran
    best = list((run_dir / "checkpoints").glob("best_step00000003_score*.pt"))
    assert len(best) == 1
    report = evaluate(dict(checkpoint=str(best[0]), task="pusht_image", n_episodes=2, seed_start=100000,
                           max_steps=8, n_envs=2, use_ema=True, sampler=None, num_inference_steps=None,
                           sampling_seed=0, device="cpu", output_dir=str(tmp_path / "ev"), n_videos=1,
                           video_format="gif", latency_calls=2, num_threads=None))
    assert report["metrics"]["score"]["n"] == 2
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["task"] == "pusht_image" and all(e["steps"] == 8 for e in saved["episodes"])
