"""resolve_device: auto follows the hardware; unknown or absent devices are refused clearly."""
import pytest
import torch

from diffpolicy.device import resolve_device
from diffpolicy.policy.run_config import ConfigError


def test_auto_and_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_takes_this_process_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"device='cuda:3' asked for, but this machine has 2 CUDA device"):
        resolve_device("cuda:3")


def test_absent_or_unknown_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cuda:0' asked for, but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device must be .*got 'banana'"):
        resolve_device("banana")
