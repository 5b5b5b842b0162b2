"""The forward passes behind :class:`~utils.inference.predictor.Predictor`: PyTorch and ONNX Runtime.

Both take a normalised float batch (N, C_in, H, W) and return float32 logits (N, C, H, W).
:class:`TorchBackend` runs in inference mode on a private copy of the model with BatchNorm
folded into the convs, channels-last, fp16 autocast on CUDA and optionally bf16 on CPUs that
have it natively; :class:`OnnxBackend` runs an exported file, so ``--onnx`` shares the
pre- and post-processing with PyTorch.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nets.spec import ModelSpec
from nets.task import get_task, task_for_channels
from utils.device import resolve_precision
from utils.errors import UserError
from utils.inference.fuse import fuse_bn
from utils.inference.onnx_export import CONFIG_KEY, PROB_OUTPUT_NAME, SPEC_KEY


class TorchBackend:
    """PyTorch forward: float batch (N,3,H,W) in [0,1] on ``device`` -> float32 logits (N,C,H,W).

    Args:
        model: a DeepLab (it is not modified when ``optimize`` copies it).
        device: where to run.
        optimize: work on a deep copy of ``model`` with BatchNorm folded into the convs
            (exact in eval mode, saves a pass over every activation).
        channels_last: NHWC memory layout (oneDNN and cuDNN run convs natively in it); default on.
        precision: see :func:`resolve_precision`; below float32 runs under autocast.
    """

    def __init__(self, model: nn.Module, device: torch.device, optimize: bool = True,
                 channels_last: bool | None = None, precision: str = "auto") -> None:
        self.device = device
        self.channels_last = True if channels_last is None else channels_last
        self.dtype = resolve_precision(precision, device)
        net = getattr(model, "module", model)
        if optimize:
            net = copy.deepcopy(net).eval()
            fuse_bn(net)
            for param in net.parameters():
                param.requires_grad_(False)
        net = net.to(device).eval()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.model = net

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            logits = self.model(batch)
        return logits.float()


class OnnxBackend:
    """ONNX Runtime forward with the same contract as :class:`TorchBackend` (CPU tensors in and out),
    except that a binary export returns probabilities (``outputs_probabilities``), not logits."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from utils.inference.onnx_export import make_session

        self.path = Path(path)
        self.session = make_session(path, threads=threads)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # A static export fixes batch and/or size: run one image at a time and check the size up front.
        first = model_input.shape[0]
        self.fixed_batch = first if isinstance(first, int) else None
        dims = model_input.shape[2:]
        self.fixed_size = tuple(dims) if len(dims) == 2 and all(isinstance(d, int) for d in dims) else None
        self.device = torch.device("cpu")
        # A binary model's export ends in its sigmoid: the Predictor must not apply it again.
        self.outputs_probabilities = self.session.get_outputs()[0].name == PROB_OUTPUT_NAME

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None and tuple(batch.shape[2:]) != self.fixed_size:
            raise UserError(f"{self.path} was exported for a fixed {self.fixed_size[0]}x{self.fixed_size[1]} input, "
                            f"not {batch.shape[2]}x{batch.shape[3]}; re-export with --export-onnx ... --dynamic")
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if self.fixed_batch == 1 and array.shape[0] != 1:
            parts = [self.session.run(None, {self.input_name: array[i:i + 1]})[0] for i in range(len(array))]
            return torch.from_numpy(np.concatenate(parts))
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)

    def stored_spec(self) -> dict[str, Any] | None:
        """The spec stored in the ONNX metadata by our exporter (the version-1 config of older exports), or None."""
        meta = self.session.get_modelmeta().custom_metadata_map
        for key in (SPEC_KEY, CONFIG_KEY):
            if key in meta:
                return json.loads(meta[key])
        return None

    def resolved_spec(self, class_names: Sequence[str] | None = None, input_size: Sequence[int] | None = None,
                      threshold: float | None = None) -> ModelSpec:
        """The spec of this file: its metadata (written by our exporter), its fixed input size and output
        channels (the task of a file without metadata), then the keyword arguments (None: keep).

        Raises:
            UserError: a class list of another length than the file's classes, or invalid values.
        """
        values = dict(self.stored_spec() or {})
        output_shape = self.session.get_outputs()[0].shape
        if "num_classes" not in values:
            if not (len(output_shape) == 4 and isinstance(output_shape[1], int)):
                if not class_names:
                    raise UserError(f"{self.path}: cannot tell the number of classes; pass --classes")
                values["num_classes"] = len(class_names)
            else:
                task = task_for_channels(output_shape[1])
                values.update(task=task.name, num_classes=task.num_classes(output_shape[1]))
        if self.fixed_size is not None:
            values["input_size"] = list(self.fixed_size)
        if class_names is not None and len(class_names) != values["num_classes"]:
            raise UserError(f"{self.path} was exported for {values['num_classes']} classes, but {len(class_names)} "
                            "class names were given (--classes). Use the class list the model was trained with.")
        if threshold is not None and not get_task(values.get("task", "multiclass")).thresholded:
            raise UserError(f"--threshold applies to binary models (one output channel); {self.path} is a "
                            f"{values['num_classes']}-class model: drop --threshold")
        try:
            spec = ModelSpec.from_dict(values)
            return spec.replace(class_names=list(class_names) if class_names else None, input_size=input_size,
                                threshold=threshold)
        except ValueError as exc:
            raise UserError(f"{self.path}: {exc}") from None
