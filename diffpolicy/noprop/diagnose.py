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

``posterior_diagnostics(model, x, y)`` reads block 1's class posterior
``p(y | x) = softmax(logits_1(x, z_0))`` with ``z_0 ~ N(0, I)`` (averaged over
draws), which is the whole model's posterior as the first block sees it:

* ``block1_argmax_acc``: accuracy of its most likely class, which tracks
  deterministic inference;
* ``block1_mean_p_true``: its mean mass on the true class, the accuracy of
  *drawing* the class from that posterior, which tracks stochastic inference
  (the ancestral chain samples a class rather than taking the most likely);
* ``deterministic_acc``, ``stochastic_acc`` (mean over ``runs`` sampling runs)
  of the full chain, measured beside them.

``--val`` adds them on the benchmark's validation split (never the test set).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffpolicy.datasets.fashion_mnist import fashion_mnist_splits
from diffpolicy.eval_mode import eval_mode
from diffpolicy.noprop.blocks import CONV_WIDTHS
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.train import accuracy
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


@torch.no_grad()
def posterior_diagnostics(model: NoPropDT, x: torch.Tensor, y: torch.Tensor, draws: int = 8,
                          runs: int = 3, batch: int = 500, seed: int = 0) -> dict[str, float]:
    """Block 1's posterior against the chain's accuracy: ``x (N, C, H, W)``, ``y (N,)`` (module doc)."""
    g = torch.Generator().manual_seed(seed)
    first = slice(0, 1)
    with eval_mode(model):
        post = []
        for i in range(0, len(x), batch):
            feats = model.blocks.image_features(x[i:i + batch], first)            # (1, b, 256)
            p = sum(torch.softmax(model.blocks.from_features(
                feats, torch.randn(1, feats.shape[1], model.embed.dim, generator=g).to(feats),
                first)[0].float(), -1) for _ in range(draws)) / draws
            post.append(p)
        post = torch.cat(post)                                                    # (N, K)
    sto = [accuracy(model, x, y, batch, stochastic=True, generator=g) for _ in range(runs)]
    det = accuracy(model, x, y, batch)
    return {"block1_argmax_acc": float((post.argmax(-1) == y).float().mean()),
            "block1_mean_p_true": float(post[torch.arange(len(y)), y].mean()),
            "deterministic_acc": det, "stochastic_acc": sum(sto) / len(sto)}


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
    ap.add_argument("--val", action="store_true",
                    help="also block 1's posterior and the chain's accuracy on the validation split")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian one)")
    args = ap.parse_args(argv)
    data = fashion_mnist_splits(args.data_root) if args.val else None
    out = {}
    for p in args.checkpoints:
        model = _model_from_checkpoint(p)
        out[p.stem] = latent_diagnostics(model)
        if data is not None:
            out[p.stem].update(posterior_diagnostics(model, data.val_x, data.val_y))
    for name, d in out.items():
        print(name, " ".join(f"{k}={v:.4f}" for k, v in d.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
