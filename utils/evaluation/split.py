"""Evaluating a model on a dataset split: predict every image, write index PNGs, fill a confusion matrix.

This is what ``get_miou.py`` runs, and :func:`iterate_predictions` is also the loop of the
evaluation during training. Predictions go through :class:`utils.inference.predictor.Predictor`
(the same pipeline as ``predict.py``) at each image's original resolution. The next batch is
read in a thread while this one's masks are scored and written, and PNGs are written in another
thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.data.dataset import SegmentationDataset
from utils.data.io import save_label
from utils.data.label_map import LabelMap
from utils.data.layout import check_layout, index_images, read_split
from utils.data.raster import check_bands, image_info, read_image
from utils.errors import UserError
from utils.evaluation.confusion import ConfusionMatrix
from utils.evaluation.folders import score_folders
from utils.evaluation.threshold import ThresholdSweep
from utils.inference.pipeline import read_ahead
from utils.inference.predictor import Predictor


def check_pred_dir(root: Path, pred_dir: Path) -> None:
    """Refuse a prediction folder that is the data root's label or image folder (it would be overwritten)."""
    target = pred_dir.resolve()
    for folder in ("SegmentationClass", "JPEGImages"):
        if target == (root / folder).resolve():
            raise UserError(f"--pred-dir {pred_dir} is the dataset's {folder} folder: predictions would "
                            "overwrite your files there; choose another folder (default: <out>/detection-results)")


def _split_images(root: Path, split: str) -> tuple[list[str], list[Path]]:
    """Stems of a split and their image paths (labels not needed), UserError naming a missing image."""
    if not (root / "JPEGImages").is_dir():
        check_layout(root)
    stems = read_split(root, split)
    images = index_images(root / "JPEGImages")
    missing = [stem for stem in stems if stem not in images]
    if missing:
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        raise UserError(f"{split_file} names {len(missing)} image(s) missing from {root / 'JPEGImages'}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; add them or rerun "
                        "voc_annotation.py --force to rewrite the split files")
    return stems, [images[stem] for stem in stems]


def check_model_input(predictor: Predictor, path: Path) -> None:
    """UserError when the images (like ``path``) do not give the model its input: its band count, and 8-bit
    data for a model without per-band statistics."""
    spec = predictor.spec
    info = image_info(path)
    channels = len(check_bands(info.count, spec.bands, path)) if spec.bands else info.count
    if channels != spec.in_channels:
        raise UserError(f"{path} gives {channels} band(s) but the model takes {spec.in_channels}: choose them "
                        "with --bands (1-based, e.g. --bands 4,3,2)")
    if spec.mean is None and info.dtype != "uint8":
        raise UserError(f"{path} holds {info.dtype} bands but the model was trained on 8-bit images (it has no "
                        "per-band statistics): use a model trained on this kind of data")


def split_label_paths(root: Path, split: str) -> list[Path]:
    """The label PNGs ``SegmentationClass/<stem>.png`` of a split's stems (which may not all exist)."""
    return [root / "SegmentationClass" / f"{stem}.png" for stem in read_split(root, split)]


def iterate_predictions(
    predictor: Predictor,
    load: Callable[[int], tuple[np.ndarray, np.ndarray | None]],
    indices: Sequence[int],
    progress: bool = True,
    desc: str = "predict",
    with_prob: bool = False,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray, torch.Tensor | None]]:
    """Yield ``(index, image, label, mask, prob)`` for each index, predicting a batch at a time.

    ``load(index)`` returns ``(image, label or None)``; the next batch is read in a thread while
    the results of this one are used (:func:`utils.inference.pipeline.read_ahead`). Masks are at
    each image's original size.
    ``prob`` is None unless ``with_prob``: then the probability map of
    :meth:`~utils.inference.predictor.Predictor.predict_with_prob` (on the predictor's device).
    """
    def read(batch: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return [load(i) for i in batch]

    def segment(pairs: list[tuple[np.ndarray, np.ndarray | None]]) -> list[tuple[np.ndarray, torch.Tensor | None]]:
        images = [image for image, _ in pairs]
        if with_prob:
            return predictor.predict_with_prob(images)
        return [(mask, None) for mask in predictor.predict(images)]

    with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress) as bar:
        for batch, pairs, results in read_ahead(list(indices), predictor.batch_size, read, segment):
            for index, (image, label), (mask, prob) in zip(batch, pairs, results, strict=True):
                yield index, image, label, mask, prob
            bar.update(len(batch))


def predict_split(
    predictor: Predictor,
    root: str | os.PathLike,
    split: str,
    pred_dir: str | os.PathLike | None,
    matrix: ConfusionMatrix | None = None,
    progress: bool = True,
    label_map: LabelMap | None = None,
    sweep: ThresholdSweep | None = None,
) -> int:
    """Predict every image of ``split`` at its original size; return the number of images.

    With ``pred_dir`` each mask is written as ``<pred_dir>/<stem>.png`` (palette PNG with the VOC
    colours whose pixel values are the class indices). With ``matrix`` each mask is scored in
    memory against ``SegmentationClass/<stem>.png`` (the split's labels are checked before any
    prediction starts), remapped by ``label_map``; with ``sweep`` (a binary model, ``matrix`` given)
    the foreground probabilities are counted at every threshold too. Test-time augmentation and
    sliding windows are the predictor's options.
    """
    root = Path(root)
    if matrix is not None:
        dataset = SegmentationDataset(root, split, predictor.input_size, predictor.num_classes, train=False,
                                      label_map=label_map, bands=predictor.spec.bands,
                                      normalization=predictor.engine.normalization)
        stems = dataset.stems

        def load(i: int) -> tuple[np.ndarray, np.ndarray | None]:
            return dataset.load_pair(i)
        first = dataset.image_path(0) if len(dataset) else None
    else:
        stems, paths = _split_images(root, split)
        first = paths[0] if paths else None

        def load(i: int) -> tuple[np.ndarray, np.ndarray | None]:
            return read_image(paths[i], predictor.spec.bands, predictor.engine.normalization), None

    if first is not None:
        check_model_input(predictor, first)
    if pred_dir is not None:
        pred_dir = Path(pred_dir)
        check_pred_dir(root, pred_dir)
        pred_dir.mkdir(parents=True, exist_ok=True)
    writes: list[Future] = []
    with ThreadPoolExecutor(1) as writer:
        for index, _, label, mask, prob in iterate_predictions(predictor, load, range(len(stems)), progress=progress,
                                                               with_prob=sweep is not None and matrix is not None):
            if matrix is not None:
                matrix.update(mask, label)
                if sweep is not None:
                    sweep.update(prob, label)
            if pred_dir is not None:
                writes.append(writer.submit(save_label, mask, pred_dir / f"{stems[index]}.png"))
            # Surface a failed write (disk full, permissions) early, without waiting on the rest.
            for done in [w for w in writes if w.done()]:
                done.result()
                writes.remove(done)
        for pending in writes:
            pending.result()
    return len(stems)


def score_split(
    root: str | os.PathLike,
    split: str,
    pred_dir: str | os.PathLike,
    num_classes: int,
    workers: int | None = None,
    label_map: LabelMap | None = None,
) -> np.ndarray:
    """Confusion matrix of the PNGs in ``pred_dir`` against the split's labels, remapped by ``label_map``
    (see ``score_folders``)."""
    root = Path(root)
    stems = read_split(root, split)
    return score_folders(root / "SegmentationClass", pred_dir, stems, num_classes, workers=workers,
                         label_map=label_map)
