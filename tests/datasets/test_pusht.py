"""Push-T tasks, data location, download, and the batches a training loop gets."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from diffpolicy import paths
from diffpolicy.datasets import pusht
from diffpolicy.datasets.errors import ChecksumError, CorruptDataError, DatasetError
from diffpolicy.datasets.crops import center_crop, random_crop
from diffpolicy.datasets.demos import demo_loader as pusht_loader
from diffpolicy.datasets.demos import fit_normalizer
from diffpolicy.datasets.pusht import PUSHT_TREE_SHA256, download_pusht, load_pusht, tree_sha256
from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.datasets.windows import split_episodes
from zarr_stores import write_store


@pytest.fixture
def fake_pusht(tmp_path):
    """A 3-episode Push-T store with images, zarr format 2: (path, episodes)."""
    path = tmp_path / "fake.zarr"
    return path, write_store(path, lengths=(20, 31, 17), with_img=True)


# ---------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def keypoints_data(pusht_zarr):
    return load_pusht(pusht_zarr, task="keypoints")


def test_keypoints_task_on_published_set(keypoints_data, pusht_zarr):
    d = keypoints_data
    assert d.n_episodes == 206 and d.n_steps == 25650 and d.obs_dim == 20
    assert d.frames["obs"].shape == (25650, 20) and d.frames["action"].shape == (25650, 2)
    rb = ReplayBuffer.open(pusht_zarr)
    kp, state = rb.read("keypoint"), rb.read("state")
    np.testing.assert_array_equal(d.frames["obs"][:, :18].numpy(), kp.reshape(-1, 18))
    np.testing.assert_array_equal(d.frames["obs"][:, 18:].numpy(), state[:, :2])
    np.testing.assert_array_equal(d.frames["action"].numpy(), rb.read("action"))


def test_training_batches_keypoints(keypoints_data):
    loader = pusht_loader(keypoints_data, batch_size=256, max_train_episodes=90)
    lengths = keypoints_data.episode_lengths
    train, _ = split_episodes(206, 0.02, 42, 90)
    assert len(loader.windows) == int((lengths[train] - 16 + 1 + 1 + 7).sum())
    batch = next(iter(loader))
    assert set(batch) == {"obs", "action"}
    assert batch["obs"].shape == (256, 2, 20) and batch["obs"].dtype == torch.float32
    assert batch["action"].shape == (256, 16, 2)
    # every window is from a training episode; validation windows only from validation episodes
    assert set(loader.windows.episode.tolist()) == set(np.nonzero(train)[0].tolist())
    val = pusht_loader(keypoints_data, batch_size=64, split="val")
    assert set(val.windows.episode.tolist()) == {18, 90, 134, 157} and not val.shuffle


def test_state_task_on_published_set(pusht_zarr):
    d = load_pusht(pusht_zarr, task="state")
    assert d.frames["obs"].shape == (25650, 5) and d.obs_dim == 5
    batch = next(iter(pusht_loader(d, batch_size=8)))
    assert batch["obs"].shape == (8, 2, 5)


def test_normalizer_from_published_set(keypoints_data):
    norm = fit_normalizer(keypoints_data)
    assert sorted(norm.keys) == ["action", "obs"]
    obs = keypoints_data.frames["obs"]
    np.testing.assert_array_equal(norm.stats("obs")["min"].numpy(), obs.min(0).values.numpy())
    y = norm.normalize("obs", obs)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6


def test_image_task_on_published_set(pusht_zarr):
    d = load_pusht(pusht_zarr, task="image")
    img = d.frames["image"]
    assert img.shape == (25650, 3, 96, 96) and img.dtype == torch.uint8  # channels first, uint8
    rb = ReplayBuffer.open(pusht_zarr)
    ends = rb.episode_ends
    for ep in (0, 100, 205):  # uint8 in memory is lossless for the published pixels
        s, e = (int(ends[ep - 1]) if ep else 0), int(ends[ep])
        np.testing.assert_array_equal(img[s:e].permute(0, 2, 3, 1).numpy().astype(np.float32), rb.read("img", s, e))
    np.testing.assert_array_equal(d.frames["obs"].numpy(), rb.read("state")[:, :2])
    batch = next(iter(pusht_loader(d, batch_size=64, crop=84)))
    assert batch["obs"]["image"].shape == (64, 2, 3, 84, 84)
    assert batch["obs"]["obs"].shape == (64, 2, 2) and batch["action"].shape == (64, 16, 2)
    im = batch["obs"]["image"]
    assert im.dtype == torch.float32 and 0 <= im.min() and im.max() <= 1
    full = next(iter(pusht_loader(d, batch_size=4, shuffle=False, split="all")))
    # the first window of episode 0 repeats frame 0 for both observation steps
    ref = torch.from_numpy(rb.read("img", 0, 1)[0]).permute(2, 0, 1) / 255
    torch.testing.assert_close(full["obs"]["image"][0, 0], ref)
    torch.testing.assert_close(full["obs"]["image"][0, 1], ref)
    norm = fit_normalizer(d)
    assert sorted(norm.keys) == ["action", "image", "obs"]


@pytest.mark.slow
def test_published_pixels_are_whole_numbers(pusht_zarr):
    """Checks the whole image array: uint8 in memory loses nothing (about 10 s)."""
    rb = ReplayBuffer.open(pusht_zarr)
    for _, block in rb._iter_blocks("img", 0, rb.n_steps):
        assert np.array_equal(block, np.rint(block)) and block.min() >= 0 and block.max() <= 255


def test_tree_checksum_matches_published_store(pusht_zarr):
    assert tree_sha256(pusht_zarr) == PUSHT_TREE_SHA256
    sums = pusht_zarr.parent / "pusht_cchi_v7_replay.SHA256SUMS"
    if sums.exists():  # the same digest from the shipped checksum list
        rows = sorted((p.removeprefix("./"), h) for h, p in (ln.split("  ", 1) for ln in sums.read_text().splitlines()))
        text = "".join(f"{h}  ./{p}\n" for p, h in rows)
        assert hashlib.sha256(text.encode()).hexdigest() == PUSHT_TREE_SHA256


# ---------------------------------------------------------------------- task validation on small stores
def test_keypoints_task_does_not_read_images(fake_pusht):
    path, episodes = fake_pusht
    for chunk in (path / "data" / "img").iterdir():
        if not chunk.name.startswith("."):
            chunk.write_bytes(b"garbage")
    d = load_pusht(path, task="keypoints")
    assert d.frames["obs"].shape == (68, 20)
    np.testing.assert_array_equal(d.frames["obs"][:20, :18].numpy(), episodes[0]["keypoint"].reshape(20, 18))
    with pytest.raises(CorruptDataError, match=r"fake\.zarr: cannot decode data/img chunk"):
        load_pusht(path, task="image")


def test_image_task_on_small_store(fake_pusht):
    path, episodes = fake_pusht
    d = load_pusht(path, task="image")
    np.testing.assert_array_equal(d.frames["image"][20:51].numpy(), episodes[1]["img"].astype(np.uint8).transpose(0, 3, 1, 2))
    batch = next(iter(pusht_loader(d, batch_size=5, crop=None, split="all", shuffle=False)))
    assert batch["obs"]["image"].shape == (5, 2, 3, 96, 96)


def _replace(path: Path, key: str, values: np.ndarray) -> None:
    g = zarr.open_group(str(path), mode="r+")
    del g["data"][key]
    g["data"].create_array(key, data=values, config={"write_empty_chunks": True})


def test_error_keypoint_dims_for_task(fake_pusht):
    path, _ = fake_pusht
    _replace(path, "keypoint", np.zeros((68, 8, 2), np.float32))
    with pytest.raises(DatasetError, match=r"fake\.zarr: data/keypoint has per-step shape \(8, 2\), "
                                           r"expected \(9, 2\) for Push-T task 'keypoints'"):
        load_pusht(path, task="keypoints")
    assert load_pusht(path, task="state").obs_dim == 5  # the state task does not need keypoints


def test_error_state_dims_for_task(fake_pusht):
    path, _ = fake_pusht
    _replace(path, "state", np.zeros((68, 4), np.float32))
    with pytest.raises(DatasetError, match=r"data/state has per-step shape \(4,\), expected \(5,\) for Push-T task 'state'"):
        load_pusht(path, task="state")


def test_error_image_dims_and_values(fake_pusht, tmp_path):
    path, _ = fake_pusht
    _replace(path, "img", np.zeros((68, 3, 96, 96), np.float32))
    with pytest.raises(DatasetError, match=r"data/img has per-step shape \(3, 96, 96\), expected \(96, 96, 3\)"):
        load_pusht(path, task="image")
    _replace(path, "img", np.full((68, 96, 96, 3), 300.0, np.float32))
    with pytest.raises(DatasetError, match=r"data/img values must be pixels in 0\.\.255, found 300\.0\.\.300\.0"):
        load_pusht(path, task="image")


def test_error_missing_key_and_unknown_task(tmp_path):
    path = tmp_path / "noimg.zarr"
    write_store(path, with_img=False)
    with pytest.raises(DatasetError, match=r"data/img is missing; Push-T task 'image' needs"):
        load_pusht(path, task="image")
    with pytest.raises(DatasetError, match="unknown Push-T task 'pixels'"):
        load_pusht(path, task="pixels")
    d = load_pusht(path, task="keypoints")
    with pytest.raises(DatasetError, match="crop=84 applies to camera images; task .keypoints. has no cameras"):
        pusht_loader(d, crop=84)
    with pytest.raises(DatasetError, match="split must be one of"):
        pusht_loader(d, split="test")


# ---------------------------------------------------------------------- data location
def test_default_location_from_env(fake_pusht, tmp_path, monkeypatch):
    path, _ = fake_pusht
    root = tmp_path / "root"
    (root / "pusht").mkdir(parents=True)
    path.rename(root / "pusht" / pusht.PUSHT_STORE_NAME)
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(root))
    d = load_pusht(task="state")
    assert d.path == root / "pusht" / pusht.PUSHT_STORE_NAME and d.n_steps == 68
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"not found at .*empty/pusht/pusht_cchi_v7_replay\.zarr.*DIFFPOLICY_DATA"):
        load_pusht(task="state")


# ---------------------------------------------------------------------- download (offline: file:// URLs)
def _zip_store(store: Path, archive: Path, extra: dict[str, bytes] | None = None) -> str:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(store.rglob("*")):
            if f.is_file():
                zf.write(f, f"pusht/{pusht.PUSHT_STORE_NAME}/{f.relative_to(store).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def test_download_unpacks_and_checks(fake_pusht, tmp_path, capsys):
    path, episodes = fake_pusht
    archive = tmp_path / "pusht.zip"
    digest = _zip_store(path, archive)
    dest = tmp_path / "data"
    got = download_pusht(dest, url=archive.as_uri(), sha256=digest, tree_sha=tree_sha256(path))
    assert got == dest / "pusht" / pusht.PUSHT_STORE_NAME
    err = capsys.readouterr().err
    assert "pusht.zip" in err and "100%" in err  # the progress bar was drawn
    rb = ReplayBuffer.open(got)
    np.testing.assert_array_equal(rb.get_episode(2)["img"], episodes[2]["img"])
    assert [p.name for p in dest.iterdir()] == ["pusht"]  # no temporary files left
    assert download_pusht(dest, url="file:///does/not/exist") == got  # already there: no download


def test_download_rejects_bad_archive_checksum(fake_pusht, tmp_path):
    archive = tmp_path / "pusht.zip"
    _zip_store(fake_pusht[0], archive)
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"archive SHA-256 is [0-9a-f]{64}, expected 0{64}"):
        download_pusht(dest, url=archive.as_uri(), sha256="0" * 64, progress=False)
    assert list(dest.iterdir()) == []


def test_download_rejects_wrong_content(fake_pusht, tmp_path):
    archive = tmp_path / "pusht.zip"
    _zip_store(fake_pusht[0], archive)
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match=f"content SHA-256 [0-9a-f]{{64}}, expected {PUSHT_TREE_SHA256}"):
        download_pusht(dest, url=archive.as_uri(), progress=False)  # default: the published store's digest
    assert list(dest.iterdir()) == []


def test_download_unreachable_url(tmp_path):
    with pytest.raises(DatasetError, match=r"cannot download file:///no/such/pusht\.zip: .*no network\?"):
        download_pusht(tmp_path / "data", url="file:///no/such/pusht.zip", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_refuses_paths_outside_dest(fake_pusht, tmp_path):
    archive = tmp_path / "evil.zip"
    _zip_store(fake_pusht[0], archive, extra={"../../escape.txt": b"x"})
    with pytest.raises(DatasetError, match="would extract outside"):
        download_pusht(tmp_path / "data", url=archive.as_uri(), tree_sha=None, progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_download_via_patched_urlopen(fake_pusht, tmp_path, monkeypatch):
    """The https path: urlopen is the only network call, and it is replaced here."""
    archive = tmp_path / "pusht.zip"
    _zip_store(fake_pusht[0], archive)
    seen = []

    def fake_urlopen(url):
        seen.append(url)
        return open(archive, "rb")  # no Content-Length: the bar runs without a total

    class _Resp:
        def __init__(self, fh):
            self.fh, self.headers = fh, {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n):
            return self.fh.read(n)

    monkeypatch.setattr(pusht.urllib.request, "urlopen", lambda url: _Resp(fake_urlopen(url)))
    got = download_pusht(tmp_path / "d", tree_sha=tree_sha256(fake_pusht[0]), progress=False)
    assert seen == [pusht.PUSHT_URL] and ReplayBuffer.open(got).n_steps == 68


# ---------------------------------------------------------------------- crops
def test_random_crop_takes_contiguous_windows():
    h = w = 96
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    img = torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.long)]).float()  # (3, 96, 96)
    batch = img.expand(64, 2, 3, h, w)
    out = random_crop(batch, 84, torch.Generator().manual_seed(0))
    assert out.shape == (64, 2, 3, 84, 84)
    oy, ox = out[:, :, 0, 0, 0], out[:, :, 1, 0, 0]
    assert (oy >= 0).all() and (oy <= 12).all() and (ox >= 0).all() and (ox <= 12).all()
    ar = torch.arange(84).float()
    torch.testing.assert_close(out[:, :, 0], (oy[..., None, None] + ar[:, None]).expand(64, 2, 84, 84))
    torch.testing.assert_close(out[:, :, 1], (ox[..., None, None] + ar[None, :]).expand(64, 2, 84, 84))
    assert len(set(zip(oy.flatten().tolist(), ox.flatten().tolist()))) > 20  # independent crops per frame
    c = center_crop(batch, 84)
    assert c[0, 0, 0, 0, 0] == 6 and c[0, 0, 1, 0, 0] == 6 and c.shape == (64, 2, 3, 84, 84)
    with pytest.raises(DatasetError, match="crop size 100 does not fit images of 96x96"):
        random_crop(batch, 100)


def test_loader_crop_matches_frames(fake_pusht):
    path, episodes = fake_pusht
    d = load_pusht(path, task="image")
    loader = pusht_loader(d, batch_size=68, crop=84, split="all", shuffle=False)
    batch = next(iter(loader))
    ids = torch.arange(batch["action"].shape[0])
    frames = loader.windows.indices[ids, :2]  # (B, 2) frame of each observation step
    full = d.frames["image"][frames].float() / 255  # (B, 2, 3, 96, 96)
    crops = batch["obs"]["image"]
    for b in (0, 7, 40):  # each crop is some 84x84 window of its own frame
        for t in range(2):
            hits = [(y, x) for y in range(13) for x in range(13)
                    if torch.equal(full[b, t, :, y:y + 84, x:x + 84], crops[b, t])]
            assert hits, (b, t)


def test_loader_device_and_validation_split(fake_pusht):
    d = load_pusht(fake_pusht[0], task="keypoints")
    loader = pusht_loader(d, batch_size=4, device="cpu", split="val", val_ratio=0.34)
    assert loader.device == torch.device("cpu") and not loader.shuffle
    val_eps = set(loader.windows.episode.tolist())
    train_eps = set(pusht_loader(d, val_ratio=0.34).windows.episode.tolist())
    assert len(val_eps) == 1 and val_eps.isdisjoint(train_eps) and len(train_eps) == 2
    batch = next(iter(loader))
    assert batch["obs"].shape == (4, 2, 20) and batch["action"].shape == (4, 16, 2)
