"""Write rollout frames as MP4 (OpenCV) or GIF (imageio), and final frames as a PNG grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """RGB frames ``(H, W, 3)`` uint8 -> ``path`` (.mp4 via OpenCV's mp4v, .gif via imageio)."""
    path = Path(path)
    if not frames:
        raise ValueError(f"write_video: no frames for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        import imageio.v3 as iio  # noqa: PLC0415
        iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
        return path
    if path.suffix != ".mp4":
        raise ValueError(f"write_video: {path} must end in .mp4 or .gif")
    import cv2  # noqa: PLC0415
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"write_video: OpenCV cannot open an mp4 writer for {path}; use a .gif")
    for f in frames:
        writer.write(cv2.cvtColor(np.ascontiguousarray(f, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def frame_grid(frames: list[np.ndarray], labels: list[str], path: str | Path, cols: int = 10) -> Path:
    """Tile ``(H, W, 3)`` frames in a grid with one caption each; save as PNG."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(frames)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, frame, label in zip(axes.flat, frames, labels):
        ax.imshow(frame)
        ax.set_title(label, fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
