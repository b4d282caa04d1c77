"""diffpolicy.host_copy: host draws reach the model's device unchanged, and the same numbers
as torch's own generator calls (so CPU results and seeds are unchanged by it)."""
import pytest
import torch

from diffpolicy.host_copy import randn_like_device, to_device


def test_to_device_keeps_values_and_casts():
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3) / 7
    out = to_device(t, "cpu", torch.float32)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, t.float())
    assert to_device(t, torch.device("cpu")) is t          # nothing to copy


def test_randn_like_device_draws_what_torch_randn_draws():
    like = torch.zeros(1, dtype=torch.bfloat16)
    got = randn_like_device((3, 4, 5), torch.Generator().manual_seed(7), like)
    want = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == (3, 4, 5)
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the non-blocking path")
def test_to_device_on_cuda_survives_its_source():
    src = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    want = src.clone()
    out = to_device(src, "cuda", torch.float32)
    src.zero_()                                            # the copy must not read src late
    del src
    torch.cuda.synchronize()
    assert out.device.type == "cuda" and torch.equal(out.cpu(), want)
