"""Observation encoders: normalised observations -> one feature vector per step.

Both encoders take a dict of already normalised tensors with a leading
``(B, T)`` and return ``(B, T, feature_dim)``; the policy flattens the ``T``
steps into the UNet's global condition.

* :class:`LowDimEncoder` -- the identity on the vector ``obs`` (keypoints or
  state), as in the reference's low-dim policy.
* :class:`ImageEncoder` -- per step: crop (random 84x84 in training, centre at
  eval) -> ResNet-18 trunk (torchvision, no pretrained weights, BatchNorm
  replaced by GroupNorm(C/16)) -> spatial softmax over 32 keypoints ->
  Linear(64, 64) -> ReLU, then the normalised agent position appended.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


class LowDimEncoder(nn.Module):
    """Identity on ``obs["obs"] (B, T, Do) -> (B, T, Do)``."""

    def __init__(self, obs_dim: int):
        super().__init__()
        self.obs_dim = self.feature_dim = obs_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs["obs"]
        if x.dim() != 3 or x.shape[-1] != self.obs_dim:
            raise ValueError(f"LowDimEncoder: obs['obs'] must have shape (B, T, {self.obs_dim}), "
                             f"got {tuple(x.shape)}")
        return x


def random_crop(images: torch.Tensor, size: tuple[int, int],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent random crop per image: ``(N, C, H, W) -> (N, C, h, w)``."""
    n, c, height, width = images.shape
    h, w = size
    top = torch.randint(0, height - h + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, width - w + 1, (n,), generator=generator).to(images.device)
    rows = (top[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return images[batch, chan, rows, cols]


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre crop: ``(N, C, H, W) -> (N, C, h, w)``."""
    height, width = images.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[..., top:top + size[0], left:left + size[1]]


def resnet18_groupnorm() -> nn.Sequential:
    """ResNet-18 trunk (no pretrained weights, no pooling/fc), BatchNorm -> GroupNorm(C/16).

    ``(N, 3, h, w) -> (N, 512, ceil(h/32), ceil(w/32))``.
    """
    net = torchvision.models.resnet18(weights=None)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(child.num_features // 16, child.num_features))
            else:
                swap(child)

    swap(net)
    return nn.Sequential(*list(net.children())[:-2])


class SpatialSoftmax(nn.Module):
    """1x1 conv to ``num_kp`` maps, softmax over space, expected (x, y) per map.

    ``(N, C, H, W) -> (N, 2 num_kp)`` with coordinates in [-1, 1].
    """

    def __init__(self, in_channels: int, num_kp: int = 32):
        super().__init__()
        self.num_kp = num_kp
        self.keypoints = nn.Conv2d(in_channels, num_kp, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(x)                                   # (N, K, H, W)
        n, k, h, w = maps.shape
        attention = F.softmax(maps.reshape(n, k, h * w), dim=-1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)   # (H W, 2)
        return (attention @ grid).reshape(n, 2 * k)


class ImageEncoder(nn.Module):
    """``{"image": (B, T, 3, H, W) in [-1, 1], "agent_pos": (B, T, 2)} -> (B, T, F + 2)``.

    ``F = feature_dim`` (64).  Crops are random while ``self.training`` and
    central otherwise.
    """

    def __init__(self, crop_shape: tuple[int, int] = (84, 84), num_keypoints: int = 32,
                 feature_dim: int = 64, agent_pos_dim: int = 2):
        super().__init__()
        self.crop_shape = tuple(int(s) for s in crop_shape)
        self.trunk = resnet18_groupnorm()
        self.pool = SpatialSoftmax(512, num_keypoints)
        self.proj = nn.Linear(2 * num_keypoints, feature_dim)
        self.agent_pos_dim = agent_pos_dim
        self.feature_dim = feature_dim + agent_pos_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        image, agent_pos = obs["image"], obs["agent_pos"]
        if image.dim() != 5 or image.shape[2] != 3:
            raise ValueError(f"ImageEncoder: obs['image'] must have shape (B, T, 3, H, W), "
                             f"got {tuple(image.shape)}")
        b, t = image.shape[:2]
        x = image.reshape(b * t, *image.shape[2:])
        if x.shape[-2] < self.crop_shape[0] or x.shape[-1] < self.crop_shape[1]:
            raise ValueError(f"ImageEncoder: images {tuple(x.shape[-2:])} are smaller than "
                             f"the crop {self.crop_shape}")
        x = random_crop(x, self.crop_shape) if self.training else center_crop(x, self.crop_shape)
        feat = F.relu(self.proj(self.pool(self.trunk(x))))
        return torch.cat([feat.reshape(b, t, -1), agent_pos], dim=-1)
