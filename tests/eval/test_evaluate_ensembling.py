"""diffpolicy-eval with temporal ensembling: report fields, title, latency, and refused options."""
import json

import pytest

from diffpolicy.eval.evaluate import evaluate
from diffpolicy.eval.metrics import sampling_settings
from diffpolicy.policy.run_config import ConfigError

from test_evaluate import _cfg


def test_report_records_the_ensembling(keypoints_ckpt, tmp_path):
    out = tmp_path / "ens"
    rep = evaluate(_cfg(keypoints_ckpt, out, n_episodes=2, n_videos=0, latency_calls=3,
                        temporal_ensemble=0.01, replan_every=4))
    saved = json.loads((out / "eval.json").read_text())
    assert saved["sampling"] == {"sampler": "ddim", "num_inference_steps": 3, "n_action_steps": 4,
                                 "temporal_ensemble": 0.01, "replan_every": 4}
    assert saved["config"]["temporal_ensemble"] == 0.01 and len(saved["episodes"]) == 2
    assert "| temporal ensemble m=0.01, a call every 4 steps |" in (out / "eval.md").read_text()
    (rollouts,) = [v for k, v in rep["latency"].items() if "rollouts" in k]
    assert rollouts["n"] == 4                                         # 16 steps / a call every 4
    assert rep["latency"]["batch 1 per env step (ensembling)"]["n"] == 3
    assert "batch 1" not in rep["latency"]


def test_sampling_settings_without_ensembling_are_unchanged():
    pc = {"sampler": "ddim", "num_inference_steps": 10, "n_action_steps": 8}
    assert sampling_settings({"temporal_ensemble": None, "replan_every": None}, pc) == pc
    assert sampling_settings({"temporal_ensemble": 0}, pc) == {**pc, "n_action_steps": 1,
                                                               "temporal_ensemble": 0.0, "replan_every": 1}
    strided = {**pc, "n_action_steps": 7, "action_stride": 2}        # a checkpoint of the current default
    assert sampling_settings({}, strided) == strided
    assert sampling_settings({"temporal_ensemble": 0}, strided) == {**pc, "n_action_steps": 1,   # no stride
                                                                    "temporal_ensemble": 0.0, "replan_every": 1}


@pytest.mark.parametrize("options, message", [
    (dict(temporal_ensemble=-0.5), "temporal_ensemble must be null or a number >= 0 .*got -0.5"),
    (dict(temporal_ensemble=0.1, replan_every=0), r"replan_every must be an integer in \[1, 15\] .*got 0"),
    (dict(temporal_ensemble=0.1, replan_every=16), r"replan_every must be an integer in \[1, 15\] "
                                                   r"\(horizon 16 - n_obs_steps 2 \+ 1.*got 16"),
    (dict(replan_every=2), "replan_every=2 applies only with temporal_ensemble"),
    (dict(temporal_ensemble=0.1, n_action_steps=4), "n_action_steps=4 does not apply with temporal_ensemble"),
])
def test_bad_options_stop_before_any_output(keypoints_ckpt, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(_cfg(keypoints_ckpt, tmp_path / "bad", latency_calls=0, **options))
    assert not (tmp_path / "bad").exists()
