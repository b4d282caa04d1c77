"""Per-key affine normaliser: ``y = x * scale + offset``, exact inverse ``x = (y - offset) / scale``.

Low-dimensional keys are fitted per dimension (last axis) to map the data's
min/max onto [-1, 1]; a constant dimension (range below ``range_eps``) gets
scale 1 and maps its value to 0.  Image keys use the fixed map [0, 1] -> [-1, 1]
and are never scanned.

``LinearNormalizer`` is an ``nn.Module``: put it inside a policy and it moves
with ``.to(device)`` and is saved in the policy's ``state_dict``.  Loading a
state dict into a fresh, unfitted normaliser recreates its keys.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

STAT_NAMES = ("scale", "offset", "min", "max", "mean", "std")


class _KeyStats(nn.Module):
    """Buffers of one key: scale, offset and the fitted statistics, each (D,) (or () for images)."""

    def __init__(self, stats: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        for name in STAT_NAMES:
            value = torch.zeros(0) if stats is None else torch.as_tensor(stats[name])
            self.register_buffer(name, value.clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in STAT_NAMES:  # accept whatever shape was saved
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LinearNormalizer(nn.Module):
    """Min/max normaliser to [-1, 1] per key.

    >>> norm = LinearNormalizer()
    >>> norm.fit({"obs": obs, "action": action}, image_keys=("image",))
    >>> y = norm.normalize("action", action_batch)        # (B, H, 2) in [-1, 1]
    >>> x = norm.unnormalize("action", y)                  # back, to float tolerance
    """

    def __init__(self, range_eps: float = 1e-4):
        super().__init__()
        self.range_eps = range_eps
        self.params = nn.ModuleDict()

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Mapping[str, np.ndarray | torch.Tensor], image_keys: tuple[str, ...] = ()) -> "LinearNormalizer":
        """Fit every key of ``data`` (arrays ``(N, ..., D)``: stats over all axes but the
        last) and add a fixed [0, 1] -> [-1, 1] map for each of ``image_keys`` (its data,
        if present in ``data``, is not read).  Returns ``self``."""
        for key in image_keys:
            self._set(key, _image_stats())
        for key, x in data.items():
            if key in image_keys:
                continue
            self._set(key, self._fit_one(key, x))
        return self

    def _fit_one(self, key: str, x: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach()
        if x.ndim < 1 or x.numel() == 0:
            raise ValueError(f"normalizer key '{key}': need a non-empty array (N, ..., D), got shape {tuple(x.shape)}")
        x = x.reshape(-1, x.shape[-1]).double()
        if not torch.isfinite(x).all():
            raise ValueError(f"normalizer key '{key}': data contains NaN or inf")
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        span = hi - lo
        const = span < self.range_eps
        scale = torch.where(const, torch.ones_like(span), 2.0 / torch.where(const, torch.ones_like(span), span))
        offset = torch.where(const, -lo, -1.0 - lo * scale)
        stats = dict(scale=scale, offset=offset, min=lo, max=hi, mean=x.mean(dim=0),
                     std=x.std(dim=0, unbiased=False))
        return {k: v.float() for k, v in stats.items()}

    def _set(self, key: str, stats: Mapping[str, torch.Tensor]) -> None:
        if not key or "." in key:
            raise ValueError(f"normalizer key {key!r}: must be non-empty and contain no '.'")
        self.params[key] = _KeyStats(stats)

    # ------------------------------------------------------------------ use
    @property
    def keys(self) -> list[str]:
        return list(self.params.keys())

    def stats(self, key: str) -> dict[str, torch.Tensor]:
        """``{scale, offset, min, max, mean, std}`` of ``key``."""
        p = self._get(key)
        return {name: getattr(p, name) for name in STAT_NAMES}

    def _get(self, key: str) -> _KeyStats:
        if key not in self.params:
            raise KeyError(f"normalizer has no key '{key}' (fitted keys: {self.keys})")
        return self.params[key]

    def normalize(self, key: str, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """``x * scale + offset``; ``x`` is ``(..., D)`` (images: any shape).  Same type out as in."""
        p = self._get(key)
        t, back = _as_tensor(x)
        return back(t * p.scale.to(t) + p.offset.to(t))

    def unnormalize(self, key: str, y: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Inverse of ``normalize``: ``(y - offset) / scale``."""
        p = self._get(key)
        t, back = _as_tensor(y)
        return back((t - p.offset.to(t)) / p.scale.to(t))

    def normalize_dict(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every entry whose key is fitted; nested dicts (e.g. ``batch["obs"]``) too."""
        out = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out[key] = self.normalize_dict(value)
            else:
                out[key] = self.normalize(key, value) if key in self.params else value
        return out

    def extra_repr(self) -> str:
        return f"keys={self.keys}, range_eps={self.range_eps}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Recreate keys saved in a checkpoint but missing here (e.g. a fresh, unfitted normaliser).
        head = prefix + "params."
        for name in state_dict:
            if name.startswith(head):
                key = name[len(head):].split(".")[0]
                if key not in self.params:
                    self.params[key] = _KeyStats()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _image_stats() -> dict[str, torch.Tensor]:
    """Fixed map [0, 1] -> [-1, 1] (scalars broadcast over any image shape)."""
    one = torch.tensor(1.0)
    return dict(scale=2 * one, offset=-one, min=0 * one, max=one, mean=0.5 * one, std=0.5 * one)


def _as_tensor(x):
    """``(tensor, back)`` where ``back`` turns a result into the caller's type."""
    if torch.is_tensor(x):
        if not x.is_floating_point():
            x = x.float()
        return x, lambda t: t
    a = np.asarray(x)
    dtype = a.dtype if a.dtype.kind == "f" else np.float32
    return torch.from_numpy(a.astype(dtype, copy=False)), lambda t: t.numpy()
