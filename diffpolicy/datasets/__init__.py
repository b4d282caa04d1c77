"""Everything between a demo dataset on disk and a training batch.

- ``replay_buffer.ReplayBuffer``: zarr store of episodes (``data/<key>``, ``meta/episode_ends``).
- ``demos``: the arrays a task names (any keys, cameras, action size), in memory and in batches.
- ``windows``: padded sequence windows, episode split, vectorised ``BatchLoader``.
- ``normalizer.LinearNormalizer``: min/max to [-1, 1], images [0, 1] -> [-1, 1].
- ``crops``: random / central image crops.
- ``pusht``: the Push-T tasks (state / keypoints / image), data location, download.
"""
from diffpolicy.datasets.demos import CameraSpec, DemoData, DemoSpec, demo_loader, fit_normalizer, load_demos
from diffpolicy.datasets.errors import ChecksumError, CorruptDataError, DatasetError, ReadOnlyStoreError
from diffpolicy.datasets.normalizer import LinearNormalizer
from diffpolicy.datasets.pusht import PushTData, download_pusht, load_pusht
from diffpolicy.datasets.replay_buffer import ArraySpec, ReplayBuffer
from diffpolicy.datasets.windows import BatchLoader, SequenceWindows, split_episodes, window_indices

__all__ = [
    "ArraySpec", "BatchLoader", "CameraSpec", "ChecksumError", "CorruptDataError", "DatasetError", "DemoData",
    "DemoSpec", "LinearNormalizer", "PushTData", "ReadOnlyStoreError", "ReplayBuffer", "SequenceWindows",
    "demo_loader", "download_pusht", "fit_normalizer", "load_demos", "load_pusht", "split_episodes",
    "window_indices",
]
