"""Temporal ensembling of overlapping action predictions (ACT, Zhao et al. 2023).

With ensembling on, the policy is called every ``replan_every`` env steps and
each call's whole denoised sequence ``(H, Da)`` is kept.  Step indexing: env
step ``t`` is the action executed after ``t`` earlier actions, i.e. after
observing the observation the env returned at step ``t`` (the reset
observation for ``t = 0``).  A prediction made at step ``t0`` (its
observation window ends at step ``t0``) holds the action for step ``t0`` at
sequence index ``To - 1`` (``DiffusionPolicy.predict_action``'s ``start``),
so its entry for step ``t`` is index ``To - 1 + t - t0``, valid while that
index is ``< H``.

The action executed at step ``t`` is the weighted mean, over the stored
predictions that cover ``t`` ordered oldest first, of their entries for
``t``, with weights ``w_i = exp(-m * i)`` (``i = 0`` the oldest: ACT's
convention; ``m = 0`` is a plain mean, larger ``m`` trusts older
predictions more).
"""
from __future__ import annotations

import math

import numpy as np


def check_ensemble_options(temporal_ensemble: float | None, replan_every: int | None,
                           horizon: int, n_obs_steps: int) -> tuple[float | None, int]:
    """Validate the evaluation options; returns ``(m or None, replan_every)``.

    ``replan_every`` defaults to 1 with ensembling and must let the newest
    prediction cover every step until the next call:
    ``1 <= replan_every <= horizon - n_obs_steps + 1``.  Raises ``ValueError``
    naming the key, the expected and the found value.
    """
    if temporal_ensemble is None:
        if replan_every is not None:
            raise ValueError(f"replan_every={replan_every} applies only with temporal_ensemble set "
                             f"(got temporal_ensemble=null); without ensembling, n_action_steps sets "
                             f"the actions executed per policy call")
        return None, 1
    if isinstance(temporal_ensemble, bool) or not isinstance(temporal_ensemble, (int, float)):
        raise ValueError(f"temporal_ensemble must be null or a number >= 0, got {temporal_ensemble!r}")
    m = float(temporal_ensemble)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"temporal_ensemble must be null or a number >= 0 (the weight coefficient m "
                         f"of w_i = exp(-m * i)), got {temporal_ensemble!r}")
    r = 1 if replan_every is None else replan_every
    longest = horizon - n_obs_steps + 1
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= longest:
        raise ValueError(f"replan_every must be an integer in [1, {longest}] (horizon {horizon} - "
                         f"n_obs_steps {n_obs_steps} + 1: a prediction covers that many steps), got {r!r}")
    return m, r


class ActionEnsembler:
    """The stored predictions of one env and their weighted mean per step; see the module docstring.

    >>> ens = ActionEnsembler(n_obs_steps=2, coef=0.0)
    >>> ens.add(np.zeros((16, 2)), step=0)      # covers steps 0 .. 14 (indices 1 .. 15)
    >>> ens.action(0).shape
    (2,)
    """

    def __init__(self, n_obs_steps: int, coef: float):
        if n_obs_steps < 1:
            raise ValueError(f"ActionEnsembler: n_obs_steps must be >= 1, got {n_obs_steps}")
        if not coef >= 0:
            raise ValueError(f"ActionEnsembler: coef must be >= 0, got {coef}")
        self.n_obs_steps, self.coef = n_obs_steps, float(coef)
        self.predictions: list[tuple[int, np.ndarray]] = []     # (step made at, (H, Da)), oldest first

    def add(self, prediction: np.ndarray, step: int) -> None:
        """Store a prediction ``(H, Da)`` made at env ``step``; drops those that expired before it."""
        prediction = np.asarray(prediction)
        if prediction.ndim != 2 or prediction.shape[0] < self.n_obs_steps:
            raise ValueError(f"ActionEnsembler.add: prediction must have shape (H >= {self.n_obs_steps}, Da), "
                             f"got {prediction.shape}")
        if self.predictions and step <= self.predictions[-1][0]:
            raise ValueError(f"ActionEnsembler.add: steps must increase, got step {step} after "
                             f"step {self.predictions[-1][0]}")
        self.predictions = [(t0, p) for t0, p in self.predictions if self._index(t0, p, step) is not None]
        self.predictions.append((step, prediction))

    def _index(self, t0: int, prediction: np.ndarray, step: int) -> int | None:
        """Index of ``step`` in a prediction made at ``t0``, or None if it does not cover it."""
        i = self.n_obs_steps - 1 + step - t0
        return i if t0 <= step and i < prediction.shape[0] else None

    def action(self, step: int) -> np.ndarray:
        """The ensembled action ``(Da,)`` for env ``step`` (float32)."""
        entries = [p[i] for t0, p in self.predictions if (i := self._index(t0, p, step)) is not None]
        if not entries:
            made = [t0 for t0, _ in self.predictions]
            raise ValueError(f"ActionEnsembler.action: no stored prediction covers step {step} "
                             f"(predictions made at steps {made})")
        w = np.exp(-self.coef * np.arange(len(entries)))
        mean = (w[:, None] * np.asarray(entries, dtype=np.float64)).sum(0) / w.sum()
        return mean.astype(np.float32)
