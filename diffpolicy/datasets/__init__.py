"""Everything between a demo dataset on disk and a training batch.

- ``replay_buffer.ReplayBuffer``: zarr store of episodes (``data/<key>``, ``meta/episode_ends``).
- ``windows``: padded sequence windows, episode split, vectorised ``BatchLoader``.
- ``normalizer.LinearNormalizer``: min/max to [-1, 1], images [0, 1] -> [-1, 1].
- ``pusht``: Push-T tasks (state / keypoints / image), data location, download.
"""
from diffpolicy.datasets.errors import ChecksumError, CorruptDataError, DatasetError, ReadOnlyStoreError
from diffpolicy.datasets.normalizer import LinearNormalizer
from diffpolicy.datasets.pusht import PushTData, download_pusht, fit_normalizer, load_pusht, pusht_loader
from diffpolicy.datasets.replay_buffer import ArraySpec, ReplayBuffer
from diffpolicy.datasets.windows import BatchLoader, SequenceWindows, split_episodes, window_indices

__all__ = [
    "ArraySpec", "BatchLoader", "ChecksumError", "CorruptDataError", "DatasetError", "LinearNormalizer",
    "PushTData", "ReadOnlyStoreError", "ReplayBuffer", "SequenceWindows", "download_pusht", "fit_normalizer",
    "load_pusht", "pusht_loader", "split_episodes", "window_indices",
]
