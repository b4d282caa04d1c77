"""ReplayBuffer: round trips in zarr formats 2 and 3, validation errors, read-only, crash-safe append."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from diffpolicy.datasets.errors import CorruptDataError, DatasetError, ReadOnlyStoreError
from diffpolicy.datasets.pusht import PUSHT_SCHEMA
from diffpolicy.datasets.replay_buffer import PENDING_ATTR, ArraySpec, ReplayBuffer

from zarr_stores import make_episode, writable_copy, write_store

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- the published set
def test_published_store_opens_and_reports_its_size(pusht_zarr):
    rb = ReplayBuffer.open(pusht_zarr, mode="r", schema=PUSHT_SCHEMA)
    assert rb.zarr_format == 2
    assert rb.n_episodes == 206
    assert rb.n_steps == 25650
    lengths = rb.episode_lengths
    assert lengths.min() == 49 and lengths.max() == 246 and lengths.sum() == 25650
    assert rb.keys == ["action", "img", "keypoint", "n_contacts", "state"]
    assert rb.shapes["img"] == (25650, 96, 96, 3)
    ep = rb.get_episode(0)
    assert {k: v.shape[0] for k, v in ep.items()} == {k: lengths[0] for k in rb.keys}
    last = rb.get_episode(-1)
    np.testing.assert_array_equal(last["action"], rb.read("action", 25650 - lengths[-1]))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in [root, *root.rglob("*")]}


def test_published_store_is_never_written(pusht_zarr):
    before = _snapshot(pusht_zarr)
    rb = ReplayBuffer.open(pusht_zarr, mode="r", verify=False)
    rb.load_all(["state", "action", "keypoint", "n_contacts"])
    rb.get_episode(3)
    with pytest.raises(ReadOnlyStoreError, match=r"opened read-only \(mode='r'\).*mode='a'"):
        rb.add_episode(make_episode(4, np.random.default_rng(0)))
    assert _snapshot(pusht_zarr) == before


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", [2, 3])
def test_round_trip_identical_arrays(tmp_path, fmt):
    path = tmp_path / "rt.zarr"
    episodes = write_store(path, lengths=(3, 40, 1, 17), zarr_format=fmt, with_img=True)
    rb = ReplayBuffer.open(path, mode="r", schema=PUSHT_SCHEMA)
    assert rb.zarr_format == fmt
    assert rb.n_episodes == 4 and rb.n_steps == 61
    np.testing.assert_array_equal(rb.episode_ends, [3, 43, 44, 61])
    np.testing.assert_array_equal(rb.episode_lengths, [3, 40, 1, 17])
    for i, ep in enumerate(episodes):
        got = rb.get_episode(i)
        assert set(got) == set(ep)
        for k in ep:
            assert got[k].dtype == ep[k].dtype
            np.testing.assert_array_equal(got[k], ep[k])
    everything = rb.load_all()
    for k in rb.keys:
        np.testing.assert_array_equal(everything[k], np.concatenate([ep[k] for ep in episodes]))
    # the published set's codec: blosc / zstd
    meta = zarr.open_group(str(path), mode="r")["data/state"].metadata.to_dict()
    assert "zstd" in str(meta) and "blosc" in str(meta).lower()


def test_append_to_reopened_store(small_store):
    path, episodes = small_store
    extra = make_episode(9, np.random.default_rng(5), with_img=False)
    rb = ReplayBuffer.open(path, mode="a")
    rb.add_episode(extra)
    assert rb.n_episodes == 4
    rb2 = ReplayBuffer.open(path)
    np.testing.assert_array_equal(rb2.episode_lengths, [7, 12, 5, 9])
    np.testing.assert_array_equal(rb2.get_episode(3)["keypoint"], extra["keypoint"])
    np.testing.assert_array_equal(rb2.get_episode(1)["state"], episodes[1]["state"])


def test_create_refuses_existing_path(small_store):
    path, _ = small_store
    with pytest.raises(FileExistsError, match="already exists"):
        ReplayBuffer.create(path)


def test_create_rejects_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="zarr_format must be 2 or 3"):
        ReplayBuffer.create(tmp_path / "x.zarr", zarr_format=4)


def test_empty_store_reopens(tmp_path, zarr_format):
    path = tmp_path / "empty.zarr"
    ReplayBuffer.create(path, zarr_format=zarr_format)
    rb = ReplayBuffer.open(path, mode="a")
    assert rb.n_episodes == 0 and rb.n_steps == 0 and rb.keys == []
    rb.add_episode({"a": np.arange(6.0).reshape(3, 2)})
    assert ReplayBuffer.open(path).keys == ["a"]


def test_open_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.zarr: replay buffer not found"):
        ReplayBuffer.open(tmp_path / "nowhere.zarr")


def test_open_bad_mode(small_store):
    with pytest.raises(DatasetError, match="mode must be 'r' or 'a'"):
        ReplayBuffer.open(small_store[0], mode="w")


# ---------------------------------------------------------------------- add_episode input checks
def test_add_episode_rejects_mismatched_keys(small_store):
    rb = ReplayBuffer.open(small_store[0], mode="a")
    ep = make_episode(4, np.random.default_rng(1), with_img=False)
    del ep["keypoint"]
    ep["extra"] = np.zeros((4, 1), np.float32)
    with pytest.raises(DatasetError, match=r"missing \['keypoint'\], extra \['extra'\]"):
        rb.add_episode(ep)


def test_add_episode_rejects_unequal_lengths(small_store):
    rb = ReplayBuffer.open(small_store[0], mode="a")
    ep = make_episode(4, np.random.default_rng(1), with_img=False)
    ep["action"] = ep["action"][:3]
    with pytest.raises(DatasetError, match="different lengths"):
        rb.add_episode(ep)


def test_add_episode_rejects_wrong_trailing_shape(small_store):
    rb = ReplayBuffer.open(small_store[0], mode="a")
    ep = make_episode(4, np.random.default_rng(1), with_img=False)
    ep["keypoint"] = ep["keypoint"].reshape(4, 18)
    with pytest.raises(DatasetError, match=r"episode\['keypoint'\] has per-step shape \(18,\).*\(9, 2\)"):
        rb.add_episode(ep)


def test_add_episode_rejects_nan(small_store):
    rb = ReplayBuffer.open(small_store[0], mode="a")
    ep = make_episode(4, np.random.default_rng(1), with_img=False)
    ep["state"][2, 1] = np.nan
    with pytest.raises(CorruptDataError, match=r"episode\['state'\] contains NaN"):
        rb.add_episode(ep)
    assert ReplayBuffer.open(small_store[0]).n_episodes == 3


def test_add_episode_casts_same_kind_dtype(small_store):
    rb = ReplayBuffer.open(small_store[0], mode="a")
    ep = {k: v.astype(np.float64) for k, v in make_episode(4, np.random.default_rng(1), with_img=False).items()}
    rb.add_episode(ep)
    assert ReplayBuffer.open(small_store[0]).dtypes["state"] == np.float32


# ---------------------------------------------------------------------- validation on open
def _group(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r+")


def _chunk_files(path: Path, key: str) -> list[Path]:
    meta_names = {".zarray", ".zattrs", "zarr.json"}
    return sorted(p for p in (path / "data" / key).rglob("*") if p.is_file() and p.name not in meta_names)


def test_error_missing_episode_ends(small_store):
    path, _ = small_store
    del _group(path)["meta/episode_ends"]
    with pytest.raises(DatasetError, match=r"small\.zarr: missing array meta/episode_ends"):
        ReplayBuffer.open(path)


def test_error_missing_meta_group(small_store):
    path, _ = small_store
    del _group(path)["meta"]
    with pytest.raises(DatasetError, match=r"small\.zarr: missing group meta/"):
        ReplayBuffer.open(path)


def test_error_missing_data_arrays(small_store):
    path, _ = small_store
    g = _group(path)
    for key in list(g["data"].array_keys()):
        del g["data"][key]
    with pytest.raises(DatasetError, match="lists 3 episodes but data/ has no arrays"):
        ReplayBuffer.open(path)


def test_error_episode_ends_not_increasing(small_store):
    path, _ = small_store
    _group(path)["meta/episode_ends"][:] = [7, 5, 24]
    with pytest.raises(DatasetError, match=r"strictly increasing; episode_ends\[1\] = 5 <= episode_ends\[0\] = 7"):
        ReplayBuffer.open(path)


def test_error_episode_ends_not_at_data_length(small_store):
    path, _ = small_store
    _group(path)["meta/episode_ends"][:] = [7, 19, 22]
    with pytest.raises(DatasetError, match=r"episode_ends ends at 22 but data/action has 24 steps"):
        ReplayBuffer.open(path)


def test_error_arrays_of_different_lengths(small_store):
    path, _ = small_store
    arr = _group(path)["data/keypoint"]
    arr.resize((20, 9, 2))
    with pytest.raises(DatasetError, match=r"different lengths .*data/keypoint has 20.*data/state has 24"):
        ReplayBuffer.open(path)


def test_error_wrong_trailing_shape_for_task(small_store):
    path, _ = small_store
    g = _group(path)
    kp = g["data/keypoint"][:]
    del g["data/keypoint"]
    g["data"].create_array("keypoint", data=kp.reshape(len(kp), 18))
    rb = ReplayBuffer.open(path)  # structurally fine ...
    with pytest.raises(DatasetError, match=r"data/keypoint has per-step shape \(18,\), expected \(9, 2\)"):
        ReplayBuffer.open(path, schema={"keypoint": PUSHT_SCHEMA["keypoint"]})  # ... but not for Push-T
    assert rb.n_episodes == 3


def test_error_wrong_dtype_for_task(small_store):
    path, _ = small_store
    g = _group(path)
    action = g["data/action"][:]
    del g["data/action"]
    g["data"].create_array("action", data=action.astype(np.int32))
    with pytest.raises(DatasetError, match=r"data/action has dtype int32, expected one of \['float32', 'float64'\]"):
        ReplayBuffer.open(path, schema={"action": PUSHT_SCHEMA["action"]})


def test_error_missing_key_for_task(small_store):
    with pytest.raises(DatasetError, match=r"data/img is missing; .* needs \['img'\]"):
        ReplayBuffer.open(small_store[0], schema={"img": PUSHT_SCHEMA["img"]})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_nan_or_inf_values(small_store, bad):
    path, _ = small_store
    _group(path)["data/state"][9, 2] = bad  # episode 1 starts at step 7
    with pytest.raises(CorruptDataError, match=r"data/state has NaN or inf values at step 9 \(episode 1, step 2 of it"):
        ReplayBuffer.open(path, verify=True)
    rb = ReplayBuffer.open(path)  # structure is fine; the values fail when read
    with pytest.raises(CorruptDataError, match="data/state has NaN or inf"):
        rb.load_all()
    rb.get_episode(0)  # an untouched episode still reads


def test_error_truncated_chunk(small_store):
    path, _ = small_store
    chunk = _chunk_files(path, "action")[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    rb = ReplayBuffer.open(path)  # metadata is intact
    with pytest.raises(CorruptDataError, match=r"cannot decode data/action chunk '.*0' .*truncated or corrupt"):
        rb.read("action")
    with pytest.raises(CorruptDataError, match="cannot decode data/action"):
        ReplayBuffer.open(path, verify=True)


def test_error_missing_chunk_file(small_store):
    """zarr reads a missing chunk as zeros; we refuse the store instead."""
    path, _ = small_store
    _chunk_files(path, "state")[0].unlink()
    with pytest.raises(CorruptDataError, match=r"small\.zarr: data/state has 0 of its 1 chunk files; 1 are missing"):
        ReplayBuffer.open(path)
    rb = ReplayBuffer.open(path, allow_missing_chunks=True)  # the caller's explicit choice
    assert not rb.read("state").any()


def test_all_zero_episode_still_stores_every_chunk(tmp_path, zarr_format):
    """An all-zero (fill-value) chunk must still be written, or reopening would flag it missing."""
    path = tmp_path / "zeros.zarr"
    rb = ReplayBuffer.create(path, zarr_format=zarr_format)
    ep = make_episode(5, np.random.default_rng(0))
    ep = {k: np.zeros_like(v) for k, v in ep.items()}
    rb.add_episode(ep)
    rb = ReplayBuffer.open(path)
    np.testing.assert_array_equal(rb.get_episode(0)["n_contacts"], ep["n_contacts"])


def test_error_garbage_chunk(small_store):
    path, _ = small_store
    chunk = _chunk_files(path, "keypoint")[0]
    chunk.write_bytes(os.urandom(chunk.stat().st_size))
    with pytest.raises(CorruptDataError, match="cannot decode data/keypoint chunk"):
        ReplayBuffer.open(path).get_episode(0)


def test_error_corrupt_metadata(small_store, zarr_format):
    path, _ = small_store
    meta_file = path / "data" / "state" / (".zarray" if zarr_format == 2 else "zarr.json")
    meta_file.write_text("{ not json")
    with pytest.raises(DatasetError, match=r"small\.zarr: cannot read zarr metadata"):
        ReplayBuffer.open(path)


def test_error_not_a_zarr_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="plain: not a readable zarr group"):
        ReplayBuffer.open(tmp_path / "plain")


# ---------------------------------------------------------------------- interrupted appends
def _physical(path: Path) -> dict[str, tuple]:
    g = zarr.open_group(str(path), mode="r")
    out = {f"data/{k}": a.shape for k, a in g["data"].arrays()}
    out["meta/episode_ends"] = g["meta/episode_ends"][:].tolist()
    out["attrs"] = dict(g.attrs)
    return out


def test_failed_append_leaves_store_unchanged(small_store, monkeypatch):
    path, episodes = small_store
    before = _physical(path)
    rb = ReplayBuffer.open(path, mode="a")
    calls = []
    original = ReplayBuffer._write_key

    def failing(self, key, start, values):
        calls.append(key)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        original(self, key, start, values)

    monkeypatch.setattr(ReplayBuffer, "_write_key", failing)
    with pytest.raises(OSError, match="injected"):
        rb.add_episode(make_episode(30, np.random.default_rng(9), with_img=False))
    assert len(calls) == 3  # two keys were fully written before the failure
    assert rb.n_episodes == 3
    assert _physical(path) == before
    reopened = ReplayBuffer.open(path)
    np.testing.assert_array_equal(reopened.get_episode(2)["state"], episodes[2]["state"])


def test_failed_first_append_leaves_empty_store(tmp_path, monkeypatch):
    path = tmp_path / "first.zarr"
    rb = ReplayBuffer.create(path, zarr_format=3)
    monkeypatch.setattr(ReplayBuffer, "_write_end", lambda self, i, end: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        rb.add_episode({"a": np.ones((4, 2))})
    monkeypatch.undo()
    rb = ReplayBuffer.open(path, mode="a")
    assert rb.n_episodes == 0 and rb.keys == []
    rb.add_episode({"b": np.ones((2, 3))})  # other keys are fine after the rollback
    assert ReplayBuffer.open(path).keys == ["b"]


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from diffpolicy.datasets.replay_buffer import ReplayBuffer
    path, where = sys.argv[1], sys.argv[2]
    original_key, original_end = ReplayBuffer._write_key, ReplayBuffer._write_end
    calls = []
    def write_key(self, key, start, values):
        calls.append(key)
        if where == "before_data":
            os._exit(9)
        original_key(self, key, start, values)
        if where == "mid_data" and len(calls) == 2:
            os._exit(9)   # like SIGKILL: no cleanup, no finally
    def write_end(self, i, end):
        original_end(self, i, end)
        if where == "after_end":
            os._exit(9)   # episode end written, pending record not yet cleared
    ReplayBuffer._write_key, ReplayBuffer._write_end = write_key, write_end
    rb = ReplayBuffer.open(path, mode="a")
    rng = np.random.default_rng(3)
    rb.add_episode({k: rng.uniform(0, 9, (50,) + v).astype(np.float32)
                    for k, v in [("state", (5,)), ("action", (2,)), ("keypoint", (9, 2)), ("n_contacts", (1,))]})
    print("append finished")
""")


