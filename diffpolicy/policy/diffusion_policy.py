"""DiffusionPolicy: observation encoder + ConditionalUnet1D, trained to predict noise.

Shapes (B batch, To observation steps, H horizon, Ta executed actions, Da action size)::

    obs        {"obs": (B, To, Do), <camera>: (B, To, C, H, W) in [0, 1] (or uint8 0..255), ...}
               ("obs" absent when Do = 0; a low-dim-only policy also takes the tensor itself)
    action     (B, H, Da)   world units (Push-T: pixels)

The cameras and sizes come from ``PolicyConfig.cameras`` (a task config's, see
``policy/run_config.py``); nothing here is specific to one task.

Training (:meth:`compute_loss`): normalise to [-1, 1], encode the first ``To``
observation steps into a global condition ``(B, To * F)``, draw a diffusion
step ``k ~ U{0 .. N-1}`` and noise ``eps`` per sample, and regress
``unet(sqrt(abar_k) a + sqrt(1 - abar_k) eps, k, cond)`` onto ``eps`` (MSE, or
L1 with ``loss: l1``).  ``obs_noise_std > 0`` adds Gaussian noise of that std
to the normalised low-dim observations before they are encoded (training only).

Inference (:meth:`predict_action`): denoise ``(B, H, Da)`` from pure noise with
DDPM or DDIM over ``num_inference_steps``, un-normalise, and return the
``Ta`` actions that start at the current step: a window whose first
observation is step ``t - To + 1`` predicts actions ``t - To + 1 .. t - To + H``,
so the receding horizon executes entries ``To - 1 .. To + Ta - 2``
(the reference's ``start = To - 1``).  With ``action_stride = k > 1`` it
executes every k-th entry instead, ``To - 2 + k, To - 2 + 2k, ..``
(``Ta`` of them): the last action of each group of k, so the agent follows
the same planned path k times faster (the DOT policy's ``return_every_n``).
:meth:`predict_action_sequence` returns the whole sequence ``(B, H, Da)`` (for
temporal ensembling, ``eval/ensemble.py``).

In a control loop (one observation in, one action out per step, as LeRobot's
policies run): :meth:`reset` at the start of an episode, then
:meth:`select_action` each step.  The policy keeps the last ``To`` observations
(the first one repeated ``To`` times, as the rollouts do) and a queue of the
``Ta`` actions of its last call, and samples a new plan when the queue is empty.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

from diffpolicy.datasets.demos import RESERVED
from diffpolicy.datasets.normalizer import LinearNormalizer
from diffpolicy.diffusion.schedule import NoiseSchedule
from diffpolicy.diffusion.unet1d import ConditionalUnet1D
from diffpolicy.policy.encoders import ObservationEncoder
from diffpolicy.policy.execution import choose_unet_path, inference_bucket

SAMPLERS = ("ddpm", "ddim")
IMAGE_ENCODERS = ("resnet18", "small")
LOSSES = ("mse", "l1")


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy (saved in every checkpoint)."""

    obs_dim: int = 20                   # low-dim observation size (Push-T keypoints 20, state 5; 0: none)
    action_dim: int = 2
    cameras: dict = field(default_factory=dict)   # name -> {"shape": [C, H, W], "crop": [h, w] | None}
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (256, 512, 1024)
    step_embed_dim: int = 256
    kernel_size: int = 5
    n_groups: int = 8
    num_train_timesteps: int = 100
    beta_schedule: str = "cosine"       # diffusers' squaredcos_cap_v2
    sampler: str = "ddim"
    num_inference_steps: int = 10
    clip_sample: bool = True
    num_keypoints: int = 32
    image_feature_dim: int = 64
    image_encoder: str = "resnet18"     # camera trunk: "resnet18" (published) or "small" (CPU; encoders.py)
    fast_unet: bool | str = "auto"      # auto: fast or plain UNet path, measured (policy/execution.py)
    loss: str = "mse"                   # epsilon-prediction loss: "mse" or "l1"
    action_stride: int = 1              # execute every k-th planned action (k > 1: the plan runs k times faster)

    def __post_init__(self) -> None:
        self.cameras = _check_cameras(self.cameras)
        if isinstance(self.obs_dim, bool) or not isinstance(self.obs_dim, int) or self.obs_dim < 0:
            raise ValueError(f"policy.obs_dim must be an integer >= 0, got {self.obs_dim!r}")
        if self.obs_dim == 0 and not self.cameras:
            raise ValueError("policy: observes nothing (obs_dim = 0 and no cameras)")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"policy.image_encoder must be one of {IMAGE_ENCODERS}, got {self.image_encoder!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"policy.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"policy.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ValueError(f"policy: n_obs_steps and n_action_steps must be >= 1, got "
                             f"{self.n_obs_steps} and {self.n_action_steps}")
        if isinstance(self.action_stride, bool) or not isinstance(self.action_stride, int) \
                or self.action_stride < 1:
            raise ValueError(f"policy.action_stride must be an integer >= 1, got {self.action_stride!r}")
        if self.n_obs_steps - 1 + self.action_stride * self.n_action_steps > self.horizon:
            times = "" if self.action_stride == 1 else "action_stride * "
            raise ValueError(f"policy: n_obs_steps - 1 + {times}n_action_steps "
                             f"({self.n_obs_steps - 1 + self.action_stride * self.n_action_steps}) must not "
                             f"exceed horizon ({self.horizon}): the executed actions must lie in the plan")
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int) \
                or self.num_train_timesteps < 1:
            raise ValueError(f"policy.num_train_timesteps must be an integer >= 1, got {self.num_train_timesteps!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"policy.num_inference_steps must be in [1, "
                             f"{self.num_train_timesteps}], got {self.num_inference_steps}")
        if self.fast_unet not in (True, False, "auto"):
            raise ValueError(f"policy.fast_unet must be true, false or auto, got {self.fast_unet!r}")
        self.down_dims = tuple(int(d) for d in self.down_dims)
        stride = 2 ** (len(self.down_dims) - 1)
        if self.horizon % stride:
            raise ValueError(f"policy.horizon must be divisible by {stride} (2 ** (len(down_dims) - 1): "
                             f"the UNet halves it at each of {len(self.down_dims) - 1} levels), "
                             f"got {self.horizon}")

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyConfig":
        """The config stored in a checkpoint or pretrained folder; keys added since it was written
        take their defaults.  Low-dim configs written before cameras existed (``obs_type:
        lowdim``) are read as they were meant; their image ones are refused."""
        d = dict(d)
        if "obs_type" in d:
            if d.pop("obs_type") != "lowdim":
                raise ValueError("an image policy saved before cameras were configurable (obs_type: image): "
                                 "this diffpolicy cannot rebuild it; retrain it")
            for key in ("image_shape", "agent_pos_dim", "crop_shape"):
                d.pop(key, None)
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def differences(self, stored: dict, ignore: frozenset[str] = frozenset()) -> dict[str, tuple]:
        """Fields (outside ``ignore``) in which ``stored``, a saved ``policy_config`` read with
        :meth:`from_dict`, differs from this config: ``{field: (stored value, this value)}``,
        sorted by field."""
        theirs, ours = PolicyConfig.from_dict(stored).to_dict(), self.to_dict()
        return {k: (theirs[k], v) for k, v in sorted(ours.items()) if k not in ignore and theirs[k] != v}


# PolicyConfig fields that change how a trained network is run, not the network or its training
# (with ``training.pad_after: null`` the training windows follow n_action_steps: see policy/train.py)
EXECUTION_KEYS = frozenset({"n_action_steps", "action_stride", "sampler", "num_inference_steps",
                            "clip_sample", "fast_unet"})


def positive_ints(value, n: int) -> bool:
    """Is ``value`` a list or tuple of ``n`` positive integers (not booleans)?"""
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _check_cameras(cameras) -> dict:
    """``{name: {"shape": [C, H, W], "crop": [h, w] | None}}`` checked, as plain lists."""
    if not isinstance(cameras, dict):
        raise ValueError(f"policy.cameras must be a mapping name -> {{shape, crop}}, got {cameras!r}")
    out = {}
    for name, cam in cameras.items():
        if name in RESERVED or not isinstance(name, str):
            raise ValueError(f"policy.cameras: {name!r} cannot name a camera ({' and '.join(RESERVED)} are reserved)")
        if not isinstance(cam, dict) or set(cam) - {"shape", "crop"} or "shape" not in cam:
            raise ValueError(f"policy.cameras.{name} must be {{shape: [C, H, W], crop: [h, w] or null}}, "
                             f"got {cam!r}")
        shape, crop = cam["shape"], cam.get("crop")
        if not positive_ints(shape, 3):
            raise ValueError(f"policy.cameras.{name}.shape must be 3 positive integers [C, H, W], got {shape!r}")
        if crop is not None and not (positive_ints(crop, 2) and crop[0] <= shape[1] and crop[1] <= shape[2]):
            raise ValueError(f"policy.cameras.{name}.crop must be null or [h, w] within the image "
                             f"{shape[1]}x{shape[2]}, got {crop!r}")
        out[name] = {"shape": [int(v) for v in shape], "crop": None if crop is None else [int(v) for v in crop]}
    return out


def with_execution(config: PolicyConfig, n_action_steps: int | None = None,
                   action_stride: int | None = None) -> PolicyConfig:
    """``config`` with other actions per call and action stride (None: keep the config's).

    With only ``action_stride=k`` given, ``n_action_steps`` becomes the most that fit in
    the plan, ``(H - To + 1) // k``, at most the config's own.  Raises ``ValueError``
    naming the values given (then :class:`PolicyConfig`'s reason) when the executed
    actions leave the plan.
    """
    k = config.action_stride if action_stride is None else action_stride
    ta = n_action_steps
    if ta is None:
        ta = config.n_action_steps
        if action_stride is not None and isinstance(k, int) and k >= 1:
            ta = max(1, min(ta, (config.horizon - config.n_obs_steps + 1) // k))
    try:
        return replace(config, n_action_steps=ta, action_stride=k)
    except ValueError as exc:
        given = {"n_action_steps": n_action_steps, "action_stride": action_stride}
        raise ValueError(", ".join(f"{key}={v}" for key, v in given.items() if v is not None)
                         + f": {exc}") from None


class DiffusionPolicy(nn.Module):
    """Conditional denoiser over action sequences; see the module docstring.

    ``forward(batch)`` is :meth:`compute_loss` so that DDP can wrap the policy.
    """

    def __init__(self, config: PolicyConfig, normalizer: LinearNormalizer | None = None):
        super().__init__()
        self.config = cfg = config
        self.obs_encoder = ObservationEncoder(cfg.obs_dim, cfg.cameras, cfg.num_keypoints, cfg.image_feature_dim,
                                              cfg.image_encoder)
        norm_keys = set(cfg.cameras) | ({"obs"} if cfg.obs_dim else set()) | {"action"}
        # An empty normaliser is filled by load_state_dict (checkpoints carry the fitted one).
        self.normalizer = normalizer if normalizer is not None else LinearNormalizer()
        if normalizer is not None and not norm_keys <= set(normalizer.keys):
            raise ValueError(f"DiffusionPolicy: the normaliser has keys {sorted(normalizer.keys)}, "
                             f"the policy needs {sorted(norm_keys)}")
        self.global_cond_dim = cfg.n_obs_steps * self.obs_encoder.feature_dim
        self.unet = ConditionalUnet1D(cfg.action_dim, self.global_cond_dim, cfg.down_dims,
                                      cfg.step_embed_dim, cfg.kernel_size, cfg.n_groups,
                                      fast=cfg.fast_unet is not False)
        # auto: the path per use, measured on first need (policy/execution.py)
        self.train_fast: bool = cfg.fast_unet is not False
        self._inference_fast: dict[int, bool] = {}
        self.schedule = NoiseSchedule(cfg.beta_schedule, cfg.num_train_timesteps)
        self.register_buffer("alpha_bar", self.schedule.alpha_bar.float(), persistent=False)

    # ----------------------------------------------------------------- helpers
    def _normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """World-unit observations ``(B, T, ...)`` -> normalised, first ``To`` steps only."""
        to, cfg = self.config.n_obs_steps, self.config
        out = {}
        for name, cam in cfg.cameras.items():
            if name not in obs:
                raise ValueError(f"DiffusionPolicy: camera {name!r} is missing from the observation "
                                 f"(got keys {sorted(obs)})")
            image = obs[name]
            if image.dim() != 5 or image.shape[1] < to or list(image.shape[2:]) != cam["shape"]:
                raise ValueError(f"DiffusionPolicy: obs[{name!r}] must have shape "
                                 f"(B, >= {to}, {', '.join(map(str, cam['shape']))}), got {tuple(image.shape)}")
            image = image[:, :to]
            image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
            out[name] = self.normalizer.normalize(name, image)
        if cfg.obs_dim:
            x = obs.get("obs")
            if x is None or x.dim() != 3 or x.shape[1] < to or x.shape[-1] != cfg.obs_dim:
                raise ValueError(f"DiffusionPolicy: obs['obs'] must have shape (B, >= {to}, {cfg.obs_dim}), "
                                 f"got {None if x is None else tuple(x.shape)}")
            out["obs"] = self.normalizer.normalize("obs", x[:, :to].float())
        return out

    def choose_train_path(self, batch: int, log=print) -> bool:
        """Measure (``fast_unet: auto``) and set the UNet path for training at ``batch``;
        call before the optimiser and EMA exist (the weights change layout)."""
        if self.config.fast_unet == "auto":
            device = next(self.parameters()).device
            self.train_fast = choose_unet_path(self.unet, batch, self.config.horizon, True, device, log)
            self.unet.set_fast(self.train_fast)
        return self.train_fast

    def _use_path(self, batch: int, training: bool) -> None:
        """Point the UNet at the path chosen for this use (``fast_unet: auto`` only)."""
        if self.config.fast_unet != "auto":
            return
        if training:
            self.unet.fast = self.train_fast
            return
        bucket = inference_bucket(batch)
        if bucket not in self._inference_fast:
            device = next(self.parameters()).device
            self._inference_fast[bucket] = choose_unet_path(self.unet, bucket, self.config.horizon,
                                                            False, device)
        self.unet.fast = self._inference_fast[bucket]

    def global_condition(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """World-unit observations -> flattened features ``(B, To * F)``."""
        return self._encode(self._normalize_obs(obs))

    def _encode(self, nobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observations (first ``To`` steps) -> flattened features ``(B, To * F)``."""
        feats = self.obs_encoder(nobs)
        return feats.reshape(feats.shape[0], -1)

    # ---------------------------------------------------------------- training
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None,
                     obs_noise_std: float = 0.0) -> torch.Tensor:
        """Epsilon-prediction loss (``config.loss``: MSE or L1) on
        ``batch = {"obs": ..., "action": (B, H, Da)}`` (world units).

        ``generator`` (optional) draws the noise and diffusion steps, e.g. for a
        validation loss that is comparable across training steps.
        ``obs_noise_std > 0`` adds ``N(0, obs_noise_std^2)`` noise to the
        normalised observations ``(B, To, Do)`` (low-dim only), drawn from
        ``generator`` before the diffusion noise and steps; 0 draws nothing.
        """
        action = batch["action"]
        if action.dim() != 3 or action.shape[1:] != (self.config.horizon, self.config.action_dim):
            raise ValueError(f"DiffusionPolicy: batch['action'] must have shape "
                             f"(B, {self.config.horizon}, {self.config.action_dim}), "
                             f"got {tuple(action.shape)}")
        if obs_noise_std < 0:
            raise ValueError(f"DiffusionPolicy: obs_noise_std must be >= 0, got {obs_noise_std}")
        if obs_noise_std > 0 and (self.config.cameras or not self.config.obs_dim):
            raise ValueError(f"DiffusionPolicy: obs_noise_std applies to policies observing a low-dim "
                             f"vector only, got obs_noise_std={obs_noise_std} with cameras "
                             f"{sorted(self.config.cameras)}")
        obs = batch["obs"] if isinstance(batch["obs"], dict) else {"obs": batch["obs"]}
        nobs = self._normalize_obs(obs)
        if obs_noise_std > 0:
            x = nobs["obs"]
            nobs = {"obs": x + obs_noise_std * torch.randn(x.shape, generator=generator, device=x.device)}
        cond = self._encode(nobs)
        x0 = self.normalizer.normalize("action", action.float())
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        k = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=x0.device)
        abar = self.alpha_bar[k].reshape(-1, 1, 1)
        noisy = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        self._use_path(x0.shape[0], training=torch.is_grad_enabled())
        loss = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss(self.unet(noisy, k, cond), noise)

    def forward(self, batch: dict, obs_noise_std: float = 0.0) -> torch.Tensor:
        return self.compute_loss(batch, obs_noise_std=obs_noise_std)

    # --------------------------------------------------------------- inference
    @torch.inference_mode()
    def sample_actions(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                       sampler: str | None = None, num_inference_steps: int | None = None,
                       initial_noise: torch.Tensor | None = None) -> torch.Tensor:
        """The whole denoised sequence in world units: ``(B, H, Da)``.

        ``initial_noise`` ``(B, H, Da)``: the sampler's starting noise instead of a fresh draw.
        """
        from diffpolicy.diffusion.sampling import sample  # noqa: PLC0415 (core module)

        cfg = self.config
        cond = self.global_condition(obs)
        shape = (cond.shape[0], cfg.horizon, cfg.action_dim)
        self._use_path(shape[0], training=False)
        x = sample(self.unet, self.schedule, shape, cond, method=sampler or cfg.sampler,
                   num_inference_steps=num_inference_steps or cfg.num_inference_steps,
                   clip_sample=cfg.clip_sample, generator=generator, initial_noise=initial_noise)
        return self.normalizer.unnormalize("action", x)

    @torch.inference_mode()
    def predict_action_sequence(self, obs: dict[str, torch.Tensor] | torch.Tensor,
                                generator: torch.Generator | None = None, sampler: str | None = None,
                                num_inference_steps: int | None = None,
                                initial_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Observation history (last ``To`` steps, world units) -> the whole sequence ``(B, H, Da)``.

        Index ``To - 1`` is the action for the step of the last observation,
        index ``To - 1 + j`` the one ``j`` steps later.
        """
        if isinstance(obs, torch.Tensor):
            obs = {"obs": obs}
        return self.sample_actions(obs, generator, sampler, num_inference_steps, initial_noise)

    @torch.inference_mode()
    def predict_action(self, obs: dict[str, torch.Tensor] | torch.Tensor,
                       generator: torch.Generator | None = None, sampler: str | None = None,
                       num_inference_steps: int | None = None,
                       initial_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Observation history (last ``To`` steps, world units) -> ``(B, Ta, Da)`` actions to execute
        (every ``action_stride``-th entry of the plan from step ``t``; see the module docstring)."""
        seq = self.predict_action_sequence(obs, generator, sampler, num_inference_steps, initial_noise)
        k, start = self.config.action_stride, self.config.n_obs_steps - 1
        return seq[:, start + k - 1:start + k * self.config.n_action_steps:k]

    # ------------------------------------------------------------ control loop
    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at each episode start)."""
        self._history: list[dict[str, torch.Tensor]] = []
        self._queue: list[torch.Tensor] = []

    @torch.inference_mode()
    def select_action(self, obs: dict[str, torch.Tensor] | torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """One observation step (world units) -> the action to execute now.

        ``obs``: low-dim ``(Do,)`` or ``(B, Do)`` (or ``{"obs": ...}``); with cameras
        ``{"obs": (Do,) or (B, Do), <camera>: (C, H, W) or (B, C, H, W) in [0, 1]}``.
        Returns ``(Da,)``, or ``(B, Da)`` for batched input.  Calls :meth:`predict_action`
        (with ``generator``) when no queued action is left; :meth:`reset` first.
        """
        if not hasattr(self, "_history"):
            raise RuntimeError("DiffusionPolicy.select_action: call reset() at the start of each episode")
        obs = {"obs": obs} if isinstance(obs, torch.Tensor) else dict(obs)
        key = "obs" if self.config.obs_dim else next(iter(self.config.cameras))
        single = obs[key].dim() == (1 if key == "obs" else 3)
        if single:
            obs = {k: v.unsqueeze(0) for k, v in obs.items()}
        if self._history and self._history[-1][key].shape[0] != obs[key].shape[0]:
            raise ValueError(f"DiffusionPolicy.select_action: batch size changed from "
                             f"{self._history[-1][key].shape[0]} to {obs[key].shape[0]} within an episode; "
                             f"call reset() first")
        to = self.config.n_obs_steps
        self._history = (self._history or [obs] * to)[-(to - 1):] + [obs] if to > 1 else [obs]
        if not self._queue:
            batch = {k: torch.stack([h[k] for h in self._history], 1) for k in obs}   # (B, To, ...)
            plan = self.predict_action(batch, generator=generator)                    # (B, Ta, Da)
            self._queue = list(plan.unbind(1))
        action = self._queue.pop(0)
        return action[0] if single else action
