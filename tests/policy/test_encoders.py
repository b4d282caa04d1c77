import torch
from torch import nn

import pytest

from diffpolicy.datasets.crops import center_crop, random_crop
from diffpolicy.policy.encoders import ObservationEncoder, SpatialSoftmax, resnet18_groupnorm


def test_random_crop_takes_an_independent_window_per_image():
    n, c, h, w = 6, 3, 10, 12
    images = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)
    crops = random_crop(images, (4, 5), generator=torch.Generator().manual_seed(0))
    assert crops.shape == (n, c, 4, 5)
    offsets = []
    for i in range(n):
        # every value is unique, so the crop's top-left value locates it
        idx = (images[i, 0] == crops[i, 0, 0, 0]).nonzero()[0]
        top, left = int(idx[0]), int(idx[1])
        torch.testing.assert_close(crops[i], images[i, :, top:top + 4, left:left + 5])
        offsets.append((top, left))
    assert len(set(offsets)) > 1


def test_center_crop_is_central():
    images = torch.arange(96 * 96, dtype=torch.float32).reshape(1, 1, 96, 96)
    crop = center_crop(images, (84, 84))
    assert torch.equal(crop, images[..., 6:90, 6:90])


def test_resnet_trunk_has_groupnorm_not_batchnorm():
    trunk = resnet18_groupnorm()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    norms = [m for m in trunk.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels // 16 for m in norms)
    assert trunk(torch.zeros(2, 3, 84, 84)).shape == (2, 512, 3, 3)


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(1, num_kp=1)
    with torch.no_grad():
        pool.keypoints.weight.fill_(50.0)
        pool.keypoints.bias.zero_()
    x = torch.zeros(1, 1, 5, 7)
    x[0, 0, 0, 6] = 1.0                      # top-right corner: x = +1, y = -1
    out = pool(x)
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0]]), atol=1e-3, rtol=0)


def test_camera_encoder_shapes_and_crop_modes():
    torch.manual_seed(0)
    enc = ObservationEncoder(2, {"image": {"shape": [3, 96, 96], "crop": [84, 84]}})
    obs = {"image": torch.rand(2, 2, 3, 96, 96) * 2 - 1, "obs": torch.rand(2, 2, 2)}
    enc.eval()
    a, b = enc(obs), enc(obs)
    assert a.shape == (2, 2, 66) and torch.equal(a, b)       # centre crop: deterministic
    torch.testing.assert_close(a[..., -2:], obs["obs"])      # camera features first, then the vector
    enc.train()
    assert not torch.allclose(enc(obs), enc(obs))              # random crops differ


def test_two_cameras_of_other_sizes_and_channels():
    torch.manual_seed(0)
    cams = {"wrist": {"shape": [1, 40, 48], "crop": None}, "front": {"shape": [3, 64, 80], "crop": [56, 72]}}
    enc = ObservationEncoder(7, cams, feature_dim=16).eval()
    obs = {"wrist": torch.rand(3, 2, 1, 40, 48), "front": torch.rand(3, 2, 3, 64, 80), "obs": torch.rand(3, 2, 7)}
    out = enc(obs)
    assert enc.feature_dim == 2 * 16 + 7 and out.shape == (3, 2, 39)
    assert list(enc.cameras) == ["wrist", "front"]           # the config's order
    torch.testing.assert_close(out[..., :16], enc.cameras["wrist"](obs["wrist"].reshape(6, 1, 40, 48)).reshape(3, 2, 16))
    with pytest.raises(ValueError, match=r"camera 'front' must have shape \(B, T, 3, 64, 80\)"):
        enc({**obs, "front": torch.rand(3, 2, 3, 96, 96)})


def test_lowdim_encoder_is_identity_and_checks_shape():
    enc = ObservationEncoder(20)
    x = torch.randn(3, 2, 20)
    assert torch.equal(enc({"obs": x}), x) and not list(enc.parameters())
    with pytest.raises(ValueError, match=r"\(B, T, 20\)"):
        enc({"obs": torch.randn(3, 2, 5)})


def test_small_trunk_gives_the_same_features_cheaper():
    torch.manual_seed(0)
    cams = {"image": {"shape": [3, 96, 96], "crop": [84, 84]}}
    small = ObservationEncoder(2, cams, trunk="small").eval()
    resnet = ObservationEncoder(2, cams).eval()
    obs = {"image": torch.rand(2, 2, 3, 96, 96) * 2 - 1, "obs": torch.rand(2, 2, 2)}
    assert small(obs).shape == resnet(obs).shape == (2, 2, 66)
    trunk = small.cameras["image"].trunk
    assert trunk(torch.zeros(1, 3, 84, 84)).shape == (1, 64, 11, 11)
    assert all(m.num_groups == 8 for m in trunk.modules() if isinstance(m, nn.GroupNorm))
    assert sum(p.numel() for p in small.parameters()) * 100 < sum(p.numel() for p in resnet.parameters())
    with pytest.raises(ValueError, match="trunk must be one of \\['resnet18', 'small'\\], got 'vit'"):
        ObservationEncoder(2, cams, trunk="vit")
