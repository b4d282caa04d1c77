"""What limits NoProp-DT's stochastic inference, read off a trained model.

``latent_diagnostics(model)`` returns, for the label embedding ``W (K, d)``:

* ``embed_norm_mean``: mean row norm (learned embeddings start at 1);
* ``min_pair_distance``: the distance between the two closest class embeddings,
  ``min_pair_classes`` which two they are;
* ``head_acc_on_q_zT``: the head's accuracy on ``z_T ~ q(z_T | y)``, the
  latents it is trained on (an upper bound for inference whose chain ends
  in that distribution);
* ``noise_std_last_step``: ``sqrt(c_T)``, the per-dimension noise stochastic
  inference adds at its last step.

Small, close embeddings leave the injected noise relatively larger.  The
benchmark records these per NoProp-DT row; for saved checkpoints::

    python -m diffpolicy.noprop.diagnose runs/x/checkpoints/*.pt --json diag.json

reads each checkpoint's selected epoch; ``--latest`` its last finished epoch instead (a run
still training, or one whose selection kept an early epoch).

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

``ct_diagnostics(model, x, y)`` does the same job for NoProp-CT: the embedding's
geometry, the head on ``z_1 ~ q(z_1 | y)``, and ``denoiser_acc_t<t>``, the argmax
accuracy of the denoiser's logits given ``z_t ~ q(z_t | y)`` at a few ``t``; at
``t = 0`` z carries no label, so it is the image path's accuracy on its own;
``denoiser_mean_p_true_t<t>``, the mean softmax mass on the true class there (at
``t = 0`` the model's posterior ``p(y | x)``, which stochastic inference samples
from, as block 1's does in NoProp-DT).  With ``--val``, ``ct_chain_accuracies``
adds the whole chain's accuracy in three inference modes: ``deterministic_acc``
(``z_0 = 0``, no noise), ``random_start_acc`` (``z_0 ~ N(0, I)``, no noise: what
the course paper's public code integrates) and ``stochastic_acc`` (the paper's
sampler), the last two averaged over ``runs`` draws.  The
CLI reads CT checkpoints too (the row's options from its finished record in
``rows/``, else the benchmark's ``config.json``, beside ``checkpoints/``; validation
split always).
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Callable

import torch

from diffpolicy.datasets.fashion_mnist import fashion_mnist_splits
from diffpolicy.eval_mode import eval_mode
from diffpolicy.host_copy import randn_like_device
from diffpolicy.noprop.blocks import CONV_WIDTHS
from diffpolicy.noprop.ct import NoPropCT
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.embeddings import closest_classes
from diffpolicy.noprop.train import accuracy
from diffpolicy.serialization import safe_load
from diffpolicy.speed import machine_info


def _embedding_and_head(model: NoPropDT | NoPropCT, abar_end: torch.Tensor, n_per_class: int,
                        g: torch.Generator) -> dict[str, float]:
    """Embedding norms and closest pair; the head's accuracy on ``z ~ q(z_end | y)``."""
    w = model.embed.weight.detach().float().cpu()
    closest = closest_classes(w)
    y = torch.arange(len(w)).repeat(n_per_class)
    abar = abar_end.detach().float().cpu()
    z = abar.sqrt() * w[y] + (1 - abar).sqrt() * torch.randn(len(y), w.shape[1], generator=g)
    weight = model.head.weight                   # the head stays where it is (CPU or GPU)
    acc = (model.head(z.to(weight)).argmax(-1).cpu() == y).float().mean()
    return {"embed_norm_mean": float(w.norm(dim=1).mean()), "min_pair_distance": closest["distance"],
            "min_pair_classes": closest["classes"], "head_acc_on_q_zT": float(acc)}


