"""The ``whole`` inference strategy: letterbox each image to the network input, forward, resize back.

The class map is defined as: probabilities (softmax, sigmoid for a one-channel model), crop of the
letterbox content box, bilinear resize to the original size (``align_corners=False``, as the
original's ``cv2.resize``), argmax (or the binary threshold). :func:`predict_labels` computes exactly
that without the full-size probabilities (:func:`utils.inference.postprocess.upsample_labels`);
:func:`predict_proba` returns them. Test-time augmentation averages the probabilities over scales of
the input size and a horizontal flip. The forward pass is the shared :class:`~utils.inference.engine.Engine`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.transforms import letterbox
from utils.errors import MIN_INPUT_SIDE
from utils.inference.engine import Engine
from utils.inference.postprocess import average_upsampled_labels, labels_and_prob, upsample_labels


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def scaled_sizes(input_size: tuple[int, int], scales: Sequence[float] | None) -> list[tuple[int, int]]:
    """Network input sizes: ``input_size``, or (test-time augmentation) each of its ``scales``."""
    if scales is None:
        return [input_size]
    if not scales:
        raise ValueError("tta needs at least one scale")
    return [(max(MIN_INPUT_SIDE, round(input_size[0] * s)), max(MIN_INPUT_SIDE, round(input_size[1] * s)))
            for s in scales]


def content_maps(engine: Engine, images: Sequence[np.ndarray], size: tuple[int, int], flip: bool,
                 logits: bool = False) -> list[torch.Tensor]:
    """Class probabilities (C, h, w) of each image's letterbox content box, for one network input size
    (with ``logits`` and no ``flip``, the network's outputs there instead)."""
    out: list[torch.Tensor] = []
    for chunk in _chunks(images, engine.batch_size):
        placed = [letterbox(image, size, fill=engine.fill(image)) for image in chunk]
        batch = engine.to_batch([canvas for canvas, _, _ in placed])
        output = engine.forward(torch.cat((batch, batch.flip(3))) if flip else batch)
        for index, (_, _, box) in enumerate(placed):
            rows, cols = slice(box.top, box.top + box.height), slice(box.left, box.left + box.width)
            if logits and not flip:
                out.append(output[index, :, rows, cols])
                continue
            probs = engine.probabilities(output[index:index + 1, :, rows, cols])
            if flip:
                mirrored = output[len(chunk) + index:len(chunk) + index + 1].flip(3)
                probs = (probs + engine.probabilities(mirrored[:, :, rows, cols])) * 0.5
            out.append(probs[0])
    return out


def predict_proba(engine: Engine, images: Sequence[np.ndarray], scales: Sequence[float] | None = None,
                  flip: bool = False) -> list[torch.Tensor]:
    """Class probabilities (C, H, W) float32 at each image's original size, on the engine's device.

    This holds C x H x W floats per image (1 GB for 21 classes at 12 MP); :func:`predict_labels`
    gives the same argmax without them. ``scales`` (test-time augmentation) averages over those
    scales of the input size, ``flip`` over horizontal flips.
    """
    sizes = scaled_sizes(engine.input_size, scales)
    total: list[torch.Tensor] | None = None
    for size in sizes:
        maps = content_maps(engine, images, size, flip=flip)
        probs = [m if m.shape[1:] == image.shape[:2] else
                 F.interpolate(m[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
                 for m, image in zip(maps, images, strict=True)]
        total = probs if total is None else [t.add_(p) for t, p in zip(total, probs, strict=True)]
    return total if len(sizes) == 1 else [t.div_(len(sizes)) for t in total]


def predict_labels(engine: Engine, images: Sequence[np.ndarray], scales: Sequence[float] | None = None,
                   flip: bool = False) -> list[np.ndarray]:
    """Class-index masks uint8 (H, W) at each image's original size: the argmax of :func:`predict_proba`
    (ties aside; a binary model's threshold), computed without full-size probabilities."""
    sizes = scaled_sizes(engine.input_size, scales)
    # One plain forward: upsample_labels takes the logits and softmaxes only where classes meet.
    logits = len(sizes) == 1 and not flip and not engine.outputs_probabilities
    per_size = [content_maps(engine, images, size, flip=flip, logits=logits) for size in sizes]
    masks = []
    for index, image in enumerate(images):
        maps = [maps[index] for maps in per_size]
        if len(maps) == 1:
            masks.append(upsample_labels(maps[0], image.shape[:2], engine.threshold, logits=logits))
        else:
            masks.append(average_upsampled_labels(maps, image.shape[:2], engine.threshold))
    return masks


def predict_with_prob(engine: Engine, images: Sequence[np.ndarray], scales: Sequence[float] | None = None,
                      flip: bool = False) -> list[tuple[np.ndarray, torch.Tensor]]:
    """``(mask, prob)`` per image: the mask of :func:`predict_labels` and, from the same probabilities, the
    foreground probability (binary) or the predicted class's probability (H, W), float32 on the device.
    Goes through the full-size probabilities of one image at a time."""
    out = []
    for image in images:
        (p,) = predict_proba(engine, [image], scales, flip)
        mask, prob = labels_and_prob(p, engine.threshold)
        out.append((mask.cpu().numpy(), prob))
    return out
