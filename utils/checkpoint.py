"""Checkpoints and weight files: atomic saving, safe loading, and one weight-loading helper.

Every script loads weights through :func:`load_model` or :func:`load_weights`. They accept
our checkpoint format (model plus its :class:`~nets.spec.ModelSpec`, so nothing else is needed
to rebuild the network; older checkpoints' flat ``config`` is migrated) and the bare state
dicts of the original release, with or without the ``module.`` prefix that DDP adds. Mismatches
are explained in words ("cls_conv.weight: checkpoint has 21 classes, model has 3") instead of
PyTorch's size-mismatch dump.
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

from nets.deeplabv3_plus import DeepLab
from nets.pretrained import adapt_input_kernel
from nets.registry import backbone_names, get_backbone
from nets.spec import SPEC_VERSION, ModelSpec, backbone_of_state, build_model, spec_from_state
from utils.errors import UserError

# The container: model, optimizer and run state. The model's description inside is the versioned spec.
CHECKPOINT_FORMAT = "deeplabv3plus-toolkit/1"


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
    """Return ``(state_dict, stored spec)`` from our checkpoint, a ``{"state_dict": ...}`` wrapper
    or a bare state dict; the ``module.`` prefix is removed. The stored spec is the ``spec`` dict, or
    for checkpoints written before it existed the version-1 ``config``; None for bare files."""
    config = None
    if isinstance(obj.get("model"), dict):
        state, config = obj["model"], obj.get("spec") or obj.get("config")
    elif isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    else:
        state = obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold model weights (no tensors found).")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, config


def read_spec(state: dict[str, torch.Tensor], stored: dict | None, path: str | Path = "checkpoint",
              **overrides: Any) -> ModelSpec:
    """The :class:`~nets.spec.ModelSpec` of a weights file: what its tensors show (backbone, head, task,
    classes, bands), then its stored spec or version-1 config, then explicit ``overrides``.

    Raises:
        UserError: the tensors are not a DeepLab, the stored values are invalid, an override of
            ``num_classes`` contradicts the file, or a threshold is given for a multi-class model.
    """
    try:
        values = spec_from_state(state).to_dict()
    except ValueError as exc:
        raise UserError(f"{path} is {exc}") from None
    if stored:
        values.update({k: v for k, v in stored.items() if v is not None})
        values["version"] = stored.get("version", 1)
    else:
        values["version"] = SPEC_VERSION
    given = {k: v for k, v in overrides.items() if v is not None}
    if "num_classes" in given and given["num_classes"] != values["num_classes"]:
        raise UserError(f"{path} was trained for {values['num_classes']} classes, but {given['num_classes']} were "
                        "given (--num-classes/--classes). Drop the flag or use matching weights.")
    try:
        spec = ModelSpec.from_dict(values)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    if "threshold" in given and not spec.task_obj.thresholded:
        raise UserError(f"--threshold applies to binary models (one output channel); {path} is a "
                        f"{spec.num_classes}-class model: drop --threshold")
    try:
        return spec.replace(**given)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}. Use a --classes file with one name per class.") from None


@dataclass
class LoadReport:
    """What :func:`load_weights` did: loaded keys and the reasons for everything else."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # loaded after a change, said in words

    @property
    def problems(self) -> list[str]:
        lines = list(self.skipped)
        lines += [f"{k}: not in the checkpoint" for k in self.missing]
        lines += [f"{k}: in the checkpoint but not in the model" for k in self.unexpected]
        return lines

    def summary(self, limit: int = 8) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        lines += [f"  {note}" for note in self.adapted]
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


def _rgb_input_kernel(key: str, value: torch.Tensor, own: torch.Tensor) -> bool:
    """True when ``value`` is the 3-band first convolution of a backbone and ``own`` that of another band count."""
    return (any(get_backbone(name).marker_key == key for name in backbone_names()) and value.ndim == 4
            and value.shape[1] == 3 and own.shape[1] != 3
            and (value.shape[0], *value.shape[2:]) == (own.shape[0], *own.shape[2:]))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                 source: str | Path = "checkpoint") -> LoadReport:
    """Load ``state`` into ``model`` (or ``model.module``).

    With ``strict`` every key must match by name and shape; otherwise a ``UserError``
    explains the differences in words. Without it, what matches by name and shape is
    loaded and the rest reported in the returned :class:`LoadReport` (fine-tuning); the RGB kernels
    of a 3-band file's first convolution are adapted to the model's bands
    (:func:`~nets.pretrained.adapt_input_kernel`), and the report says so.
    """
    net = getattr(model, "module", model)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    report = LoadReport()
    kept = {}
    ckpt_backbone = backbone_of_state(state)
    own_backbone = getattr(net, "backbone_name", None)
    if strict and ckpt_backbone and own_backbone and ckpt_backbone != own_backbone:
        raise UserError(f"{source} holds a {ckpt_backbone} model, but the model is {own_backbone}. "
                        f"Use --backbone {ckpt_backbone} or another weights file.")
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif not strict and _rgb_input_kernel(key, value, own[key]):
            kept[key] = adapt_input_kernel(value, own[key].shape[1])
            report.loaded.append(key)
            report.adapted.append(f"{key}: RGB kernels adapted to {own[key].shape[1]} bands (extra bands: the mean "
                                  f"RGB kernel; all scaled by 3/{own[key].shape[1]})")
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


def load_model(path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> tuple[DeepLab, ModelSpec]:
    """Build a DeepLab in eval mode from a checkpoint or bare state dict, and its spec.

    ``overrides`` (``num_classes``, ``class_names``, ``downsample_factor``, ``input_size``,
    ``threshold``; None values are ignored) replace what the file says; a class count that contradicts
    the file is an error, not a silent partial load.
    """
    obj = read_weights_file(path)
    state, stored = split_checkpoint(obj, path)
    spec = read_spec(state, stored, path, **overrides)
    model = build_model(spec, init="pytorch")  # every tensor comes from the file
    load_weights(model, state, strict=True, source=path)
    return model.to(device).eval(), spec
