import pytest
import torch

from diffpolicy.policy import checkpoint as ck
from diffpolicy.policy.checkpoint import CheckpointDir, CheckpointError, atomic_save, load_checkpoint


def _ckpt(task="pusht_keypoints", step=1):
    return {"format": ck.FORMAT, "task": task, "step": step, "w": torch.arange(3)}


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    atomic_save(_ckpt(step=1), path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(_ckpt(step=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1                 # old checkpoint intact
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]   # no temp file left


def test_keeps_best_k(tmp_path):
    d = CheckpointDir(tmp_path, keep_best=2)
    for step, score in [(10, 0.5), (20, 0.9), (30, 0.7), (40, 0.8), (50, 0.1)]:
        d.save_best(_ckpt(step=step), score, step)
    assert [(s, st) for s, st, _ in d.best()] == [(0.9, 20), (0.8, 40)]
    assert len(list(tmp_path.iterdir())) == 2
    assert load_checkpoint(d.best()[0][2])["step"] == 20


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a diffpolicy checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    atomic_save(_ckpt(task="pusht_image"), tmp_path / "img.pt")
    with pytest.raises(CheckpointError, match="trained on task 'pusht_image', but task 'pusht_keypoints'"):
        load_checkpoint(tmp_path / "img.pt", task="pusht_keypoints")


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    ck.set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


class _Payload:
    """A pickled object whose unpickling would run code (here: write a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({**_ckpt(step=1), "metrics": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.pt: refused: the checkpoint holds a pickled Python object "
                                              r"\(\w+\.open\)"):
        load_checkpoint(path)
    assert not marker.exists()


def test_new_checkpoints_hold_tensors_and_plain_data_only(tmp_path):
    import numpy as np
    path = atomic_save({**_ckpt(step=3), "rng": [ck.rng_state()]}, tmp_path / "latest.pt")
    plain = torch.load(path, weights_only=True)                 # no allow-list needed
    assert plain["step"] == 3
    state = ck.rng_state()
    a = np.random.rand(3)
    ck.set_rng_state(plain["rng"][0] | {"numpy": state["numpy"]})
    assert np.array_equal(np.random.rand(3), a)


def test_no_unsafe_load_in_the_package():
    from pathlib import Path
    root = Path(ck.__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_leftover_temp_files_are_removed(tmp_path):
    """What a kill during a write leaves (``<name>.tmp-<pid>``) goes; everything else stays."""
    d = CheckpointDir(tmp_path / "checkpoints")
    assert d.remove_temp_files() == (0, 0)                   # no folder yet: nothing to do
    d.folder.mkdir()
    atomic_save(_ckpt(), d.latest)
    (d.folder / "latest.pt.tmp-4242").write_bytes(b"x" * 1000)
    (d.folder / "best_step00000010_score0.5000.pt.tmp-77").write_bytes(b"y" * 24)
    (d.folder / "notes.tmp").write_text("mine")
    assert d.remove_temp_files() == (2, 1024)
    assert sorted(p.name for p in d.folder.iterdir()) == ["latest.pt", "notes.tmp"]


DISK_FULL_SCRIPT = """
import resource, sys, torch
from diffpolicy.cli._errors import run_cli
from diffpolicy.policy.checkpoint import atomic_save
path = sys.argv[1]
atomic_save({"step": 1, "w": torch.zeros(1000)}, path)
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))    # like a disk that fills up
run_cli(lambda: atomic_save({"step": 2, "w": torch.zeros(100_000)}, path))
"""


def test_failed_write_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path):
    """torch.save hid the cause ("RuntimeError: ... unexpected pos 12103936 vs 12103828")."""
    import subprocess
    import sys
    path = tmp_path / "latest.pt"
    proc = subprocess.run([sys.executable, "-c", DISK_FULL_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: cannot write {path}: File too large (the previous file is kept)\n"
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_failed_write_without_a_previous_file(tmp_path, monkeypatch):
    def full_disk(obj, f):
        f.write(b"x" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"cannot write .*best\.pt: No space left on device \(no file was written\)"):
        atomic_save(_ckpt(), tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []
