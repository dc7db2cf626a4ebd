"""Shared pieces of the benchmarks: the machine description, timing, and where scratch files go.

Timing rule (speed is a ratio measured side by side, never an absolute time): \
the two sides of every ratio run in the same process, interleaved
(A, B, A, B, ...), and the ratio is taken between the fastest run of each side. On a shared,
noisy machine the minimum is the best estimate of the unloaded time; every run is kept in
results.json so the spread can be read there.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# scratch (git-ignored): models, stores, raw files; KEVO_BENCH_OUT moves it (tests/test_bench_gpu_tiny.py)
OUT = Path(os.environ.get("KEVO_BENCH_OUT") or ROOT / "bench" / "out")


def scratch(name: str, clean: bool = True) -> Path:
    """A fresh scratch directory under bench/out (on the same disk as the repository)."""
    p = OUT / name
    if clean and p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Everything a reader needs to place the numbers: CPU, cores, memory, library versions, date, load."""
    import numpy
    import pyarrow

    info = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    for mod in ("torch", "transformers", "duckdb", "polars", "pandas", "openTSNE", "zarr"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not listed
            pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        info["git_commit"] = rev
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def interleave(arms: dict, reps: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run every arm (name -> zero-argument callable) ``reps`` times, interleaved; seconds per run."""
    if warmup:
        for fn in arms.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(reps):
        for k, fn in arms.items():
            times[k].append(timed(fn)[0])
    return times


def best(ts: list[float]) -> float:
    return min(ts)


def r3(x: float, n: int = 3) -> float:
    return float(f"{x:.{n}g}") if x == x else x  # noqa: PLR0124 - NaN stays NaN


def dir_bytes(path: Path, sub: str | None = None) -> int:
    p = Path(path) / sub if sub else Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