@torch.no_grad()
def latent_diagnostics(model: NoPropDT, n_per_class: int = 2000, seed: int = 0) -> dict[str, float]:
    """The embedding's geometry and the head's accuracy on ``q(z_T | y)`` (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    out = _embedding_and_head(model, model.alpha_bar[model.T], n_per_class, g)
    return dict(out, noise_std_last_step=float(model.c[model.T].sqrt()))


@torch.no_grad()
def ct_diagnostics(model: NoPropCT, x: torch.Tensor, y: torch.Tensor,
                   ts: tuple[float, ...] = (0.0, 0.5, 0.9, 1.0), n_per_class: int = 2000,
                   batch: int = 1000, seed: int = 0) -> dict[str, float]:
    """NoProp-CT: ``x (N, C, H, W)``, ``y (N,)``; embedding, head and denoiser by t (module doc)."""
    g = torch.Generator().manual_seed(seed)
    ends = model.schedule.alpha_bar(torch.tensor([0.0, 1.0], device=model.head.weight.device))
    out = _embedding_and_head(model, ends[1], n_per_class, g)
    out["noise_std_t1"] = float((1 - ends[1]).sqrt())
    correct, p_true = torch.zeros(len(ts)), torch.zeros(len(ts), dtype=torch.float64)
    abars = model.schedule.alpha_bar(torch.tensor(ts, device=ends.device))   # one per t
    with eval_mode(model):
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            feats = model.image_features(xb).float()
            u = model.embed(yb.to(feats.device)).float()
            for j, (t, abar) in enumerate(zip(ts, abars)):
                tt = torch.full((len(yb),), t, device=feats.device)
                z = abar.sqrt() * u + (1 - abar).sqrt() * randn_like_device(u.shape, g, u)
                logits = model.logits(feats, z, tt).float().cpu()
                correct[j] += (logits.argmax(-1) == yb.cpu()).sum()
                p_true[j] += torch.softmax(logits, -1)[torch.arange(len(yb)), yb.cpu()].sum()
    out.update({f"denoiser_acc_t{t:g}": float(c / len(y)) for t, c in zip(ts, correct)})
    out.update({f"denoiser_mean_p_true_t{t:g}": float(m / len(y)) for t, m in zip(ts, p_true)})
    return out


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
                feats, randn_like_device((1, feats.shape[1], model.embed.dim), g, feats),
                first)[0].float(), -1) for _ in range(draws)) / draws
            post.append(p)
        post = torch.cat(post)                                                    # (N, K)
    sto = _mean_of_runs(lambda: accuracy(model, x, y, batch, stochastic=True, generator=g), runs)
    det = accuracy(model, x, y, batch)
    return {"block1_argmax_acc": float((post.argmax(-1) == y).float().mean()),
            "block1_mean_p_true": float(post[torch.arange(len(y)), y].mean()),
            "deterministic_acc": det, "stochastic_acc": sto}


def _mean_of_runs(run: Callable[[], float], runs: int) -> float:
    """The mean of ``runs`` calls of ``run`` (each draws on from the caller's seeded generator)."""
    return sum(run() for _ in range(runs)) / runs


def ct_chain_accuracies(model: NoPropCT, x: torch.Tensor, y: torch.Tensor, steps: int = 1000,
                        runs: int = 3, batch: int = 1000, seed: int = 0) -> dict[str, float]:
    """NoProp-CT's inference chain on ``x (N, C, H, W)``, ``y (N,)`` in three modes (module doc).

    The image features are computed once per batch and shared by the ``2 runs + 1`` chains.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(), eval_mode(model):
        feats = [model.image_features(x[i:i + batch]).float() for i in range(0, len(x), batch)]

        def acc(**kw) -> float:
            pred = torch.cat([model.predict_from_features(f, steps=steps, **kw).argmax(-1).cpu()
                              for f in feats])
            return float((pred == y.cpu()).float().mean())
        return {"deterministic_acc": acc(),
                "random_start_acc": _mean_of_runs(lambda: acc(random_start=True, generator=g), runs),
                "stochastic_acc": _mean_of_runs(lambda: acc(stochastic=True, generator=g), runs)}


def _model_from_checkpoint(path: Path, splits: Callable[[], object] | None = None,
                           latest: bool = False) -> NoPropDT | NoPropCT:
    """The model of a benchmark checkpoint: its selected epoch's weights, or with ``latest``
    its last finished epoch's (a run still training, or one whose selection kept an early epoch).

    NoProp-DT is rebuilt from the weights' shapes; NoProp-CT from the row it ran
    (``<out_dir>/rows/<row>_seed<k>.json`` once finished, else the benchmark's
    ``config.json``, for ``<out_dir>/checkpoints/<row>_seed<k>.pt``) and the data
    splits, which ``splits()`` returns (called only for CT).
    """
    ck = safe_load(path, "NoProp checkpoint")
    state = ck["model"] if latest else ck["best_state"] or ck["model"]
    if state is None:
        raise ValueError(f"{path}: no {'latest' if latest else 'selected'} weights in this checkpoint")
    if "schedule.w1" in state:
        from diffpolicy.noprop.bench import build_model
        model = build_model(_benchmark_row(path), splits())
    else:
        w = state["embed.weight"]
        n_classes, d = w.shape
        one_hot = n_classes == d and torch.equal(w.cpu().float(), torch.eye(n_classes))
        n_blocks = state["blocks.conv1.weight"].shape[0] // CONV_WIDTHS[0]
        model = NoPropDT(n_classes=n_classes, T=n_blocks, embedding="one_hot" if one_hot else "learned",
                         embed_dim=d)
    model.load_state_dict(state)
    return model


def _benchmark_row(path: Path) -> dict:
    """The row a benchmark checkpoint ``<out_dir>/checkpoints/<row>_seed<k>.pt`` ran: its
    finished record's, else (unfinished, or finished before records kept it) ``config.json``'s."""
    from diffpolicy.noprop.bench import row_ran
    out_dir = path.resolve().parent.parent
    finished, config = out_dir / "rows" / f"{path.stem}.json", out_dir / "config.json"
    ran = row_ran(json.loads(finished.read_text())) if finished.exists() else None
    if ran is not None:
        return ran
    if not config.exists():
        raise FileNotFoundError(f"{path}: a NoProp-CT checkpoint needs its benchmark's {config}")
    row_name = path.stem.rsplit("_seed", 1)[0]
    rows = [r for r in json.loads(config.read_text())["rows"] if r["name"] == row_name]
    if not rows:
        raise ValueError(f"{path}: no row {row_name!r} in {config}")
    return rows[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="NoProp-DT or -CT benchmark checkpoints (.pt)")
    ap.add_argument("--json", type=Path, default=None,
                    help="write {checkpoint name: diagnostics, 'machine': ...} here")
    ap.add_argument("--val", action="store_true",
                    help="also the chain's accuracy on the validation split (NoProp-DT: and block 1's "
                         "posterior; NoProp-CT: in three inference modes)")
    ap.add_argument("--latest", action="store_true",
                    help="read the last finished epoch's weights instead of the selected epoch's")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian one)")
    args = ap.parse_args(argv)
    splits = functools.cache(lambda: fashion_mnist_splits(args.data_root))   # read once, if needed
    out = {}
    for p in args.checkpoints:
        model = _model_from_checkpoint(p, splits, latest=args.latest)
        if isinstance(model, NoPropCT):
            out[p.stem] = ct_diagnostics(model, splits().val_x, splits().val_y)
            if args.val:
                out[p.stem].update(ct_chain_accuracies(model, splits().val_x, splits().val_y))
            continue
        out[p.stem] = latent_diagnostics(model)
        if args.val:
            out[p.stem].update(posterior_diagnostics(model, splits().val_x, splits().val_y))
    for name, d in out.items():
        print(name, " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()))
    if args.json:                        # the machine beside the checkpoints' names (``*_seed<k>``)
        args.json.write_text(json.dumps({**out, "machine": machine_info()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
