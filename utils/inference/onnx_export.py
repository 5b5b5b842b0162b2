"""ONNX export with verification, and the ONNX Runtime session used by ``--onnx`` and the benchmark.

The graph takes ``images`` float32 (N, 3, H, W) in [0, 1] and returns ``logits``
(N, C, H, W), exactly like ``DeepLab.forward``; a binary model (one output channel) returns
``probabilities`` (N, 1, H, W) instead, the sigmoid being part of the graph. Letterbox and post-processing stay in
:class:`utils.inference.predictor.Predictor`, shared with PyTorch. With ``dynamic`` the batch,
height and width are symbolic: the model's final ``F.interpolate`` to the input size
is exported as a ``Resize`` whose target comes from ``Shape(images)``, so any size works.

Exporters: ``"torchscript"`` (default) traces in ~2 s and was verified here to produce
correct dynamic graphs; ``"dynamo"`` (``torch.export``) gives the same numbers but takes
20-50 s on a 2-core CPU. The model spec is stored in the file's metadata so that
``predict.py --onnx model.onnx`` needs nothing else. When ``onnxsim`` is importable the
graph is simplified (optional; not a requirement).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nets.spec import ModelSpec
from nets.task import Task, task_for_channels
from utils.checkpoint import default_file_mode
from utils.errors import UserError

DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Output name of a binary model's export, whose graph ends in the sigmoid.
PROB_OUTPUT_NAME = "probabilities"
# Metadata key holding the model spec (read back by utils.inference.backends.OnnxBackend), and the key of
# the flat config that exports from before the spec carried (read as spec version 1).
SPEC_KEY = "deeplabv3plus_spec"
CONFIG_KEY = "deeplabv3plus_config"


class SigmoidOutput(nn.Module):
    """A one-channel (binary) model followed by its sigmoid: the exported graph outputs probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).sigmoid()


def _task(net: nn.Module, spec: ModelSpec | None) -> Task:
    """The spec's task; without a spec, what the classifier's channel count implies (as for a bare file)."""
    if spec is not None:
        return spec.task_obj
    cls_conv = getattr(net, "cls_conv", None)
    return task_for_channels(cls_conv.out_channels if cls_conv is not None else 2)


@dataclass
class Verification:
    """ONNX Runtime versus PyTorch on one random input."""

    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # largest |difference| divided by the largest |PyTorch logit|

    def __str__(self) -> str:
        size = "x".join(map(str, self.shape))
        return f"input {size}: max |ORT - PyTorch| = {self.max_abs:.3g} (relative {self.max_rel:.3g})"


