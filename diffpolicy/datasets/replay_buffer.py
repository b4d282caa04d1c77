"""Zarr replay buffer: demonstration episodes stored as concatenated arrays.

The layout is the one the published Push-T set uses::

    <store>/data/<key>          (N, ...)  every episode concatenated on axis 0
    <store>/meta/episode_ends   (E,)      int64, exclusive end index of each episode

``ReplayBuffer.open`` checks the structure (groups, ``episode_ends``, array
lengths, optional per-key shape/dtype schema) from metadata alone; values are
checked (NaN/inf, undecodable chunks) block by block whenever they are read,
so a task that needs three keys never reads the fourth.  ``verify()`` reads and
checks everything.

Appending is crash-safe: ``add_episode`` first records the pre-append size in
the root attributes, then writes the data arrays, then the new episode end,
then clears the record.  A store opened later with that record still present
was interrupted mid-append: ``mode="a"`` rolls it back (and removes the
temporary ``*.partial`` files of killed chunk writes), ``mode="r"`` shows the
pre-append view and warns.  Each file write of zarr's local store is atomic
(temp file + rename), so the record itself is never half-written.
``repair_store`` does the roll-back for a store that only ever gets opened
read-only (``diffpolicy-data repair PATH``).
"""
from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numcodecs
import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as zarr_sync

from diffpolicy.datasets.errors import CorruptDataError, DatasetError, ReadOnlyStoreError

PENDING_ATTR = "diffpolicy_pending_append"
CHUNK_BYTES = 8 << 20      # target uncompressed bytes per chunk when we create arrays
MAX_CHUNK_STEPS = 4096     # ... but never more steps than this per chunk
READ_BLOCK_BYTES = 64 << 20  # read (and check) this much at a time
PARTIAL_RE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's local store: <key>.<uuid hex>.partial


class ArraySpec(NamedTuple):
    """What a task expects of ``data/<key>``: trailing shape and allowed dtypes."""
    trailing_shape: tuple[int, ...]
    dtypes: tuple[str, ...] = ("float32",)


