"""NoProp-FM: flow matching from noise to the label embedding, one time-conditioned network.

With ``z_0 ~ N(0, I)``, ``t ~ U(0, 1)`` and ``z_t = t u_y + (1 - t) z_0``, the
network's velocity ``v(z_t, x, t) = logits @ W_embed`` regresses the straight
path's velocity ``u_y - z_0``::

    ||v(z_t, x, t) - (u_y - z_0)||^2  +  CE(-||z~_1 - W_embed[k]||^2, y)

where ``z~_1 = z_t + (1 - t) v`` is the endpoint extrapolated from z_t (the
"anchor" term; its logits are negative squared distances to the class
embeddings, matching the prediction rule).  Inference integrates the ODE
``dz/dt = v`` with Euler steps from ``z_0`` (``0`` in deterministic mode) and
predicts the class whose embedding is nearest to ``z_1``.  The network is
NoProp-CT's (image backbone, latent path, time embedding); it has no schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffpolicy.diffusion.embeddings import sinusoidal_embedding
from diffpolicy.eval_mode import eval_mode
from diffpolicy.host_copy import randn_like_device, to_device
from diffpolicy.noprop.ct import NoPropCT


class NoPropFM(NoPropCT):
    """``loss(x, y)`` and ``predict(x)`` as in the module docstring; same constructor as NoPropCT."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.schedule                      # flow matching uses no noise schedule

    def velocity(self, feats: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``feats (B, 256)``, ``z (B, d)``, ``t (B,)`` -> ``logits @ W_embed (B, d)``."""
        h = self.z_in(z)
        h = h + self.z_res(h) + self.t_mlp(sinusoidal_embedding(t * 1000.0, self.time_dim))
        return self.out(torch.cat([feats, h], dim=-1)).float() @ self.embed.weight

    def class_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Negative squared distances to the class embeddings: ``(B, d) -> (B, K)``."""
        return -torch.cdist(z.float(), self.embed.weight.float()).pow(2)

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             **_: object) -> dict[str, torch.Tensor]:
        u = self.embed(y)
        b = u.shape[0]
        t = to_device(torch.rand(b, generator=generator), u.device)
        z0 = randn_like_device(u.shape, generator, u)
        z_t = t[:, None] * u.detach() + (1 - t[:, None]) * z0
        v = self.velocity(self.image_features(x), z_t, t)
        flow = (v - (u - z0)).pow(2).sum(-1).mean()
        z1 = z_t + (1 - t[:, None]) * v
        anchor = F.cross_entropy(self.class_logits(z1), y)
        return {"total": flow + anchor, "flow": flow, "anchor": anchor}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, stochastic: bool = False, steps: int = 100,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Class scores ``(B, K)`` after ``steps`` Euler steps; no label used."""
        with eval_mode(self):
            feats = self.image_features(x).float()
            b, d = x.shape[0], self.embed.dim
            z = randn_like_device((b, d), generator, feats) if stochastic else feats.new_zeros(b, d)
            for k in range(steps):
                z = z + self.velocity(feats, z, torch.full((b,), k / steps, device=z.device)) / steps
            return self.class_logits(z)
