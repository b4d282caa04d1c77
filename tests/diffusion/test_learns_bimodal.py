"""Proof it learns: a small ConditionalUnet1D trained for a few hundred steps on
CPU reproduces a bimodal trajectory distribution with both samplers.

The data are 2-D paths of horizon 16 from left to right that pass an obstacle
either above or below (50/50), shifted vertically by a conditioning offset.
A regressor (or a broken diffusion chain) averages the two modes into a path
straight through the obstacle; a working diffusion model puts samples on both
sides, near the data.  The negative tests show the same checks fail for a
sampler on reversed betas, for a time index running the wrong way, and (slow)
for a model trained on a broken schedule.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from diffpolicy.diffusion.sampling import DiffusionSampler
from diffpolicy.diffusion.schedule import NoiseSchedule
from diffpolicy.diffusion.unet1d import ConditionalUnet1D

H = 16
AMP, OBSTACLE_RADIUS, MAX_OFFSET = 0.6, 0.35, 0.2
_S = torch.linspace(0, 1, H)
X_PATH = -0.8 + 1.6 * _S                 # left to right
BUMP = torch.sin(math.pi * _S)           # 0 at both ends, 1 above/below the obstacle

# pass/fail thresholds (the data themselves: share 0.5, mean distance 0.04, no hits)
SHARE_RANGE = (0.3, 0.7)
MAX_MEAN_DIST = 0.1
MAX_HIT_RATE = 0.15


def make_paths(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` trajectories ``(n, H, 2)`` and their offsets ``(n, 1)`` (the condition)."""
    side = torch.randint(0, 2, (n,), generator=g) * 2.0 - 1.0
    offset = (torch.rand(n, generator=g) * 2 - 1) * MAX_OFFSET
    amp = AMP + (torch.rand(n, generator=g) * 2 - 1) * 0.1
    y = side[:, None] * amp[:, None] * BUMP + offset[:, None] + 0.02 * torch.randn(n, H, generator=g)
    x = X_PATH + 0.02 * torch.randn(n, H, generator=g)
    return torch.stack([x, y], dim=-1), offset[:, None]


def mode_path(side: float, offset: torch.Tensor) -> torch.Tensor:
    """Centre path of one mode for each offset ``(n, 1)`` -> ``(n, H, 2)``."""
    y = side * AMP * BUMP + offset
    return torch.stack([X_PATH.expand_as(y), y], dim=-1)


def assess(traj: torch.Tensor, offset: torch.Tensor) -> dict[str, float]:
    """Share of paths in the upper mode, mean distance to the nearer mode's centre
    path (mean over steps), and the share of paths entering the obstacle."""
    d_up = (traj - mode_path(1.0, offset)).norm(dim=-1).mean(dim=1)
    d_down = (traj - mode_path(-1.0, offset)).norm(dim=-1).mean(dim=1)
    centre = torch.stack([torch.zeros_like(offset), offset], dim=-1)          # (n, 1, 2)
    hit = ((traj - centre).norm(dim=-1) < OBSTACLE_RADIUS).any(dim=1)
    return {"share_upper": (d_up < d_down).float().mean().item(),
            "mean_dist": torch.minimum(d_up, d_down).mean().item(),
            "hit_rate": hit.float().mean().item()}


def is_faithful(stats: dict[str, float]) -> bool:
    return (SHARE_RANGE[0] <= stats["share_upper"] <= SHARE_RANGE[1]
            and stats["mean_dist"] <= MAX_MEAN_DIST and stats["hit_rate"] <= MAX_HIT_RATE)


def train(schedule: NoiseSchedule, steps: int = 600, lr: float = 5e-3, batch: int = 128,
          seed: int = 0, flip_training_time: bool = False) -> ConditionalUnet1D:
    """Train a ~0.28 M-parameter UNet; returns its EMA copy (eval mode)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data, cond = make_paths(4096, g)
    model = ConditionalUnet1D(2, 1, down_dims=(16, 32, 64), step_embed_dim=32, kernel_size=5)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-6, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    n = schedule.num_steps
    for i in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        t = torch.randint(0, n, (batch,), generator=g)
        noise = torch.randn(batch, H, 2, generator=g)
        t_noise = (n - 1 - t) if flip_training_time else t
        noisy = schedule.add_noise(data[idx], noise, t_noise)
        loss = (model(noisy, t, cond[idx]) - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.99, (i + 1) / (i + 10))
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    return ema.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Thousands of small ops per step: on the shared 2-core machine two OpenMP
    threads contending with other jobs made training ~10x slower (measured
    65 ms vs 670 ms per step).  Restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def trained(_one_thread):
    schedule = NoiseSchedule("cosine", 100)
    model = train(schedule)
    _, offsets = make_paths(200, torch.Generator().manual_seed(123))
    return model, schedule, offsets


def draw(model, sampler: DiffusionSampler, offsets: torch.Tensor, time_map=None) -> torch.Tensor:
    def fn(x, t, cond):
        return model(x, t if time_map is None else time_map(t), cond)
    return sampler(fn, (len(offsets), H, 2), offsets, generator=torch.Generator().manual_seed(7))


def test_metric_accepts_data_and_rejects_the_mean_path():
    data, offsets = make_paths(400, torch.Generator().manual_seed(1))
    assert is_faithful(assess(data, offsets))
    one_mode = mode_path(1.0, offsets)                                 # every path above
    assert not is_faithful(assess(one_mode, offsets))
    mean_path = mode_path(0.0, offsets)                                # regression to the mean
    stats = assess(mean_path, offsets)
    assert stats["hit_rate"] == 1.0 and not is_faithful(stats)


@pytest.mark.parametrize("method, steps", [("ddpm", None), ("ddim", 10)])
def test_samples_cover_both_modes_near_the_data(trained, method, steps):
    model, schedule, offsets = trained
    stats = assess(draw(model, DiffusionSampler(schedule, method, steps), offsets), offsets)
    assert is_faithful(stats), f"{method}: {stats}"


def test_sampler_on_reversed_betas_fails(trained):
    model, schedule, offsets = trained
    broken = NoiseSchedule("cosine", 100)
    broken.betas = broken.betas.flip(0)          # the sampler is handed the wrong betas
    stats = assess(draw(model, DiffusionSampler(broken, "ddpm"), offsets), offsets)
    assert not is_faithful(stats), stats


def test_time_index_running_the_wrong_way_fails(trained):
    """NoProp counts time the other way round; mixing the conventions must show."""
    model, schedule, offsets = trained
    stats = assess(draw(model, DiffusionSampler(schedule, "ddpm"), offsets,
                        time_map=lambda t: schedule.num_steps - 1 - t), offsets)
    assert not is_faithful(stats), stats


@pytest.mark.slow
def test_model_trained_on_broken_schedule_fails(_one_thread):
    """Training noise levels that do not match the step index (schedule read back
    to front) gives a model whose samples fail the same checks."""
    schedule = NoiseSchedule("cosine", 100)
    model = train(schedule, flip_training_time=True)
    _, offsets = make_paths(200, torch.Generator().manual_seed(123))
    stats = assess(draw(model, DiffusionSampler(schedule, "ddpm"), offsets), offsets)
    assert not is_faithful(stats), stats
