"""Push-T environment: ``from diffpolicy.envs.pusht import PushTEnv``.

Importing this package registers the gymnasium ids (all with
``max_episode_steps=300``):

* ``diffpolicy/PushT-v0``: keypoint observations (the low-dim task);
* ``diffpolicy/PushT-state-v0``, ``diffpolicy/PushT-keypoints-v0``,
  ``diffpolicy/PushT-image-v0``: one per observation type.

Extra keyword arguments of ``gymnasium.make`` go to :class:`PushTEnv`.
"""
from gymnasium.envs.registration import register, registry

_ENTRY_POINT = "diffpolicy.envs.pusht:PushTEnv"
_MAX_EPISODE_STEPS = 300

for _env_id, _obs_type in (("diffpolicy/PushT-v0", "keypoints"),
                           ("diffpolicy/PushT-state-v0", "state"),
                           ("diffpolicy/PushT-keypoints-v0", "keypoints"),
                           ("diffpolicy/PushT-image-v0", "image")):
    if _env_id not in registry:
        register(id=_env_id, entry_point=_ENTRY_POINT, max_episode_steps=_MAX_EPISODE_STEPS,
                 kwargs={"obs_type": _obs_type})
