"""NoProp-CT: one time-conditioned denoiser ``uhat(z_t, x, t)``, t in [0, 1], learned schedule.

Schedule (as in Variational Diffusion Models, in NoProp's direction):
``abar(t) = sigmoid(-gamma(t))``, ``SNR(t) = exp(-gamma(t))``, ``gamma`` strictly
decreasing from ``gamma_0`` at t = 0 (pure noise) to ``gamma_1`` at t = 1::

    gamma(t) = gamma_0 + (gamma_1 - gamma_0) * (h(t) - h(0)) / (h(1) - h(0))
    h(t) = l1(t) + l3(sigmoid(l2(l1(t))))      (all weights positive: h increasing)

Loss, with ``t ~ U(0, 1)`` and ``z_t ~ q(z_t | y) = N(sqrt(abar(t)) u_y, (1 - abar(t)) I)``::

    eta/2 * SNR'(t) * ||uhat(z_t, x, t) - u_y||^2  +  CE(head(z_1), y)  +  KL(q(z_0|y) || N(0, I))

(eta = 1).  The image path (a ResNet or the paper's CNN) does not see z or t,
so inference computes it once and runs the 1000-step discretised chain
``z <- a uhat(z, x, s) + b z + sqrt(c) eps`` on the small latent network only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffpolicy.diffusion.embeddings import sinusoidal_embedding
from diffpolicy.eval_mode import eval_mode
from diffpolicy.noprop.blocks import HIDDEN, PaperBlock, resnet_backbone
from diffpolicy.noprop.dt import posterior_coefficients
from diffpolicy.noprop.embeddings import LabelEmbedding, init_head_as_nearest_embedding


class MonotoneSchedule(nn.Module):
    """Learned ``gamma(t)``, decreasing on [0, 1] with fixed endpoints; positive weights via softplus."""

    def __init__(self, gamma_0: float = 10.0, gamma_1: float = -4.0, hidden: int = 64):
        super().__init__()
        if not gamma_0 > gamma_1:
            raise ValueError(f"gamma_0 must exceed gamma_1 (SNR rises with t), "
                             f"got gamma_0={gamma_0}, gamma_1={gamma_1}")
        self.gamma_0, self.gamma_1 = gamma_0, gamma_1
        self.w1 = nn.Parameter(torch.tensor(0.5))          # softplus(0.5) ~ 0.97
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.1)
        self.b2 = nn.Parameter(torch.zeros(hidden))
        self.w3 = nn.Parameter(torch.randn(hidden) * 0.1 - 3.0)

    def _h(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h(t)`` and ``dh/dt`` for ``t (B,)``."""
        w1, w2, w3 = F.softplus(self.w1), F.softplus(self.w2), F.softplus(self.w3)
        l1 = w1 * t + self.b1                                        # (B,)
        s = torch.sigmoid(l1[:, None] * w2 + self.b2)                # (B, H)
        h = l1 + (s * w3).sum(-1)
        dh = w1 * (1 + (s * (1 - s) * w2 * w3).sum(-1))
        return h, dh

    def gamma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma(t)`` and ``dgamma/dt`` (negative), each ``(B,)``."""
        h, dh = self._h(t.float().reshape(-1))
        h_ends, _ = self._h(torch.tensor([0.0, 1.0], device=h.device))
        span = h_ends[1] - h_ends[0]
        g = self.gamma_0 + (self.gamma_1 - self.gamma_0) * (h - h_ends[0]) / span
        return g, (self.gamma_1 - self.gamma_0) * dh / span

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self.gamma(t)[0])

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma(t)[0])

    def snr_prime(self, t: torch.Tensor) -> torch.Tensor:
        """``d SNR / dt = -gamma'(t) exp(-gamma(t)) > 0``."""
        g, dg = self.gamma(t)
        return -dg * torch.exp(-g)