@pytest.mark.parametrize("where", ["before_data", "mid_data", "after_end"])
def test_killed_append_is_rolled_back(small_store, tmp_path, where):
    path, episodes = small_store
    before = _physical(path)
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(path), where], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert "append finished" not in proc.stdout
    assert PENDING_ATTR in zarr.open_group(str(path), mode="r").attrs  # the crash left its record
    # read-only: the pre-append view, with a warning, and nothing written
    snap = _snapshot(path)
    with pytest.warns(UserWarning, match="append was interrupted"):
        rb = ReplayBuffer.open(path, mode="r", verify=True)
    assert rb.n_episodes == 3 and rb.n_steps == 24
    np.testing.assert_array_equal(rb.load_all()["action"], np.concatenate([e["action"] for e in episodes]))
    assert _snapshot(path) == snap
    # append mode: rolled back on disk to exactly the previous state
    ReplayBuffer.open(path, mode="a")
    assert _physical(path) == before
    rb = ReplayBuffer.open(path, mode="a")
    rb.add_episode(make_episode(6, np.random.default_rng(4), with_img=False))
    assert ReplayBuffer.open(path).n_steps == 30


def test_custom_schema_spec(small_store):
    rb = ReplayBuffer.open(small_store[0], schema={"state": ArraySpec((5,), ("float32",))})
    assert rb.n_episodes == 3
    with pytest.raises(DatasetError, match=r"expected \(4,\)"):
        rb.check_schema({"state": ArraySpec((4,))})


