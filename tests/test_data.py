"""Tests for utils/data.py: image modes, labels, letterbox, augmentation, dataset errors, loaders."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import (
    IMAGE_EXTENSIONS,
    VOC_CLASSES,
    SegmentationDataset,
    augment,
    build_loader,
    default_class_names,
    letterbox,
    load_image,
    load_label,
    parse_split_file,
    read_class_names,
    read_split,
    set_loader_epoch,
    to_device,
    worker_seed,
)
from utils.errors import UserError


def _blocks(h: int = 16, w: int = 24) -> np.ndarray:
    """An RGB image of four flat colour blocks (survives JPEG well enough for tolerant comparisons)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2, : w // 2] = (220, 30, 30)
    image[: h // 2, w // 2:] = (30, 200, 40)
    image[h // 2:, : w // 2] = (20, 40, 210)
    image[h // 2:, w // 2:] = (240, 240, 20)
    return image


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
def test_every_extension_reads_as_rgb(tmp_path, ext):
    image = _blocks()
    path = tmp_path / f"a{ext}"
    Image.fromarray(image).save(path, **({"quality": 95} if ext in (".jpg", ".jpeg", ".webp") else {}))
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == image.shape
    error = np.abs(loaded.astype(int) - image)
    if ext in (".jpg", ".jpeg", ".webp"):
        assert error.mean() < 8  # lossy: colour blocks survive, edges blur
    else:
        assert error.max() == 0


def test_grey_palette_alpha_and_one_bit_modes(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    assert np.array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))

    rgba = np.dstack([_blocks(), np.full((16, 24), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), _blocks())

    Image.fromarray(np.dstack([grey, grey]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(load_image(tmp_path / "la.png")[..., 1], grey)

    palette_image = Image.fromarray(_blocks()).quantize(colors=4)
    palette_image.save(tmp_path / "pal.png")
    assert np.array_equal(load_image(tmp_path / "pal.png"), _blocks())
    palette_image.save(tmp_path / "pal_t.png", transparency=0)
    assert np.array_equal(load_image(tmp_path / "pal_t.png"), _blocks())

    Image.fromarray(grey > 60).save(tmp_path / "bits.png")
    assert set(np.unique(load_image(tmp_path / "bits.png"))) == {0, 255}


def test_sixteen_bit_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded[0, :, 0].tolist() == [0, 100, 255, 1]
    assert loaded.shape == (1, 4, 3)


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_becomes_correct_rgb(tmp_path, ext):
    Image.fromarray(_blocks()).convert("CMYK").save(tmp_path / f"cmyk{ext}")
    with Image.open(tmp_path / f"cmyk{ext}") as check:
        assert check.mode == "CMYK"
    assert np.abs(load_image(tmp_path / f"cmyk{ext}").astype(int) - _blocks()).mean() < 8


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, ext):
    image = _blocks(16, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / f"o{ext}", exif=exif, **({"quality": 98, "subsampling": 0}
                                                                     if ext == ".jpg" else {}))
    loaded = load_image(tmp_path / f"o{ext}")
    assert loaded.shape == (24, 16, 3)
    assert np.abs(loaded.astype(int) - np.rot90(image, k=-1)).mean() < (8 if ext == ".jpg" else 1e-9)


@pytest.mark.parametrize("kind", ["truncated-png", "truncated-jpg", "text", "missing"])
def test_unreadable_images_raise_user_error(tmp_path, kind):
    ext = ".jpg" if kind.endswith("jpg") else ".png"
    path = tmp_path / f"bad{ext}"
    if kind.startswith("truncated"):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buffer, format="JPEG" if ext == ".jpg" else "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "text":
        path.write_text("not an image")
    with pytest.raises(UserError, match="bad"):
        load_image(path)


def test_load_label_modes(tmp_path):
    label = np.array([[0, 1, 2], [255, 3, 0]], np.uint8)
    from utils.data import save_label

    save_label(label, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
    assert np.array_equal(load_label(tmp_path / "p.png"), label)
    Image.fromarray(label, "L").save(tmp_path / "l.png")
    assert np.array_equal(load_label(tmp_path / "l.png"), label)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"rgb\.png.*colour"):
        load_label(tmp_path / "rgb.png")
    Image.fromarray(label.astype(np.uint16) * 300).save(tmp_path / "deep.png")
    with pytest.raises(UserError, match="8-bit"):
        load_label(tmp_path / "deep.png")


def test_read_class_names(tmp_path):
    (tmp_path / "c.txt").write_text("background\n cat \n\ndog\n")
    assert read_class_names(tmp_path / "c.txt") == ["background", "cat", "dog"]
    (tmp_path / "d.txt").write_text("background\ncat\ncat\n")
    with pytest.raises(UserError, match="cat"):
        read_class_names(tmp_path / "d.txt")
    with pytest.raises(UserError, match="not found"):
        read_class_names(tmp_path / "none.txt")
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"


@pytest.mark.parametrize("shape", [(20, 30), (30, 20), (64, 64), (10, 90), (150, 40)])
def test_letterbox_round_trip_pads_label_with_255(shape):
    h, w = shape
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # Regions of classes 1..4 and no zeros anywhere in the source.
    yy, xx = np.mgrid[0:h, 0:w]
    label = (1 + (xx // 16 + 2 * (yy >= h // 2)) % 4).astype(np.uint8)
    canvas, label_canvas, box = letterbox(image, (64, 64), label)
    assert canvas.shape == (64, 64, 3) and label_canvas.shape == (64, 64)
    assert canvas.dtype == np.uint8 and label_canvas.dtype == np.uint8
    assert 0 not in label_canvas  # padding is never background
    inside = np.zeros((64, 64), bool)
    inside[box.top:box.top + box.height, box.left:box.left + box.width] = True
    assert (label_canvas[~inside] == 255).all() and (canvas[~inside] == 128).all()
    assert (label_canvas[inside] != 255).all()
    # Centred, aspect ratio kept.
    assert abs(box.height / box.width - h / w) < 0.1 + 1 / min(box.height, box.width)
    assert abs(box.top - (64 - box.top - box.height)) <= 1 and abs(box.left - (64 - box.left - box.width)) <= 1
    # Back to the original size: nearest-resized label content matches the source.
    import cv2

    crop = label_canvas[box.top:box.top + box.height, box.left:box.left + box.width]
    back = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    assert (back == label).mean() > 0.85
    same, _, same_box = letterbox(image, (h, w))
    assert np.array_equal(same, image) and same_box == (0, 0, h, w)


def test_augmented_labels_keep_only_source_values_and_255():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = rng.choice(np.array([1, 3, 7], np.uint8), size=(40, 60))
    seen: set[int] = set()
    for _ in range(60):
        out_image, out_label = augment(image, label, (48, 32), rng)
        assert out_image.shape == (48, 32, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (48, 32) and out_label.dtype == np.uint8
        seen |= set(np.unique(out_label).tolist())
    assert seen <= {1, 3, 7, 255}
    assert {1, 3, 7, 255} <= seen


def test_augment_is_reproducible_for_a_seed():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    label = np.ones((30, 50), np.uint8)
    first = augment(image, label, (32, 32), np.random.default_rng(5))
    second = augment(image, label, (32, 32), np.random.default_rng(5))
    third = augment(image, label, (32, 32), np.random.default_rng(6))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], third[0])


def test_dataset_samples(voc_dataset_factory):
    root = voc_dataset_factory()
    val = SegmentationDataset(root, "val", (32, 48), num_classes=3, train=False)
    train = SegmentationDataset(root, "train", 32, num_classes=3, train=True)
    assert len(val) == 2 and len(train) == 4 and val.stems == ["img_04", "img_05"]
    image, label = val[0]
    assert image.shape == (3, 32, 48) and image.dtype == torch.uint8
    assert label.shape == (32, 48) and label.dtype == torch.uint8
    assert set(label.unique().tolist()) <= {0, 1, 2, 255}
    assert val.image_path(0).name == "img_04.png" and val.label_path(0).name == "img_04.png"
    image, label = train[1]
    assert image.shape == (3, 32, 32) and set(label.unique().tolist()) <= {0, 1, 2, 255}


def test_dataset_finds_images_by_any_extension(voc_dataset_factory):
    root = voc_dataset_factory(image_ext=".bmp")
    dataset = SegmentationDataset(root, "train", 16, num_classes=3, train=False)
    assert dataset.image_path(0).suffix == ".bmp"
    assert dataset[0][0].shape == (3, 16, 16)


def test_missing_folder_shows_the_expected_tree(tmp_path):
    with pytest.raises(UserError) as info:
        SegmentationDataset(tmp_path / "nowhere", "train", 32, 3, train=True)
    message = str(info.value)
    assert "nowhere" in message and "JPEGImages/" in message and "SegmentationClass/" in message
    assert "ImageSets/Segmentation/" in message


def test_split_naming_a_missing_image(voc_dataset_factory):
    root = voc_dataset_factory()
    (root / "ImageSets/Segmentation/train.txt").write_text("img_00\nghost\n")
    with pytest.raises(UserError, match=r"train\.txt names 'ghost'.*no image"):
        SegmentationDataset(root, "train", 32, 3, train=True)


def test_empty_split(voc_dataset_factory):
    root = voc_dataset_factory()
    (root / "ImageSets/Segmentation/val.txt").write_text("\n \n")
    with pytest.raises(UserError, match=r"val\.txt is empty"):
        SegmentationDataset(root, "val", 32, 3, train=False)


def test_size_mismatch_names_both_sizes(voc_dataset_factory):
    pairs = {"a": (np.zeros((20, 30, 3), np.uint8), np.zeros((21, 30), np.uint8))}
    root = voc_dataset_factory(pairs=pairs, splits={"train": ["a"]})
    with pytest.raises(UserError, match=r"a\.png is 30x20.*a\.png is 30x21"):
        SegmentationDataset(root, "train", 32, 3, train=True)


def test_colour_label_is_refused_at_init(voc_dataset_factory):
    root = voc_dataset_factory()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "SegmentationClass/img_00.png")
    with pytest.raises(UserError, match="colour"):
        SegmentationDataset(root, "train", 32, 3, train=True)


def test_truncated_image_names_the_file(voc_dataset_factory):
    root = voc_dataset_factory()
    path = root / "JPEGImages/img_01.png"
    path.write_bytes(path.read_bytes()[:-200])
    dataset = SegmentationDataset(root, "train", 32, 3, train=True)
    with pytest.raises(UserError, match=r"img_01\.png"):
        dataset[1]


def test_label_value_above_class_count(voc_dataset_factory):
    root = voc_dataset_factory()
    dataset = SegmentationDataset(root, "train", 32, num_classes=2, train=False)
    with pytest.raises(UserError, match=r"value\(s\) 2 .*only 2 classes"):
        dataset[0]


def test_user_error_from_a_worker_keeps_its_plain_message(voc_dataset_factory):
    root = voc_dataset_factory()
    loader = build_loader(SegmentationDataset(root, "train", 16, num_classes=2, train=True), 2, train=True,
                          workers=1, seed=0)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    assert "only 2 classes" in str(info.value) and "Traceback" not in str(info.value)


class _RandomValues(torch.utils.data.Dataset):
    """Each item is a draw from the dataset's generator: shows how workers are seeded."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.rng = np.random.default_rng()

    def set_rng(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, self.rng.integers(1 << 62)])


def _draws(loader) -> list[tuple[int, int]]:
    return [tuple(row) for batch in loader for row in batch.tolist()]


def test_workers_are_seeded_distinctly_and_reproducibly():
    first = _draws(build_loader(_RandomValues(8), 2, train=True, workers=2, seed=3))
    second = _draws(build_loader(_RandomValues(8), 2, train=True, workers=2, seed=3))
    assert first == second  # same seed: same order and same draws
    values = [v for _, v in first]
    assert len(set(values)) == len(values)  # no two workers repeat each other's stream
    other_seed = _draws(build_loader(_RandomValues(8), 2, train=True, workers=2, seed=4))
    assert first != other_seed
    loader = build_loader(_RandomValues(8), 2, train=True, workers=2, seed=3)
    set_loader_epoch(loader, 1)
    assert _draws(loader) != first
    assert len({worker_seed(0, r, w, e).generate_state(1)[0] for r in range(2) for w in range(3)
                for e in range(3)}) == 18


def test_loader_reproducible_batches_on_real_data(voc_dataset_factory):
    root = voc_dataset_factory()

    def batches():
        dataset = SegmentationDataset(root, "train", 24, num_classes=3, train=True)
        loader = build_loader(dataset, 2, train=True, workers=0, seed=11)
        return [(images.clone(), labels.clone()) for images, labels in loader]

    first, second = batches(), batches()
    assert len(first) == 2
    for (i1, l1), (i2, l2) in zip(first, second, strict=True):
        assert torch.equal(i1, i2) and torch.equal(l1, l2)
        assert i1.shape == (2, 3, 24, 24) and i1.is_contiguous()


def test_iterating_again_without_set_epoch_advances_augmentation():
    loader = build_loader(_RandomValues(4), 2, train=True, workers=0, seed=0)
    assert _draws(loader) != _draws(loader)
    set_loader_epoch(loader, 0)
    again = _draws(loader)
    assert again == _draws(build_loader(_RandomValues(4), 2, train=True, workers=0, seed=0))


def test_validation_loader_keeps_order_and_every_sample():
    loader = build_loader(_RandomValues(7), 3, train=False, workers=0, seed=0)
    assert [i for i, _ in _draws(loader)] == list(range(7))
    train_loader = build_loader(_RandomValues(7), 3, train=True, workers=0, seed=0)
    assert len(_draws(train_loader)) == 6  # training drops the incomplete batch
    shards = [[i for i, _ in _draws(build_loader(_RandomValues(7), 2, train=False, workers=0, seed=0,
                                                 rank=r, world_size=3))] for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))


def test_to_device():
    images = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 2)
    labels = torch.tensor([[[1, 255]]], dtype=torch.uint8)
    x, y = to_device(images, labels, "cpu", channels_last=True)
    assert x.dtype == torch.float32 and x.max().item() == 1.0 and x.min().item() == 0.0
    assert y.dtype == torch.int64 and y.tolist() == [[[1, 255]]]


def test_parse_split_file_takes_first_token_and_drops_image_extensions(tmp_path):
    split = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\ufeffa.png\n\n  b 1\nc.JPG -1\nd.json\n", encoding="utf-8")
    assert parse_split_file(split) == ["a", "b", "c", "d.json"]
    assert read_split(tmp_path, "train") == ["a", "b", "c", "d.json"]


def test_default_class_names_one_rule():
    assert default_class_names(21) == list(VOC_CLASSES)
    assert default_class_names(3) == ["background", "class_1", "class_2"]


def test_in_process_loading_leaves_the_global_generators_alone():
    """workers=0: only the dataset's generator is seeded, not random/numpy/torch of the training process."""
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    loader = build_loader(_RandomValues(6), 2, train=True, workers=0, seed=7)
    first = _draws(loader)
    set_loader_epoch(loader, 0)
    assert _draws(loader) == first  # the dataset's own stream is still a function of (seed, epoch)
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