class NoPropCT(nn.Module):
    """NoProp-CT with one image backbone: ``"cnn"`` (the paper's), ``"resnet18"`` or ``"resnet50"``."""

    def __init__(self, backbone: str = "resnet18", n_classes: int = 10, embedding: str = "learned",
                 embed_dim: int = 20, prototypes: torch.Tensor | None = None, eta: float = 1.0,
                 gamma_0: float = 10.0, gamma_1: float = -4.0, time_dim: int = 64,
                 stem: str = "imagenet", dropout: float = 0.2, in_channels: int = 1,
                 image_size: int = 28, head_init: str = "embedding"):
        super().__init__()
        self.eta, self.time_dim, self.n_classes = eta, time_dim, n_classes
        self.embed = LabelEmbedding(embedding, n_classes, embed_dim, prototypes)
        d = self.embed.dim
        if backbone == "cnn":
            self.backbone = PaperBlock(d, n_classes, in_channels, image_size, dropout).image
            self.img_proj = nn.Identity()             # the paper's image path ends in FC256-BN
        else:
            self.backbone, feat_dim = resnet_backbone(backbone, in_channels, stem)
            self.img_proj = nn.Sequential(nn.Linear(feat_dim, HIDDEN), nn.BatchNorm1d(HIDDEN))
        self.z_in = nn.Sequential(nn.Linear(d, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU())
        self.z_res = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
                                   nn.Linear(HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN))
        self.t_mlp = nn.Sequential(nn.Linear(time_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN))
        self.out = nn.Sequential(nn.Linear(2 * HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Linear(128, n_classes))
        self.head = nn.Linear(d, n_classes)
        if head_init == "embedding":
            init_head_as_nearest_embedding(self.head, self.embed.weight)
        elif head_init != "default":
            raise ValueError(f"head_init: expected 'embedding' or 'default', got {head_init!r}")
        self.schedule = MonotoneSchedule(gamma_0, gamma_1)
        self.backbone.to(memory_format=torch.channels_last)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, 256)``; independent of z and t."""
        return self.img_proj(self.backbone(x.contiguous(memory_format=torch.channels_last)))

    def uhat(self, feats: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``feats (B, 256)``, ``z (B, d)``, ``t (B,)`` in [0, 1] -> ``softmax(logits) @ W_embed (B, d)``."""
        h = self.z_in(z)
        h = h + self.z_res(h) + self.t_mlp(sinusoidal_embedding(t * 1000.0, self.time_dim))
        logits = self.out(torch.cat([feats, h], dim=-1))
        return torch.softmax(logits.float(), dim=-1) @ self.embed.weight

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             **_: object) -> dict[str, torch.Tensor]:
        """``total = diffusion + ce + kl`` for a batch; x ``(B, C, H, W)``, y ``(B,)``."""
        u = self.embed(y)
        b, d = u.shape
        t = torch.rand(b, generator=generator).to(u.device)
        eps = torch.randn(3, b, d, generator=generator).to(u)
        abar = self.schedule.alpha_bar(t)[:, None]
        z_t = abar.sqrt() * u.detach() + (1 - abar).sqrt() * eps[0]
        uhat = self.uhat(self.image_features(x), z_t, t)
        diffusion = (self.eta / 2 * self.schedule.snr_prime(t)
                     * (uhat - u).pow(2).sum(-1)).mean()
        ends = self.schedule.alpha_bar(torch.tensor([0.0, 1.0], device=u.device))
        z_1 = ends[1].sqrt() * u + (1 - ends[1]).sqrt() * eps[1]
        ce = F.cross_entropy(self.head(z_1), y)
        kl = 0.5 * (ends[0] * u.pow(2).sum(-1) - d * ends[0] - d * torch.log1p(-ends[0])).mean()
        return {"total": diffusion + ce + kl, "diffusion": diffusion, "ce": ce, "kl": kl}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, stochastic: bool = False, steps: int = 1000,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits ``(B, K)`` of ``head(z_1)`` after ``steps`` discretised steps; no label used."""
        with eval_mode(self):
            feats = self.image_features(x).float()
            b, d = x.shape[0], self.embed.dim
            grid = torch.linspace(0, 1, steps + 1, device=feats.device)
            abar = self.schedule.alpha_bar(grid)
            z = torch.randn(b, d, generator=generator).to(feats) if stochastic else feats.new_zeros(b, d)
            for k in range(1, steps + 1):
                a, bb, c = posterior_coefficients(abar[k - 1], abar[k])
                z = a * self.uhat(feats, z, grid[k - 1].expand(b)) + bb * z
                if stochastic:
                    z = z + c.sqrt() * torch.randn(z.shape, generator=generator).to(z)
            return self.head(z)