def test_read_range_errors(small_store):
    rb = ReplayBuffer.open(small_store[0])
    with pytest.raises(IndexError, match="episode 3 out of range"):
        rb.get_episode(3)
    with pytest.raises(IndexError, match="out of range 0:24"):
        rb.read("state", 0, 25)
    with pytest.raises(KeyError, match="no array data/img"):
        rb.read("img")


def test_copy_of_published_store_appends(pusht_zarr, tmp_path):
    """The env engineer's recorder appends to a copy of the published (zarr 2) store."""
    copy = writable_copy(pusht_zarr, tmp_path / "copy.zarr")
    rb = ReplayBuffer.open(copy, mode="a")
    ep = make_episode(11, np.random.default_rng(2))
    rb.add_episode(ep)
    rb = ReplayBuffer.open(copy)
    assert rb.n_episodes == 207 and rb.n_steps == 25661
    got = rb.get_episode(206)
    for k in ep:
        np.testing.assert_array_equal(got[k], ep[k])


GROW_AND_DIE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from diffpolicy.datasets.replay_buffer import ReplayBuffer
    def write_key(self, key, start, values):   # grow every array, write one chunk of one, die
        arr = self._arrays[key]
        arr.resize((start + len(values),) + tuple(arr.shape[1:]))
        if key == "state":
            arr[start:start + 1] = values[:1]
            (self.path / "data" / key / ("1.0." + "ab" * 16 + ".partial")).write_bytes(b"torn")
            os._exit(9)
    ReplayBuffer._write_key = write_key
    rb = ReplayBuffer.open(sys.argv[1], mode="a")
    rb.add_episode({k: np.ones((10000,) + v, np.float32)
                    for k, v in [("state", (5,)), ("action", (2,)), ("keypoint", (9, 2)), ("n_contacts", (1,))]})
