"""The model spec: a typed, versioned description of a trained model, and the one place a DeepLab is built.

A :class:`ModelSpec` says everything needed to rebuild a network and read its outputs: backbone,
head, output stride, input bands, task and class count, the input size it was trained at (its
crop size for crop training), the label map applied to its masks, class names, the binary
threshold, the initialisation rule it started from, and how its input is read and normalised (the
source file's ``bands``, per-channel ``mean`` / ``std``). Checkpoints store it under ``"spec"`` and
ONNX exports in their metadata, as :meth:`ModelSpec.to_dict`.

:meth:`ModelSpec.from_dict` also reads the earlier forms: version 1, the flat ``config`` dict of
checkpoints and ONNX files written before the spec existed (it held every train.py flag), and
version 2, which had no bands and statistics (None: every band, divided by 255). A bare
state dict of the original release has no spec; :func:`spec_from_state` infers one from its key
names and shapes.

:func:`build_model` is the only place a :class:`~nets.deeplabv3_plus.DeepLab` is made.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from nets.deeplabv3_plus import DOWNSAMPLE_FACTORS, HEADS, DeepLab
from nets.init import DEFAULT_INIT, check_init, init_weights
from nets.registry import backbone_names, get_backbone
from nets.task import Task, get_task, task_for_channels

SPEC_VERSION = 3
# The input size of the original release's models, for bare files that do not say.
DEFAULT_INPUT_SIZE = (512, 512)
# Key that exists only with the separable head (ASPP's first 3x3 branch is depthwise + pointwise there).
SEPARABLE_MARKER = "aspp.branch2.depthwise.0.weight"
CLASSIFIER_KEY = "cls_conv.weight"


@dataclass
class ModelSpec:
    """What a trained model is (see the module docstring).

    Raises:
        ValueError: on construction, for an unknown backbone, head, task or initialisation rule, an
            unsupported output stride, too few classes or class names of the wrong count; the
            message lists the valid values.
    """

    backbone: str = "mobilenet"
    num_classes: int = 21
    task: str = "multiclass"
    head: str = "standard"
    downsample_factor: int = 16
    in_channels: int = 3
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    crop_size: tuple[int, int] | None = None
    class_names: list[str] | None = None
    label_map: str | None = None
    threshold: float | None = None
    init: str | None = None  # the rule of the tensors no file provided; None: not recorded (released files)
    # 1-based band indices read from the source file (GDAL order); None: all of its bands.
    bands: tuple[int, ...] | None = None
    # Per input channel, in the file's units: the input is (x - mean) / std. None: 8-bit input / 255.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    version: int = field(default=SPEC_VERSION)

    def __post_init__(self) -> None:
        get_backbone(self.backbone)
        task = get_task(self.task)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {self.head!r}")
        if self.downsample_factor not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"downsample_factor (output stride) must be one of 8, 16; got {self.downsample_factor!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2; got {self.num_classes!r}")
        task.output_channels(self.num_classes)  # a binary task checks its two classes
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1; got {self.in_channels}")
        if self.init is not None:
            check_init(self.init)
        self._check_input()
        self.input_size = _pair(self.input_size)
        self.crop_size = None if self.crop_size is None else _pair(self.crop_size)
        if self.class_names is not None:
            self.class_names = [str(name) for name in self.class_names]
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"{self.num_classes} classes need {self.num_classes} class names, "
                                 f"got {len(self.class_names)}")
        if task.thresholded:
            self.threshold = float(task.default_threshold if self.threshold is None else self.threshold)
        elif self.threshold is not None:
            raise ValueError(f"a threshold applies to binary models; this is a {self.num_classes}-class "
                             f"{task.name} model")
        self.version = SPEC_VERSION

    def _check_input(self) -> None:
        """Bands and statistics: one per input channel, 1-based bands, finite means, positive finite stds."""
        if self.bands is not None:
            self.bands = tuple(int(band) for band in self.bands)
            if len(self.bands) != self.in_channels or min(self.bands) < 1:
                raise ValueError(f"bands must be {self.in_channels} band indices of 1 or more (one per input "
                                 f"channel); got {list(self.bands)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")
        if self.mean is None or self.std is None:
            return
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean and std need {self.in_channels} values (one per input channel); got "
                             f"{len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean must be finite and std finite and above 0; got mean {list(self.mean)}, "
                             f"std {list(self.std)}")

    @property
    def task_obj(self) -> Task:
        """The :class:`~nets.task.Task` object of :attr:`task`."""
        return get_task(self.task)

    @property
    def output_channels(self) -> int:
        """Channels of the model's last layer."""
        return self.task_obj.output_channels(self.num_classes)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` (None values are ignored), validated again."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for sizes), as stored in checkpoints and ONNX metadata."""
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        out["crop_size"] = None if self.crop_size is None else list(self.crop_size)
        for key in ("bands", "mean", "std"):
            out[key] = None if out[key] is None else list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Read a stored spec of any version (see the module docstring); unknown keys are ignored.

        Version 1 dicts (``config`` of older checkpoints and ONNX files) use the same names for the
        fields they have; the missing ones take their defaults (multiclass, standard head, no init
        recorded), as those files were written before the options existed. Version 2 dicts have no
        ``bands``, ``mean`` or ``std``: all bands, 8-bit input divided by 255, as those models were trained.
        """
        version = int(data.get("version", 1))
        if version > SPEC_VERSION:
            raise ValueError(f"spec version {version} is newer than this toolkit's ({SPEC_VERSION}): update it")
        known = {f.name for f in fields(cls)} - {"version"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        if not get_task(values.get("task", "multiclass")).thresholded:
            values.pop("threshold", None)  # version 1 recorded the flag's value for every task
        return cls(**values)


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    values = [int(v) for v in size]
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise ValueError(f"a size is H W or one side; got {size!r}")
    return (values[0], values[1])


def backbone_of_state(state: dict[str, torch.Tensor]) -> str | None:
    """The registered backbone whose marker key ``state`` holds, or None."""
    return next((name for name in backbone_names() if get_backbone(name).marker_key in state), None)


def spec_from_state(state: dict[str, torch.Tensor]) -> ModelSpec:
    """The spec a bare DeepLab state dict implies: backbone and head from key names, task and classes from
    the classifier's channels, input bands from the first convolution, 512x512 and stride 16 (the release's).

    Raises:
        ValueError: ``state`` is not a DeepLab of a registered backbone.
    """
    backbone = backbone_of_state(state)
    if backbone is None or CLASSIFIER_KEY not in state:
        markers = " or ".join(get_backbone(name).marker_key for name in backbone_names())
        raise ValueError(f"not a DeepLabV3+ model: it has no {markers} / {CLASSIFIER_KEY} keys")
    channels = int(state[CLASSIFIER_KEY].shape[0])
    task = task_for_channels(channels)
    bands = int(state[get_backbone(backbone).marker_key].shape[1])
    return ModelSpec(backbone=backbone, num_classes=task.num_classes(channels), task=task.name,
                     head="separable" if SEPARABLE_MARKER in state else "standard", in_channels=bands)


def build_model(spec: ModelSpec, pretrained: bool = False, init: str | None = None) -> DeepLab:
    """The DeepLab of ``spec``: the only place one is made.

    Args:
        spec: what to build.
        pretrained: load the backbone's ImageNet weights from ``model_data/`` (downloaded when absent).
        init: the initialisation rule (:mod:`nets.init`) for every tensor no file provides; default the
            spec's ``init``, else :data:`~nets.init.DEFAULT_INIT`. ``"pytorch"`` keeps the layers' own
            defaults. File tensors are loaded after it, so they are never re-initialised.
    """
    entry = get_backbone(spec.backbone)
    model = DeepLab(spec.output_channels, entry, downsample_factor=spec.downsample_factor, head=spec.head,
                    in_channels=spec.in_channels)
    rule = init or spec.init or DEFAULT_INIT
    if rule != "pytorch":  # the layers were just built with their own defaults
        init_weights(model, rule, classifier=model.cls_conv)
    if pretrained:
        from nets.pretrained import load_imagenet_backbone

        load_imagenet_backbone(model.backbone, spec.backbone, in_channels=spec.in_channels)
    return model
