"""``training.init_from``: a run starts from another policy's weights (fine-tuning)."""
from __future__ import annotations

import pytest
import torch

from diffpolicy.policy.checkpoint import CheckpointError, load_checkpoint
from diffpolicy.policy.pretrained import export_pretrained
from diffpolicy.policy.train import train

from policy_helpers import compose_config, tiny_overrides


@pytest.fixture(scope="module")
def source_run(small_store, tmp_path_factory):
    """A 12-step tiny run whose EMA weights the fine-tuning runs start from."""
    run_dir = tmp_path_factory.mktemp("init_source") / "run"
    train(compose_config("train", tiny_overrides(small_store, run_dir, steps=12)), progress=False)
    return run_dir / "checkpoints" / "latest.pt"


def _fine_tune(store, run_dir, init_from, steps=2, **extra):
    # lr so small that the weights stay where they started, to the test's tolerance
    over = tiny_overrides(store, run_dir, steps=steps, **{"training.init_from": str(init_from),
                                                          "training.lr": 1e-12, **extra})
    return train(compose_config("train", over), progress=False)


def _assert_close_to(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(state[name].float(), tensor.float(), atol=1e-6, rtol=0, msg=name)


def test_starts_from_the_checkpoint_ema_weights_and_normaliser(small_store, source_run, tmp_path):
    ema = load_checkpoint(source_run)["ema"]["averaged"]
    # another execution (actions per call) and loss are not another network
    result = _fine_tune(small_store, tmp_path / "ft", source_run,
                        **{"policy.n_action_steps": 4, "policy.loss": "l1"})
    _assert_close_to(result.policy.state_dict(), ema)
    assert "starting from the weights and normaliser of" in (tmp_path / "ft" / "train.log").read_text()


def test_starts_from_a_pretrained_folder(small_store, source_run, tmp_path):
    folder = export_pretrained(source_run, tmp_path / "pretrained")
    ema = load_checkpoint(source_run)["ema"]["averaged"]
    _assert_close_to(_fine_tune(small_store, tmp_path / "ft", folder).policy.state_dict(), ema)


def test_a_different_network_is_refused_before_training(small_store, source_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"different network \(differs in: down_dims"):
        _fine_tune(small_store, tmp_path / "ft", source_run, **{"policy.down_dims": "[8,16,32]"})
    assert not (tmp_path / "ft").exists()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        _fine_tune(small_store, tmp_path / "ft2", tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="trained on task 'pusht_keypoints', but task 'pusht_state'"):
        _fine_tune(small_store, tmp_path / "ft3", source_run, task="pusht_state")


def test_resume_continues_the_run_not_the_source(small_store, source_run, tmp_path):
    run_dir = tmp_path / "ft"
    _fine_tune(small_store, run_dir, source_run, steps=4, **{"training.lr": 1e-3})
    own = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    over = tiny_overrides(small_store, run_dir, steps=4, **{"training.init_from": str(source_run),
                                                          "training.lr": 1e-3, "resume": "true"})
    result = train(compose_config("train", over), progress=False)
    assert result.step == 4      # nothing left to do: the run's own weights, not the source's
    _assert_close_to(result.policy.state_dict(), own["model"])
