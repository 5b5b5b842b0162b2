"""The one inference pipeline: letterbox, forward, crop the padding, resize probabilities, argmax.

``predict.py``, ``get_miou.py`` and the evaluation during training all go through
:class:`Predictor`. The forward pass is a swappable *backend*: :class:`TorchBackend`
(inference mode, BatchNorm folded into the convs on a private copy of the model,
channels-last, fp16 autocast on CUDA, optionally bf16 on CPUs that have it natively)
or :class:`OnnxBackend` (ONNX Runtime), so ``--onnx`` runs exactly the same pre- and
post-processing as PyTorch.

Post-processing happens in torch on the backend's device: softmax over classes, crop of
the letterbox content box, bilinear resize of the class probabilities to the original
size (``align_corners=False``, as the original's ``cv2.resize``), argmax. Test-time
augmentation averages the probabilities over scales and a horizontal flip.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import load_model
from utils.data import default_class_names, letterbox
from utils.distributed import resolve_device
from utils.errors import UserError
from utils.fuse import fuse_bn
from utils.onnx_export import CONFIG_KEY as ONNX_CONFIG_KEY

PRECISIONS = ("auto", "fastest", "fp32", "fp16", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (AVX512-BF16 or AMX), which makes
    bf16 convolutions about twice as fast as float32; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


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
    """ONNX Runtime forward with the same contract as :class:`TorchBackend` (CPU tensors in and out)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from utils.onnx_export import make_session

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

    def config(self) -> dict[str, Any] | None:
        """The model config stored in the ONNX metadata by our exporter, or None."""
        meta = self.session.get_modelmeta().custom_metadata_map
        return json.loads(meta[ONNX_CONFIG_KEY]) if ONNX_CONFIG_KEY in meta else None


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; channels-last logits (our CPU/CUDA layout) are reduced over their innermost
    dimension, which is 2-3x faster than ``softmax(1)`` on the strided layout or a copy to NCHW."""
    if logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
        return logits.permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2)
    return logits.softmax(1)


def _argmax_classes(probs: torch.Tensor) -> torch.Tensor:
    """Class index per pixel of (C, H, W) probabilities, reading them in their memory order.

    ``max(...).indices`` is used because ``argmax`` over a non-innermost dim is ~3x slower on the CPU.
    """
    hwc = probs.permute(1, 2, 0)
    if hwc.is_contiguous() and probs.shape[0] > 1:
        return hwc.max(-1).indices
    return probs.max(0).indices


class Predictor:
    """Segment RGB uint8 images of any size with a DeepLabV3+ model.

    Args:
        model: a DeepLab; it is not modified (an optimised copy is used) unless ``optimize=False``,
            in which case it is only switched to eval mode.
        config: at least ``num_classes`` and ``input_size`` ([h, w]); ``class_names`` optional.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        batch_size: images per forward pass.
        optimize / channels_last / precision: see :class:`TorchBackend` and :func:`resolve_precision`.
        backend: a ready forward callable instead of the model (used for ONNX Runtime).
    """

    def __init__(self, model: nn.Module | None, config: dict[str, Any], device: str | torch.device = "auto",
                 batch_size: int = 4, optimize: bool = True, channels_last: bool | None = None,
                 precision: str = "auto", backend: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if backend is None:
            if model is None:
                raise ValueError("Predictor needs a model or a backend")
            backend = TorchBackend(model, resolve_device(device), optimize, channels_last, precision)
        self.backend = backend
        self.device: torch.device = backend.device
        self.config = dict(config)
        self.num_classes = int(config["num_classes"])
        names = config.get("class_names")
        self.class_names: list[str] = list(names) if names else default_class_names(self.num_classes)
        size = config.get("input_size") or [512, 512]
        if isinstance(size, int):
            size = [size, size]
        self.input_size: tuple[int, int] = (int(size[0]), int(size[-1]))
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_weights(cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 4,
                     optimize: bool = True, precision: str = "auto", **overrides: Any) -> Predictor:
        """Load our checkpoint (config inside) or a bare original state dict.

        ``overrides`` go to :func:`utils.checkpoint.load_model`: ``num_classes``, ``class_names``,
        ``downsample_factor``, ``input_size``, ``backbone`` (None values are ignored).
        """
        device = resolve_device(device)
        model, config = load_model(path, device="cpu", **overrides)
        return cls(model, config, device, batch_size=batch_size, optimize=optimize, precision=precision)

    @classmethod
    def from_onnx(cls, path: str | Path, batch_size: int = 4, threads: int | None = None,
                  **overrides: Any) -> Predictor:
        """Run an exported ONNX model through ONNX Runtime (CPU), with the same pipeline.

        The config comes from the file's metadata (written by :mod:`utils.onnx_export`);
        ``overrides`` (``input_size``, ``class_names``, ``num_classes``) fill in or replace it.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {path}. Check the path given to --onnx.")
        backend = OnnxBackend(path, threads=threads)
        config = backend.config() or {}
        if backend.fixed_size is not None:
            config["input_size"] = list(backend.fixed_size)
        output_shape = backend.session.get_outputs()[0].shape
        if "num_classes" not in config and len(output_shape) == 4 and isinstance(output_shape[1], int):
            config["num_classes"] = output_shape[1]
        names = overrides.get("class_names")
        if names is not None and "num_classes" in config and len(names) != config["num_classes"]:
            raise UserError(f"{path} was exported for {config['num_classes']} classes, but {len(names)} class "
                            "names were given (--classes). Use the class list the model was trained with.")
        config.update({k: v for k, v in overrides.items() if v is not None})
        if "num_classes" not in config:
            raise UserError(f"{path}: cannot tell the number of classes; pass --classes")
        if names is not None:
            config["num_classes"] = len(names)
        return cls(None, config, backend=backend, batch_size=batch_size)

    def _chunks(self, items: Sequence, size: int) -> Iterator[Sequence]:
        for start in range(0, len(items), size):
            yield items[start:start + size]

    def _to_batch(self, canvases: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(canvases)).to(self.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def _proba_at_scale(self, images: Sequence[np.ndarray], size: tuple[int, int], flip: bool) -> list[torch.Tensor]:
        """Class probabilities (C, h, w) at each image's original size, for one network input size."""
        out: list[torch.Tensor] = []
        for chunk in self._chunks(images, self.batch_size):
            placed = [letterbox(image, size) for image in chunk]
            batch = self._to_batch([canvas for canvas, _, _ in placed])
            if flip:
                probs = _softmax(self.backend(torch.cat((batch, batch.flip(3)))))
                probs = (probs[:len(chunk)] + probs[len(chunk):].flip(3)) * 0.5
            else:
                probs = _softmax(self.backend(batch))
            for image, (_, _, box), prob in zip(chunk, placed, probs, strict=True):
                crop = prob[None, :, box.top:box.top + box.height, box.left:box.left + box.width]
                height, width = image.shape[:2]
                if crop.shape[2:] != (height, width):
                    crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
                out.append(crop[0])
        return out

    def predict_proba(self, images: Sequence[np.ndarray], tta: bool = False,
                      scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True) -> list[torch.Tensor]:
        """Class probabilities (C, H, W) float32 at each image's original size, on the predictor's device.

        Args:
            images: RGB uint8 arrays (H, W, 3), sizes may differ.
            tta: average over ``scales`` (of the input size) and, with ``flip``, horizontal flips.
        """
        for image in images:
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3):
                raise ValueError("Predictor expects RGB uint8 arrays of shape (H, W, 3)")
        if not tta:
            return self._proba_at_scale(images, self.input_size, flip=False)
        if not scales:
            raise ValueError("tta needs at least one scale")
        total: list[torch.Tensor] | None = None
        for scale in scales:
            size = (max(16, round(self.input_size[0] * scale)), max(16, round(self.input_size[1] * scale)))
            probs = self._proba_at_scale(images, size, flip=flip)
            total = probs if total is None else [t.add_(p) for t, p in zip(total, probs, strict=True)]
        return [t.div_(len(scales)) for t in total]

    def predict(self, images: Sequence[np.ndarray], tta: bool = False,
                scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True) -> list[np.ndarray]:
        """Class-index masks uint8 (H, W) at each image's original size (see :meth:`predict_proba`)."""
        if self.num_classes > 256:
            raise ValueError("uint8 masks hold at most 256 classes")
        probs = self.predict_proba(images, tta=tta, scales=scales, flip=flip)
        return [_argmax_classes(p).to(torch.uint8).cpu().numpy() for p in probs]

