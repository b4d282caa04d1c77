"""``diffpolicy-data`` (diffpolicy.cli.data): info, verify, repair; errors are one line with status 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffpolicy.cli.data import main
from diffpolicy.datasets.replay_buffer import PENDING_ATTR, ReplayBuffer
from zarr_stores import writable_copy, write_store

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> Path:
    """A 3-episode Push-T-shaped store with images (lengths 20, 31, 17), zarr format 2."""
    path = tmp_path / "fake.zarr"
    write_store(path, lengths=(20, 31, 17), with_img=True)
    return path


def _cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffpolicy.datasets", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args", [["info", "--verify"], ["verify"]])
def test_info_and_verify(store, capsys, args):
    assert main([*args, "--path", str(store)]) == 0
    out = capsys.readouterr().out
    assert "episodes=3, steps=68" in out and "min 17, max 31" in out and "data/img: (68, 96, 96, 3) float32" in out
    assert "verified: every value of 5 arrays decodes and is finite" in out


def test_module_entry_point(store):
    proc = _cli("info", "--path", str(store))
    assert proc.returncode == 0, proc.stderr
    assert "episodes=3" in proc.stdout


def test_info_on_a_new_empty_store(tmp_path, capsys):
    ReplayBuffer.create(tmp_path / "new.zarr")
    assert main(["info", "--path", str(tmp_path / "new.zarr")]) == 0
    assert "episodes=0" in capsys.readouterr().out


def _one_line_error(proc: subprocess.CompletedProcess, *expect: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    for text in expect:
        assert text in proc.stderr


def test_errors_are_one_line_with_status_2(store, tmp_path):
    _one_line_error(_cli("info", "--path", str(tmp_path / "missing.zarr")), "missing.zarr: replay buffer not found")
    (store / "data" / "state" / ".zarray").write_text("{ not json")
    _one_line_error(_cli("info", "--path", str(store)), "cannot read zarr metadata of data/state/.zarray")


def test_zero_length_chunk_is_one_line_without_asyncio_noise(pusht_zarr, tmp_path):
    """zarr reads the other 159 chunks of data/action on while the first fails; left running,
    they failed at exit with pages of asyncio noise."""
    copy = writable_copy(pusht_zarr, tmp_path / "copy.zarr")
    (copy / "data" / "action" / "0.0").write_bytes(b"")
    _one_line_error(_cli("verify", "--path", str(copy)), "cannot decode data/action chunk '0.0'")


def test_repair_and_its_refusals(store, tmp_path, capsys):
    assert main(["repair", str(store)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    rb = ReplayBuffer.open(store, mode="a")
    rb._root.attrs[PENDING_ATTR] = {"n_steps": 51, "n_episodes": 2}   # as an append killed mid-way leaves it
    proc = _cli("info", "--path", str(store))
    assert proc.returncode == 0 and "episodes=2" in proc.stdout
    assert proc.stderr.startswith("warning: ") and "append was interrupted" in proc.stderr
    assert main(["repair", str(store)]) == 0
    out = capsys.readouterr().out
    assert "rolled back an interrupted append: kept the 2 committed episodes (51 steps)" in out
    assert PENDING_ATTR not in ReplayBuffer.open(store)._root.attrs
    store.chmod(0o555)          # read-only input (root ignores the mode, the refusal does not)
    try:
        _one_line_error(_cli("repair", str(store)), "read-only", "copy it")
    finally:
        store.chmod(0o755)
