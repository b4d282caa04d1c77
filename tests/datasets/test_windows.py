"""Sequence windows: reference padding, episode boundaries, split, vectorised batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpolicy.datasets.errors import DatasetError
from diffpolicy.datasets.replay_buffer import ReplayBuffer
from diffpolicy.datasets.windows import BatchLoader, SequenceWindows, split_episodes, window_indices


def reference_window(frames: np.ndarray, ep_start: int, ep_len: int, s: int, horizon: int) -> np.ndarray:
    """One window the original way: slice the episode, then pad with copies of its edge frames."""
    lo, hi = max(s, 0), min(s + horizon, ep_len)
    sample = frames[ep_start + lo: ep_start + hi]
    before, after = lo - s, (s + horizon) - hi
    return np.concatenate([np.repeat(sample[:1], before, 0), sample, np.repeat(sample[-1:], after, 0)])


def test_hand_computed_windows_on_a_tiny_store(tmp_path):
    """Episodes of 3 and 5 frames, H = 4, To = 2, Ta = 2 (pad 1 before, 1 after)."""
    rb = ReplayBuffer.create(tmp_path / "tiny.zarr", zarr_format=3)
    rb.add_episode({"x": np.arange(3, dtype=np.float32)[:, None]})
    rb.add_episode({"x": np.arange(3, 8, dtype=np.float32)[:, None]})
    rb = ReplayBuffer.open(tmp_path / "tiny.zarr")
    w = SequenceWindows(rb.episode_ends, horizon=4, n_obs_steps=2, n_action_steps=2)
    expected = [
        [0, 0, 1, 2],  # episode 0, start -1: first frame repeated
        [0, 1, 2, 2],  # start 0: last frame repeated
        [3, 3, 4, 5],  # episode 1, start -1
        [3, 4, 5, 6],
        [4, 5, 6, 7],
        [5, 6, 7, 7],  # start L - H + pad_after = 2
    ]
    assert w.indices.tolist() == expected
    assert w.episode.tolist() == [0, 0, 1, 1, 1, 1]
    # the gathered values are those frames (here frame value == frame index)
    x = torch.from_numpy(rb.load_all()["x"])
    got = w.gather(x, torch.arange(len(w)))
    assert got.shape == (6, 4, 1)
    assert got[..., 0].tolist() == [[float(i) for i in row] for row in expected]
    assert w.gather(x, torch.tensor([5, 0]), n_frames=2)[..., 0].tolist() == [[5.0, 6.0], [0.0, 0.0]]


def test_reference_settings_first_and_last_window():
    """H = 16, To = 2, Ta = 8 on one 20-frame episode (frames 100..119 of the buffer)."""
    w = SequenceWindows(np.array([100, 120]), 16, 2, 8, episode_mask=np.array([False, True]))
    assert len(w) == 20 - 16 + 1 + 7 + 1  # starts -1 .. 11
    assert w.indices[0].tolist() == [100, 100] + list(range(101, 115))
    assert w.indices[-1].tolist() == list(range(111, 120)) + [119] * 7
    # the window starting at t - 1 covers observations t - 1, t and actions t - 1 .. t + 14
    t = 5
    row = w.indices[t].tolist()  # window index t starts at t - 1
    assert row[:2] == [100 + t - 1, 100 + t] and row == list(range(100 + t - 1, 100 + t + 15))


@pytest.mark.parametrize("H,To,Ta", [(16, 2, 8), (4, 1, 1), (10, 3, 5), (8, 1, 8)])
def test_all_windows_match_per_window_reference(H, To, Ta):
    rng = np.random.default_rng(H * 100 + To * 10 + Ta)
    lengths = rng.integers(1, 30, size=12)
    ends = np.cumsum(lengths)
    frames = rng.normal(size=(int(ends[-1]), 3))
    w = SequenceWindows(ends, H, To, Ta)
    got = w.gather(torch.from_numpy(frames), torch.arange(len(w))).numpy()
    expect, ep_of = [], []
    starts = np.concatenate([[0], ends[:-1]])
    for e, (s0, L) in enumerate(zip(starts, lengths)):
        for s in range(-(To - 1), L - H + (Ta - 1) + 1):
            expect.append(reference_window(frames, s0, L, s, H))
            ep_of.append(e)
    assert len(w) == len(expect)
    np.testing.assert_array_equal(got, np.stack(expect) if expect else got)
    assert w.episode.tolist() == ep_of
    # no window crosses an episode boundary
    idx, ep = w.indices.numpy(), w.episode.numpy()
    assert (idx >= starts[ep][:, None]).all() and (idx < ends[ep][:, None]).all()


def test_short_episodes_and_masks():
    ends = np.array([1, 3, 23])
    idx, ep = window_indices(ends, horizon=16, pad_before=1, pad_after=7)
    # with H = 16, episodes shorter than H - pad_before - pad_after = 8 frames have no window
    assert set(ep.tolist()) == {2}
    idx, ep = window_indices(ends, 3, 1, 1, episode_mask=np.array([True, False, False]))
    assert idx.tolist() == [[0, 0, 0]]  # L = 1, H = 3: one window, every position the same frame
    idx, ep = window_indices(ends, 4, 1, 1, episode_mask=np.array([True, False, False]))
    assert idx.shape == (0, 4)  # L = 1, H = 4: none (starts -1 .. L - H + 1 = -2)
    with pytest.raises(DatasetError, match=r"episode_mask has shape \(2,\), expected \(3,\)"):
        window_indices(ends, 4, 1, 1, episode_mask=np.array([True, False]))


def test_window_parameter_errors():
    with pytest.raises(DatasetError, match="exceeds horizon 16"):
        SequenceWindows(np.array([50]), horizon=16, n_obs_steps=2, n_action_steps=16)
    with pytest.raises(DatasetError, match=">= 1"):
        SequenceWindows(np.array([50]), horizon=16, n_obs_steps=0, n_action_steps=8)


# ---------------------------------------------------------------------- split
def test_split_matches_original_settings():
    train, val = split_episodes(206, val_ratio=0.02, seed=42, max_train_episodes=90)
    assert val.sum() == 4 and train.sum() == 90 and not (train & val).any()
    # the same draws as the original: rng(seed).choice for validation, a fresh rng(seed) for the cap
    expect_val = np.random.default_rng(42).choice(206, size=4, replace=False)
    assert sorted(np.nonzero(val)[0].tolist()) == sorted(expect_val.tolist())
    rest = np.setdiff1d(np.arange(206), expect_val)
    expect_train = rest[np.random.default_rng(42).choice(len(rest), size=90, replace=False)]
    assert sorted(np.nonzero(train)[0].tolist()) == sorted(expect_train.tolist())
    full_train, full_val = split_episodes(206, 0.02, 42)
    assert full_train.sum() == 202 and (full_val == val).all()
    other_train, other_val = split_episodes(206, 0.02, seed=0)
    assert not (other_val == val).all()


def test_split_edge_cases():
    train, val = split_episodes(5, val_ratio=0.0)
    assert train.all() and not val.any()
    train, val = split_episodes(2, val_ratio=0.9)  # at least one episode left to train
    assert train.sum() == 1 and val.sum() == 1
    train, val = split_episodes(10, val_ratio=0.01)  # at least one for validation
    assert val.sum() == 1
    with pytest.raises(DatasetError, match=r"val_ratio must be in \[0, 1\)"):
        split_episodes(10, val_ratio=1.0)
    with pytest.raises(DatasetError, match="max_train_episodes must be >= 1"):
        split_episodes(10, max_train_episodes=0)


# ---------------------------------------------------------------------- loader
def _loader(batch_size=7, shuffle=True, drop_last=False, seed=0):
    ends = np.array([20, 45, 60])
    n = int(ends[-1])
    frames = {"obs": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3),
              "action": torch.arange(n, dtype=torch.float32)[:, None] * 10}
    w = SequenceWindows(ends, 16, 2, 8)
    return BatchLoader(frames, w, {"obs": 2, "action": 16}, batch_size=batch_size, shuffle=shuffle,
                       drop_last=drop_last, seed=seed), w


def test_loader_epoch_visits_every_window_once():
    loader, w = _loader()
    seen = []
    for batch in loader:
        assert batch["obs"].shape[1:] == (2, 3) and batch["action"].shape[1:] == (16, 1)
        # obs frames are the window's first To frames; actions its H frames
        assert torch.equal(batch["obs"][:, :, 0], batch["action"][:, :2, 0] / 10)
        seen.append(batch["action"][:, :, 0] / 10)
    seen = torch.cat(seen)
    assert len(seen) == len(w) == sum(L - 16 + 8 + 1 for L in (20, 25, 15))
    assert len(loader) == -(-len(w) // 7)
    # every window appears exactly once (compare as sorted rows)
    got = sorted(map(tuple, seen.long().tolist()))
    assert got == sorted(map(tuple, w.indices.tolist()))


def test_loader_shuffle_is_seeded_and_drop_last():
    a, _ = _loader(seed=3)
    b, _ = _loader(seed=3)
    c, _ = _loader(seed=4)
    first = [x["action"] for x in a]
    assert all(torch.equal(x, y["action"]) for x, y in zip(first, b))
    assert not torch.equal(first[0], next(iter(c))["action"])
    second_epoch = [x["action"] for x in a]
    assert not torch.equal(first[0], second_epoch[0])  # a new order each epoch
    d, w = _loader(batch_size=7, drop_last=True)
    assert len(d) == len(w) // 7 and all(x["obs"].shape[0] == 7 for x in d)
    ordered, w = _loader(shuffle=False)
    assert torch.equal(next(iter(ordered))["action"][:, :, 0] / 10, w.indices[:7].float())


def test_loader_input_errors():
    w = SequenceWindows(np.array([20]), 16, 2, 8)
    with pytest.raises(DatasetError, match="different lengths"):
        BatchLoader({"a": torch.zeros(20, 1), "b": torch.zeros(19, 1)}, w)
    with pytest.raises(DatasetError, match="windows index frame 19 but frames have 10"):
        BatchLoader({"a": torch.zeros(10, 1)}, w)
    with pytest.raises(DatasetError, match="batch_size must be >= 1"):
        BatchLoader({"a": torch.zeros(20, 1)}, w, batch_size=0)


@pytest.mark.parametrize("k,H,To,Ta", [(2, 16, 2, 8), (3, 4, 1, 1), (2, 6, 3, 2)])
def test_frame_stride_windows_are_every_kth_frame_with_reference_padding(k, H, To, Ta):
    """A stride-k window is the reference window of the episode subsampled at its start's phase:
    positions s, s + k, .. (edge frames repeated), one window per start s, never across episodes."""
    rng = np.random.default_rng(k * 1000 + H)
    lengths = rng.integers(1, 60, size=10)
    ends = np.cumsum(lengths)
    frames = np.arange(int(ends[-1]), dtype=np.float64)[:, None]
    w = SequenceWindows(ends, H, To, Ta, frame_stride=k)
    got = w.gather(torch.from_numpy(frames), torch.arange(len(w))).numpy()[..., 0]
    expect = []
    for s0, L in zip(np.concatenate([[0], ends[:-1]]), lengths):
        for s in range(-k * (To - 1), L - k * (H - Ta)):   # the last action position ends <= k (Ta - 1) past the end
            expect.append([s0 + min(max(s + k * j, 0), L - 1) for j in range(H)])
    np.testing.assert_array_equal(got, np.asarray(expect, dtype=np.float64).reshape(-1, H))
    assert len(SequenceWindows(ends, H, To, Ta, frame_stride=1)) >= len(w)


def test_frame_stride_must_be_a_positive_integer():
    for bad in (0, 1.5, True):
        with pytest.raises(DatasetError, match="frame_stride must be an integer >= 1"):
            window_indices(np.array([10]), 4, 1, 1, frame_stride=bad)


def test_pad_after_is_set_apart_from_the_actions_per_call():
    """Training windows need not change with how many actions a policy executes per call."""
    ends = np.array([20, 45, 60])
    reference = SequenceWindows(ends, horizon=16, n_obs_steps=2, n_action_steps=8)       # pad_after 7
    fewer = SequenceWindows(ends, horizon=16, n_obs_steps=2, n_action_steps=5)           # pad_after 4
    kept = SequenceWindows(ends, horizon=16, n_obs_steps=2, n_action_steps=5, pad_after=7)
    assert (reference.pad_after, fewer.pad_after, kept.pad_after) == (7, 4, 7)
    assert len(fewer) == len(reference) - 3 * 3
    assert torch.equal(kept.indices, reference.indices)
    with pytest.raises(DatasetError, match=r"pad_after must be in \[0, horizon - n_obs_steps = 14\], got 15"):
        SequenceWindows(ends, horizon=16, n_obs_steps=2, n_action_steps=5, pad_after=15)
