"""Shared benchmark helpers: timing loops, the machine's matmul ceiling, and random models that look trained.

Achieved GFLOP/s of a model only means something next to what the same machine
reaches on its best-case kernel, so every benchmark measures that ceiling (a large
square float32 matmul) in the same run.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from utils.device import cpu_info


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 2, repeats: int = 10,
              min_seconds: float = 0.0) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def matmul_gflops(device: torch.device | str = "cpu", n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """Best-case GFLOP/s of an ``n x n`` matmul on ``device``: the ceiling for ratios."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, device, warmup=2, repeats=5)
    return 2 * n**3 / seconds / 1e9


SPEED_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("avx512_vnni", "VNNI"),
               ("avx_vnni", "AVX-VNNI"), ("amx_bf16", "AMX"))


def machine_description(device: torch.device | str = "cpu") -> str:
    """One line naming the machine a figure was measured on."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    info = cpu_info()
    cpu = platform.processor() or platform.machine()
    if info is not None:
        # The features that change which kernels run here: bf16 and int8 speeds differ several-fold.
        features = [name for flag, name in SPEED_FLAGS if flag in info[1]]
        cpu = f"{info[0] or cpu} ({', '.join(features) or 'no AVX2'})"
    return f"{cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
                ) -> dict[str, tuple[float, float]]:
    """(min, median) wall seconds per candidate, timed round-robin so that load changes hit all alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def vary_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Give a random model's BatchNorm layers varied statistics and biases, in place, and return it.

    A freshly initialised DeepLab predicts almost the same class everywhere; with varied BatchNorm
    statistics its outputs vary over an image, so masks hold borders and several classes, as a trained
    model's do. Benchmarks and tests use it to time and check realistic outputs without weights.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB since its program started.

    Linux carries ``ru_maxrss`` across ``exec``: a child started by a parent that had just written a
    16000x16000 scene reported the parent's 1.9 GiB as its own peak. ``VmHWM`` belongs to the memory
    of the running program alone, so it is read where there is a ``/proc``; ``ru_maxrss`` elsewhere
    (KiB on Linux).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, child_args: Sequence[str]) -> dict:
    """Run ``python -m module --child ...`` in a fresh interpreter from the repository root and return the
    JSON record it prints last: a fresh process per case, so each peak RSS is that case's alone."""
    out = subprocess.run([sys.executable, "-m", module, "--child", *child_args],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
