"""Observation encoder: normalised observations -> one feature vector per step.

:class:`ObservationEncoder` takes a dict of already normalised tensors with a
leading ``(B, T)`` -- ``"obs"`` the low-dim vector ``(B, T, Do)`` (if the task
has one) and one ``(B, T, C, H, W)`` image per camera -- and returns
``(B, T, feature_dim)``: each camera's features in the config's order, then the
low-dim vector; the policy flattens the ``T`` steps into the UNet's global
condition.  Without cameras it is the identity on ``obs``, as in the
reference's low-dim policy.

Per camera (:class:`CameraEncoder`, one per camera, weights not shared): crop
(random in training, central at evaluation; none if the camera has no crop) ->
trunk -> spatial softmax over 32 keypoints -> Linear(64, 64) -> ReLU.  Trunks
(``PolicyConfig.image_encoder``):

* ``resnet18`` (the published one): torchvision's ResNet-18, no pretrained
  weights, BatchNorm replaced by GroupNorm(C/16), the first convolution taking
  the camera's channels; ``(N, C, h, w) -> (N, 512, h/32, w/32)``.
* ``small`` (for CPUs): three strided convolutions 5x5/2 (32), 3x3/2 (64),
  3x3/2 (64), each with GroupNorm(8) and ReLU; ``(N, C, h, w) -> (N, 64, h/8, w/8)``,
  about 15x fewer multiply-adds than ResNet-18 at 84x84 and a finer keypoint grid.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from diffpolicy.datasets.crops import center_crop, random_crop

def resnet18_groupnorm(in_channels: int = 3) -> nn.Sequential:
    """ResNet-18 trunk (no pretrained weights, no pooling/fc), BatchNorm -> GroupNorm(C/16).

    ``(N, in_channels, h, w) -> (N, 512, ceil(h/32), ceil(w/32))``.
    """
    net = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)

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


def small_conv_trunk(in_channels: int = 3) -> nn.Sequential:
    """Three strided convolutions with GroupNorm(8) and ReLU: ``(N, C, h, w) -> (N, 64, h/8, w/8)``."""
    layers: list[nn.Module] = []
    for c_in, c_out, k in ((in_channels, 32, 5), (32, 64, 3), (64, 64, 3)):
        layers += [nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2), nn.GroupNorm(8, c_out), nn.ReLU()]
    return nn.Sequential(*layers)


TRUNKS = {"resnet18": (resnet18_groupnorm, 512), "small": (small_conv_trunk, 64)}


class CameraEncoder(nn.Module):
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, feature_dim)``; crops are random while
    ``self.training`` and central otherwise (none when ``crop`` is None)."""

    def __init__(self, channels: int = 3, crop: tuple[int, int] | None = (84, 84), num_keypoints: int = 32,
                 feature_dim: int = 64, trunk: str = "resnet18"):
        super().__init__()
        if trunk not in TRUNKS:
            raise ValueError(f"CameraEncoder: trunk must be one of {sorted(TRUNKS)}, got {trunk!r}")
        make_trunk, trunk_channels = TRUNKS[trunk]
        self.crop = None if crop is None else tuple(int(s) for s in crop)
        self.trunk = make_trunk(channels)
        self.pool = SpatialSoftmax(trunk_channels, num_keypoints)
        self.proj = nn.Linear(2 * num_keypoints, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            x = random_crop(x, self.crop) if self.training else center_crop(x, self.crop)
        return F.relu(self.proj(self.pool(self.trunk(x))))


class ObservationEncoder(nn.Module):
    """``{"obs": (B, T, Do), <camera>: (B, T, C, H, W)} -> (B, T, n_cameras * F + Do)``.

    ``cameras``: name -> ``{"shape": [C, H, W], "crop": [h, w] | None}`` (a policy config's).
    """

    def __init__(self, obs_dim: int, cameras: dict | None = None, num_keypoints: int = 32,
                 feature_dim: int = 64, trunk: str = "resnet18"):
        super().__init__()
        self.obs_dim = obs_dim
        self.shapes = {name: tuple(cam["shape"]) for name, cam in (cameras or {}).items()}
        self.cameras = nn.ModuleDict({name: CameraEncoder(cam["shape"][0], cam.get("crop"), num_keypoints,
                                                          feature_dim, trunk)
                                      for name, cam in (cameras or {}).items()})
        self.feature_dim = obs_dim + feature_dim * len(self.cameras)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for name, encoder in self.cameras.items():
            image = obs[name]
            if image.dim() != 5 or tuple(image.shape[2:]) != self.shapes[name]:
                raise ValueError(f"ObservationEncoder: camera {name!r} must have shape "
                                 f"(B, T, {', '.join(map(str, self.shapes[name]))}), got {tuple(image.shape)}")
            b, t = image.shape[:2]
            feats.append(encoder(image.reshape(b * t, *image.shape[2:])).reshape(b, t, -1))
        if self.obs_dim:
            x = obs["obs"]
            if x.dim() != 3 or x.shape[-1] != self.obs_dim:
                raise ValueError(f"ObservationEncoder: obs['obs'] must have shape (B, T, {self.obs_dim}), "
                                 f"got {tuple(x.shape)}")
            feats.append(x)
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)
