"""Training-side options for policy quality: policy.loss (mse | l1), training.obs_noise_std with
its linear decay, and a policy with n_obs_steps=3, horizon=20 from data windows to rollouts."""
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from diffpolicy.datasets import LinearNormalizer
from diffpolicy.eval.rollout import run_rollouts
from diffpolicy.policy.checkpoint import atomic_save, load_checkpoint
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from diffpolicy.policy.run_config import ConfigError, check_train_config
from diffpolicy.policy.train import obs_noise_at, train

from policy_helpers import compose_config, tiny_overrides


def _policy(**kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = PolicyConfig(down_dims=(16, 32, 64), step_embed_dim=16, fast_unet=False, **kw)
    norm = LinearNormalizer().fit({"obs": torch.rand(50, 20) * 512, "action": torch.rand(50, 2) * 512})
    return DiffusionPolicy(cfg, norm)


def _batch(horizon=16, to=2):
    g = torch.Generator().manual_seed(1)
    return {"obs": torch.rand(4, to, 20, generator=g) * 512, "action": torch.rand(4, horizon, 2, generator=g) * 512}


def _by_hand(policy, batch, seed, obs_noise_std=0.0):
    """(prediction, target) of compute_loss, drawing from the generator in its order."""
    gen = torch.Generator().manual_seed(seed)
    nobs = policy.normalizer.normalize("obs", batch["obs"][:, :policy.config.n_obs_steps])
    if obs_noise_std > 0:
        nobs = nobs + obs_noise_std * torch.randn(nobs.shape, generator=gen)
    x0 = policy.normalizer.normalize("action", batch["action"])
    noise = torch.randn(x0.shape, generator=gen)
    k = torch.randint(0, policy.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    abar = policy.alpha_bar[k].reshape(-1, 1, 1)
    pred = policy.unet(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, k, nobs.reshape(len(nobs), -1))
    return pred, noise


@torch.no_grad()
def test_l1_loss_is_the_mean_absolute_error_and_differs_from_mse():
    policy, batch = _policy(), _batch()
    mse = policy.compute_loss(batch, torch.Generator().manual_seed(3))
    policy.config = replace(policy.config, loss="l1")
    l1 = policy.compute_loss(batch, torch.Generator().manual_seed(3))
    pred, noise = _by_hand(policy, batch, 3)
    torch.testing.assert_close(l1, (pred - noise).abs().mean())
    torch.testing.assert_close(mse, ((pred - noise) ** 2).mean())
    assert abs(float(l1) - float(mse)) > 1e-3


def test_bad_loss_is_refused():
    with pytest.raises(ValueError, match=r"policy.loss must be one of \('mse', 'l1'\), got 'huber'"):
        PolicyConfig(loss="huber")
    with pytest.raises(ConfigError, match="bad policy config: policy.loss must be one of .*got 'huber'"):
        check_train_config(compose_config("train", ["policy.loss=huber"]))
    assert check_train_config(compose_config("train", ["policy.loss=l1"])).policy["loss"] == "l1"


@torch.no_grad()
def test_obs_noise_is_added_to_the_normalised_observations_only_when_std_is_positive():
    policy, batch = _policy(), _batch()
    plain = policy.compute_loss(batch, torch.Generator().manual_seed(4))
    assert torch.equal(policy.compute_loss(batch, torch.Generator().manual_seed(4), obs_noise_std=0.0), plain)
    noisy = policy.compute_loss(batch, torch.Generator().manual_seed(4), obs_noise_std=0.5)
    assert not torch.equal(noisy, plain)
    pred, noise = _by_hand(policy, batch, 4, obs_noise_std=0.5)
    torch.testing.assert_close(noisy, F.mse_loss(pred, noise))
    # forward (what DDP and the training loop call) passes it on
    torch.manual_seed(9)
    a = policy(batch, obs_noise_std=0.5)
    torch.manual_seed(9)
    assert torch.equal(a, policy.compute_loss(batch, obs_noise_std=0.5))
    with pytest.raises(ValueError, match="obs_noise_std must be >= 0, got -0.1"):
        policy.compute_loss(batch, obs_noise_std=-0.1)


def test_obs_noise_is_refused_for_images():
    cfg = PolicyConfig(obs_dim=2, cameras={"image": {"shape": [3, 96, 96], "crop": [76, 76]}},
                       down_dims=(16, 32, 64), step_embed_dim=16, fast_unet=False)
    norm = LinearNormalizer().fit({"obs": torch.rand(9, 2), "action": torch.rand(9, 2),
                                   "image": torch.rand(9, 3, 96, 96)}, image_keys=("image",))
    policy = DiffusionPolicy(cfg, norm)
    batch = {"obs": {"image": torch.rand(1, 2, 3, 96, 96), "obs": torch.rand(1, 2, 2)},
             "action": torch.rand(1, 16, 2)}
    with pytest.raises(ValueError, match="obs_noise_std applies to policies observing a low-dim vector only"):
        policy.compute_loss(batch, obs_noise_std=0.1)
    with pytest.raises(ConfigError, match="training.obs_noise_std=0.1 applies to low-dimensional .*"
                                          "task 'pusht_image' observes images"):
        check_train_config(compose_config("train", ["task=pusht_image", "training.obs_noise_std=0.1"]))


def test_obs_noise_config_checks_and_schedule():
    with pytest.raises(ConfigError, match="training.obs_noise_std must be >= 0, got -0.2"):
        check_train_config(compose_config("train", ["training.obs_noise_std=-0.2"]))
    for frac in (0, 1.5):
        with pytest.raises(ConfigError, match=f"training.obs_noise_decay_frac must be in \\(0, 1\\], got {frac}"):
            check_train_config(compose_config("train", [f"training.obs_noise_decay_frac={frac}"]))
    # std * max(0, 1 - s / (frac * total))
    assert obs_noise_at(0, 0.1, 0.5, 1000) == 0.1
    assert obs_noise_at(250, 0.1, 0.5, 1000) == pytest.approx(0.05)
    assert obs_noise_at(500, 0.1, 0.5, 1000) == 0.0 and obs_noise_at(800, 0.1, 0.5, 1000) == 0.0
    assert obs_noise_at(999, 0.1, 1.0, 1000) == pytest.approx(0.1 * (1 - 999 / 1000))
    assert obs_noise_at(7, 0.0, 0.5, 1000) == 0.0


def test_training_passes_the_scheduled_noise_and_validation_none(small_store, tmp_path, monkeypatch):
    seen = []
    original = DiffusionPolicy.compute_loss

    def spy(self, batch, generator=None, obs_noise_std=0.0):
        seen.append((torch.is_grad_enabled(), obs_noise_std))
        return original(self, batch, generator, obs_noise_std)

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", spy)
    run_dir = tmp_path / "run"
    train(compose_config("train", tiny_overrides(
        small_store, run_dir, steps=4, **{"training.obs_noise_std": 0.2, "training.obs_noise_decay_frac": 0.5,
                                          "training.val_every": 4, "policy.fast_unet": "false"})), progress=False)
    assert [s for grad, s in seen if grad] == pytest.approx([0.2, 0.1, 0.0, 0.0])   # steps 0..3 of 4
    assert [s for grad, s in seen if not grad] and all(s == 0.0 for grad, s in seen if not grad)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert ckpt["config"]["training"]["obs_noise_std"] == 0.2
    assert ckpt["config"]["training"]["obs_noise_decay_frac"] == 0.5
    assert ckpt["policy_config"]["loss"] == "mse"


def test_resuming_a_checkpoint_written_before_the_loss_key(small_store, tmp_path):
    run_dir = tmp_path / "run"
    over = dict(**{"policy.fast_unet": "false", "training.val_every": 0})
    train(compose_config("train", tiny_overrides(small_store, run_dir, steps=2, **over)), progress=False)
    latest = run_dir / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(latest)
    del ckpt["policy_config"]["loss"]                  # as saved before policy.loss existed
    atomic_save(ckpt, latest)
    res = train(compose_config("train", tiny_overrides(small_store, run_dir, steps=4, resume="true", **over)),
                progress=False)
    assert res.step == 4


def test_three_observation_steps_and_horizon_20_end_to_end(small_store, tmp_path, monkeypatch):
    """n_obs_steps=3, horizon=20: data windows, training, the checkpoint, rollouts with both executions."""
    shapes = []
    original = DiffusionPolicy.compute_loss

    def spy(self, batch, generator=None, obs_noise_std=0.0):
        shapes.append((tuple(batch["obs"].shape), tuple(batch["action"].shape)))
        return original(self, batch, generator, obs_noise_std)

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", spy)
    run_dir = tmp_path / "run"
    res = train(compose_config("train", tiny_overrides(
        small_store, run_dir, steps=2, **{"policy.n_obs_steps": 3, "policy.horizon": 20,
                                          "policy.n_action_steps": 6, "policy.fast_unet": "false",
                                          "training.val_every": 0})), progress=False)
    assert shapes[0] == ((16, 3, 20), (16, 20, 2))
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["policy_config"]["horizon"] == 20
    policy = res.ema.averaged
    seen = []
    sample = DiffusionPolicy.sample_actions

    def record(self, obs, *a, **k):
        seq = sample(self, obs, *a, **k)
        seen.append((tuple(obs["obs"].shape), tuple(seq.shape)))
        return seq

    monkeypatch.setattr(DiffusionPolicy, "sample_actions", record)
    out = run_rollouts(policy, "pusht_keypoints", [100000, 100001], max_steps=12, progress=False)
    assert out.call_batch == [2, 2] and all(e.steps == 12 for e in out.episodes)     # 6 actions per call
    assert seen[0] == ((2, 3, 20), (2, 20, 2))
    seen.clear()
    out = run_rollouts(policy, "pusht_keypoints", [100000], max_steps=12, progress=False, temporal_ensemble=0.1,
                       replan_every=18)                                           # H - To + 1 = 18
    assert out.call_batch == [1] and seen == [((1, 3, 20), (1, 20, 2))]
    with pytest.raises(ValueError, match=r"replan_every must be an integer in \[1, 18\]"):
        run_rollouts(policy, "pusht_keypoints", [0], max_steps=4, progress=False, temporal_ensemble=0.1, replan_every=19)


def test_horizon_must_suit_the_unet_levels():
    with pytest.raises(ValueError, match="policy.horizon must be divisible by 4 .*got 18"):
        PolicyConfig(horizon=18)
    assert PolicyConfig(horizon=20, n_obs_steps=3).horizon == 20
