"""Static INT8 quantization of an exported ONNX model (ONNX Runtime, QDQ, per-channel weights).

The calibration tensors are not made here: the calibration images run through a float
:class:`~utils.inference.predictor.Predictor` whose backend records every batch the
:class:`~utils.inference.engine.Engine` hands it (:class:`RecordingBackend`). So calibration sees
exactly what inference will feed the int8 model: the letterbox canvases of the ``whole`` strategy,
or the windows of the ``slide`` strategy for crop-trained models, with the engine's normalisation.
The same run gives the float masks, and the int8 model's masks on the same images give the pixel
agreement reported at the end. The int8 file is written next to the target and renamed onto it only
when everything succeeded, with the spec metadata of the float file.

CPUs without VNNI or AMX (no ``avx512_vnni``, ``avx_vnni`` or ``amx_int8`` flag) multiply uint8 by
int8 with ``vpmaddubsw``, whose 16-bit intermediate sums can saturate: ONNX Runtime advises 7-bit
(reduced-range) weights there, and int8 may run slower than fp32 on them (:func:`int8_dot_flags`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import default_file_mode
from utils.data.io import IMAGE_EXTENSIONS, load_image
from utils.data.layout import index_images, parse_split_file
from utils.device import cpu_info
from utils.errors import UserError
from utils.inference.backends import OnnxBackend
from utils.inference.onnx_export import CONFIG_KEY, SPEC_KEY
from utils.inference.options import InferenceOptions, SlideOptions
from utils.inference.predictor import Predictor

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Layers that may stay in float: the first convolution (it sees the raw image), the classifier (the last
# convolution, whose logits decide the labels) and the Resize operators (bilinear upsampling).
FLOAT_LAYERS = ("first-conv", "classifier", "resize")
# CPU flags of int8 dot-product instructions (/proc/cpuinfo).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`quantize_onnx` calibrates and quantizes.

    Args:
        calib_root: a dataset in the VOC layout (its ``calib_split`` images) or a folder of images.
        calib_split: the split file ``ImageSets/Segmentation/<split>.txt`` of a VOC root.
        calib_images: how many images calibrate, spread evenly over the split (all when fewer).
        method: activation ranges from the ``minmax`` of the calibration tensors, the ``entropy``
            (KL divergence) of their histograms, or a ``percentile`` of them.
        percentile: the percentile of ``method="percentile"``.
        float_layers: which of :data:`FLOAT_LAYERS` stay in float.
        reduce_range: 7-bit weights (None: on when the CPU has no VNNI/AMX, see :func:`int8_dot_flags`).
        batch_size: images (or windows) per forward pass of the calibration run.
        threads: ONNX Runtime threads (None: all cores).
    """

    calib_root: Path
    calib_split: str = "train"
    calib_images: int = 64
    method: str = "minmax"
    percentile: float = 99.999
    float_layers: tuple[str, ...] = field(default=("first-conv", "classifier"))
    reduce_range: bool | None = None
    batch_size: int = 4
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "calib_root", Path(self.calib_root))
        object.__setattr__(self, "float_layers", tuple(self.float_layers))
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {', '.join(CALIBRATION_METHODS)}; got {self.method!r}")
        unknown = [layer for layer in self.float_layers if layer not in FLOAT_LAYERS]
        if unknown:
            raise ValueError(f"float_layers must be among {', '.join(FLOAT_LAYERS)}; got {', '.join(unknown)}")
        if self.calib_images < 1:
            raise ValueError(f"calib_images must be at least 1; got {self.calib_images}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must lie in (0, 100]; got {self.percentile}")


@dataclass
class QuantizeReport:
    """What :func:`quantize_onnx` did: images, calibration tensors, settings, and the int8/fp32 pixel agreement."""

    images: int
    tensors: int
    method: str
    float_nodes: list[str]
    reduce_range: bool
    agreement: float  # share of the calibration images' pixels where the int8 label equals the fp32 label

    def __str__(self) -> str:
        return (f"calibrated on {self.images} image(s) ({self.tensors} network input(s)), {self.method}, "
                f"{'7-bit' if self.reduce_range else '8-bit'} weights, {len(self.float_nodes)} node(s) in float; "
                f"pixel agreement with fp32 on the calibration images: {100 * self.agreement:.2f}%")


