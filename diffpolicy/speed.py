"""Fast paths chosen by measurement on the machine that runs, cached per machine.

A model offers several ways to run the same computation (fused or per-block
kernels, channels-last or plain layers, fp32 or bf16).  Which is fastest
depends on the CPU (AMX, AVX-512 BF16, AVX2 only, Apple silicon), the GPU,
the torch build and the thread count, so nothing here assumes one: :func:`choose`
times the candidates side by side on the real shapes (interleaved, median),
keeps the fastest, logs the choice once and caches it in a JSON file keyed by
:func:`machine_key`.  A later run on the same machine reads the cache and
probes nothing.  A config value other than ``auto`` skips all of this.

Cache file: ``$DIFFPOLICY_CACHE/speed_choices.json`` (default
``~/.cache/diffpolicy``)::

    {"<machine key>": {"<probe key>": {"choice": "fused_bf16",
                                        "seconds": {"plain": 0.41, ...},
                                        "machine": {...}, "when": "..."}}}

Probes run under :func:`torch.random.fork_rng`, so choosing never changes the
random numbers a run draws afterwards (a probed run and a cached run are equal).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from diffpolicy.serialization import atomic_write

CACHE_FILE = "speed_choices.json"
ISA_LIMIT_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
TIE_MARGIN = 0.03     # another candidate must beat the first (the reference) by more than 3 %
_LOGGED: set[tuple[str, str]] = set()


# ------------------------------------------------------------------ the machine
def _cpuinfo() -> dict[str, str]:
    """First processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    info = _cpuinfo()
    name = info.get("model name") or info.get("Model") or platform.processor()
    if not name and sys.platform == "darwin":
        try:
            import subprocess  # noqa: PLC0415
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            name = ""
    return name or f"unknown {platform.machine()} CPU"


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_capability() -> str:
    """torch's dispatch level for this CPU (e.g. ``AVX2``, ``AVX512``, ``DEFAULT`` on ARM)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - old torch
        return "unknown"


def isa_limits() -> dict[str, str]:
    """ISA limits set in the environment (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``): how a
    run holds torch / oneDNN below the CPU's instruction set, e.g. to emulate an AVX2-only CPU."""
    return {k: os.environ[k] for k in ISA_LIMIT_VARS if os.environ.get(k)}


def gpu_name(device: torch.device | str | None = None) -> str | None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device is not None and device.type == "mps":
        return "Apple MPS"
    return None


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether the hardware computes bf16 natively (else bf16 is emulated: never faster).

    CUDA: ``torch.cuda.is_bf16_supported()``.  x86 CPUs: the AVX-512 BF16 or AMX
    BF16 instructions, and torch and oneDNN allowed to use them (not when
    ``ATEN_CPU_CAPABILITY`` holds torch below AVX-512 or ``ONEDNN_MAX_CPU_ISA``
    names an ISA without bf16: :func:`isa_limits`).  Apple silicon (arm64 macOS,
    ARMv8.6 bf16 on M2 and later) and other ARM CPUs: the ``bf16`` cpu flag where
    Linux shows it, else oneDNN's own check.  Being native is necessary, not sufficient: :func:`choose` still
    times bf16 against fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:                       # x86
        onednn_isa = isa_limits().get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
        return (cpu_capability().upper().startswith("AVX512")
                and (onednn_isa in ("ALL", "DEFAULT") or "BF16" in onednn_isa or "AMX" in onednn_isa))
    if flags:
        return "bf16" in flags
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - Windows
        return None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What every benchmark and result file records about the machine that made it."""
    flags = cpu_flags()
    isa_flags = sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
                                "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16"})
    return {"cpu_model": cpu_model(), "machine": platform.machine(), "system": platform.system(),
            "cpu_capability": cpu_capability(), "isa_flags": isa_flags,
            "bf16_native": bf16_native(device), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": load_average(), "device": str(device), "gpu": gpu_name(device),
            "python": platform.python_version(), "malloc_keeps_freed_memory": bool(_KEEP_FREED),
            "isa_limits": isa_limits()}


def machine_key(device: torch.device | str = "cpu") -> str:
    """Cache key: CPU model and capability, GPU, torch version, threads and any ISA limit set."""
    gpu = gpu_name(device)
    limits = [f"{k}={v}" for k, v in isa_limits().items()]
    return " | ".join([cpu_model(), cpu_capability(), f"gpu {gpu}" if gpu else "cpu",
                       f"torch {torch.__version__}", f"threads {torch.get_num_threads()}"] + limits)


# ------------------------------------------------------------------ the allocator
KEEP_FREED_ENV = "DIFFPOLICY_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4          # glibc's mallopt parameters
_KEEP_FREED: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves every allocation above 32 MB (a training step's large
    activations) with a fresh ``mmap`` and unmaps it on free, so each step faults
    its pages in again and the kernel zeroes them: on the 2-core Zen 5 VM a
    training run took 130-170 thousand page faults a second, about a quarter of
    its CPU time spent in the kernel.  With ``mmap`` off and the heap never
    trimmed below 2 GB, freed blocks are reused (``benchmarks/bench_allocator.py``
    measures the gain).  Process-wide, so the command-line entry points call it
    once at start-up; idempotent.  Linux with glibc only (elsewhere it does
    nothing and returns False); ``DIFFPOLICY_KEEP_FREED_MEMORY=0`` turns it off.
    """
    global _KEEP_FREED
    if _KEEP_FREED is not None:
        return _KEEP_FREED
    _KEEP_FREED = False
    if os.environ.get(KEEP_FREED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes  # noqa: PLC0415

    try:
        libc = ctypes.CDLL("libc.so.6")
        _KEEP_FREED = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):  # pragma: no cover - an unusual libc
        _KEEP_FREED = False
    return _KEEP_FREED


