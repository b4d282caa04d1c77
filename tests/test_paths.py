from pathlib import Path

import pytest

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


def test_missing_data_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    import importlib.util  # the root conftest by path: other folders have a conftest module too
    spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).with_name("conftest.py"))
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    require_data = root_conftest.require_data
    missing = tmp_path / "nothing.zarr"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="demos not found at .*nothing.zarr"):
        require_data(missing, "demos")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, so a missing data set is a failure"):
        require_data(missing, "demos")
    assert require_data(tmp_path, "a folder") == tmp_path
