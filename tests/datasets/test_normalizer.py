"""LinearNormalizer: [-1, 1] range, exact inverse, numpy-equal stats, constant dims, checkpoints."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from diffpolicy.datasets.normalizer import LinearNormalizer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-3, 500, size=(1000, 20)).astype(np.float32)
    obs[:, 7] = 42.0  # a constant dimension
    action = rng.normal(200, 50, size=(1000, 2)).astype(np.float32)
    return {"obs": obs, "action": action}


def test_maps_data_range_to_minus_one_one():
    data = _data()
    norm = LinearNormalizer().fit(data)
    y = norm.normalize("obs", torch.from_numpy(data["obs"]))
    varying = [i for i in range(20) if i != 7]
    np.testing.assert_allclose(y[:, varying].min(0).values.numpy(), -1, atol=1e-6)
    np.testing.assert_allclose(y[:, varying].max(0).values.numpy(), 1, atol=1e-6)
    assert torch.all(y[:, 7] == 0)  # constant dim: scale 1, maps to 0
    assert norm.stats("obs")["scale"][7] == 1


def test_stats_match_numpy():
    data = _data(1)
    norm = LinearNormalizer().fit(data)
    for key, x in data.items():
        s = norm.stats(key)
        x64 = x.astype(np.float64)
        np.testing.assert_array_equal(s["min"].numpy(), x.min(0))
        np.testing.assert_array_equal(s["max"].numpy(), x.max(0))
        np.testing.assert_allclose(s["mean"].numpy(), x64.mean(0), rtol=1e-6)
        np.testing.assert_allclose(s["std"].numpy(), x64.std(0), rtol=1e-5)


def test_stats_over_all_leading_axes():
    x = np.random.default_rng(2).normal(size=(50, 9, 2)).astype(np.float32)
    norm = LinearNormalizer().fit({"kp": x})
    np.testing.assert_array_equal(norm.stats("kp")["min"].numpy(), x.reshape(-1, 2).min(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_is_exact_to_float_tolerance(dtype):
    data = _data(3)
    norm = LinearNormalizer().fit(data)
    x = torch.from_numpy(data["action"]).to(dtype)[:, None, :].repeat(1, 16, 1)  # (B, H, 2)
    back = norm.unnormalize("action", norm.normalize("action", x))
    assert back.dtype == dtype and back.shape == x.shape
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(back, x, rtol=0, atol=tol * 512)
    # and the other way round
    y = torch.rand(5, 2, dtype=dtype) * 2 - 1
    torch.testing.assert_close(norm.normalize("action", norm.unnormalize("action", y)), y, rtol=0, atol=tol)


def test_image_keys_fixed_map():
    norm = LinearNormalizer().fit({"agent_pos": np.ones((3, 2)) * np.arange(3)[:, None]}, image_keys=("image",))
    img = torch.rand(4, 2, 3, 96, 96)
    y = norm.normalize("image", img)
    torch.testing.assert_close(y, img * 2 - 1)
    assert norm.normalize("image", torch.zeros(1)).item() == -1 and norm.normalize("image", torch.ones(1)).item() == 1
    torch.testing.assert_close(norm.unnormalize("image", y), img)


def test_numpy_in_numpy_out():
    data = _data(4)
    norm = LinearNormalizer().fit(data)
    y = norm.normalize("action", data["action"])
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(norm.unnormalize("action", y), data["action"], atol=1e-3)


def test_state_dict_round_trip_into_fresh_normalizer():
    data = _data(5)
    norm = LinearNormalizer().fit(data, image_keys=("image",))
    buf = io.BytesIO()
    torch.save(norm.state_dict(), buf)
    buf.seek(0)
    fresh = LinearNormalizer()
    fresh.load_state_dict(torch.load(buf))
    assert sorted(fresh.keys) == sorted(norm.keys)
    x = torch.from_numpy(data["obs"])
    torch.testing.assert_close(fresh.normalize("obs", x), norm.normalize("obs", x), rtol=0, atol=0)
    torch.testing.assert_close(fresh.normalize("image", torch.ones(2)), torch.ones(2))


def test_inside_a_policy_checkpoint():
    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.normalizer = LinearNormalizer()
            self.net = nn.Linear(2, 2)

    data = _data(6)
    trained = Policy()
    trained.normalizer.fit(data)
    restored = Policy()
    restored.load_state_dict(trained.state_dict())  # strict: all keys recreated and matched
    a = torch.from_numpy(data["action"])
    torch.testing.assert_close(restored.normalizer.normalize("action", a), trained.normalizer.normalize("action", a))


def test_normalize_dict_nested_batches():
    norm = LinearNormalizer().fit({"agent_pos": np.array([[0.0, 0.0], [512.0, 512.0]]),
                                   "action": np.array([[0.0, 0.0], [512.0, 512.0]])}, image_keys=("image",))
    batch = {"obs": {"image": torch.ones(1, 2, 3, 4, 4), "agent_pos": torch.full((1, 2, 2), 256.0)},
             "action": torch.zeros(1, 16, 2)}
    out = norm.normalize_dict(batch)
    assert torch.all(out["obs"]["image"] == 1) and torch.all(out["obs"]["agent_pos"] == 0)
    assert torch.all(out["action"] == -1)


def test_errors_are_clear():
    norm = LinearNormalizer().fit({"a": np.zeros((3, 2))})
    with pytest.raises(KeyError, match=r"no key 'b' \(fitted keys: \['a'\]\)"):
        norm.normalize("b", torch.zeros(2))
    with pytest.raises(ValueError, match="'c': data contains NaN"):
        LinearNormalizer().fit({"c": np.array([[1.0], [np.nan]])})
    with pytest.raises(ValueError, match="need a non-empty array"):
        LinearNormalizer().fit({"d": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="contain no '.'"):
        LinearNormalizer().fit({"a.b": np.zeros((3, 2))})
