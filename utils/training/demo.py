"""``train.py --demo``: the small CPU configuration, where its runs go, and writing its synthetic data.

The settings are defaults only: flags the user gives keep their values. The data itself is
:mod:`utils.data.demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.data.demo import DEMO_CLASSES, make_demo_dataset
from utils.training.distributed import DistContext, barrier
from utils.training.options import TrainOptions

DEMO_ROOT = Path("VOCdevkit/demo")
# The CPU demo: a small model input, no freezing (the backbone starts random), no ImageNet file.
DEMO_SETTINGS: dict[str, Any] = {
    "data_root": str(DEMO_ROOT), "backbone": "mobilenet", "downsample_factor": 16, "input_size": [128],
    "pretrained": False, "epochs": 8, "freeze_epochs": 0, "batch_size": 8, "freeze_batch_size": 8,
    "optimizer": "sgd", "lr": 0.2, "weight_decay": 1e-4, "workers": 2, "eval_period": 4, "save_period": 100,
}
DEMO_SAVE_DIR = Path("logs/demo")


def apply_demo_settings(options: TrainOptions, given: set[str]) -> None:
    """``--demo``: use the small CPU configuration (flags only; the data is made by :func:`prepare_demo_data`).

    Flags the user gave explicitly (``given``) keep their values. Without ``--save-dir`` a new
    demo run goes to ``logs/demo``, or the first of ``logs/demo_2``, ``logs/demo_3``, ... that
    holds no run yet, so running the demo again never overwrites an earlier one;
    ``--resume auto`` continues ``logs/demo``, ``--resume PATH`` the folder of PATH.
    """
    for key, value in DEMO_SETTINGS.items():
        if key not in given:
            setattr(options, key, value)
    if "classes" not in given and "num_classes" not in given:
        options.classes = None
        options.num_classes = len(DEMO_CLASSES)
    if "save_dir" not in given:
        if options.resume == "auto":
            options.save_dir = str(DEMO_SAVE_DIR)
        elif not options.resume:  # --resume PATH continues in PATH's folder (validate_args)
            options.save_dir = str(free_demo_dir(DEMO_SAVE_DIR))


def free_demo_dir(base: Path) -> Path:
    """``base``, or the first ``base_2``, ``base_3``, ... without a ``last.pth`` in it."""
    candidate, number = base, 1
    while (candidate / "last.pth").exists():
        number += 1
        candidate = base.with_name(f"{base.name}_{number}")
    return candidate


def prepare_demo_data(options: TrainOptions, ctx: DistContext) -> None:
    """``--demo``: write the demo dataset if missing, on the main rank only; the others wait for it.

    Runs after the process group exists so that under torchrun one process writes the files.
    A ``--data-root`` of the user's that already exists is left alone.
    """
    if not options.demo:
        return
    if ctx.is_main and (Path(options.data_root) == DEMO_ROOT or not Path(options.data_root).exists()):
        make_demo_dataset(options.data_root)
    barrier(ctx)
