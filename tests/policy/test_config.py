"""Every shipped config composes and validates; values reach the typed config."""
import pytest

from diffpolicy.policy.run_config import ConfigError, check_train_config, policy_config

from policy_helpers import compose_config


@pytest.mark.parametrize("task", ["pusht_keypoints", "pusht_state", "pusht_image"])
@pytest.mark.parametrize("policy", ["cpu", "cpu_wide", "published_lowdim", "published_image"])
@pytest.mark.parametrize("training", ["demo", "long", "published"])
def test_all_shipped_configs_validate(task, policy, training):
    run = check_train_config(compose_config("train", [f"task={task}", f"policy={policy}",
                                                      f"training={training}"]))
    pc = policy_config(run)
    assert pc.obs_type == ("image" if task == "pusht_image" else "lowdim")
    assert pc.obs_dim == {"pusht_keypoints": 20, "pusht_state": 5, "pusht_image": 2}[task]
    assert run.run_dir == f"runs/{task}-{policy}-{training}-seed0"


def test_defaults_and_overrides():
    run = check_train_config(compose_config("config", ["training.lr=3e-4", "seed=3"]))
    assert run.task.name == "pusht_keypoints" and run.policy["name"] == "cpu"
    assert run.training.lr == 3e-4 and run.seed == 3 and run.run_dir.endswith("seed3")
    assert policy_config(run).down_dims == (32, 64, 128)


def test_value_errors_name_the_key():
    with pytest.raises(ConfigError, match="exactly one of training.max_steps and training.max_epochs"):
        check_train_config(compose_config("train", ["training.max_epochs=3"]))
    with pytest.raises(ConfigError, match="training.batch_size must be >= 1, got 0"):
        check_train_config(compose_config("train", ["training.batch_size=0"]))
    with pytest.raises(ConfigError, match="task.obs_type must be one of"):
        check_train_config(compose_config("train", ["task.obs_type=pixels"]))
    with pytest.raises(ConfigError, match="policy.sampler must be one of"):
        check_train_config(compose_config("train", ["policy.sampler=euler"]))


def test_config_groups_share_a_base_and_long_brings_its_policy():
    """cpu_wide / published_* / long / published state only what differs; nothing is lost."""
    from policy_helpers import compose_config
    base = compose_config("train", ["policy=cpu", "training=demo"])
    for policy in ("cpu_wide", "published_lowdim", "published_image"):
        cfg = compose_config("train", [f"policy={policy}", "training=demo"])
        assert set(cfg["policy"]) == set(base["policy"]) and cfg["policy"]["name"] == policy
    assert compose_config("train", ["policy=published_image"])["policy"]["down_dims"] == [512, 1024, 2048]
    assert compose_config("train", ["policy=published_image"])["policy"]["sampler"] == "ddpm"
    for training in ("long", "published"):
        cfg = compose_config("train", [f"training={training}"])
        assert set(cfg["training"]) == set(base["training"]) and cfg["training"]["name"] == training
    long = compose_config("train", ["training=long"])
    assert long["policy"]["name"] == "cpu_wide" and long["training"]["max_steps"] == 16000 and long["training"]["lr"] == 1e-3
    assert compose_config("train", ["training=long", "policy=cpu"])["policy"]["name"] == "cpu"   # the CLI wins
