"""What limits NoProp-DT's stochastic inference, read off a trained model.

``latent_diagnostics(model)`` returns, for the label embedding ``W (K, d)``:

* ``embed_norm_mean``: mean row norm (learned embeddings start at 1);
* ``min_pair_distance``: the distance between the two closest class embeddings;
* ``head_acc_on_q_zT``: the head's accuracy on ``z_T ~ q(z_T | y)``, the
  latents it is trained on (an upper bound for inference whose chain ends
  in that distribution);
* ``noise_std_last_step``: ``sqrt(c_T)``, the per-dimension noise stochastic
  inference adds at its last step.

Small, close embeddings leave the injected noise relatively larger.  The
benchmark records these per NoProp-DT row; for saved checkpoints::

    python -m diffpolicy.noprop.diagnose runs/x/checkpoints/*.pt --json diag.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffpolicy.noprop.blocks import CONV_WIDTHS
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.serialization import safe_load


@torch.no_grad()
def latent_diagnostics(model: NoPropDT, n_per_class: int = 2000, seed: int = 0) -> dict[str, float]:
    """The embedding's geometry and the head's accuracy on ``q(z_T | y)`` (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    w = model.embed.weight.detach().float().cpu()
    dist = torch.cdist(w, w).fill_diagonal_(float("inf"))
    y = torch.arange(len(w)).repeat(n_per_class)
    u = w[y]
    abar = model.alpha_bar[model.T].cpu()
    z = abar.sqrt() * u + (1 - abar).sqrt() * torch.randn(u.shape, generator=g)
    weight = model.head.weight                   # the head stays where it is (CPU or GPU)
    acc = (model.head(z.to(weight)).argmax(-1).cpu() == y).float().mean()
    return {"embed_norm_mean": float(w.norm(dim=1).mean()), "min_pair_distance": float(dist.min()),
            "head_acc_on_q_zT": float(acc), "noise_std_last_step": float(model.c[model.T].sqrt())}


def _model_from_checkpoint(path: Path) -> NoPropDT:
    """A NoProp-DT from a benchmark checkpoint (its selected epoch's weights)."""
    ck = safe_load(path, "NoProp checkpoint")
    state = ck["best_state"] or ck["model"]
    w = state["embed.weight"]
    n_classes, d = w.shape
    one_hot = n_classes == d and torch.equal(w.cpu().float(), torch.eye(n_classes))
    n_blocks = state["blocks.conv1.weight"].shape[0] // CONV_WIDTHS[0]
    model = NoPropDT(n_classes=n_classes, T=n_blocks, embedding="one_hot" if one_hot else "learned",
                     embed_dim=d)
    model.load_state_dict(state)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="NoProp-DT benchmark checkpoints (.pt)")
    ap.add_argument("--json", type=Path, default=None, help="write {checkpoint name: diagnostics} here")
    args = ap.parse_args(argv)
    out = {p.stem: latent_diagnostics(_model_from_checkpoint(p)) for p in args.checkpoints}
    for name, d in out.items():
        print(name, " ".join(f"{k}={v:.4f}" for k, v in d.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
