"""Where and in which precision the model runs: ``--device`` and ``--precision`` resolution.

A leaf shared by training and inference: :func:`resolve_device` turns ``--device`` into a
``torch.device``, :func:`resolve_precision` picks the forward dtype (with
:func:`cpu_has_native_bf16` deciding whether bf16 pays off on this CPU, from :func:`cpu_info`), and
:func:`channels_last_training` whether training runs in the NHWC memory layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from utils.errors import UserError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``--device`` (``auto``/None, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``) into a device.

    ``auto`` picks CUDA when available, else the CPU. Other device types (mps, xpu, ...) are
    rejected: the toolkit is tested on CPU and CUDA only. A CUDA request must be satisfiable here.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {str(name)!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {str(name)!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def channels_last_training(device: torch.device) -> bool:
    """Whether training runs channels-last (NHWC) on ``device``.

    On CUDA (cuDNN's NHWC kernels) and on CPUs with AVX-512, where oneDNN's NHWC convolutions
    made a mobilenet training step about 1.15x faster than NCHW; with AVX2 only they were about
    13% slower (BENCHMARKS.md, training throughput), so training stays NCHW there. Inference is
    channels-last everywhere (faster on both kinds of CPU).
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


PRECISIONS = ("auto", "fastest", "fp32", "fp16", "bf16")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]] | None:
    """(model name, feature flags) of the first CPU in ``cpuinfo``, or None when it is unreadable (not
    Linux): then nothing is known and callers assume nothing."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    # CPUs are blank-line separated blocks; the first one is enough (a 128-core host lists 128).
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (AVX512-BF16 or AMX), which makes
    bf16 convolutions about twice as fast as float32; elsewhere bf16 is emulated and slower."""
    info = cpu_info()
    return info is not None and bool(info[1] & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype of the forward pass.

    ``auto``: float16 on CUDA, float32 on CPU (exact, for evaluation). ``fastest``: like auto, but
    bfloat16 on CPUs with native bf16 support. ``fp32``/``fp16``/``bf16`` force a dtype.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "fp16" and not cuda:
        raise UserError("fp16 inference needs a CUDA device; on the CPU use bf16 or fp32")
    if precision in ("auto", "fastest"):
        if cuda:
            return torch.float16
        return torch.bfloat16 if precision == "fastest" and cpu_has_native_bf16() else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