# ------------------------------------------------------------------ timing
def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int = 3, warmup: int = 1,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so load hits all alike."""
    return {k: statistics.median(v) for k, v in time_samples(fns, reps, warmup, device).items()}


def time_samples(fns: dict[str, Callable[[], Any]], reps: int = 3, warmup: int = 1,
                 device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Seconds of each of ``reps`` calls per function, calls interleaved (after ``warmup`` rounds)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------ the cache
def cache_path() -> Path:
    root = os.environ.get("DIFFPOLICY_CACHE") or os.path.join(Path.home(), ".cache", "diffpolicy")
    return Path(root) / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}          # missing or damaged: probe again (and rewrite it)


def _write_cache(path: Path, data: dict) -> None:
    try:
        atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))
    except OSError as exc:  # a read-only home: keep the choice for this process only
        print(f"[speed] could not write the choice cache {path}: {exc}", file=sys.stderr)


def cached_choice(probe: str, candidates: list[str] | tuple[str, ...],
                  device: torch.device | str = "cpu") -> str | None:
    entry = _read_cache(cache_path()).get(machine_key(device), {}).get(probe)
    if isinstance(entry, dict) and entry.get("choice") in candidates:
        return entry["choice"]
    return None


def choose(probe: str, candidates: dict[str, Callable[[], Any]], *, override: str | None = None,
           device: torch.device | str = "cpu", reps: int = 3, warmup: int = 1,
           log: Callable[[str], Any] | None = print) -> str:
    """Name of the fastest candidate for ``probe`` on this machine.

    ``candidates`` maps names to zero-argument functions that run one
    representative step.  The first is the reference (plain, fp32): another
    candidate is chosen only when it is more than ``TIE_MARGIN`` faster.
    ``override`` (a config value other than ``"auto"``) is returned as is after
    a check.  Otherwise a cached choice is used, or the candidates are timed
    (under ``fork_rng``), the fastest is cached, and the choice logged once.
    """
    names = list(candidates)
    if override is not None and override != "auto":
        if override not in candidates:
            raise ValueError(f"{probe}: unknown choice {override!r}; expected 'auto' or one of {names}")
        return override
    if len(names) == 1:
        return names[0]
    choice = cached_choice(probe, names, device)
    how = "cached"
    if choice is None:
        with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda"
                                   else []):
            seconds = time_interleaved(candidates, reps, warmup, device)
        choice = min(seconds, key=seconds.get)
        if seconds[names[0]] <= seconds[choice] * (1 + TIE_MARGIN):
            choice = names[0]             # within noise of the reference: keep the reference
        path = cache_path()
        data = _read_cache(path)
        data.setdefault(machine_key(device), {})[probe] = {
            "choice": choice, "seconds": {k: round(v, 6) for k, v in seconds.items()},
            "machine": machine_info(device), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_cache(path, data)
        how = "measured " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in seconds.items())
    if log is not None and (probe, choice) not in _LOGGED:
        _LOGGED.add((probe, choice))
        log(f"[speed] {probe}: {choice} ({how}; {machine_key(device)})")
    return choice


# ------------------------------------------------------------------ benchmark reports
def speed_row(name: str, seconds: float, plain_seconds: float, **extra: Any) -> dict[str, Any]:
    """One benchmark row: its time, the plain time measured in the same run, and the ratio."""
    return {"name": name, "seconds": seconds, "plain_seconds": plain_seconds,
            "speedup_vs_plain": plain_seconds / seconds if seconds > 0 else None, **extra}


def _plain(value: Any) -> Any:
    """JSON for numpy / torch scalars and arrays (``.item()`` / ``.tolist()``), else ``str``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value.item() if hasattr(value, "item") else str(value)


def write_benchmark_json(path: str | Path, benchmark: str, rows: list[dict], command: str | None = None,
                         device: torch.device | str = "cpu", **extra: Any) -> None:
    """``{"benchmark", "command", "machine", "rows": [...], ...}`` written to ``path``."""
    report = {"benchmark": benchmark, "command": command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(device),
              "rows": rows, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    print(f"[bench] wrote {path}")
