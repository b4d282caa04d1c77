import pytest
import torch

from diffpolicy.datasets import LinearNormalizer
from diffpolicy.policy.diffusion_policy import DiffusionPolicy, PolicyConfig


def _lowdim_policy(**kw) -> DiffusionPolicy:
    cfg = PolicyConfig(down_dims=(16, 32, 64), step_embed_dim=16, **kw)
    norm = LinearNormalizer().fit({"obs": torch.rand(50, 20) * 512, "action": torch.rand(50, 2) * 512})
    return DiffusionPolicy(cfg, norm)


def test_loss_is_finite_and_reaches_all_parameters():
    torch.manual_seed(0)
    policy = _lowdim_policy()
    batch = {"obs": torch.rand(4, 16, 20) * 512, "action": torch.rand(4, 16, 2) * 512}
    loss = policy.compute_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in policy.unet.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    # a fixed generator gives the same loss twice
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert policy.compute_loss(batch, g1) == policy.compute_loss(batch, g2)


def test_bad_shapes_are_reported():
    policy = _lowdim_policy()
    with pytest.raises(ValueError, match=r"batch\['action'\] must have shape \(B, 16, 2\)"):
        policy.compute_loss({"obs": torch.rand(2, 2, 20), "action": torch.rand(2, 8, 2)})
    with pytest.raises(ValueError, match=r"obs\['obs'\] must have shape \(B, >= 2, 20\)"):
        policy.predict_action(torch.rand(2, 2, 5))
    with pytest.raises(ValueError, match="needs \\['action', 'obs'\\]"):
        DiffusionPolicy(PolicyConfig(), LinearNormalizer().fit({"action": torch.rand(5, 2)}))
    with pytest.raises(ValueError, match="n_obs_steps - 1 \\+ n_action_steps"):
        PolicyConfig(horizon=8, n_obs_steps=2, n_action_steps=8)


def test_predict_action_executes_the_receding_horizon_slice(monkeypatch):
    policy = _lowdim_policy(n_obs_steps=3, n_action_steps=5)
    seq = torch.arange(16.0).reshape(1, 16, 1).repeat(2, 1, 2)
    monkeypatch.setattr(policy, "sample_actions", lambda *a, **k: seq)
    out = policy.predict_action(torch.rand(2, 3, 20))
    assert out.shape == (2, 5, 2)
    assert out[0, :, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]   # entries To-1 .. To+Ta-2


def test_action_stride_executes_every_kth_planned_action(monkeypatch):
    """k = 2, To = 2, Ta = 7: the last action of each pair, entries 2, 4, .., 14 of 16."""
    policy = _lowdim_policy(n_obs_steps=2, n_action_steps=7, action_stride=2)
    seq = torch.arange(16.0).reshape(1, 16, 1).repeat(2, 1, 2)
    monkeypatch.setattr(policy, "sample_actions", lambda *a, **k: seq)
    assert policy.predict_action(torch.rand(2, 2, 20))[0, :, 0].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]
    with pytest.raises(ValueError, match=r"1 \+ action_stride \* n_action_steps \(17\) must not exceed horizon \(16\)"):
        PolicyConfig(n_action_steps=8, action_stride=2)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="policy.action_stride must be an integer >= 1"):
            PolicyConfig(action_stride=bad)


