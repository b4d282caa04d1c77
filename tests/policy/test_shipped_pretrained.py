"""The policies shipped under pretrained/: each loads (hash, names, shapes checked) and acts."""
from pathlib import Path

import pytest
import torch

from diffpolicy.policy.pretrained import load_pretrained

SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[2] / "pretrained").glob("*") if p.is_dir())


def test_something_is_shipped():
    assert SHIPPED, "pretrained/ holds no policy folder"


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_policy_loads_and_acts(folder):
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    policy, info = load_pretrained(folder, task="pusht_keypoints")
    obs = {"obs": torch.full((1, policy.config.n_obs_steps, policy.config.obs_dim), 256.0)}
    actions = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (1, policy.config.n_action_steps, 2)
    assert torch.isfinite(actions).all() and (actions.abs() < 1000).all()   # world units, pixels