def int8_dot_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The int8 dot-product flags (:data:`INT8_DOT_FLAGS`) the CPU reports, or None when ``cpuinfo`` is unreadable
    (not Linux): then nothing is known and nothing is assumed."""
    info = cpu_info(cpuinfo)
    return None if info is None else info[1] & set(INT8_DOT_FLAGS)


def int8_warning(options: QuantizeOptions) -> str | None:
    """The warning for a CPU without int8 dot-product instructions (None when it has them or nothing is known)."""
    if int8_dot_flags() != set():
        return None
    weights = "7-bit weights (reduce_range) avoid" if options.reduce_range is not False else "beware of"
    return (f"this CPU has none of {', '.join(INT8_DOT_FLAGS)}: int8 may run slower than fp32 here; {weights} "
            "the saturation of its 16-bit int8 products")


def calibration_paths(options: QuantizeOptions) -> list[Path]:
    """The calibration images: ``calib_images`` of the split (VOC root) or of the folder, spread evenly.

    Raises:
        UserError: in one line, naming the root, when it holds no usable images.
    """
    root = options.calib_root
    if not root.is_dir():
        raise UserError(f"--calib-data {root}: no such folder; give a dataset root in the VOC layout or a folder "
                        "of images")
    split_file = root / "ImageSets" / "Segmentation" / f"{options.calib_split}.txt"
    if split_file.is_file():
        images = index_images(root / "JPEGImages") if (root / "JPEGImages").is_dir() else {}
        stems = parse_split_file(split_file)
        paths = [images[stem] for stem in stems if stem in images]
        if not paths:
            raise UserError(f"--calib-data {root}: none of the {len(stems)} image(s) named by {split_file} is in "
                            f"{root / 'JPEGImages'}; check the data root or --calib-split")
    else:
        paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise UserError(f"--calib-data {root}: no {split_file.relative_to(root)} and no images in the folder; "
                            f"give a VOC root with that split file (--calib-split) or a folder of images")
    if len(paths) <= options.calib_images:
        return paths
    # Evenly spread: datasets are often stored in sequences (video frames), the first N would be one scene.
    picks = np.linspace(0, len(paths) - 1, options.calib_images).round().astype(int)
    return [paths[i] for i in picks]


class RecordingBackend:
    """A backend that runs ``inner`` and keeps each input of the batches it is given, one (1, C, H, W) array
    each: the calibration tensors, made by the strategy and engine code inference runs."""

    def __init__(self, inner: OnnxBackend) -> None:
        self.inner = inner
        self.device = inner.device
        self.outputs_probabilities = inner.outputs_probabilities
        self.recorded: list[np.ndarray] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        self.recorded.extend(array[i:i + 1] for i in range(len(array)))
        return self.inner(batch)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over recorded inputs (built lazily: onnxruntime is imported late)."""

    def __init__(self, name: str, tensors: Sequence[np.ndarray]) -> None:
        self.name = name
        self.tensors = tensors
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.tensors):
            return None
        self.position += 1
        return {self.name: self.tensors[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def float_nodes(model, layers: Sequence[str]) -> list[str]:
    """Names of the nodes of ``model`` (an ``onnx.ModelProto``) that ``layers`` (:data:`FLOAT_LAYERS`) keep in
    float: the first and the last Conv in graph order, and every Resize."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    names: list[str] = []
    if "first-conv" in layers and convs:
        names.append(convs[0])
    if "classifier" in layers and convs:
        names.append(convs[-1])
    if "resize" in layers:
        names += [node.name for node in model.graph.node if node.op_type == "Resize"]
    return names


def _predictor(backend, spec, options: QuantizeOptions, mode: str) -> Predictor:
    """A predictor over ``backend`` for the calibration images (no progress bars)."""
    inference = InferenceOptions(device="cpu", batch_size=options.batch_size, threads=options.threads, mode=mode,
                                 slide=SlideOptions(progress=False))
    return Predictor(None, spec, inference, backend=backend)


def _predict(predictor: Predictor, paths: Sequence[Path]) -> Iterator[np.ndarray]:
    for start in range(0, len(paths), predictor.batch_size):
        yield from predictor.predict([load_image(path) for path in paths[start:start + predictor.batch_size]])


def _copy_metadata(source, target_path: Path) -> None:
    """Put the spec metadata of ``source`` (a ModelProto) on the model at ``target_path``."""
    import onnx

    model = onnx.load(str(target_path))
    keep = {entry.key: entry.value for entry in source.metadata_props if entry.key in (SPEC_KEY, CONFIG_KEY)}
    others = [(e.key, e.value) for e in model.metadata_props if e.key not in keep]
    del model.metadata_props[:]
    for key, value in [*others, *keep.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target_path))


def quantize_onnx(source: str | Path, target: str | Path, options: QuantizeOptions,
                  mode: str = "auto") -> QuantizeReport:
    """Quantize the float ONNX model ``source`` into ``target`` (int8 QDQ), calibrated on ``options``' images.

    ``mode`` is the inference strategy of the calibration run (``auto``: windows for crop-trained models,
    as predict.py does). ``target`` is replaced only when quantization and the agreement run succeeded.

    Raises:
        UserError: no calibration images, or unreadable ones.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    paths = calibration_paths(options)
    source, target = Path(source), Path(target)
    recorder = RecordingBackend(OnnxBackend(source, threads=options.threads))
    spec = recorder.inner.resolved_spec()
    reference = list(_predict(_predictor(recorder, spec, options, mode), paths))
    flags = int8_dot_flags()
    reduce_range = options.reduce_range if options.reduce_range is not None else flags == set()
    model = onnx.load(str(source))
    metadata = onnx.load(str(source), load_external_data=False)
    excluded = float_nodes(model, options.float_layers)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.onnx", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize_static(model, tmp, _Reader(recorder.inner.input_name, recorder.recorded),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=methods[options.method],
                        extra_options={"CalibPercentile": options.percentile})
        _copy_metadata(metadata, tmp)
        quantized = _predict(_predictor(OnnxBackend(tmp, threads=options.threads), spec, options, mode), paths)
        same = total = 0
        for expected, got in zip(reference, quantized, strict=True):
            same += int((expected == got).sum())
            total += expected.size
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return QuantizeReport(len(paths), len(recorder.recorded), options.method, excluded, reduce_range,
                          same / max(total, 1))