@pytest.fixture(scope="module")
def overfit():
    """A small policy trained on 3 observation -> trajectory pairs (a few seconds)."""
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 16)
    trajs = torch.stack([torch.stack([100 + 300 * t, 200 + 0 * t], -1),           # left to right
                         torch.stack([400 - 300 * t, 150 + 200 * t], -1),         # diagonal
                         torch.stack([250 + 0 * t, 450 - 350 * t], -1)])          # upwards
    obs = (torch.rand(3, 1, 20) * 512).repeat(1, 2, 1)                # one observation per trajectory
    norm = LinearNormalizer().fit({"obs": obs.reshape(-1, 20), "action": trajs.reshape(-1, 2)})
    policy = DiffusionPolicy(PolicyConfig(down_dims=(16, 32, 64), step_embed_dim=16), norm)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    batch = {"obs": obs.repeat(8, 1, 1), "action": trajs.repeat(8, 1, 1)}
    for _ in range(400):
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return policy.eval(), obs, trajs


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 100)])
def test_overfits_a_few_trajectories(overfit, sampler, steps):
    """Sampling returns the right trajectory for each observation, in world units
    (the normaliser is applied both ways), with DDIM and DDPM."""
    policy, obs, trajs = overfit
    gen = torch.Generator().manual_seed(0)
    seqs = [policy.sample_actions({"obs": obs}, generator=gen, sampler=sampler, num_inference_steps=steps)
            for _ in range(3)]
    assert seqs[0].shape == (3, 16, 2)
    err = torch.stack([(seq - trajs).abs().mean(dim=(1, 2)) for seq in seqs]).mean(0)
    assert err.max() < 25.0, err          # mean pixel error; the trajectories are 100-300 px apart
    act = policy.predict_action({"obs": obs}, generator=torch.Generator().manual_seed(0),
                                sampler=sampler, num_inference_steps=steps)
    ref = policy.sample_actions({"obs": obs}, generator=torch.Generator().manual_seed(0),
                                sampler=sampler, num_inference_steps=steps)
    torch.testing.assert_close(act, ref[:, 1:9])


def test_untrained_policy_does_not_pass_the_overfit_check():
    """The bound above is meaningful: an untrained policy misses it by far."""
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 16)
    trajs = torch.stack([torch.stack([100 + 300 * t, 200 + 0 * t], -1)] * 3)
    norm = LinearNormalizer().fit({"obs": torch.rand(10, 20) * 512,
                                   "action": torch.tensor([[100.0, 150.0], [400.0, 450.0]])})
    policy = DiffusionPolicy(PolicyConfig(down_dims=(16, 32, 64), step_embed_dim=16), norm).eval()
    seq = policy.sample_actions({"obs": torch.zeros(3, 2, 20)}, generator=torch.Generator().manual_seed(0))
    assert (seq - trajs).abs().mean(dim=(1, 2)).max() > 25.0


@pytest.mark.parametrize("image_encoder", ["resnet18", "small"])
def test_image_policy_loss_and_prediction_shapes(image_encoder):
    torch.manual_seed(0)
    norm = LinearNormalizer().fit({"obs": torch.rand(20, 2) * 512, "action": torch.rand(20, 2) * 512},
                                  image_keys=("image",))
    cfg = PolicyConfig(obs_dim=2, cameras={"image": {"shape": [3, 96, 96], "crop": [76, 76]}},
                       down_dims=(16, 32, 64), step_embed_dim=16, num_inference_steps=2,
                       image_encoder=image_encoder)
    policy = DiffusionPolicy(cfg, norm)
    assert policy.global_cond_dim == 2 * 66
    obs = {"image": torch.rand(2, 2, 3, 96, 96), "obs": torch.rand(2, 2, 2) * 512}
    loss = policy.compute_loss({"obs": obs, "action": torch.rand(2, 16, 2) * 512})
    loss.backward()
    assert policy.obs_encoder.cameras["image"].trunk[0].weight.grad is not None   # gradient reaches the ResNet
    policy.eval()
    uint8 = {"image": (obs["image"] * 255).round().to(torch.uint8), "obs": obs["obs"]}
    assert policy.predict_action(uint8).shape == (2, 8, 2)


def test_num_train_timesteps_is_named_when_bad():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="policy.num_train_timesteps must be an integer >= 1"):
            PolicyConfig(num_train_timesteps=bad)


@pytest.mark.parametrize("down_dims, horizon", [((16, 32), 10), ((16, 32, 64, 64), 16)])
def test_policies_with_other_unet_depths_train_and_act(down_dims, horizon):
    norm = LinearNormalizer().fit({"obs": torch.rand(50, 20) * 512, "action": torch.rand(50, 2) * 512})
    policy = DiffusionPolicy(PolicyConfig(down_dims=down_dims, step_embed_dim=16, horizon=horizon,
                                          n_action_steps=4, action_stride=1), norm)
    loss = policy.compute_loss({"obs": torch.rand(4, 2, 20) * 512, "action": torch.rand(4, horizon, 2) * 512})
    loss.backward()
    assert torch.isfinite(loss) and policy.predict_action(torch.rand(2, 2, 20) * 512).shape == (2, 4, 2)
