"""Draw the noise schedules and the forward process on a 2-D point cloud.

    python -m diffpolicy.diffusion.plot_schedules --out docs/img/schedules.png

Top row: alpha_bar and log-SNR against the step t for the linear and cosine
schedules.  Below, one row per schedule: the same 2-D point cloud (two
interleaved half-moons) pushed through q(x_t | x_0) at evenly spaced t,
all with the same noise draw, so the columns differ only in alpha_bar_t.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from diffpolicy.diffusion.schedule import NoiseSchedule

COLORS = {"linear": "tab:orange", "cosine": "tab:blue"}


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``(n, 2)`` on two interleaved half-moons, scaled to about [-1, 1];
    and each point's moon (0 or 1) ``(n,)`` for colouring."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g) * math.pi
    x = torch.where(label == 0, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(label == 0, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x, y], dim=1) + noise * torch.randn(n, 2, generator=g)
    pts = (pts - torch.tensor([0.5, 0.25])) / 1.1
    return pts, label


def draw(out: Path, num_steps: int = 100, columns: int = 6, n_points: int = 1500,
         seed: int = 0) -> Path:
    """Write the figure to ``out`` (PNG) and return the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if columns < 2:
        raise ValueError(f"plot_schedules: --columns must be >= 2, got {columns}")
    schedules = {name: NoiseSchedule(name, num_steps) for name in ("linear", "cosine")}
    x0, label = two_moons(n_points, seed)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    steps = [min(round(i * num_steps / (columns - 1)), num_steps - 1) for i in range(columns)]

    fig = plt.figure(figsize=(2.0 * columns, 2.0 * 2 + 3.0))
    grid = fig.add_gridspec(3, columns, height_ratios=[1.5, 1, 1], hspace=0.45, wspace=0.08)
    top = grid[0, :].subgridspec(1, 2, wspace=0.25)
    ax_abar, ax_snr = fig.add_subplot(top[0]), fig.add_subplot(top[1])
    t = torch.arange(num_steps)
    for name, sched in schedules.items():
        ax_abar.plot(t, sched.alpha_bar, color=COLORS[name], label=name)
        ax_snr.plot(t, sched.log_snr, color=COLORS[name], label=name)
    ax_abar.set(xlabel="step t", ylabel=r"$\bar\alpha_t$", title=r"signal kept: $\bar\alpha_t$",
                ylim=(-0.02, 1.02))
    ax_snr.set(xlabel="step t", ylabel="log SNR",
               title=r"log SNR = log $\bar\alpha_t\,/\,(1-\bar\alpha_t)$")
    for ax in (ax_abar, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        for col in steps:
            ax.axvline(col, color="grey", lw=0.6, ls=":")

    for row, (name, sched) in enumerate(schedules.items(), start=1):
        for c, k in enumerate(steps):
            ax = fig.add_subplot(grid[row, c])
            xt = sched.add_noise(x0, noise, torch.full((n_points,), k))
            ax.scatter(xt[:, 0], xt[:, 1], s=1.5, c=label, cmap="coolwarm", alpha=0.6)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), xticks=[], yticks=[], aspect="equal")
            ax.set_title(rf"t={k}  $\bar\alpha$={float(sched.alpha_bar[k]):.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, color=COLORS[name], fontsize=11)
    fig.suptitle(f"Noise schedules ({num_steps} steps) and the forward process "
                 r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$", y=0.995)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/img/schedules.png"))
    p.add_argument("--steps", type=int, default=100, help="schedule length (the policy uses 100)")
    p.add_argument("--columns", type=int, default=6, help="forward-process snapshots per row")
    p.add_argument("--points", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(draw(a.out, a.steps, a.columns, a.points, a.seed))


if __name__ == "__main__":
    main()
