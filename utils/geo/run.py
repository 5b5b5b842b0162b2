"""predict.py's scenes: split them from the photos of a run, then predict each, recording failures per scene.

A scene that fails (a damaged block, a band out of range) is one failure line naming the file;
the run goes on with the other inputs, as for unreadable photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from utils.errors import UserError
from utils.geo.detect import is_scene
from utils.geo.scene import SceneOptions, predict_scene, scene_targets
from utils.inference.inputs import Job
from utils.inference.options import OutputOptions
from utils.inference.outputs import Run
from utils.inference.predictor import Predictor


def split_scenes(jobs: Sequence[Job], options: SceneOptions, out_dir: Path) -> tuple[list[Job], list[Job]]:
    """(scenes, photos) of ``jobs`` (:func:`utils.geo.detect.is_scene`); UserError when two scenes would write
    the same output (``x.tif`` and ``x.tiff``)."""
    scenes, photos = [], []
    for job in jobs:
        (scenes if is_scene(job.source) else photos).append(job)
    seen: dict[Path, Path] = {}
    for job in scenes:
        for output in scene_targets(job.relative, options):
            if output in seen:
                raise UserError(f"{seen[output]} and {job.source} would both be written to {out_dir / output}: "
                                "give them in separate runs or with different --out folders")
            seen[output] = job.source
    return scenes, photos


def scene_options(outputs: OutputOptions, polygons: bool, batch_size: int | None = None) -> SceneOptions:
    """The scene outputs of predict.py's output options and ``--polygons``; ``batch_size`` is ``--batch-size``
    when given (None: the scene default)."""
    return SceneOptions(save_prob=outputs.save_prob, prob_bits=outputs.prob_bits, polygons=polygons,
                        batch_size=batch_size)


def predict_scenes(jobs: Sequence[Job], predictor: Predictor, out_dir: Path, options: SceneOptions, run: Run) -> None:
    """Predict each scene job into ``out_dir`` (relative paths kept), adding its outputs, counts and failures
    to ``run``."""
    for job in jobs:
        try:
            result = predict_scene(predictor, job.source, out_dir / job.relative, options)
        except UserError as exc:
            run.failures.append(str(exc))
            continue
        run.written += result.written
        run.segmented += 1
        run.counts = result.counts if run.counts is None else run.counts + result.counts
        run.per_image.append((str(result.written[0]), result.counts))
        print(f"{job.source} -> {result.written[0]}", flush=True)
