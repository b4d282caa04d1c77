"""Collect your own Push-T demos: the mouse drives the agent, episodes go to zarr.

``python -m diffpolicy.envs.teleop --out my_demos.zarr`` opens a window (needs
a display). Move the mouse onto the blue agent to take control; from then on
the mouse position is the action, at 10 Hz. An episode is saved when the
block covers more than 95 % of the goal, or when you press ``S``; ``R``
discards it and restarts, ``Q`` / ``Esc`` / closing the window quits. Episode
``k`` of a session starts from ``reset(seed=first_seed + k)``.

Episodes are stored in the replay-buffer layout of the published Push-T set
(``data/<key>`` concatenated, ``meta/episode_ends``) with the same keys,
dtypes and meaning (frame ``t`` holds what was observed *before* action ``t``):

==============  ====================  =========================================
key             shape, dtype          meaning
==============  ====================  =========================================
``state``       (T, 5) float32        agent x, y, block x, y, angle mod 2 pi
``keypoint``    (T, 9, 2) float32     block keypoints (world pixels)
``img``         (T, 96, 96, 3) f32    observation image, 0..255, no target mark
``action``      (T, 2) float32        commanded target (x, y)
``n_contacts``  (T, 1) float32        contact count of the step that led here
==============  ====================  =========================================

The collection logic (:class:`EpisodeRecorder`, :func:`collect_episode`,
:class:`TeleopSession`) runs without a display; only :func:`run_teleop`'s
event loop needs one.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from diffpolicy.envs.geometry import keypoints_from_state
from diffpolicy.envs.pusht import PushTEnv

DATASET_KEYS = ("state", "keypoint", "img", "action", "n_contacts")
ENGAGE_RADIUS = 30.0  # px: the mouse takes over the agent once this close to it


class EpisodeRecorder:
    """Frames of one episode, turned into the dataset's arrays by :meth:`to_episode`.

    Call :meth:`record` with the env *before* applying each action. With
    ``images=False`` no image is rendered and ``img`` is left out.
    """

    def __init__(self, images: bool = True) -> None:
        self.with_images = images
        self.states: list[np.ndarray] = []
        self.images: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.contacts: list[int] = []

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, state: Sequence[float], image: np.ndarray, action: Sequence[float], n_contacts: int) -> None:
        """One frame: ``state`` (5,), ``image`` (H, W, 3) uint8, ``action`` (2,), contact count."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"EpisodeRecorder.add: action must be 2 finite numbers, found {action.tolist()}")
        self.states.append(np.asarray(state, dtype=np.float64).copy())
        if self.with_images:
            self.images.append(np.asarray(image).copy())
        self.actions.append(action)
        self.contacts.append(int(n_contacts))

    def record(self, env: PushTEnv, action: Sequence[float]) -> None:
        """Snapshot ``env`` as observed now, paired with the ``action`` about to be applied."""
        base = env.unwrapped
        image = base.observation_image() if self.with_images else None
        self.add(base.state(), image, action, base.n_contacts)

    def to_episode(self) -> dict[str, np.ndarray]:
        """``{"state", "keypoint", "img", "action", "n_contacts"}`` arrays, all float32, length T."""
        if not self.actions:
            raise ValueError("EpisodeRecorder.to_episode: the episode has no frames")
        states = np.stack(self.states)
        episode = {
            "state": states.astype(np.float32),
            "keypoint": keypoints_from_state(states).astype(np.float32),
            "img": np.stack(self.images).astype(np.float32) if self.with_images else None,
            "action": np.stack(self.actions).astype(np.float32),
            "n_contacts": np.asarray(self.contacts, dtype=np.float32)[:, None],
        }
        return {k: v for k, v in episode.items() if v is not None}


def collect_episode(env: PushTEnv, actions: Iterable[Sequence[float]], seed: int | None = None,
                    state: Sequence[float] | None = None, stop_on_success: bool = True,
                    images: bool = True) -> dict[str, np.ndarray]:
    """Reset ``env`` (``seed`` or explicit ``state``), apply ``actions`` and record the episode.

    Returns the dataset-layout dict of :meth:`EpisodeRecorder.to_episode`
    (without ``img`` when ``images=False``). Recording stops after the first
    step that reaches success when ``stop_on_success`` (as the human demos did).
    Replaying demo ``i``: ``collect_episode(env, actions_i, seed=i)``.
    """
    env.reset(seed=seed, options=None if state is None else {"state": list(state)})
    recorder = EpisodeRecorder(images=images)
    for action in actions:
        recorder.record(env, action)
        _, _, terminated, _, _ = env.step(np.asarray(action, dtype=np.float64))
        if terminated and stop_on_success:
            break
    return recorder.to_episode()


