"""Checkpoints and weight files: atomic saving, safe loading, and one weight-loading helper.

Every script loads weights through :func:`load_model` or :func:`load_weights`. They accept
our checkpoint format (model plus config, so nothing else is needed to rebuild the
network) and the bare state dicts of the original release, with or without the
``module.`` prefix that DDP adds. Mismatches are explained in words ("cls_conv.weight:
checkpoint has 21 classes, model has 3") instead of PyTorch's size-mismatch dump.
Files are always read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from nets.deeplabv3_plus import BACKBONES, DOWNSAMPLE_FACTORS, HEADS, DeepLab
from utils.errors import UserError

CHECKPOINT_FORMAT = "deeplabv3plus-toolkit/1"
TASKS = ("multiclass", "binary")
# The decision threshold of a binary model before validation has chosen one.
DEFAULT_THRESHOLD = 0.5
# Key that exists only in each backbone's state dict, used to recognise bare files.
_BACKBONE_MARKERS = {"backbone.features.0.0.weight": "mobilenet", "backbone.conv1.weight": "xception"}
# Key that exists only with the separable head (ASPP's first 3x3 branch is depthwise + pointwise there).
_SEPARABLE_MARKER = "aspp.branch2.depthwise.0.weight"


def default_file_mode() -> int:
    """The permissions ``open()`` would give a new file: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file next to ``path``, flush it to disk and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the checkpoint the permissions of any other new file.
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: a temporary file in the same folder,
    flushed to disk, then renamed over ``path``. A crash never leaves a truncated file."""
    return _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy the bytes of ``src`` to ``dst`` atomically (temporary file + rename), e.g. last.pth to best.pth."""
    src = Path(src)

    def write(handle: BinaryIO) -> None:
        with src.open("rb") as source:
            shutil.copyfileobj(source, handle, 1 << 20)

    return _atomic_write(Path(dst), write)


