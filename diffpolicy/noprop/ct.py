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

Network (``B`` batch, ``d`` embedding dim, ``K`` classes; ``HIDDEN = 256``)::

    image  x (B, C, H, W) -> backbone -> img_proj          -> f (B, 256)
    latent z (B, d)       -> z_in, + z_res                 -> h (B, 256)
    time   t (B,) -> sinusoidal(1000 t, time_dim) -> t_mlp -> e (B, 256)
    time_path="add":    logits = out(cat[f, h + e])   (out[0]: Linear(512, 256))
    time_path="concat": logits = out(cat[f, h, e])    (out[0]: Linear(768, 256))
    uhat = softmax(logits (B, K)) @ W_embed -> (B, d)

Options (the defaults are the original model; its state_dict keys are unchanged):

- ``norm``: ``"batch"`` puts BatchNorm1d in z_in, z_res, out and img_proj;
  ``"none"`` has no batch norm there, nor at the end of the ``"cnn"`` image path
  (a ResNet backbone keeps its own BatchNorm2d layers).
- ``time_path``: ``"add"`` adds ``e`` into the latent path; ``"concat"`` makes it a third path.
- ``learn_endpoints``: ``False`` fixes ``gamma_0``, ``gamma_1``; ``True`` learns them (VDM),
  initialised at the given values, ``gamma_1 = gamma_0 - softplus(gap_raw) - MIN_GAP``.
- ``t_sampling``: ``"uniform"`` draws ``t_i`` iid U(0, 1); ``"stratified"`` is VDM's
  low-discrepancy sampler, ``t_i = (u_0 + i/B) mod 1`` with one ``u_0 ~ U(0, 1)`` per
  batch: every ``t_i`` is still U(0, 1) (the loss stays unbiased), its variance is lower.
  ``"importance"`` maps the same stratified ``u_i`` through the inverse CDF of
  ``p(t) = SNR'(t) / (SNR(1) - SNR(0))`` (the current schedule, no gradient; piecewise
  linear on a 1024-cell grid, so ``p`` is exact per cell) and weights each term by
  ``SNR'(t) / p(t)``: every term carries the same weight, none is spent on the t ~ 0
  where the weight is ~1e-6 of its mean, and the loss stays unbiased (importance sampling).

The paper's NoProp-CT: ``norm="none", time_path="concat", learn_endpoints=True``
(``t_sampling`` either way).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffpolicy.diffusion.embeddings import sinusoidal_embedding
from diffpolicy.eval_mode import eval_mode
from diffpolicy.host_copy import randn_like_device, to_device
from diffpolicy.noprop.blocks import HIDDEN, PaperBlock, resnet_backbone
from diffpolicy.noprop.dt import posterior_coefficients
from diffpolicy.noprop.embeddings import LabelEmbedding, init_head_as_nearest_embedding

NORMS = ("batch", "none")
TIME_PATHS = ("add", "concat")
T_SAMPLINGS = ("uniform", "stratified", "importance")
IMPORTANCE_CELLS = 1024    # grid of the inverse CDF of t_sampling="importance"
MIN_GAP = 1e-3          # learned endpoints: gamma_0 - gamma_1 >= MIN_GAP


