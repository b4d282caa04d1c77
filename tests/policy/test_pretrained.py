"""Pretrained folders: export a checkpoint as safetensors + config.json, load it back (no pickle)."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffpolicy.eval.evaluate import evaluate, load_policy
from diffpolicy.policy.checkpoint import CheckpointError, load_checkpoint
from diffpolicy.policy.pretrained import CONFIG_NAME, WEIGHTS_NAME, export_pretrained, load_pretrained
from diffpolicy.policy.run_config import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from eval_helpers import make_checkpoint  # noqa: E402  (tests/eval: the tiny checkpoint evaluation uses)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")


@pytest.fixture
def folder(ckpt, tmp_path) -> Path:
    return export_pretrained(ckpt, tmp_path / "shared" / "tiny")


def _obs(batch=3):
    return {"obs": torch.rand(batch, 2, 20, generator=torch.Generator().manual_seed(5)) * 512}


def _rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def test_round_trip_predicts_what_the_checkpoint_does(ckpt, folder):
    from_pt, _ = load_policy(ckpt)
    policy, info = load_pretrained(folder)
    assert not policy.training
    a = from_pt.predict_action(_obs(), generator=torch.Generator().manual_seed(0))
    b = policy.predict_action(_obs(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    # what evaluate() reads from a checkpoint
    assert info["task"] == "pusht_keypoints" and info["step"] == 7 and info["config"]["seed"] == 3
    assert info["config"]["task"]["obs_keys"] == ["keypoint", "state[0:2]"] and info["ema_weights"] is True
    assert info["policy_config"] == from_pt.config.to_dict() and info["source_checkpoint"] == "latest.pt"
    for path in (folder / CONFIG_NAME, folder / WEIGHTS_NAME):              # either file names the folder
        assert torch.equal(load_pretrained(path)[0].predict_action(
            _obs(), generator=torch.Generator().manual_seed(0)), a)


@pytest.mark.parametrize("obs_type", ["state", "image"])
def test_other_observation_types_keep_every_tensor(tmp_path, obs_type):
    ckpt = make_checkpoint(tmp_path / "latest.pt", task=f"pusht_{obs_type}", obs_type=obs_type)
    policy, info = load_pretrained(export_pretrained(ckpt, tmp_path / "out"), task=f"pusht_{obs_type}")
    want = load_checkpoint(ckpt)["ema"]["averaged"]
    got = policy.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert info["config"]["task"]["env_id"] == f"diffpolicy/PushT-{obs_type}-v0"


def test_folder_is_safetensors_and_json_only(ckpt, folder, monkeypatch):
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    tensors = load_file(folder / WEIGHTS_NAME)                               # safetensors alone
    ema = load_checkpoint(ckpt)["ema"]["averaged"]
    assert set(tensors) == set(ema) and "normalizer.params.obs.scale" in tensors
    assert all(torch.equal(tensors[k], ema[k]) for k in ema)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format"] == "diffpolicy-pretrained" and config["format_version"] == 1
    assert config["task_config"]["obs_dim"] == 20 and config["training_seed"] == 3
    assert "dataset_path" not in config["task_config"]            # a path on the training machine
    assert len(config["model_sha256"]) == 64 and config["name"] == "tiny"

    def no_pickle(*args, **kwargs):
        raise AssertionError("unpickling while loading a pretrained folder")
    for module, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, attr, no_pickle)
    load_pretrained(folder)


def test_raw_weights_and_use_ema(ckpt, tmp_path, folder):
    raw = export_pretrained(ckpt, tmp_path / "raw", use_ema=False, name="tiny raw")
    policy, info = load_pretrained(raw)
    model = load_checkpoint(ckpt)["model"]
    assert info["ema_weights"] is False and info["name"] == "tiny raw"
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in model.items())
    assert load_policy(raw, use_ema=False)[1]["ema_weights"] is False
    with pytest.raises(ConfigError, match="holds its EMA weights only .*use_ema=false asks for the raw"):
        load_policy(folder, use_ema=False)
    with pytest.raises(ConfigError, match="holds its raw weights only .*use_ema=true asks for the EMA"):
        load_policy(raw, use_ema=True)


def test_tampered_or_partial_weights_fail_the_hash(folder):
    weights = folder / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match the hash in config.json: "
                                              "tampered or a partial copy"):
        load_pretrained(folder)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="tampered or a partial copy"):
        load_pretrained(folder)


def test_config_that_does_not_fit_the_weights_names_a_tensor(folder):
    config = json.loads((folder / CONFIG_NAME).read_text())
    _rewrite_config(folder, policy_config={**config["policy_config"], "down_dims": [16, 32, 128]})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the weights do not fit the policy .*"
                                              r"wrong shapes \(\d+\): unet\.\S+: expected \(\d+"):
        load_pretrained(folder)
    _rewrite_config(folder, policy_config={**config["policy_config"],
                                           "cameras": {"image": {"shape": [3, 96, 96], "crop": None}}})
    with pytest.raises(CheckpointError, match=r"missing tensors \(\d+\): \S+.* \| "
                                              r"wrong shapes"):
        load_pretrained(folder)
    _rewrite_config(folder, policy_config={**config["policy_config"], "obs_dim": 5})
    with pytest.raises(CheckpointError, match=r"normalizer\.params\.obs\.\w+: expected \(5,\), found \(20,\)"):
        load_pretrained(folder)
    _rewrite_config(folder, policy_config={**config["policy_config"], "sampler": "euler"})
    with pytest.raises(CheckpointError, match="config.json: policy_config does not describe a policy: "
                                              "policy.sampler must be one of"):
        load_pretrained(folder)
    _rewrite_config(folder, policy_config={**config["policy_config"], "down_dims": [16, 32]})   # 2 levels: valid,
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(\d+\): unet\.down\.1\.2\."):  # not these weights
        load_pretrained(folder)
    _rewrite_config(folder, policy_config={**config["policy_config"], "down_dims": []})
    with pytest.raises(CheckpointError, match="does not describe a policy: .*one positive width per level"):
        load_pretrained(folder)


def test_wrong_task_refused(folder):
    with pytest.raises(CheckpointError, match="trained on task 'pusht_keypoints', but task 'pusht_image' "
                                              "was asked for"):
        load_pretrained(folder, task="pusht_image")
    assert load_pretrained(folder, task="pusht_keypoints")[1]["task"] == "pusht_keypoints"


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / CONFIG_NAME).unlink(), "config.json not found"),
    (lambda f: (f / WEIGHTS_NAME).unlink(), "model.safetensors not found"),
    (lambda f: (f / CONFIG_NAME).write_text("{not json"), "cannot read .*config.json as JSON"),
    (lambda f: _rewrite_config(f, format="something-else"),
     "not a diffpolicy pretrained config .*found 'something-else'"),
    (lambda f: _rewrite_config(f, format_version=2), "format_version 2 is unknown"),
    (lambda f: _rewrite_config(f, model_sha256=None), "key 'model_sha256' must be a string, found None"),
    (lambda f: _rewrite_config(f, step="7"), "key 'step' must be an integer, found '7'"),
])
def test_damaged_folder_errors_name_the_problem(folder, damage, message):
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder)


def test_missing_config_key(folder):
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["policy_config"]
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: key 'policy_config' is missing"):
        load_pretrained(folder)
    (folder / "other.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="other.safetensors is not a pretrained folder: give the folder"):
        load_pretrained(folder / "other.safetensors")
    with pytest.raises(CheckpointError, match="pretrained folder not found: .*missing"):
        load_pretrained(folder.parent / "missing")


def test_non_empty_out_dir_refused(ckpt, folder):
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="the folder exists and is not empty .*--overwrite"):
        export_pretrained(ckpt, folder)
    export_pretrained(ckpt, folder, use_ema=False, overwrite=True)
    assert load_pretrained(folder)[1]["ema_weights"] is False and (folder / "notes.txt").is_file()


def test_evaluate_a_pretrained_folder(folder):
    cfg = dict(checkpoint=str(folder), task=None, n_episodes=2, seed_start=100000, max_steps=8, n_envs=50,
               use_ema=True, sampler=None, num_inference_steps=None, sampling_seed=0, device="cpu",
               output_dir=None, n_videos=0, video_format="gif", latency_calls=0, num_threads=None)
    report = evaluate(cfg)
    out = folder.parent / "eval_tiny_2"                                      # beside the folder, not in it
    saved = json.loads((out / "eval.json").read_text())
    assert saved["task"] == "pusht_keypoints" and saved["step"] == 7 and saved["training_seed"] == 3
    assert len(saved["episodes"]) == 2 and report["metrics"]["score"]["n"] == 2
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


CLI = [sys.executable, "-m", "diffpolicy.policy.pretrained", "export"]


def test_cli_exports(ckpt, tmp_path):
    ok = subprocess.run(CLI + [str(ckpt), str(tmp_path / "out"), "--raw"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "[export]" in ok.stdout and "raw weights" in ok.stdout
    assert load_pretrained(tmp_path / "out")[1]["ema_weights"] is False


@pytest.mark.parametrize("cmd", [CLI, [str(Path(sys.executable).parent / "diffpolicy-export")]],
                         ids=["module", "console_script"])
def test_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path, cmd):
    if not Path(cmd[0]).exists():
        pytest.skip(f"{cmd[0]} not installed (run `make setup`)")
    bad = subprocess.run(cmd + [str(tmp_path / "missing.pt"), str(tmp_path / "out2")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: checkpoint not found") and bad.stderr.count("\n") == 1
    assert not (tmp_path / "out2").exists()


def test_export_leaves_the_kernel_choice_to_the_loading_machine(ckpt, folder):
    assert load_checkpoint(ckpt)["policy_config"]["fast_unet"] is not None
    assert json.loads((folder / "config.json").read_text())["policy_config"]["fast_unet"] == "auto"


def test_export_sets_how_the_policy_executes(ckpt, tmp_path):
    """--action-stride 2 alone: every 2nd planned action, 7 per call (all that fit in H = 16),
    stored in config.json and used by the loaded policy; a stride that leaves the plan is refused."""
    out = export_pretrained(ckpt, tmp_path / "fast", action_stride=2)
    policy, info = load_pretrained(out)
    assert (policy.config.action_stride, policy.config.n_action_steps) == (2, 7)
    assert info["policy_config"]["action_stride"] == 2
    full = policy.predict_action_sequence(_obs(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy.predict_action(_obs(), generator=torch.Generator().manual_seed(0)), full[:, 2:15:2])
    with pytest.raises(CheckpointError, match="n_action_steps=8, action_stride=2: .*must not exceed horizon"):
        export_pretrained(ckpt, tmp_path / "bad", n_action_steps=8, action_stride=2)
    assert not (tmp_path / "bad").exists()


def test_export_sets_the_denoising_steps(ckpt, tmp_path):
    out = export_pretrained(ckpt, tmp_path / "ddim16", num_inference_steps=16, n_action_steps=5, action_stride=2)
    policy, info = load_pretrained(out)
    assert (policy.config.num_inference_steps, policy.config.n_action_steps) == (16, 5)
    assert info["policy_config"]["num_inference_steps"] == 16
    assert policy.predict_action(_obs(), generator=torch.Generator().manual_seed(0)).shape[1] == 5
    n_train = policy.config.num_train_timesteps
    with pytest.raises(CheckpointError, match=rf"num_inference_steps must be in \[1, {n_train}\], got {n_train + 1}"):
        export_pretrained(ckpt, tmp_path / "bad", num_inference_steps=n_train + 1)
    assert not (tmp_path / "bad").exists()
