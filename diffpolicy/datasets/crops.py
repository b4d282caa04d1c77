"""Crops of image batches: random (training) and central (evaluation), any dtype and device."""
from __future__ import annotations

import torch

from diffpolicy.datasets.errors import DatasetError
from diffpolicy.host_copy import to_device


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def random_crop(images: torch.Tensor, size: int | tuple[int, int],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of ``size`` (``s`` or ``(h, w)``) of every image of ``images`` (..., C, H, W),
    each with its own offset drawn from ``generator`` (uniform over all H - h + 1 by
    W - w + 1 positions).

    Vectorised and copy-light: every output row is ``w`` consecutive elements of
    the (contiguous) input, starting at ``((m * C + c) * H + oy[m] + i) * W + ox[m]``
    for image m.  An overlapping strided view makes each element the start of such
    a run, and one ``index_select`` picks all the runs (5x faster than indexing a
    pixel at a time).  Works on any dtype and device.
    """
    ch_, cw = _size(size)
    h, w = _check_crop(images, (ch_, cw))
    flat = images.reshape((-1,) + images.shape[-3:]).contiguous()       # (M, C, H, W)
    n_img, n_ch = flat.shape[:2]
    dev = images.device
    oy = to_device(torch.randint(0, h - ch_ + 1, (n_img, 1, 1), generator=generator), dev)
    ox = to_device(torch.randint(0, w - cw + 1, (n_img, 1, 1), generator=generator), dev)
    m = torch.arange(n_img, device=dev)[:, None, None]
    ch = torch.arange(n_ch, device=dev)[None, :, None]
    i = torch.arange(ch_, device=dev)[None, None, :]
    starts = ((m * n_ch + ch) * h + oy + i) * w + ox                    # (M, C, h)
    buf = flat.reshape(-1)
    runs = buf.as_strided((buf.numel() - cw + 1, cw), (1, 1))           # row k = buf[k : k + w]
    return runs.index_select(0, starts.reshape(-1)).reshape(images.shape[:-2] + (ch_, cw))


def center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Central crop of ``size`` (``s`` or ``(h, w)``) of (..., C, H, W) (the evaluation
    counterpart of ``random_crop``)."""
    ch_, cw = _size(size)
    h, w = _check_crop(images, (ch_, cw))
    top, left = (h - ch_) // 2, (w - cw) // 2
    return images[..., top:top + ch_, left:left + cw]


def _check_crop(images: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    if images.ndim < 3:
        raise DatasetError(f"crop needs images (..., C, H, W), got shape {tuple(images.shape)}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if not (0 < size[0] <= h and 0 < size[1] <= w):
        shown = size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}"
        raise DatasetError(f"crop size {shown} does not fit images of {h}x{w}")
    return h, w