def read_weights_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint or state dict with ``weights_only=True`` onto the CPU.

    With ``mmap`` the tensors of a (zip-format) file are mapped instead of read, for callers that
    only look at its small entries, such as the config.

    Raises:
        UserError: the file does not exist, or is not a PyTorch checkpoint (corrupt,
            truncated, or some other kind of file).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}. Check the path given to --weights.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as exc:  # pickle, zip and EOF errors all mean "not a usable checkpoint"
        raise UserError(
            f"{path} is not a PyTorch checkpoint, or it is truncated or corrupt ({type(exc).__name__}). "
            "Pass a .pth file written by train.py or released for the original DeepLabV3+ code."
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint.")
    return obj


def split_checkpoint(obj: dict[str, Any], path: str | Path = "checkpoint"
                     ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Return ``(state_dict, config)`` from our checkpoint, a ``{"state_dict": ...}`` wrapper
    or a bare state dict; the ``module.`` prefix is removed. ``config`` is None for bare files."""
    config = None
    if isinstance(obj.get("model"), dict):
        state, config = obj["model"], obj.get("config")
    elif isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    else:
        state = obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold model weights (no tensors found).")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, config


def output_channels(task: str, num_classes: int) -> int:
    """Channels of the model's last layer: one foreground logit (read through a sigmoid) for a binary
    model, which still has two classes (background, foreground), else one logit per class."""
    return 1 if task == "binary" else num_classes


def infer_config(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> dict[str, Any]:
    """Infer backbone, head, task and class count from a bare DeepLab state dict (one output channel = binary)."""
    backbone = next((name for key, name in _BACKBONE_MARKERS.items() if key in state), None)
    if backbone is None or "cls_conv.weight" not in state:
        raise UserError(
            f"{path} is not a DeepLabV3+ model: it has no {' or '.join(_BACKBONE_MARKERS)} / cls_conv.weight keys."
        )
    channels = int(state["cls_conv.weight"].shape[0])
    head = "separable" if _SEPARABLE_MARKER in state else "standard"
    if channels == 1:
        return {"backbone": backbone, "head": head, "task": "binary", "num_classes": 2}
    return {"backbone": backbone, "head": head, "task": "multiclass", "num_classes": channels}


@dataclass
class LoadReport:
    """What :func:`load_weights` did: loaded keys and the reasons for everything else."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        lines = list(self.skipped)
        lines += [f"{k}: not in the checkpoint" for k in self.missing]
        lines += [f"{k}: in the checkpoint but not in the model" for k in self.unexpected]
        return lines

    def summary(self, limit: int = 8) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        problems = self.problems
        if problems:
            lines.append(f"skipped {len(problems)}:")
            lines += [f"  {p}" for p in problems[:limit]]
            if len(problems) > limit:
                lines.append(f"  ... and {len(problems) - limit} more")
        return "\n".join(lines)


def _mismatch_reason(key: str, have: torch.Size, want: torch.Size) -> str:
    if key.startswith("cls_conv."):
        return f"{key}: checkpoint has {have[0]} classes, model has {want[0]}"
    return f"{key}: checkpoint shape {tuple(have)}, model shape {tuple(want)}"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                 source: str | Path = "checkpoint") -> LoadReport:
    """Load ``state`` into ``model`` (or ``model.module``).

    With ``strict`` every key must match by name and shape; otherwise a ``UserError``
    explains the differences in words. Without it, what matches by name and shape is
    loaded and the rest reported in the returned :class:`LoadReport` (fine-tuning).
    """
    net = getattr(model, "module", model)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    report = LoadReport()
    kept = {}
    ckpt_backbone = next((n for k, n in _BACKBONE_MARKERS.items() if k in state), None)
    own_backbone = getattr(net, "backbone_name", None)
    if strict and ckpt_backbone and own_backbone and ckpt_backbone != own_backbone:
        raise UserError(f"{source} holds a {ckpt_backbone} model, but the model is {own_backbone}. "
                        f"Use --backbone {ckpt_backbone} or another weights file.")
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.skipped.append(_mismatch_reason(key, value.shape, own[key].shape))
        else:
            kept[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state]
    if strict and report.problems:
        raise UserError(f"{source} does not fit the model:\n" + "\n".join(f"  {p}" for p in report.problems[:10])
                        + ("\n  ..." if len(report.problems) > 10 else ""))
    net.load_state_dict(kept, strict=False)
    return report


def resolve_config(state: dict[str, torch.Tensor], saved: dict | None, path: str | Path, **overrides: Any) -> dict:
    """Merge the checkpoint's config (or what a bare file implies) with explicit overrides."""
    config: dict[str, Any] = {"downsample_factor": 16, "input_size": [512, 512], "class_names": None}
    config.update(infer_config(state, path))
    if saved:
        config.update({k: v for k, v in saved.items() if v is not None})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "num_classes" and value != config["num_classes"]:
            raise UserError(f"{path} was trained for {config['num_classes']} classes, but {value} were given "
                            "(--num-classes/--classes). Drop the flag or use matching weights.")
        config[key] = value
    if (config["backbone"] not in BACKBONES or config["downsample_factor"] not in DOWNSAMPLE_FACTORS
            or config["head"] not in HEADS):
        raise UserError(f"{path}: unsupported backbone / output stride / head "
                        f"{config['backbone']} / {config['downsample_factor']} / {config['head']}.")
    names = config.get("class_names")
    if names is not None and len(names) != config["num_classes"]:
        raise UserError(f"{path} has {config['num_classes']} classes but {len(names)} class names were given. "
                        "Use a --classes file with one name per class.")
    if isinstance(config.get("input_size"), int):
        config["input_size"] = [config["input_size"], config["input_size"]]
    if config["task"] == "binary":
        config["threshold"] = float(config.get("threshold", DEFAULT_THRESHOLD))
    elif overrides.get("threshold") is not None:
        raise UserError(f"--threshold applies to binary models (one output channel); {path} is a "
                        f"{config['num_classes']}-class model: drop --threshold")
    return config


def load_model(path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> tuple[DeepLab, dict]:
    """Build a DeepLab in eval mode from a checkpoint or bare state dict, and its config.

    ``overrides`` (``num_classes``, ``class_names``, ``downsample_factor``, ``input_size``,
    ``backbone``, ``threshold``) replace what the file says; a class count that contradicts the file
    is an error, not a silent partial load. The head is the config's ``head`` (``standard``
    when absent, as in checkpoints from before it existed), or for a bare state dict what its
    key names show.
    """
    obj = read_weights_file(path)
    state, saved = split_checkpoint(obj, path)
    config = resolve_config(state, saved, path, **overrides)
    model = DeepLab(output_channels(config["task"], config["num_classes"]), config["backbone"],
                    downsample_factor=config["downsample_factor"], head=config["head"])
    load_weights(model, state, strict=True, source=path)
    return model.to(device).eval(), config
