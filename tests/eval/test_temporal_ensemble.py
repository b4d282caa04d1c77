"""Temporal ensembling: exact step alignment, weights, expiry and option checks (hand-made sequences)."""
import math

import numpy as np
import pytest

from diffpolicy.eval.ensemble import ActionEnsembler, check_ensemble_options


def _seq(tag: float, horizon: int = 16) -> np.ndarray:
    """(H, 2): entry j is (tag + j, -tag - j), so a value names its prediction and index."""
    j = np.arange(horizon, dtype=np.float32)
    return np.stack([tag + j, -tag - j], -1)


def test_a_single_prediction_is_read_from_index_to_minus_1_on():
    for to in (1, 2, 3):
        ens = ActionEnsembler(n_obs_steps=to, coef=0.5)
        ens.add(_seq(100.0), step=7)
        # step 7 (the step of the last observation) is index To - 1, step 7 + j index To - 1 + j
        for t in range(7, 7 + 16 - to + 1):
            np.testing.assert_array_equal(ens.action(t), _seq(100.0)[to - 1 + t - 7])
        with pytest.raises(ValueError, match=f"no stored prediction covers step {7 + 16 - to + 1} "):
            ens.action(7 + 16 - to + 1)                     # index 16: past the horizon
        with pytest.raises(ValueError, match="covers step 6 "):
            ens.action(6)                                   # before the prediction was made


def test_overlapping_predictions_are_aligned_and_weighted_oldest_first():
    to, m = 2, 0.3
    ens = ActionEnsembler(n_obs_steps=to, coef=m)
    a, b, c = _seq(100.0), _seq(200.0), _seq(300.0)
    ens.add(a, step=0)
    ens.add(b, step=3)
    ens.add(c, step=5)
    # step 6: a's index 1 + 6 = 7, b's 1 + 3 = 4, c's 1 + 1 = 2; weights 1, e^-m, e^-2m (a oldest)
    w = np.array([1.0, math.exp(-m), math.exp(-2 * m)])
    expected = (w[0] * a[7] + w[1] * b[4] + w[2] * c[2]) / w.sum()
    np.testing.assert_allclose(ens.action(6), expected, rtol=1e-6)
    assert ens.action(6)[0] == pytest.approx((107 * w[0] + 204 * w[1] + 302 * w[2]) / w.sum(), rel=1e-6)
    # m = 0 is the plain mean
    flat = ActionEnsembler(n_obs_steps=to, coef=0.0)
    for seq, t0 in ((a, 0), (b, 3), (c, 5)):
        flat.add(seq, t0)
    np.testing.assert_allclose(flat.action(6), (a[7] + b[4] + c[2]) / 3, rtol=1e-6)


def test_expired_predictions_drop_out_and_weights_restart_at_the_oldest_covering():
    ens = ActionEnsembler(n_obs_steps=2, coef=1.0)
    a, b = _seq(100.0), _seq(200.0)
    ens.add(a, step=0)                                      # covers steps 0 .. 14
    ens.add(b, step=10)                                     # covers steps 10 .. 24
    m = math.exp(-1.0)
    np.testing.assert_allclose(ens.action(14), (a[15] + m * b[5]) / (1 + m), rtol=1e-6)
    np.testing.assert_array_equal(ens.action(15), b[6])     # a expired: b alone, weight 1
    ens.add(_seq(300.0), step=15)
    assert [t0 for t0, _ in ens.predictions] == [10, 15]    # a is dropped on the next add


def test_add_checks_its_input():
    ens = ActionEnsembler(n_obs_steps=2, coef=0.0)
    with pytest.raises(ValueError, match=r"prediction must have shape \(H >= 2, Da\), got \(16,\)"):
        ens.add(np.zeros(16), 0)
    ens.add(_seq(0.0), 4)
    with pytest.raises(ValueError, match="steps must increase, got step 4 after step 4"):
        ens.add(_seq(0.0), 4)


def test_option_checks_name_key_expected_and_found():
    assert check_ensemble_options(None, None, 16, 2) == (None, 1)
    assert check_ensemble_options(0, None, 16, 2) == (0.0, 1)
    assert check_ensemble_options(0.01, 15, 16, 2) == (0.01, 15)
    with pytest.raises(ValueError, match="temporal_ensemble must be null or a number >= 0 .*got -0.1"):
        check_ensemble_options(-0.1, None, 16, 2)
    with pytest.raises(ValueError, match="temporal_ensemble must be null or a number >= 0, got True"):
        check_ensemble_options(True, None, 16, 2)
    with pytest.raises(ValueError, match=r"replan_every must be an integer in \[1, 15\] .*got 0"):
        check_ensemble_options(0.1, 0, 16, 2)
    with pytest.raises(ValueError, match=r"replan_every must be an integer in \[1, 18\] .*got 19"):
        check_ensemble_options(0.1, 19, 20, 3)
    with pytest.raises(ValueError, match="replan_every=4 applies only with temporal_ensemble"):
        check_ensemble_options(None, 4, 16, 2)