def _check_option(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def _inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y > 0``."""
    return y + math.log(-math.expm1(-y))


class MonotoneSchedule(nn.Module):
    """Learned ``gamma(t)``, decreasing on [0, 1]; positive weights via softplus.

    ``learn_endpoints=False``: ``gamma(0) = gamma_0`` and ``gamma(1) = gamma_1`` are fixed.
    ``True``: both are parameters (``gamma_0_raw``, ``gap_raw``) initialised at the given
    values, ``gamma_1 = gamma_0 - softplus(gap_raw) - MIN_GAP`` so ``gamma_0 > gamma_1`` always.
    """

    def __init__(self, gamma_0: float = 10.0, gamma_1: float = -4.0, hidden: int = 64,
                 learn_endpoints: bool = False):
        super().__init__()
        if not gamma_0 > gamma_1:
            raise ValueError(f"gamma_0 must exceed gamma_1 (SNR rises with t), "
                             f"got gamma_0={gamma_0}, gamma_1={gamma_1}")
        if learn_endpoints and not gamma_0 - gamma_1 > MIN_GAP:
            raise ValueError(f"learn_endpoints: gamma_0 - gamma_1 must exceed {MIN_GAP}, "
                             f"got gamma_0={gamma_0}, gamma_1={gamma_1}")
        self.learn_endpoints = learn_endpoints
        self.w1 = nn.Parameter(torch.tensor(0.5))          # softplus(0.5) ~ 0.97
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.1)
        self.b2 = nn.Parameter(torch.zeros(hidden))
        self.w3 = nn.Parameter(torch.randn(hidden) * 0.1 - 3.0)
        if learn_endpoints:
            self.gamma_0_raw = nn.Parameter(torch.tensor(float(gamma_0)))
            self.gap_raw = nn.Parameter(torch.tensor(_inverse_softplus(gamma_0 - gamma_1 - MIN_GAP)))
        else:
            self._fixed_ends = (float(gamma_0), float(gamma_1))

    def endpoints(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(gamma_0, gamma_1)``: differentiable 0-d tensors if learned, else floats."""
        if self.learn_endpoints:
            return self.gamma_0_raw, self.gamma_0_raw - F.softplus(self.gap_raw) - MIN_GAP
        return self._fixed_ends

    @property
    def gamma_0(self) -> float:
        """Current ``gamma(0)`` as a float (for logging)."""
        return float(torch.as_tensor(self.endpoints()[0]).detach())

    @property
    def gamma_1(self) -> float:
        """Current ``gamma(1)`` as a float (for logging)."""
        return float(torch.as_tensor(self.endpoints()[1]).detach())

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
        g0, g1 = self.endpoints()
        g = g0 + (g1 - g0) * (h - h_ends[0]) / span
        return g, (g1 - g0) * dh / span

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self.gamma(t)[0])

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma(t)[0])

    def snr_prime(self, t: torch.Tensor) -> torch.Tensor:
        """``d SNR / dt = -gamma'(t) exp(-gamma(t)) > 0``."""
        g, dg = self.gamma(t)
        return -dg * torch.exp(-g)


