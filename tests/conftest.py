"""Shared pytest fixtures (each block is owned by the engineer who added it)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.data.demo import make_demo_dataset
from utils.data.io import save_label

# ---- dataset builders (utils/data/, voc_annotation.py, labelme tests) ----

def _write_voc_dataset(root, pairs, splits=None, image_ext=".png"):
    """Write ``pairs`` {stem: (rgb uint8 HxWx3, label uint8 HxW or None)} in the VOC layout under ``root``.

    Labels are saved as palette PNGs; ``splits`` maps split name -> stems (default: every stem in
    train and val). Returns ``root``.
    """
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    for stem, (image, label) in pairs.items():
        if image is not None:
            Image.fromarray(image).save(root / "JPEGImages" / f"{stem}{image_ext}")
        if label is not None:
            save_label(label, root / "SegmentationClass" / f"{stem}.png")
    if splits is None:
        splits = {"train": list(pairs), "val": list(pairs)}
    if splits:
        split_dir = root / "ImageSets" / "Segmentation"
        split_dir.mkdir(parents=True, exist_ok=True)
        for name, stems in splits.items():
            (split_dir / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


def _tiny_pairs(count=6, num_classes=3, seed=0):
    """Random image/label pairs of varied non-square sizes, labels in 0..num_classes-1 with some 255."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for i in range(count):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 64))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, num_classes, (h, w), dtype=np.uint8)
        label[0, :] = 255
        pairs[f"img_{i:02d}"] = (image, label)
    return pairs


@pytest.fixture
def voc_dataset_factory(tmp_path):
    """Factory fixture: ``make(pairs=None, splits=None, image_ext='.png', name='voc')`` -> data root path.

    Without ``pairs`` it writes six random pairs (3 classes, 255 borders) split train 4 / val 2.
    """
    def make(pairs=None, splits=None, image_ext=".png", name="voc"):
        if pairs is None:
            pairs = _tiny_pairs()
            stems = list(pairs)
            splits = splits if splits is not None else {"train": stems[:4], "val": stems[4:]}
        return _write_voc_dataset(tmp_path / name, pairs, splits, image_ext)
    return make


@pytest.fixture(scope="session")
def demo_dataset_root(tmp_path_factory):
    """A small demo dataset (12 train, 4 val) shared by the whole test session; treat it as read-only."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", seed=0, num_train=12, num_val=4)


# ---- tiny model checkpoint (get_miou.py / evaluation tests) ----

@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as train.py wrote them before the spec (the flat version-1 ``config``, read through the
    migration) around a random 3-class MobileNet DeepLab with a 64x64 input; read-only path."""
    import torch

    from nets.deeplabv3_plus import DeepLab
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(0)
    model = DeepLab(num_classes=3, backbone="mobilenet").eval()
    config = {"backbone": "mobilenet", "num_classes": 3, "class_names": ["background", "cat", "dog"],
              "downsample_factor": 16, "input_size": [64, 64]}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint({"model": model.state_dict(), "optimizer": None, "scheduler": None, "scaler": None,
                     "epoch": 1, "best_miou": 0.0, "rng": None, "config": config,
                     "format": CHECKPOINT_FORMAT}, path)
    return path


# ---- training (train.py, utils/training/) ----

@pytest.fixture(scope="session")
def train_data_root(tmp_path_factory):
    """A tiny demo dataset for training tests: 8 train / 4 val images of at most 80x64; read-only."""
    return make_demo_dataset(tmp_path_factory.mktemp("train_data") / "demo", seed=1, num_train=8, num_val=4,
                             size=(80, 64))


@pytest.fixture(scope="session")
def init_weights(tmp_path_factory):
    """A bare state dict (the original release's layout) of a seeded random 4-class MobileNet DeepLab, for
    ``train.py --weights``: runs with a frozen phase need backbone weights. Read-only path."""
    import torch

    from nets.deeplabv3_plus import DeepLab

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("init_weights") / "init.pth"
    torch.save(DeepLab(num_classes=4, backbone="mobilenet").state_dict(), path)
    return path


# ---- predictor, predict.py and ONNX (issue 5) ----

@pytest.fixture(scope="session")
def predict_checkpoints(tmp_path_factory):
    """A random 3-class MobileNet DeepLab whose masks hold background and objects (zero head bias, varied
    BatchNorm statistics), saved twice: ``ckpt`` in our format (64x64 input) and ``bare`` as a plain
    state dict in the original release's layout. Returns ``{"ckpt": Path, "bare": Path, "model": DeepLab}``."""
    import torch

    from bench.common import vary_batchnorm
    from nets.deeplabv3_plus import DeepLab
    from nets.spec import ModelSpec
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(0)
    model = DeepLab(num_classes=3, backbone="mobilenet").eval()
    with torch.no_grad():
        model.cls_conv.bias.zero_()
        vary_batchnorm(model)
    folder = tmp_path_factory.mktemp("predict_ckpt")
    spec = ModelSpec(num_classes=3, class_names=["background", "cat", "dog"], input_size=(64, 64))
    save_checkpoint({"model": model.state_dict(), "spec": spec.to_dict(), "epoch": 1,
                     "format": CHECKPOINT_FORMAT}, folder / "model.pth")
    torch.save(model.state_dict(), folder / "bare.pth")
    return {"ckpt": folder / "model.pth", "bare": folder / "bare.pth", "model": model}
