"""NoProp-DT: T denoising blocks trained independently (Li, Teh & Pascanu, 2025).

Latents ``z_0 .. z_T`` in R^d; ``q(z_t | y) = N(sqrt(abar_t) u_y, (1 - abar_t) I)``
with SNR(t) rising with t (the shared schedule's NoProp view).  Block ``t``
maps ``(x, z_{t-1})`` to ``uhat_t = softmax(logits) @ W_embed`` and is trained on

    L_t = eta * T/2 * (SNR(t) - SNR(t-1)) * ||uhat_t(z_{t-1}, x) - u_y||^2,
    z_{t-1} ~ q(z_{t-1} | y)

plus the shared terms: cross-entropy of a linear head on ``z_T ~ q(z_T | y)``
and ``KL(q(z_0 | y) || N(0, I))``.  Block ``t``'s parameters get gradient from
``L_t`` only; the head and ``W_embed`` are shared.  The noisy input
``z_{t-1}`` is treated as data (``u_y`` detached there), so no gradient flows
through a block into the embedding from its input side.

When several blocks train on one batch, ``block_loss`` says how their terms
combine: ``"sum"`` adds them, so the shared head and ``W_embed`` see T
denoising terms per CE term; ``"mean"`` averages them, which gives the shared
parameters the paper's per-batch balance (Algorithm 1 trains one block per
batch: CE + KL + one L_t).  A block's own gradient only changes scale, which
Adam does not see.

Inference never sees a label::

    z_0 ~ N(0, I)  (deterministic mode: z_0 = 0 and no noise)
    z_t = a_t uhat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t) eps,   t = 1..T
    prediction = argmax head(z_T)
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from diffpolicy.diffusion.schedule import NoPropSchedule, noprop_schedule
from diffpolicy.eval_mode import eval_mode
from diffpolicy.host_copy import randn_like_device, to_device
from diffpolicy.noprop.blocks import StackedPaperBlocks
from diffpolicy.noprop.embeddings import LabelEmbedding, init_head_as_nearest_embedding


def check_schedule(sched: NoPropSchedule) -> None:
    """Raise if the schedule would make NoProp's loss ill-posed."""
    bad = (sched.snr_diff <= 0).nonzero().flatten()
    if len(bad):
        t = int(bad[0]) + 1
        raise ValueError(
            f"NoProp schedule: SNR(t) - SNR(t-1) must be > 0 for every t = 1..{sched.T}; "
            f"found {float(sched.snr_diff[t - 1]):.4g} at t={t} (a reversed schedule turns "
            f"the block loss into gradient ascent)")
    if not ((sched.alpha_bar > 0) & (sched.alpha_bar < 1)).all():
        raise ValueError("NoProp schedule: alpha_bar must lie in (0, 1) for t = 0..T")


