"""Push-T demonstrations: the three tasks as demo specs, data location, download.

Tasks (what a policy observes; the action is always the 2-d agent target):

==========  ===========================================================  =======
task        obs per step                                                 keys read
==========  ===========================================================  =======
state       5-d state (agent x, y, block x, y, angle)                    state, action
keypoints   20-d: 9 block keypoints (18, x/y interleaved) + agent x, y   keypoint, state, action
image       96x96 RGB frame + agent x, y                                 img, state, action
==========  ===========================================================  =======

Images are held in memory as uint8 (N, 3, 96, 96), channels first (0.7 GB
instead of the stored 2.8 GB float32 (N, 96, 96, 3)); the published pixels are
whole numbers 0..255, so this is lossless for them (other stores are rounded
to the nearest integer).  Loading and batches: ``diffpolicy.datasets.demos``.

Where the data is: an explicit ``path``; else ``diffpolicy.paths.pusht_zarr_path()``
(``$DIFFPOLICY_DATA``, then ``../shared/data``, then ``./data``, each followed by
``pusht/pusht_cchi_v7_replay.zarr``); ``download_pusht`` fetches the official archive.

Command line (``diffpolicy.cli.data``)::

    diffpolicy-data info|verify [--path STORE]
    diffpolicy-data repair STORE
    diffpolicy-data download [--dest DATA_ROOT]
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path


from diffpolicy import paths
from diffpolicy.datasets.demos import CameraSpec, DemoData, DemoSpec, load_demos, parse_key
from diffpolicy.datasets.errors import ChecksumError, DatasetError
from diffpolicy.datasets.replay_buffer import ArraySpec, ReplayBuffer

PUSHT_URL = "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip"
PUSHT_STORE_NAME = "pusht_cchi_v7_replay.zarr"
# SHA-256 of the published store's file list: sorted lines "<sha256 of file>  ./<relative path>\n"
# (the content of pusht_cchi_v7_replay.SHA256SUMS, sorted by path); see ``tree_sha256``.
PUSHT_TREE_SHA256 = "cf89fb4b9366da44184ab2b69dccbe5e61c28fcccd8aaf3d426e22a505f5a087"

_FLOAT = ("float32", "float64")
PUSHT_SCHEMA = {
    "state": ArraySpec((5,), _FLOAT),
    "action": ArraySpec((2,), _FLOAT),
    "keypoint": ArraySpec((9, 2), _FLOAT),
    "img": ArraySpec((96, 96, 3), _FLOAT + ("uint8",)),
    "n_contacts": ArraySpec((1,), _FLOAT),
}
# The three Push-T tasks as demo specs: what configs/task/pusht_*.yaml name (test_config checks they agree).
PUSHT_DEMOS = {
    "state": DemoSpec(action_dim=2, obs_keys=("state",), obs_dim=5),
    "keypoints": DemoSpec(action_dim=2, obs_keys=("keypoint", "state[0:2]"), obs_dim=20),
    "image": DemoSpec(action_dim=2, obs_keys=("state[0:2]",), obs_dim=2,
                      cameras={"image": CameraSpec("img", (96, 96, 3), (84, 84))}),
}
PushTData = DemoData


def load_pusht(path: str | Path | None = None, task: str = "keypoints") -> DemoData:
    """Open a Push-T store, check it fits ``task`` (state | keypoints | image), and load that
    task's arrays (``demos.load_demos``; the keypoints task never touches the images).

    ``frames``: state / keypoints ``{"obs": (N, 5 | 20), "action": (N, 2)}``; image
    ``{"image": (N, 3, 96, 96) uint8, "obs": (N, 2) agent position, "action": (N, 2)}``.
    Units: world pixels (0..512) for positions and actions, radians for the angle.
    Raises ``DatasetError`` naming the store and key on any mismatch.
    """
    if task not in PUSHT_DEMOS:
        raise DatasetError(f"unknown Push-T task {task!r}; expected one of {list(PUSHT_DEMOS)}")
    if path is None:
        path = paths.pusht_zarr_path()
        if not path.exists():
            raise FileNotFoundError(f"Push-T demos not found at {path} (default location). Pass a path, "
                                    f"set ${paths.DATA_ENV_VAR} to the folder holding pusht/, or run "
                                    f"`python -m diffpolicy.datasets download`")
    spec = PUSHT_DEMOS[task]
    keys = {parse_key(k)[0] for k in spec.obs_keys} | {c.key for c in spec.cameras.values()} | {"action"}
    rb = ReplayBuffer.open(path, mode="r")
    rb.check_schema({k: PUSHT_SCHEMA[k] for k in sorted(keys)}, what=f"Push-T task '{task}'")
    return load_demos(rb, spec, name=task)


# ---------------------------------------------------------------------- download
def tree_sha256(root: str | Path) -> str:
    """SHA-256 of a directory's file list: sorted lines ``"<file sha256>  ./<relative path>\\n"``."""
    root = Path(root)
    lines = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        lines.append((f.relative_to(root).as_posix(), h.hexdigest()))
    lines.sort()
    return hashlib.sha256("".join(f"{d}  ./{rel}\n" for rel, d in lines).encode()).hexdigest()


