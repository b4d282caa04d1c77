"""The run configuration: plain dataclasses, and checks that stop bad input early.

Hydra composes ``diffpolicy/configs/train.yaml`` (task, policy, training
groups); :func:`check_train_config` then rejects unknown keys, values of the
wrong type (from the dataclass annotations: :func:`check_types`) and bad values
with one message naming the key, before any data is read or a step is taken.
Everything here also works without Hydra (pass a plain dict).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from diffpolicy import paths
from diffpolicy.datasets.demos import RESERVED, CameraSpec, DemoSpec, parse_key
from diffpolicy.datasets.errors import DatasetError
from diffpolicy.policy.diffusion_policy import PolicyConfig, positive_ints

TASK_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "task"
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
DEVICES = "auto, cpu, cuda, cuda:N or mps"


class ConfigError(ValueError):
    """A configuration key is unknown, missing, or has a bad value."""


def to_plain_config(cfg: Any) -> dict:
    """A Hydra ``DictConfig`` (resolved) or any mapping as a plain ``dict``."""
    try:
        from omegaconf import DictConfig, OmegaConf  # noqa: PLC0415
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


@dataclass
class TaskConfig:
    """A task as data (``diffpolicy/configs/task/*.yaml``): where the demos are and which of
    their arrays a policy observes and does, and for rollouts which gymnasium env to build
    and how its observations map onto the same names.  See docs/tasks.md."""

    name: str = "task"
    dataset_path: str | None = None     # a zarr store; a relative path not found from the working
                                        # folder is looked up under the data root (diffpolicy.paths)
    action_key: str = "action"
    action_dim: int = 2
    obs_keys: list[str] = field(default_factory=list)   # low-dim keys, flattened and concatenated
    obs_dim: int = 0                    # their total size
    cameras: dict = field(default_factory=dict)   # name -> {key, shape: [H, W, C], crop: [h, w] | null}
    env: str | None = None              # an env variant (e.g. a Meta-World task) ${task.env} may refer to
    env_id: str | None = None           # gymnasium id for rollouts (null: none; training only)
    env_module: str | None = None       # imported before gymnasium.make (registers env_id)
    env_kwargs: dict = field(default_factory=dict)
    env_obs_keys: list[str] | None = None   # env observation keys concatenated to the low-dim vector
                                            # (null: the observation is the vector itself)
    env_camera_keys: dict = field(default_factory=dict)  # camera name -> env observation key
    success_key: str = "is_success"     # info key that is true once the episode succeeded
    max_episode_steps: int = 300        # evaluation episode length (diffpolicy-eval max_steps=null)
    val_ratio: float = 0.02
    split_seed: int = 42
    max_train_episodes: int | None = None
    frame_stride: int = 1               # train on every k-th demo frame: the policy moves k times faster


@dataclass
class TrainingConfig:
    name: str = "demo"
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    adam_betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 500
    max_steps: int | None = 5000
    max_epochs: int | None = None
    max_minutes: float | None = None
    grad_clip: float | None = None
    ema_power: float = 0.75
    ema_max: float = 0.9999
    log_every: int = 50
    val_every: int = 1000
    eval_every: int = 0
    eval_episodes: int = 10
    eval_seed_start: int = 200000
    eval_max_steps: int | None = None   # None: the task's max_episode_steps
    checkpoint_every: int = 500
    keep_best: int = 3
    num_threads: int | None = None
    obs_noise_std: float = 0.0          # Gaussian noise on normalised low-dim observations (0: off)
    obs_noise_decay_frac: float = 1.0   # its std decays linearly to 0 at this fraction of the steps
    init_from: str | None = None        # checkpoint or pretrained folder to start from (policy/init_from.py)
    pad_after: int | None = None        # training windows past each episode's end (None: n_action_steps - 1)


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: dict = field(default_factory=dict)      # PolicyConfig fields plus "name"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seed: int = 0
    device: str = "auto"
    run_dir: str = "runs/default"
    resume: bool = False


# ---------------------------------------------------------------- types from the annotations
_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}


def _is_type(value: Any, tp: Any) -> bool:
    """Does a plain config value (YAML scalar, list, mapping) fit the annotation ``tp``?

    An integer is not a bool, a number is an int or a finite float (not a bool), a tuple or
    list annotation takes a list or tuple of fitting elements (of the fixed length,
    for ``tuple[X, Y]``).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_type(value, a) for a in args)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp in (int, float):      # a float must be finite: lr=nan trained on NaN until the loss check stopped it
        return (isinstance(value, int if tp is int else (int, float)) and not isinstance(value, bool)
                and (tp is int or math.isfinite(value)))
    if tp in (bool, str):
        return isinstance(value, tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_is_type(v, a) for v, a in zip(value, args))
        return all(_is_type(v, args[0]) for v in value) if args else True
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    return isinstance(value, tp)


def describe_type(tp: Any) -> str:
    """``int | None`` -> "an integer or null", ``tuple[float, float]`` -> "a list of 2 numbers"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        ordered = [a for a in args if a is not type(None)] + [a for a in args if a is type(None)]
        return " or ".join(describe_type(a) for a in ordered)
    if tp in _NAMES:
        return _NAMES[tp][0]
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) == 1 and args[0] in _NAMES:
                return f"a list of {len(args)} {_NAMES[args[0]][1]}"
            return f"a list [{', '.join(describe_type(a) for a in args)}]"
        return f"a list of {_NAMES[args[0]][1]}" if args and args[0] in _NAMES else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def show_value(value: Any) -> str:
    """A found value as the message shows it: YAML spelling for null / booleans, then its type."""
    if value is None:
        return "null"
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return f"{text} ({type(value).__name__})"


def check_types(cls: type, section: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``section`` whose value does not fit the
    annotation of the dataclass field ``cls.<key>`` (keys ``cls`` lacks are not checked here)."""
    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        if key in hints and not _is_type(value, hints[key]):
            raise ConfigError(f"{where + '.' if where else ''}{key} must be {describe_type(hints[key])}, "
                              f"got {show_value(value)}")


_TOP_KEYS = {f.name for f in fields(TrainConfig)} | {"hydra"}
# Policy keys set in policy/*.yaml; obs_dim, action_dim and cameras come from the task.
_POLICY_KEYS = ({f.name for f in fields(PolicyConfig)} - {"obs_dim", "action_dim", "cameras"}) | {"name"}


def _check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{unknown[0]} "
                          f"(known keys{' in ' + where if where else ''}: {', '.join(sorted(allowed))})")


def _build(cls, section: Mapping[str, Any], where: str):
    _check_keys(section, {f.name for f in fields(cls)}, where)
    check_types(cls, section, where)
    return cls(**dict(section))


def check_train_config(cfg: Mapping[str, Any]) -> TrainConfig:
    """Validate a composed training config (plain dict) and return it typed.

    Raises :class:`ConfigError` naming the first unknown key, value of the wrong type or bad value.
    """
    _check_keys(cfg, _TOP_KEYS, "")
    for name in ("task", "policy", "training"):
        if not isinstance(cfg.get(name), Mapping):
            raise ConfigError(f"config key {name!r} is missing or not a group "
                              f"(pick one, e.g. {name}=<file in diffpolicy/configs/{name}/>)")
    task = _build(TaskConfig, cfg["task"], "task")
    training = _build(TrainingConfig, cfg["training"], "training")
    _check_keys(cfg["policy"], _POLICY_KEYS, "policy")
    check_types(PolicyConfig, cfg["policy"], "policy")
    check_types(TrainConfig, {k: cfg[k] for k in ("seed", "device", "run_dir", "resume") if k in cfg}, "")
    check_device(cfg.get("device", "auto"))
    run = TrainConfig(task=task, policy=dict(cfg["policy"]), training=training,
                      **{k: cfg[k] for k in ("seed", "device", "run_dir", "resume") if k in cfg})
    check_task(task)
    t = training
    if (t.max_steps is None) == (t.max_epochs is None):
        raise ConfigError(f"set exactly one of training.max_steps and training.max_epochs "
                          f"(got max_steps={t.max_steps}, max_epochs={t.max_epochs})")
    for key in ("batch_size", "checkpoint_every", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"training.{key} must be >= 1, got {getattr(t, key)}")
    for key in ("max_steps", "max_epochs"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            raise ConfigError(f"training.{key} must be >= 1, got {getattr(t, key)}")
    if t.lr <= 0:
        raise ConfigError(f"training.lr must be > 0, got {t.lr}")
    if t.eval_every and t.eval_episodes < 1:
        raise ConfigError(f"training.eval_episodes must be >= 1 when eval_every > 0, got {t.eval_episodes}")
    if not t.obs_noise_std >= 0:
        raise ConfigError(f"training.obs_noise_std must be >= 0, got {t.obs_noise_std}")
    if not 0 < t.obs_noise_decay_frac <= 1:
        raise ConfigError(f"training.obs_noise_decay_frac must be in (0, 1], got {t.obs_noise_decay_frac}")
    if t.obs_noise_std > 0 and (task.cameras or not task.obs_dim):
        raise ConfigError(f"training.obs_noise_std={t.obs_noise_std} applies to low-dimensional "
                          f"observations only; task {task.name!r} observes images (set it to 0)")
    policy_config(run)  # value checks of the policy section
    return run


def check_device(name: str, key: str = "device") -> None:
    """Refuse a device name that is none of auto, cpu, cuda, cuda:N, mps (whether this machine
    has it is :func:`diffpolicy.device.resolve_device`'s check)."""
    if not DEVICE_RE.fullmatch(name):
        raise ConfigError(f"{key} must be {DEVICES}, got {name!r}")


def policy_config(run: TrainConfig) -> PolicyConfig:
    """The :class:`PolicyConfig` of a run: the policy group plus the task's dimensions."""
    p = {k: v for k, v in run.policy.items() if k != "name"}
    cameras = {name: {"shape": list(cam.chw), "crop": None if cam.crop is None else list(cam.crop)}
               for name, cam in camera_specs(run.task).items()}
    try:
        return PolicyConfig(obs_dim=run.task.obs_dim, action_dim=run.task.action_dim, cameras=cameras, **p)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad policy config: {exc}") from exc


# ---------------------------------------------------------------- the task
_CAMERA_KEYS = {"key", "shape", "crop"}


def camera_specs(task: TaskConfig) -> dict[str, CameraSpec]:
    """``task.cameras`` checked: name -> {key, shape: [H, W, C], crop: [h, w] | null}."""
    if not isinstance(task.cameras, Mapping):
        raise ConfigError(f"task.cameras must be a mapping name -> {{key, shape, crop}}, got {task.cameras!r}")
    specs = {}
    for name, cam in task.cameras.items():
        where = f"task.cameras.{name}"
        if name in RESERVED:
            raise ConfigError(f"{where}: {name!r} is reserved (a camera cannot be named {' or '.join(RESERVED)})")
        if not isinstance(cam, Mapping):
            raise ConfigError(f"{where} must be a mapping {{key, shape, crop}}, got {cam!r}")
        _check_keys(cam, _CAMERA_KEYS, where)
        if not isinstance(cam.get("key"), str):
            raise ConfigError(f"{where}.key must be the store key of its images, got {cam.get('key')!r}")
        if not positive_ints(cam.get("shape"), 3):
            raise ConfigError(f"{where}.shape must be 3 positive integers [H, W, C], got {cam.get('shape')!r}")
        crop = cam.get("crop")
        if crop is not None and not (positive_ints(crop, 2) and crop[0] <= cam["shape"][0] and crop[1] <= cam["shape"][1]):
            raise ConfigError(f"{where}.crop must be null or [h, w] within the {cam['shape'][0]}x"
                              f"{cam['shape'][1]} image, got {crop!r}")
        specs[name] = CameraSpec(cam["key"], tuple(cam["shape"]), None if crop is None else tuple(crop))
    return specs


def check_task(task: TaskConfig) -> None:
    """Value checks of a task section (types are :func:`check_types`' job)."""
    if task.action_dim < 1:
        raise ConfigError(f"task.action_dim must be >= 1, got {task.action_dim}")
    if task.obs_dim < 0:
        raise ConfigError(f"task.obs_dim must be >= 0, got {task.obs_dim}")
    for field_name in ("obs_keys", "env_obs_keys"):     # store keys, and the env's (read every step)
        for key in getattr(task, field_name) or ():
            try:
                parse_key(key)
            except DatasetError as exc:
                raise ConfigError(f"task.{field_name}: {exc}") from None
    if bool(task.obs_keys) != bool(task.obs_dim):
        raise ConfigError(f"task.obs_keys ({list(task.obs_keys)}) and task.obs_dim ({task.obs_dim}) must be "
                          f"both set or both empty / 0")
    cameras = camera_specs(task)
    if not task.obs_dim and not cameras:
        raise ConfigError(f"task {task.name!r} observes nothing: set obs_keys and obs_dim, or cameras")
    if task.env_id is not None:
        missing = sorted(set(cameras) - set(task.env_camera_keys))
        extra = sorted(set(task.env_camera_keys) - set(cameras))
        if missing or extra:
            raise ConfigError(f"task.env_camera_keys must map every camera to an env observation key: "
                              f"{'missing ' + ', '.join(missing) if missing else ''}"
                              f"{'; not a camera: ' + ', '.join(extra) if extra else ''}")
    for key in ("max_episode_steps", "frame_stride"):
        if getattr(task, key) < 1:
            raise ConfigError(f"task.{key} must be >= 1, got {getattr(task, key)}")


def demo_spec(task: TaskConfig) -> DemoSpec:
    """What :func:`diffpolicy.datasets.demos.load_demos` reads for ``task``."""
    return DemoSpec(action_dim=task.action_dim, obs_keys=tuple(task.obs_keys), obs_dim=task.obs_dim,
                    cameras=camera_specs(task), action_key=task.action_key)


def dataset_path(task: TaskConfig) -> Path:
    """``task.dataset_path``: as given when absolute or found from the working folder,
    else under the data root (``$DIFFPOLICY_DATA``, ../shared/data or ./data)."""
    if not task.dataset_path:
        raise ConfigError(f"task.dataset_path is not set for task {task.name!r} (a zarr store of demos)")
    path = Path(task.dataset_path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    found = paths.data_root() / path
    if not found.exists():
        raise FileNotFoundError(f"task {task.name!r}: demos not found at {path} (nor at {found}, under the "
                                f"data root; set ${paths.DATA_ENV_VAR} or task.dataset_path)")
    return found


def task_config(section: Mapping[str, Any]) -> TaskConfig:
    """The task of a stored run config (checkpoint, pretrained folder).  A Push-T task written
    before tasks were data (``obs_type: keypoints | state | image``) is read as the matching
    ``configs/task/pusht_<obs_type>.yaml`` with the stored split settings."""
    d = dict(section)
    if "obs_type" in d and "obs_keys" not in d:
        from dataclasses import asdict  # noqa: PLC0415

        base = asdict(builtin_task(f"pusht_{d.pop('obs_type')}"))
        d = {**base, **{k: v for k, v in d.items() if k in base and v is not None}}
    return _build(TaskConfig, d, "task")


def builtin_task(name: str) -> TaskConfig:
    """The task config ``diffpolicy/configs/task/<name>.yaml`` (resolved; checked)."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    path = TASK_CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in TASK_CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown task {name!r} (task configs: {', '.join(known)})")
    task = _build(TaskConfig, OmegaConf.to_container(OmegaConf.load(path), resolve=True), "task")
    check_task(task)
    return task