def make_session(path: str | Path, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session with full graph optimisation (constant folding, conv+BN/activation
    fusion, layout transforms) and intra-op threads = ``threads`` (default: all cores); sequential
    execution, since the graph is a single chain and inter-op parallelism only adds contention."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... classes for unreadable files
        raise UserError(f"{path} is not a usable ONNX model ({type(exc).__name__}): re-export it with "
                        "predict.py --export-onnx") from None


def _simplify(model: Any) -> Any:
    """Run onnxsim on the in-memory model when it is installed; return the (possibly) simplified model."""
    try:
        import onnxsim
    except ImportError:
        return model
    simplified, ok = onnxsim.simplify(model)
    return simplified if ok else model


def _finish(path: Path, spec: ModelSpec | None, simplify: bool) -> None:
    """One load, optional simplification and the metadata, one save (all in memory)."""
    import onnx

    model = onnx.load(str(path))
    if simplify:
        model = _simplify(model)
    if spec is not None:
        # What Predictor.from_onnx and predict.py read back: the whole spec (task, threshold, classes, and
        # crop_size, which turns sliding windows on by default as it does for --weights).
        entry = model.metadata_props.add()
        entry.key, entry.value = SPEC_KEY, json.dumps(spec.to_dict())
    onnx.save(model, str(path))


def verify(model: nn.Module, path: str | Path, shape: Sequence[int], seed: int = 0) -> Verification:
    """Compare ONNX Runtime with PyTorch (float32, CPU) on a random input of ``shape`` (N, 3, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=generator)
    net = getattr(model, "module", model)
    param = next(net.parameters())
    with torch.inference_mode():
        expected = net.eval()(x.to(param.device, param.dtype)).float().cpu().numpy()
    session = make_session(path)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    diff = float(np.abs(got - expected).max())
    return Verification(tuple(shape), diff, diff / max(float(np.abs(expected).max()), 1e-12))


def export_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int], spec: ModelSpec | None = None,
                dynamic: bool = False, opset: int = DEFAULT_OPSET, simplify: bool = True,
                exporter: str = "torchscript", tolerance: float = 1e-3) -> list[Verification]:
    """Export ``model`` (a DeepLab; not modified) to ``path`` and verify it with ONNX Runtime.

    The graph is written to a temporary file next to ``path`` and renamed onto ``path`` only
    after it passed verification: a failed export leaves no file at ``path`` and an existing
    one untouched.

    Args:
        input_size: (H, W) of the example input (and the fixed size without ``dynamic``).
        spec: the model's spec, stored in the metadata (a binary spec exports the sigmoid too).
        dynamic: symbolic batch, height and width.
        opset: ONNX opset, at least 17.
        simplify: run onnxsim if it is installed.
        exporter: ``"torchscript"`` or ``"dynamo"``.
        tolerance: largest accepted relative difference between ONNX Runtime and PyTorch.

    Returns:
        The verifications: at the export size, and with ``dynamic`` also at a second size and batch 2.

    Raises:
        UserError: bad opset/exporter, or ONNX Runtime disagrees with PyTorch beyond ``tolerance``.
    """
    if opset < 17:
        raise UserError(f"--opset {opset} is too old: use 17 or newer")
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        checks = _export_and_verify(model, tmp, input_size, spec, dynamic, opset, simplify, exporter)
        worst = max(checks, key=lambda check: check.max_rel)
        if worst.max_rel > tolerance:
            other = "dynamo" if exporter == "torchscript" else "torchscript"
            raise UserError(f"{path}: ONNX Runtime disagrees with PyTorch ({worst}); nothing was written. "
                            f"Try --exporter {other}")
        # mkstemp creates 0600 files; the model gets the permissions of any other new file.
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return checks


def _export_and_verify(model: nn.Module, path: Path, input_size: Sequence[int], spec: ModelSpec | None,
                       dynamic: bool, opset: int, simplify: bool, exporter: str) -> list[Verification]:
    """Write the graph (simplified, with metadata) to ``path`` and compare it with PyTorch."""
    net = getattr(model, "module", model)
    output_name = OUTPUT_NAME
    if _task(net, spec).thresholded:
        net, output_name = SigmoidOutput(net), PROB_OUTPUT_NAME
    param = next(net.parameters())
    was_training = net.training
    net.eval()
    height, width = int(input_size[0]), int(input_size[-1])
    bands = spec.in_channels if spec is not None else 3
    example = torch.rand(1, bands, height, width, device=param.device)
    try:
        if exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"}
            with warnings.catch_warnings():
                # The TorchScript exporter is deprecated in favour of dynamo but is 10x faster here and
                # produces the same, verified graph; the warning would only confuse users.
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (example,), str(path), input_names=[INPUT_NAME], output_names=[output_name],
                                  opset_version=opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={INPUT_NAME: axes, output_name: axes} if dynamic else None)
        else:
            shapes = None
            if dynamic:
                dims = (torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("height", min=16, max=8192),
                        torch.export.Dim("width", min=16, max=8192))
                shapes = {"x": {0: dims[0], 2: dims[1], 3: dims[2]}}
            torch.onnx.export(net, (example,), str(path), input_names=[INPUT_NAME], output_names=[output_name],
                              opset_version=opset, dynamo=True, dynamic_shapes=shapes, verbose=False)
    finally:
        net.train(was_training)
    _finish(path, spec, simplify)
    checks = [verify(net, path, (1, bands, height, width))]
    if dynamic:
        # A second, odd size and another batch prove the spatial and batch axes really are dynamic.
        checks.append(verify(net, path, (2, bands, height * 3 // 4 + 5, width * 5 // 4 + 3), seed=1))
    net.train(was_training)
    return checks