def save_episode(path: str | Path, episode: dict[str, np.ndarray]) -> int:
    """Append ``episode`` to the replay buffer at ``path`` (created if missing); returns its index."""
    from diffpolicy.datasets.replay_buffer import ReplayBuffer  # only the saving needs the datasets package

    path = Path(path)
    buffer = ReplayBuffer.open(path, mode="a") if path.exists() else ReplayBuffer.create(path, zarr_format=2)
    buffer.add_episode(episode)
    return buffer.n_episodes - 1


class TeleopSession:
    """The teleoperation state machine, driven by pointer positions (world pixels).

    ``tick(pointer)`` does one control step: until the pointer comes within
    ``ENGAGE_RADIUS`` of the agent nothing moves and nothing is recorded; after
    that each tick records the frame and steps the env toward the pointer. A
    successful step saves the episode and starts the next one.
    """

    def __init__(self, env: PushTEnv, out: str | Path, first_seed: int = 0) -> None:
        self.env = env
        self.out = Path(out)
        self.seed = int(first_seed)
        self.saved: list[int] = []
        self.new_episode()

    def new_episode(self) -> None:
        """Discard the current recording and reset to the next seed."""
        self.env.reset(seed=self.seed)
        self.recorder = EpisodeRecorder()
        self.engaged = False

    def tick(self, pointer: Sequence[float]) -> str:
        """One control step; returns ``"waiting"``, ``"recording"`` or ``"saved"``."""
        pointer = np.asarray(pointer, dtype=np.float64)
        base = self.env.unwrapped
        if not self.engaged:
            if np.linalg.norm(pointer - base.sim.agent_pos) >= ENGAGE_RADIUS:
                return "waiting"
            self.engaged = True
        self.recorder.record(self.env, pointer)
        _, _, terminated, _, _ = self.env.step(pointer)
        if terminated:
            self.finish()
            return "saved"
        return "recording"

    def finish(self) -> int | None:
        """Save the current episode (if it has frames) and start the next seed."""
        index = None
        if len(self.recorder):
            index = save_episode(self.out, self.recorder.to_episode())
            self.saved.append(index)
            self.seed += 1
        self.new_episode()
        return index


def run_teleop(out: str | Path, first_seed: int = 0, max_episodes: int | None = None,
               window_size: int = 512) -> list[int]:
    """The interactive loop (needs a display). Returns the indices of the saved episodes."""
    import pygame

    env = PushTEnv(obs_type="state", render_mode="human", window_size=window_size)
    session = TeleopSession(env, out, first_seed)
    print(__doc__.split("\n\n")[1])
    scale = 512.0 / window_size
    try:
        while max_episodes is None or len(session.saved) < max_episodes:
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN
                                                 and event.key in (pygame.K_q, pygame.K_ESCAPE)):
                    return session.saved
                if event.type == pygame.KEYDOWN and event.key == pygame.K_r:
                    session.new_episode()
                if event.type == pygame.KEYDOWN and event.key == pygame.K_s:
                    index = session.finish()
                    if index is not None:
                        print(f"saved episode {index} to {out}")
            mx, my = pygame.mouse.get_pos()
            if session.tick((mx * scale, my * scale)) == "saved":
                print(f"success: saved episode {session.saved[-1]} to {out}")
            if not session.engaged:
                env.render()  # keep the window alive (and paced) while waiting
    finally:
        env.close()
    return session.saved


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Record Push-T demos with the mouse (needs a display).")
    parser.add_argument("--out", type=Path, required=True, help="zarr replay buffer to create or append to")
    parser.add_argument("--seed", type=int, default=0, help="reset seed of the first episode")
    parser.add_argument("--episodes", type=int, default=None, help="stop after this many saved episodes")
    parser.add_argument("--window-size", type=int, default=512, help="window side in screen pixels")
    args = parser.parse_args(argv)
    saved = run_teleop(args.out, args.seed, args.episodes, args.window_size)
    print(f"{len(saved)} episode(s) saved to {args.out}")


if __name__ == "__main__":
    main()