""")


def test_append_killed_after_growing_arrays_opens_read_only_and_repairs(tmp_path):
    """A kill mid-append leaves arrays grown past the committed size with chunks missing there,
    and zarr's *.partial temp files: read-only opening shows the committed episodes (the chunk
    check covers only them); repair_store truncates the arrays and removes the temp files."""
    from diffpolicy.datasets.replay_buffer import partial_files, repair_store
    path = tmp_path / "grown.zarr"
    episodes = write_store(path, zarr_format=2, with_img=False)
    before = _physical(path)
    script = tmp_path / "grow.py"
    script.write_text(GROW_AND_DIE)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert zarr.open_group(str(path), mode="r")["data/state"].shape[0] == 10024
    assert partial_files(path)
    with pytest.warns(UserWarning, match=r"append was interrupted.*\(3 episodes\)"):
        rb = ReplayBuffer.open(path, mode="r", verify=True)
    assert rb.n_steps == 24
    np.testing.assert_array_equal(rb.read("state"), np.concatenate([e["state"] for e in episodes]))
    done = repair_store(path)
    assert len(done) == 2 and "3 committed episodes (24 steps)" in done[0] and "removed 1 temporary" in done[1]
    assert _physical(path) == before and not partial_files(path)
    assert repair_store(path) == []                     # nothing left to do
    ReplayBuffer.open(path).verify()


def test_repair_refuses_a_read_only_store(pusht_zarr):
    from diffpolicy.datasets.replay_buffer import repair_store
    before = _snapshot(pusht_zarr)
    with pytest.raises(ReadOnlyStoreError, match="read-only .*copy it"):
        repair_store(pusht_zarr)
    assert _snapshot(pusht_zarr) == before
