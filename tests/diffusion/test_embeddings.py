import math

import pytest
import torch

from diffpolicy.diffusion.embeddings import FiLM, sinusoidal_embedding, step_encoder


def test_sinusoidal_values():
    t = torch.tensor([0.0, 3.0])
    e = sinusoidal_embedding(t, 8)
    assert e.shape == (2, 8)
    assert torch.allclose(e[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]))
    w = [10000 ** (-i / 3) for i in range(4)]
    expect = [math.sin(3 * x) for x in w] + [math.cos(3 * x) for x in w]
    assert torch.allclose(e[1], torch.tensor(expect), atol=1e-6)


def test_sinusoidal_distinguishes_steps():
    e = sinusoidal_embedding(torch.arange(100), 64)
    d = torch.cdist(e, e) + torch.eye(100) * 10
    assert d.min() > 0.05


def test_bad_dim():
    with pytest.raises(ValueError, match="even and >= 4"):
        sinusoidal_embedding(torch.zeros(1), 7)


def test_film_scales_and_shifts_per_channel():
    film = FiLM(cond_dim=3, channels=4)
    with torch.no_grad():
        film.proj[1].weight.zero_()
        film.proj[1].bias.copy_(torch.tensor([2., 2, 2, 2, 1, 1, 1, 1]))
    x = torch.randn(5, 4, 16)
    out = film(x, torch.randn(5, 3))
    assert torch.allclose(out, 2 * x + 1)


def test_step_encoder_shape_and_grad():
    enc = step_encoder(32)
    out = enc(torch.tensor([0, 5, 99]))
    assert out.shape == (3, 32)
    out.sum().backward()
    assert enc[1].weight.grad.abs().sum() > 0