class NoPropCT(nn.Module):
    """NoProp-CT with one image backbone: ``"cnn"`` (the paper's), ``"resnet18"`` or ``"resnet50"``.

    ``norm``, ``time_path``, ``learn_endpoints``, ``t_sampling``: see the module docstring.
    """

    def __init__(self, backbone: str = "resnet18", n_classes: int = 10, embedding: str = "learned",
                 embed_dim: int = 20, prototypes: torch.Tensor | None = None, eta: float = 1.0,
                 gamma_0: float = 10.0, gamma_1: float = -4.0, time_dim: int = 64,
                 stem: str = "imagenet", dropout: float = 0.2, in_channels: int = 1,
                 image_size: int = 28, head_init: str = "embedding", norm: str = "batch",
                 time_path: str = "add", learn_endpoints: bool = False,
                 t_sampling: str = "uniform"):
        super().__init__()
        _check_option("norm", norm, NORMS)
        _check_option("time_path", time_path, TIME_PATHS)
        _check_option("t_sampling", t_sampling, T_SAMPLINGS)
        if not isinstance(learn_endpoints, bool):
            raise TypeError(f"learn_endpoints: expected True or False, got {learn_endpoints!r}")
        if head_init not in ("embedding", "default"):
            raise ValueError(f"head_init: expected 'embedding' or 'default', got {head_init!r}")
        self.eta, self.time_dim, self.n_classes = eta, time_dim, n_classes
        self.norm, self.time_path, self.t_sampling = norm, time_path, t_sampling

        def bn(n: int) -> nn.Module:          # Identity keeps the Sequential indices (and keys)
            return nn.BatchNorm1d(n) if norm == "batch" else nn.Identity()

        self.embed = LabelEmbedding(embedding, n_classes, embed_dim, prototypes)
        d = self.embed.dim
        if backbone == "cnn":
            self.backbone = PaperBlock(d, n_classes, in_channels, image_size, dropout).image
            if norm == "none":                # the paper's CT has no batch norm at all
                self.backbone[-1] = nn.Identity()
            self.img_proj = nn.Identity()             # the paper's image path ends in FC256(-BN)
        else:
            self.backbone, feat_dim = resnet_backbone(backbone, in_channels, stem)
            self.img_proj = nn.Sequential(nn.Linear(feat_dim, HIDDEN), bn(HIDDEN))
        self.z_in = nn.Sequential(nn.Linear(d, HIDDEN), bn(HIDDEN), nn.ReLU())
        self.z_res = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), bn(HIDDEN), nn.ReLU(),
                                   nn.Linear(HIDDEN, HIDDEN), bn(HIDDEN))
        self.t_mlp = nn.Sequential(nn.Linear(time_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN))
        n_paths = 3 if time_path == "concat" else 2
        self.out = nn.Sequential(nn.Linear(n_paths * HIDDEN, HIDDEN), bn(HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, 128), bn(128), nn.ReLU(),
                                 nn.Linear(128, n_classes))
        self.head = nn.Linear(d, n_classes)
        if head_init == "embedding":
            init_head_as_nearest_embedding(self.head, self.embed.weight)
        self.schedule = MonotoneSchedule(gamma_0, gamma_1, learn_endpoints=learn_endpoints)
        self.backbone.to(memory_format=torch.channels_last)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, 256)``; independent of z and t."""
        return self.img_proj(self.backbone(x.contiguous(memory_format=torch.channels_last)))

    def logits(self, feats: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``feats (B, 256)``, ``z (B, d)``, ``t (B,)`` -> ``(B, K)``, time path as ``time_path``."""
        h = self.z_in(z)
        h = h + self.z_res(h)
        e = self.t_mlp(sinusoidal_embedding(t * 1000.0, self.time_dim))
        if self.time_path == "add":
            return self.out(torch.cat([feats, h + e], dim=-1))
        return self.out(torch.cat([feats, h, e], dim=-1))

    def uhat(self, feats: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``feats (B, 256)``, ``z (B, d)``, ``t (B,)`` in [0, 1] -> ``softmax(logits) @ W_embed (B, d)``."""
        return torch.softmax(self.logits(feats, z, t).float(), dim=-1) @ self.embed.weight

    def sample_t(self, b: int, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``b`` training times in [0, 1) and their sampling density ``p(t)``, each ``(b,)``.

        Uniform draws on the CPU (``generator``), moved to the schedule's device; ``p = 1``
        except for ``t_sampling="importance"`` (see the module docstring).
        """
        device = self.schedule.w1.device
        if self.t_sampling == "uniform":
            u = torch.rand(b, generator=generator)
        else:
            u0 = torch.rand(1, generator=generator)
            u = torch.remainder(u0 + torch.arange(b) / b, 1.0)
        u = to_device(u, device)
        if self.t_sampling != "importance":
            return u, torch.ones_like(u)
        with torch.no_grad():
            n = IMPORTANCE_CELLS
            snr = self.schedule.snr(torch.linspace(0, 1, n + 1, device=device)).double()
            cdf = (snr - snr[0]) / (snr[-1] - snr[0])               # (n + 1,), 0 ... 1
            cell = (torch.searchsorted(cdf, u.double(), right=True) - 1).clamp(0, n - 1)
            mass = (cdf[cell + 1] - cdf[cell]).clamp_min(1e-300)    # > 0 where u can land
            t = (cell + ((u.double() - cdf[cell]) / mass).clamp(0, 1)) / n
            return t.float().clamp(max=1.0), (mass * n).float()

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             **_: object) -> dict[str, torch.Tensor]:
        """``total = diffusion + ce + kl`` for a batch; x ``(B, C, H, W)``, y ``(B,)``."""
        u = self.embed(y)
        b, d = u.shape
        t, density = self.sample_t(b, generator)
        eps = randn_like_device((3, b, d), generator, u)
        abar = self.schedule.alpha_bar(t)[:, None]
        z_t = abar.sqrt() * u.detach() + (1 - abar).sqrt() * eps[0]
        uhat = self.uhat(self.image_features(x), z_t, t)
        diffusion = (self.eta / 2 * self.schedule.snr_prime(t) / density
                     * (uhat - u).pow(2).sum(-1)).mean()
        ends = self.schedule.alpha_bar(torch.linspace(0, 1, 2, device=u.device))   # t = 0, 1
        z_1 = ends[1].sqrt() * u + (1 - ends[1]).sqrt() * eps[1]
        ce = F.cross_entropy(self.head(z_1), y)
        kl = 0.5 * (ends[0] * u.pow(2).sum(-1) - d * ends[0] - d * torch.log1p(-ends[0])).mean()
        return {"total": diffusion + ce + kl, "diffusion": diffusion, "ce": ce, "kl": kl}

    @torch.no_grad()
    def schedule_diagnostics(self, n: int = 11) -> dict:
        """The current schedule on ``n`` evenly spaced t in [0, 1], as plain Python values.

        What the benchmark logs per epoch (with a learned schedule it moves):
        ``t``, ``gamma`` (gamma(t)), ``snr`` (SNR(t)), ``weight`` (the diffusion loss's
        weight density ``eta/2 * SNR'(t)`` normalised to sum 1 over the grid),
        ``weight_above_0.9`` (the share of the loss weight on t > 0.9:
        ``(SNR(1) - SNR(0.9)) / (SNR(1) - SNR(0))``), ``gamma_0``, ``gamma_1``.
        """
        device = next(self.schedule.parameters()).device
        t = torch.linspace(0, 1, n, device=device)
        g = self.schedule.gamma(t)[0]
        w = self.schedule.snr_prime(t)          # eta/2 cancels in the normalisation
        s_ends = self.schedule.snr(torch.tensor([0.0, 0.9, 1.0], device=device)).double()
        return {"t": t.tolist(), "gamma": g.tolist(), "snr": torch.exp(-g).tolist(),
                "weight": (w.double() / w.double().sum()).tolist(),
                "weight_above_0.9": float((s_ends[2] - s_ends[1]) / (s_ends[2] - s_ends[0])),
                "gamma_0": self.schedule.gamma_0, "gamma_1": self.schedule.gamma_1}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, stochastic: bool = False, steps: int = 1000,
                generator: torch.Generator | None = None, random_start: bool | None = None
                ) -> torch.Tensor:
        """Logits ``(B, K)`` of ``head(z_1)`` after ``steps`` discretised steps; no label used.

        ``stochastic`` adds ``sqrt(c) eps`` at each step (the paper's sampler); ``random_start``
        (default: ``stochastic``) draws ``z_0 ~ N(0, I)``, else ``z_0 = 0``.  Noise-free steps
        from a random start are what the course paper's public code integrates.
        """
        with eval_mode(self):
            return self.predict_from_features(self.image_features(x).float(), stochastic, steps,
                                              generator, random_start)

    @torch.no_grad()
    def predict_from_features(self, feats: torch.Tensor, stochastic: bool = False, steps: int = 1000,
                              generator: torch.Generator | None = None,
                              random_start: bool | None = None) -> torch.Tensor:
        """:meth:`predict` on ``feats (B, F) = image_features(x)``: several chains, one image pass."""
        random_start = stochastic if random_start is None else random_start
        with eval_mode(self):
            b, d = feats.shape[0], self.embed.dim
            grid = torch.linspace(0, 1, steps + 1, device=feats.device)
            abar = self.schedule.alpha_bar(grid)
            z = randn_like_device((b, d), generator, feats) if random_start else feats.new_zeros(b, d)
            for k in range(1, steps + 1):
                a, bb, c = posterior_coefficients(abar[k - 1], abar[k])
                z = a * self.uhat(feats, z, grid[k - 1].expand(b)) + bb * z
                if stochastic:
                    z = z + c.sqrt() * randn_like_device(z.shape, generator, z)
            return self.head(z)
