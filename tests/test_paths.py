from pathlib import Path

from diffpolicy import paths


def test_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path))
    assert paths.data_root() == tmp_path.resolve()
    assert paths.pusht_zarr_path() == tmp_path.resolve() / "pusht" / "pusht_cchi_v7_replay.zarr"


def test_fmnist_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.FMNIST_ENV_VAR, str(tmp_path))
    assert paths.fmnist_dir() == tmp_path.resolve()


def test_default_is_shared_data_beside_checkout(monkeypatch):
    monkeypatch.delenv(paths.DATA_ENV_VAR, raising=False)
    shared = (paths.PROJECT_ROOT / ".." / "shared" / "data").resolve()
    expected = shared if shared.is_dir() else (Path.cwd() / "data").resolve()
    assert paths.data_root() == expected