class NoPropDT(nn.Module):
    """NoProp-DT with the paper's CNN blocks, fused into one :class:`StackedPaperBlocks`.

    ``block_ids`` (1-based, contiguous) are the blocks this instance holds: all
    ``1..T`` normally, a share of them on one worker of parallel training.
    """

    def __init__(self, n_classes: int = 10, T: int = 10, embedding: str = "learned",
                 embed_dim: int = 20, prototypes: torch.Tensor | None = None,
                 schedule: str | NoPropSchedule = "cosine", eta: float = 0.1,
                 dropout: float = 0.2, in_channels: int = 1, image_size: int = 28,
                 channels_last: bool = True, block_ids: list[int] | None = None,
                 head_init: str = "embedding", block_loss: str = "sum"):
        super().__init__()
        if block_loss not in ("sum", "mean"):
            raise ValueError(f"block_loss: expected 'sum' or 'mean', got {block_loss!r}")
        self.block_loss = block_loss
        sched = noprop_schedule(T, schedule) if isinstance(schedule, str) else schedule
        check_schedule(sched)
        self.T, self.eta, self.n_classes = sched.T, eta, n_classes
        for name in ("alpha_bar", "a", "b", "c", "snr_diff"):
            self.register_buffer(name, getattr(sched, name).float(), persistent=False)
        self.block_ids = list(range(1, self.T + 1)) if block_ids is None else list(block_ids)
        if self.block_ids != list(range(self.block_ids[0], self.block_ids[0] + len(self.block_ids))) \
                or not 1 <= self.block_ids[0] <= self.block_ids[-1] <= self.T:
            raise ValueError(f"block_ids must be contiguous within 1..{self.T}, got {self.block_ids}")
        self.embed = LabelEmbedding(embedding, n_classes, embed_dim, prototypes)
        self.blocks = StackedPaperBlocks(len(self.block_ids), self.embed.dim, n_classes,
                                         in_channels, image_size, dropout, channels_last)
        self.head = nn.Linear(self.embed.dim, n_classes)
        if head_init == "embedding":
            init_head_as_nearest_embedding(self.head, self.embed.weight)
        elif head_init != "default":
            raise ValueError(f"head_init: expected 'embedding' or 'default', got {head_init!r}")

    @property
    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every block's training touches: the head and a trainable W_embed."""
        return [p for p in [*self.head.parameters(), *self.embed.parameters()] if p.requires_grad]

    # ------------------------------------------------------------------ training
    def sample_latents(self, u: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Samples of ``q(z_t | y)``: ``u (B, d)``, ``t (k,)`` times, ``eps (k, B, d)`` -> ``(k, B, d)``."""
        abar = self.alpha_bar[t].reshape(-1, 1, 1)
        return abar.sqrt() * u + (1 - abar).sqrt() * eps

    def denoise(self, logits: torch.Tensor) -> torch.Tensor:
        """``uhat = softmax(logits) @ W_embed``: ``(..., K) -> (..., d)``."""
        return torch.softmax(logits.float(), dim=-1) @ self.embed.weight

    def head_loss(self, u: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the head on ``z_T = sqrt(abar_T) u_y + sqrt(1 - abar_T) eps`` (logits in)."""
        abar_T = self.alpha_bar[self.T]
        z_T = abar_T.sqrt() * u + (1 - abar_T).sqrt() * eps
        return F.cross_entropy(self.head(z_T), y)

    def kl_loss(self, u: torch.Tensor) -> torch.Tensor:
        """``KL(N(sqrt(abar_0) u, (1 - abar_0) I) || N(0, I))``, mean over the batch."""
        abar0, d = self.alpha_bar[0], u.shape[-1]
        return 0.5 * (abar0 * u.pow(2).sum(-1) - d * abar0 - d * torch.log1p(-abar0)).mean()

    def loss(self, x: torch.Tensor, y: torch.Tensor, blocks: slice = slice(None),
             generator: torch.Generator | None = None, shared_weight: float = 1.0
             ) -> dict[str, torch.Tensor]:
        """Training losses for the held blocks in ``blocks`` (a slice of local slots).

        x ``(B, C, H, W)``, y ``(B,)``.  Noise ``(T + 1, B, d)`` is drawn for all T
        blocks from ``generator`` whatever blocks are held, so that a worker of
        parallel training sees exactly the noise serial training would.
        Returns ``total`` (the block losses, summed or averaged as ``block_loss``
        says, + shared_weight * (ce + kl)),
        ``block`` ``(k,)``, ``ce``, ``kl``.
        """
        u = self.embed(y)
        eps = randn_like_device((self.T + 1, *u.shape), generator, u)
        t = to_device(torch.tensor(self.block_ids[blocks]), u.device)          # (k,) in 1..T
        z_prev = self.sample_latents(u.detach(), t - 1, eps[t - 1])
        feats = self.blocks.image_features(x, blocks)
        uhat = self.denoise(self.blocks.from_features(feats, z_prev, blocks))    # (k, B, d)
        weight = self.eta * self.T / 2 * self.snr_diff[t - 1]
        block = weight * (uhat - u).pow(2).sum(-1).mean(-1)
        ce = self.head_loss(u, y, eps[self.T])
        kl = self.kl_loss(u)
        # "mean": over the blocks this batch trains in the whole model: all T when every held
        # block trains (serial "all", or a worker's share of parallel training), else the slice's
        n_active = self.T if len(t) == len(self.block_ids) else len(t)
        blocks_total = block.sum() if self.block_loss == "sum" else block.sum() / n_active
        return {"total": blocks_total + shared_weight * (ce + kl), "block": block, "ce": ce, "kl": kl}

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, x: torch.Tensor, stochastic: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Class logits ``(B, K)`` of ``head(z_T)`` after the T-step chain; no label involved.

        ``stochastic=True`` draws ``z_0 ~ N(0, I)`` and adds ``sqrt(c_t) eps``;
        ``False`` starts from ``z_0 = 0`` and adds no noise.  Runs in eval mode.
        """
        if self.block_ids != list(range(1, self.T + 1)):
            raise RuntimeError(f"predict needs all {self.T} blocks; this model holds "
                               f"{self.block_ids} (merge the workers' parts first)")
        with eval_mode(self):
            feats = self.blocks.image_features(x)                               # (T, B, 256)
            d = self.embed.dim
            z = (randn_like_device((x.shape[0], d), generator, feats) if stochastic
                 else feats.new_zeros(x.shape[0], d)).float()
            for t in range(1, self.T + 1):
                logits = self.blocks.from_features(feats[t - 1:t], z[None], slice(t - 1, t))[0]
                z = self.a[t] * self.denoise(logits) + self.b[t] * z
                if stochastic:
                    z = z + self.c[t].sqrt() * randn_like_device(z.shape, generator, z)
            return self.head(z)

    # ------------------------------------------------- parallel training support
    def subset(self, block_ids: list[int]) -> "NoPropDT":
        """A copy holding only blocks ``block_ids`` (1-based), same shared parameters."""
        slots = [self.block_ids.index(t) for t in block_ids]
        blocks, self.blocks = self.blocks, None
        try:
            part = copy.deepcopy(self)
        finally:
            self.blocks = blocks
        part.blocks = self.blocks.select(slots)
        part.block_ids = list(block_ids)
        return part

    @classmethod
    def merge(cls, parts: list["NoPropDT"]) -> "NoPropDT":
        """Join parts holding consecutive blocks; shared parameters from the first part."""
        parts = sorted(parts, key=lambda p: p.block_ids[0])
        full = parts[0].subset(parts[0].block_ids)
        full.blocks = StackedPaperBlocks.merge([p.blocks for p in parts])
        full.block_ids = [t for p in parts for t in p.block_ids]
        if full.block_ids != list(range(1, full.T + 1)):
            raise ValueError(f"merge: parts hold blocks {full.block_ids}, expected 1..{full.T}")
        return full


def posterior_coefficients(abar_prev: torch.Tensor, abar_next: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NoProp's ``(a, b, c)`` for a step from SNR level ``abar_prev`` to ``abar_next > abar_prev``.

    With ``alpha = abar_prev / abar_next``:
    ``a = sqrt(abar_next)(1 - alpha)/(1 - abar_prev)``,
    ``b = sqrt(alpha)(1 - abar_next)/(1 - abar_prev)``,
    ``c = (1 - abar_next)(1 - alpha)/(1 - abar_prev)``.  Used by NoProp-CT's
    discretised inference; on the DT grid it equals the shared schedule's a, b, c.
    """
    alpha = abar_prev / abar_next
    a = abar_next.sqrt() * (1 - alpha) / (1 - abar_prev)
    b = alpha.sqrt() * (1 - abar_next) / (1 - abar_prev)
    c = (1 - abar_next) * (1 - alpha) / (1 - abar_prev)
    return a, b, c