def _compressor(zarr_format: int):
    """Blosc/zstd with bit-shuffle, as in the published Push-T store."""
    if zarr_format == 2:
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def chunk_steps(trailing_shape: Sequence[int], dtype: np.dtype) -> int:
    """Steps per chunk on axis 0: about ``CHUNK_BYTES`` uncompressed, at most ``MAX_CHUNK_STEPS``."""
    step_bytes = int(np.prod(trailing_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, min(MAX_CHUNK_STEPS, CHUNK_BYTES // max(step_bytes, 1))))


class ReplayBuffer:
    """Episodes of equal-length-per-step arrays in one zarr group.

    Build with ``ReplayBuffer.create(path)`` or ``ReplayBuffer.open(path, mode)``.
    Attributes: ``path``, ``mode`` ("r" or "a"), ``zarr_format`` (2 or 3).
    """

    def __init__(self, root: zarr.Group, path: Path, mode: str, allow_missing_chunks: bool = False):
        self._root = root
        self.path = path
        self.mode = mode
        self.allow_missing_chunks = allow_missing_chunks
        self.zarr_format = int(root.metadata.zarr_format)
        self._ends = np.zeros(0, dtype=np.int64)
        self._arrays: dict[str, zarr.Array] = {}
        self._load_structure()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path, zarr_format: int = 2) -> "ReplayBuffer":
        """Create a new, empty, writable store at ``path`` (which must not exist).

        ``zarr_format=2`` (default) is what the published set and the original
        Diffusion Policy code use; ``3`` is the newer format.
        """
        path = Path(path)
        if zarr_format not in (2, 3):
            raise DatasetError(f"{path}: zarr_format must be 2 or 3, got {zarr_format!r}")
        if path.exists():
            raise FileExistsError(f"{path}: already exists; ReplayBuffer.create makes a new store "
                                  f"(use ReplayBuffer.open(path, mode='a') to append)")
        root = zarr.open_group(str(path), mode="w-", zarr_format=zarr_format)
        root.create_group("data")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(4096,),
                          compressors=_compressor(zarr_format), fill_value=0)
        return cls(root, path, "a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", schema: Mapping[str, ArraySpec] | None = None,
             verify: bool = False, allow_missing_chunks: bool = False) -> "ReplayBuffer":
        """Open an existing store and validate its structure.

        Args:
            path: the store directory.
            mode: "r" (read-only; nothing is ever written) or "a" (append).
            schema: optional ``{key: ArraySpec}`` the store must satisfy.
            verify: also read every value of the schema's keys (all keys when
                no schema is given), checking for NaN/inf and undecodable chunks.
            allow_missing_chunks: accept arrays with absent chunk files (zarr reads them as
                the fill value).  Off by default: a partial copy must not read as zeros.  Turn
                it on only for stores written with ``write_empty_chunks=False`` (zarr 3's
                default), which leave all-zero chunks out.
        Raises:
            FileNotFoundError, DatasetError (and its CorruptDataError).
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise DatasetError(f"{path}: mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise FileNotFoundError(f"{path}: replay buffer not found")
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
        except Exception as e:  # zarr raises several types for a missing/garbled group
            raise DatasetError(f"{path}: not a readable zarr group ({type(e).__name__}: {e})") from e
        rb = cls(root, path, mode, allow_missing_chunks)
        if schema is not None:
            rb.check_schema(schema)
        if verify:
            rb.verify(list(schema) if schema is not None else None)
        return rb

    # ------------------------------------------------------------------ validation
    def _load_structure(self) -> None:
        """Read ``meta/episode_ends`` and the array list; check they agree."""
        p = self.path
        try:
            meta = self._root.get("meta")
            data = self._root.get("data")
            ends_arr = meta.get("episode_ends") if isinstance(meta, zarr.Group) else None
            arrays = dict(data.arrays()) if isinstance(data, zarr.Group) else {}
            pending = self._root.attrs.get(PENDING_ATTR)
        except Exception as e:
            node = self._unreadable_node()
            where = f" of {node}" if node else ""
            raise DatasetError(f"{p}: cannot read zarr metadata{where} ({type(e).__name__}: {e})") from e
        if not isinstance(meta, zarr.Group):
            raise DatasetError(f"{p}: missing group meta/ (expected meta/episode_ends)")
        if not isinstance(ends_arr, zarr.Array):
            raise DatasetError(f"{p}: missing array meta/episode_ends")
        if not isinstance(data, zarr.Group):
            raise DatasetError(f"{p}: missing group data/")
        if ends_arr.ndim != 1 or np.dtype(ends_arr.dtype).kind not in "iu":
            raise DatasetError(f"{p}: meta/episode_ends must be a 1-D integer array, "
                               f"found shape {ends_arr.shape} dtype {ends_arr.dtype}")
        ends = self._read_raw(ends_arr, "meta/episode_ends", 0, ends_arr.shape[0]).astype(np.int64)
        self._arrays = arrays

        if pending is not None:
            n_before, k_before = int(pending["n_steps"]), int(pending["n_episodes"])
            if self.mode == "a":
                self._rollback(n_before, k_before)
                ends_arr = self._root["meta/episode_ends"]
                self._arrays = dict(self._root["data"].arrays())
                arrays = self._arrays
            else:
                warnings.warn(f"{p}: an append was interrupted; showing the store as it was before "
                              f"it ({k_before} episodes). Open with mode='a' to clean it up.",
                              stacklevel=3)
            ends = ends[:k_before]

        if len(ends) > 0 and ends[0] <= 0:
            raise DatasetError(f"{p}: meta/episode_ends must be strictly increasing and positive; "
                               f"episode_ends[0] = {ends[0]}")
        bad = np.nonzero(np.diff(ends) <= 0)[0]
        if len(bad):
            i = int(bad[0]) + 1
            raise DatasetError(f"{p}: meta/episode_ends must be strictly increasing; "
                               f"episode_ends[{i}] = {ends[i]} <= episode_ends[{i - 1}] = {ends[i - 1]}")
        n_steps = int(ends[-1]) if len(ends) else 0
        if len(ends) and not arrays:
            raise DatasetError(f"{p}: meta/episode_ends lists {len(ends)} episodes but data/ has no arrays")
        for key, arr in arrays.items():
            if arr.ndim == 0:
                raise DatasetError(f"{p}: data/{key} is a scalar; expected an array with steps on axis 0")
        if not self.allow_missing_chunks:  # an interrupted append may have grown arrays past n_steps
            self._check_chunks_present([(f"data/{k}", a, n_steps) for k, a in arrays.items()]
                                       + [("meta/episode_ends", ends_arr, len(ends))])
        lengths = {k: int(a.shape[0]) for k, a in arrays.items()}
        if pending is None and len(set(lengths.values())) > 1:
            desc = ", ".join(f"data/{k} has {n}" for k, n in sorted(lengths.items()))
            raise DatasetError(f"{p}: data arrays have different lengths ({desc} steps)")
        for key, n in sorted(lengths.items()):
            if n != n_steps and not (pending is not None and n >= n_steps):
                raise DatasetError(f"{p}: meta/episode_ends ends at {n_steps} but data/{key} has "
                                   f"{n} steps (they must be equal)")
        self._ends = ends

    def _unreadable_node(self) -> str | None:
        """``meta``, ``data`` or one of their members, with its metadata file
        (e.g. ``data/state/.zarray``): the first whose zarr metadata cannot be read, or None."""
        for group in ("meta", "data"):
            folder = self.path / group
            members = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
            for node in [group] + [f"{group}/{m}" for m in members]:
                try:
                    self._root.get(node)
                except Exception:
                    files = [f for f in ("zarr.json", ".zarray", ".zgroup") if (self.path / node / f).exists()]
                    return f"{node}/{files[0]}" if files else node
        return None

    def _check_chunks_present(self, named: Sequence[tuple[str, zarr.Array, int]]) -> None:
        """Raise ``CorruptDataError`` when a chunk file holding one of the first ``rows`` steps of
        an array ``(name, array, rows)`` is missing: zarr would silently read it as fill values
        (zeros).  Our writer stores every chunk (``write_empty_chunks``), and so does the
        published set, so a missing one means a damaged copy.  Steps past ``rows`` (those of an
        interrupted append) are not shown, so their chunks may be missing.  One stat per chunk."""
        for name, arr, rows in named:
            try:
                keys = _chunk_keys(arr, rows)
                missing = [k for k in keys if not (self.path / name / k).is_file()]
            except Exception as e:
                raise DatasetError(f"{self.path}: cannot list the chunks of {name} "
                                   f"({type(e).__name__}: {e})") from e
            if missing:
                raise CorruptDataError(f"{self.path}: {name} has {len(keys) - len(missing)} of its "
                                       f"{len(keys)} chunk files; {len(missing)} are missing (first: "
                                       f"'{missing[0]}'; a partial copy?). If the store was written with "
                                       f"write_empty_chunks=False, open it with allow_missing_chunks=True")

    def check_schema(self, schema: Mapping[str, ArraySpec], what: str = "this task") -> None:
        """Raise ``DatasetError`` unless every ``data/<key>`` of ``schema`` exists with the
        expected trailing shape and one of the allowed dtypes."""
        for key, spec in schema.items():
            if key not in self._arrays:
                raise DatasetError(f"{self.path}: data/{key} is missing; {what} needs "
                                   f"{sorted(schema)} (store has {self.keys})")
            arr = self._arrays[key]
            trailing = tuple(int(s) for s in arr.shape[1:])
            if trailing != tuple(spec.trailing_shape):
                raise DatasetError(f"{self.path}: data/{key} has per-step shape {trailing}, "
                                   f"expected {tuple(spec.trailing_shape)} for {what}")
            if np.dtype(arr.dtype).name not in spec.dtypes:
                raise DatasetError(f"{self.path}: data/{key} has dtype {np.dtype(arr.dtype).name}, "
                                   f"expected one of {list(spec.dtypes)} for {what}")

    def verify(self, keys: Sequence[str] | None = None) -> None:
        """Read every value of ``keys`` (default: all), raising ``CorruptDataError`` on an
        undecodable chunk or a NaN/inf value.  Memory use: one read block at a time."""
        for key in keys if keys is not None else self.keys:
            for _ in self._iter_blocks(key, 0, self.n_steps):
                pass

    # ------------------------------------------------------------------ properties
    @property
    def keys(self) -> list[str]:
        """Names of the arrays under ``data/``, sorted."""
        return sorted(self._arrays)

    @property
    def n_episodes(self) -> int:
        return int(len(self._ends))

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive end index of each episode (a copy)."""
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        """(E,) int64 number of steps of each episode."""
        return np.diff(self._ends, prepend=0)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: (n_steps, ...)}`` for every data array."""
        return {k: (self.n_steps,) + tuple(int(s) for s in a.shape[1:]) for k, a in self._arrays.items()}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {k: np.dtype(a.dtype) for k, a in self._arrays.items()}

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return (f"ReplayBuffer({str(self.path)!r}, mode={self.mode!r}, zarr_format={self.zarr_format}, "
                f"episodes={self.n_episodes}, steps={self.n_steps}, keys={self.keys})")

    # ------------------------------------------------------------------ reading
    def _read_raw(self, arr: zarr.Array, name: str, start: int, stop: int) -> np.ndarray:
        """``arr[start:stop]``; zarr's decode errors become ``CorruptDataError`` naming the chunk."""
        try:
            return np.asarray(arr[start:stop])
        except Exception as e:
            _settle_pending_reads()
            step = int(arr.chunks[0])
            for c0 in range(start - start % step, stop, step):  # find the first bad chunk
                try:
                    arr[max(c0, start):min(c0 + step, stop)]
                except Exception as e_chunk:
                    coords = (c0 // step,) + (0,) * (arr.ndim - 1)
                    try:
                        chunk_key = arr.metadata.encode_chunk_key(coords)
                    except Exception:
                        chunk_key = ".".join(map(str, coords))
                    raise CorruptDataError(
                        f"{self.path}: cannot decode {name} chunk '{chunk_key}' (steps {c0}..{c0 + step - 1}); "
                        f"the chunk file is truncated or corrupt ({type(e_chunk).__name__}: {e_chunk})"
                    ) from e_chunk
            raise CorruptDataError(f"{self.path}: cannot read {name}[{start}:{stop}] "
                                   f"({type(e).__name__}: {e})") from e

    def _iter_blocks(self, key: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(block_start, values)`` over ``data/<key>[start:stop]`` in chunk-aligned
        blocks of about ``READ_BLOCK_BYTES``, checking each block's values are finite."""
        if key not in self._arrays:
            raise KeyError(f"{self.path}: no array data/{key} (keys: {self.keys})")
        arr = self._arrays[key]
        chunk = int(arr.chunks[0])
        step_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize
        block = chunk * max(1, READ_BLOCK_BYTES // max(chunk * step_bytes, 1))
        s = start
        while s < stop:
            e = min(stop, (s // block + 1) * block)
            values = self._read_raw(arr, f"data/{key}", s, e)
            if values.dtype.kind in "fc":
                finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
                if not finite.all():
                    bad = s + int(np.argmin(finite))
                    ep = int(np.searchsorted(self._ends, bad, side="right"))
                    ep_start = int(self._ends[ep - 1]) if ep > 0 else 0
                    n_bad = int((~finite).sum())
                    raise CorruptDataError(f"{self.path}: data/{key} has NaN or inf values at step {bad} "
                                           f"(episode {ep}, step {bad - ep_start} of it; {n_bad} bad steps "
                                           f"in {s}..{e - 1})")
            yield s, values
            s = e

    def read(self, key: str, start: int = 0, stop: int | None = None, convert=None) -> np.ndarray:
        """``data/<key>[start:stop]`` as a numpy array, checked for NaN/inf.

        ``convert`` (optional) maps each read block to the stored form, e.g.
        float32 pixels to uint8, so the full-precision copy never exists at once.
        """
        stop = self.n_steps if stop is None else stop
        if not 0 <= start <= stop <= self.n_steps:
            raise IndexError(f"{self.path}: steps {start}:{stop} out of range 0:{self.n_steps}")
        out = None
        for s, values in self._iter_blocks(key, start, stop):
            if convert is not None:
                values = convert(values)
            if out is None:
                out = np.empty((stop - start,) + values.shape[1:], dtype=values.dtype)
            out[s - start:s - start + len(values)] = values
        if out is None:  # empty range
            arr = self._arrays[key]
            out = np.empty((0,) + tuple(arr.shape[1:]), dtype=arr.dtype)
            if convert is not None:
                out = convert(out)
        return out

    def get_episode(self, i: int) -> dict[str, np.ndarray]:
        """All arrays of episode ``i`` (negative counts from the end): ``{key: (T, ...)}``."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"{self.path}: episode {i} out of range ({n} episodes)")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return {k: self.read(k, start, int(self._ends[i])) for k in self.keys}

    def load_all(self, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every step of ``keys`` (default all) in memory: ``{key: (N, ...)}``."""
        return {k: self.read(k) for k in (self.keys if keys is None else keys)}

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise ReadOnlyStoreError(f"{self.path}: opened read-only (mode='r'); "
                                     f"use ReplayBuffer.open(path, mode='a') to append")

    def _check_episode(self, episode: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        p = self.path
        if not isinstance(episode, Mapping) or not episode:
            raise DatasetError(f"{p}: add_episode needs a non-empty dict of arrays, got {type(episode).__name__}")
        ep = {}
        for key, value in episode.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise DatasetError(f"{p}: invalid key {key!r} (a non-empty name without '/')")
            a = np.asarray(value)
            if a.ndim == 0:
                raise DatasetError(f"{p}: episode['{key}'] is a scalar; expected (T, ...)")
            ep[key] = a
        lengths = {k: len(a) for k, a in ep.items()}
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"{p}: episode arrays have different lengths {lengths}")
        T = next(iter(lengths.values()))
        if T == 0:
            raise DatasetError(f"{p}: episode has zero steps")
        if self.n_episodes > 0:
            if set(ep) != set(self._arrays):
                raise DatasetError(f"{p}: episode keys {sorted(ep)} do not match the store's keys {self.keys} "
                                   f"(missing {sorted(set(self._arrays) - set(ep))}, "
                                   f"extra {sorted(set(ep) - set(self._arrays))})")
            for key, a in ep.items():
                arr = self._arrays[key]
                if tuple(a.shape[1:]) != tuple(arr.shape[1:]):
                    raise DatasetError(f"{p}: episode['{key}'] has per-step shape {tuple(a.shape[1:])}, "
                                       f"the store's data/{key} has {tuple(arr.shape[1:])}")
                if not np.can_cast(a.dtype, arr.dtype, casting="same_kind"):
                    raise DatasetError(f"{p}: episode['{key}'] has dtype {a.dtype}, which cannot be stored "
                                       f"in data/{key} of dtype {arr.dtype}")
                ep[key] = a.astype(arr.dtype, copy=False)
        for key, a in ep.items():
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                raise CorruptDataError(f"{p}: episode['{key}'] contains NaN or inf; not appended")
        return ep, T

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode ``{key: (T, ...)}``; all arrays share T.

        The first episode of an empty store defines the keys, per-step shapes
        and dtypes; later episodes must match them.  On any failure (or a
        crash) the store stays as it was before the call.
        """
        self._require_writable()
        ep, T = self._check_episode(episode)
        n, k = self.n_steps, self.n_episodes
        self._root.attrs[PENDING_ATTR] = {"n_steps": n, "n_episodes": k}
        try:
            if k == 0:
                self._create_arrays(ep)
            for key in sorted(ep):
                self._write_key(key, n, ep[key])
            self._write_end(k, n + T)
        except BaseException:
            self._rollback(n, k)
            raise
        del self._root.attrs[PENDING_ATTR]
        self._ends = np.append(self._ends, np.int64(n + T))

    def _create_arrays(self, ep: Mapping[str, np.ndarray]) -> None:
        """Make one empty, chunked, compressed array per key (first episode only)."""
        data = self._root["data"]
        for key in list(self._arrays):  # empty leftovers, e.g. of a rolled-back first append
            del data[key]
        for key, a in ep.items():
            trailing = tuple(a.shape[1:])
            data.create_array(key, shape=(0,) + trailing, dtype=a.dtype,
                              chunks=(chunk_steps(trailing, a.dtype),) + trailing,
                              compressors=_compressor(self.zarr_format), fill_value=0)
        self._arrays = dict(data.arrays())

    def _write_key(self, key: str, start: int, values: np.ndarray) -> None:
        """Grow ``data/<key>`` and write ``values`` at ``start``."""
        arr = self._arrays[key]
        arr.resize((start + len(values),) + tuple(arr.shape[1:]))
        # Store every chunk, even all-zero ones: a missing chunk then always means damage.
        arr.with_config({"write_empty_chunks": True})[start:start + len(values)] = values

    def _write_end(self, i: int, end: int) -> None:
        """Commit episode ``i`` by writing its end into ``meta/episode_ends``."""
        ends_arr = self._root["meta/episode_ends"]
        ends_arr.resize((i + 1,))
        ends_arr.with_config({"write_empty_chunks": True})[i] = end

    def _rollback(self, n_steps: int, n_episodes: int) -> None:
        """Shrink every array back to ``n_steps`` / ``n_episodes`` and clear the pending record."""
        data = self._root["data"]
        for key, arr in dict(data.arrays()).items():
            if n_episodes == 0:
                del data[key]
            elif arr.shape[0] != n_steps:
                arr.resize((n_steps,) + tuple(arr.shape[1:]))
        ends_arr = self._root["meta/episode_ends"]
        if ends_arr.shape[0] != n_episodes:
            ends_arr.resize((n_episodes,))
        self._arrays = dict(data.arrays())
        remove_partial_files(self.path)
        if PENDING_ATTR in self._root.attrs:
            del self._root.attrs[PENDING_ATTR]


def _settle_pending_reads() -> None:
    """Wait for the chunk reads zarr's event loop still runs after one of them failed: left
    running, they fail at interpreter exit with pages of asyncio "exception was never
    retrieved" noise under the one-line error."""
    async def settle() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)
    zarr_sync(settle())


def _chunk_keys(arr: zarr.Array, rows: int) -> list[str]:
    """Store keys (relative to the array's folder) of the chunks, or shards, that hold
    ``arr[:rows]`` (rows past its length: up to its length)."""
    step = arr.shards or arr.chunks
    grid = [math.ceil(min(rows, arr.shape[0]) / step[0])] + [math.ceil(n / c) for n, c in zip(arr.shape[1:], step[1:])]
    return [arr.metadata.encode_chunk_key(c) for c in itertools.product(*map(range, grid))]


def partial_files(path: str | Path) -> list[Path]:
    """zarr's temporary ``<key>.<uuid>.partial`` files under the store ``path``: what chunk
    and metadata writes killed mid-way (``kill -9``) leave behind."""
    return sorted(p for p in Path(path).rglob("*.partial") if PARTIAL_RE.search(p.name) and p.is_file())


def remove_partial_files(path: str | Path) -> tuple[int, int]:
    """Delete :func:`partial_files`; returns ``(files removed, bytes freed)``.  Only while no
    other process writes to the store."""
    found = partial_files(path)
    freed = sum(p.stat().st_size for p in found)
    for p in found:
        p.unlink()
    return len(found), freed


def repair_store(path: str | Path) -> list[str]:
    """Undo what killed appends leave in the store at ``path``: roll back an interrupted
    append (arrays truncated to the committed ``meta/episode_ends``) and delete leftover
    ``*.partial`` files.  Returns one line per thing done (empty: nothing needed it).

    Raises ``ReadOnlyStoreError`` for a store without write permission (read-only input
    such as a shared copy, even for root: copy it and repair the copy), and
    ``DatasetError`` for damage a roll-back cannot undo.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: replay buffer not found")
    if not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222:
        raise ReadOnlyStoreError(f"{path}: the store is read-only (no write permission); repair writes "
                                 f"into it, so copy it (cp -r) and repair the copy")
    try:
        pending = zarr.open_group(str(path), mode="r").attrs.get(PENDING_ATTR)
    except Exception as e:  # zarr raises several types for a missing/garbled group
        raise DatasetError(f"{path}: not a readable zarr group ({type(e).__name__}: {e})") from e
    done, found = [], partial_files(path)
    n_bytes = sum(p.stat().st_size for p in found)
    if pending is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rb = ReplayBuffer.open(path, mode="a")          # rolls back, removes *.partial
        done.append(f"rolled back an interrupted append: kept the {rb.n_episodes} committed episodes "
                    f"({rb.n_steps} steps), arrays truncated to them")
    remove_partial_files(path)
    if found:
        done.append(f"removed {len(found)} temporary file{'s' if len(found) > 1 else ''} of killed writes "
                    f"(*.partial, {n_bytes:,} bytes)")
    return done