def download_pusht(dest: str | Path | None = None, url: str = PUSHT_URL, sha256: str | None = None,
                   tree_sha: str | None = PUSHT_TREE_SHA256, progress: bool = True) -> Path:
    """Download and unpack the official Push-T archive into ``dest/pusht/`` (default: the data root).

    The download streams through a tqdm progress bar and is hashed on the way;
    ``sha256`` (optional) pins the archive, ``tree_sha`` (default: the published
    store's) checks the unpacked files.  Nothing is left in ``dest`` unless every
    check passes.  Returns the store path; an existing store is returned as is.
    """
    dest = Path(dest) if dest is not None else paths.data_root()
    target = dest / "pusht" / PUSHT_STORE_NAME
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pusht-download-") as tmp:
        archive = Path(tmp) / "pusht.zip"
        digest = _fetch(url, archive, progress)
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumError(f"{url}: archive SHA-256 is {digest}, expected {sha256}")
        unpacked = Path(tmp) / "unpacked"
        _safe_unzip(archive, unpacked)
        found = [p for p in unpacked.rglob(PUSHT_STORE_NAME) if p.is_dir()]
        if len(found) != 1:
            raise DatasetError(f"{url}: expected one {PUSHT_STORE_NAME} folder in the archive, found {len(found)}")
        if tree_sha is not None:
            got = tree_sha256(found[0])
            if got != tree_sha:
                raise ChecksumError(f"{url}: unpacked {PUSHT_STORE_NAME} has content SHA-256 {got}, "
                                    f"expected {tree_sha}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(found[0], target)
    print(f"Push-T demos in {target} (archive SHA-256 {digest})")
    return target


def _fetch(url: str, out: Path, progress: bool) -> str:
    """Stream ``url`` into ``out`` with a progress bar; returns the SHA-256 hex digest."""
    from tqdm import tqdm

    h = hashlib.sha256()
    try:
        resp = urllib.request.urlopen(url)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot download {url}: {getattr(e, 'reason', e)} (no network? pass a local "
                           f"path or set ${paths.DATA_ENV_VAR} instead)") from e
    with resp, open(out, "wb") as fh:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="pusht.zip", disable=not progress) as bar:
            for block in iter(lambda: resp.read(1 << 20), b""):
                fh.write(block)
                h.update(block)
                bar.update(len(block))
    return h.hexdigest()


def _safe_unzip(archive: Path, out: Path) -> None:
    """Extract ``archive`` into ``out``, refusing members that would land outside it."""
    out = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            target = (out / name).resolve()
            if target != out and out not in target.parents:
                raise DatasetError(f"{archive}: member {name!r} would extract outside {out}")
        zf.extractall(out)
