"""Tests for voc_annotation.py and utils/data/checks.py: splits, every check, exit codes and the fixes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.data.io import load_label, voc_palette
from utils.errors import UserError
from voc_annotation import main, parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(root: Path, *extra: str) -> int:
    return main(parse_args(["--data-root", str(root), *extra]))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _split(root: Path, name: str) -> list[str]:
    return (root / "ImageSets/Segmentation" / f"{name}.txt").read_text().split()


def test_clean_dataset_writes_splits_and_table(voc_dataset_factory, tmp_path, capsys):
    root = voc_dataset_factory(splits={})
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    assert run(root, "--classes", str(tmp_path / "classes.txt"), "--train-percent", "0.5") == 0
    out = capsys.readouterr().out
    assert "no problems found" in out
    for name in ("background", "cat", "dog", "(ignore)"):
        assert name in out
    train, val = _split(root, "train"), _split(root, "val")
    assert len(train) == 3 and len(val) == 3 and not set(train) & set(val)
    assert sorted(train + val) == sorted(_split(root, "trainval")) and _split(root, "test") == []


def test_splits_are_seeded_and_kept_unless_force(voc_dataset_factory, capsys):
    root = voc_dataset_factory(splits={})
    assert run(root, "--num-classes", "3", "--seed", "1") == 0
    first = _split(root, "train")
    (root / "ImageSets/Segmentation/train.txt").write_text("img_00\n")
    assert run(root, "--num-classes", "3", "--seed", "2") == 0
    assert "kept the existing split files" in capsys.readouterr().out
    assert _split(root, "train") == ["img_00"]
    assert run(root, "--num-classes", "3", "--seed", "1", "--force") == 0
    assert _split(root, "train") == first


def test_check_only_writes_nothing(voc_dataset_factory):
    root = voc_dataset_factory(splits={})
    assert run(root, "--num-classes", "3", "--check-only") == 0
    assert not (root / "ImageSets").exists()


def test_trainval_percent_fills_test(voc_dataset_factory):
    root = voc_dataset_factory(splits={})
    assert run(root, "--num-classes", "3", "--trainval-percent", "0.5") == 0
    assert len(_split(root, "trainval")) == 3 and len(_split(root, "test")) == 3


def test_label_without_image(voc_dataset_factory, capsys):
    root = voc_dataset_factory(splits={})
    (root / "JPEGImages/img_02.png").unlink()
    assert run(root, "--num-classes", "3") == 1
    out = capsys.readouterr().out
    assert "1 label(s) have no image" in out and "img_02" in out
    assert "img_02" not in _split(root, "trainval")


def test_image_without_label_is_only_a_note(voc_dataset_factory, capsys):
    root = voc_dataset_factory(splits={})
    (root / "SegmentationClass/img_02.png").unlink()
    assert run(root, "--num-classes", "3") == 0
    assert "note: 1 image(s) have no label" in capsys.readouterr().out


def test_split_naming_missing_files(voc_dataset_factory, capsys):
    root = voc_dataset_factory()
    (root / "ImageSets/Segmentation/train.txt").write_text("img_00\nghost\n")
    assert run(root, "--num-classes", "3") == 1
    assert "ghost" in capsys.readouterr().out


def test_size_mismatch_shows_both_sizes(voc_dataset_factory, capsys):
    pairs = {"a": (np.zeros((20, 30, 3), np.uint8), np.zeros((22, 30), np.uint8)),
             "b": (np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8))}
    root = voc_dataset_factory(pairs=pairs, splits={})
    assert run(root, "--num-classes", "3") == 1
    out = capsys.readouterr().out
    assert "size mismatch" in out and "30x20" in out and "30x22" in out


def test_unreadable_image(voc_dataset_factory, capsys):
    root = voc_dataset_factory(splits={})
    (root / "JPEGImages/img_03.png").write_bytes(b"garbage")
    assert run(root, "--num-classes", "3") == 1
    assert "cannot read image" in capsys.readouterr().out


def test_values_above_class_count_list_files(voc_dataset_factory, capsys):
    root = voc_dataset_factory(splits={})
    assert run(root, "--num-classes", "2") == 1
    out = capsys.readouterr().out
    assert "value 2:" in out and "img_00.png" in out and "0..1" in out
    assert "(out of range)" in out


def test_sixteen_bit_label_is_reported(voc_dataset_factory, capsys):
    root = voc_dataset_factory(splits={})
    Image.fromarray(np.zeros((load_label(root / "SegmentationClass/img_01.png").shape), np.uint16)).save(
        root / "SegmentationClass/img_01.png")
    assert run(root, "--num-classes", "3") == 1
    assert "not 8-bit single-channel" in capsys.readouterr().out


def _binary_dataset(factory):
    rng = np.random.default_rng(0)
    pairs = {}
    for i in range(4):
        label = np.zeros((20, 30), np.uint8)
        label[5:15, 8 + i:20] = 255
        pairs[f"m{i}"] = (rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), label)
    return factory(pairs=pairs, splits={})


def test_binary_masks_explained_and_fixed_into_new_folder(voc_dataset_factory, capsys):
    root = _binary_dataset(voc_dataset_factory)
    before = _digests(root / "SegmentationClass")
    assert run(root, "--num-classes", "2") == 1
    out = capsys.readouterr().out
    assert "only the values 0 and 255" in out and "--fix-binary" in out and "class index" in out.lower()

    assert run(root, "--num-classes", "2", "--fix-binary") == 0
    out = capsys.readouterr().out
    assert "SegmentationClass_fixed" in out and "rename" in out
    assert _digests(root / "SegmentationClass") == before  # originals byte-identical
    for stem in ("m0", "m3"):
        original = load_label(root / "SegmentationClass" / f"{stem}.png")
        fixed = load_label(root / "SegmentationClass_fixed" / f"{stem}.png")
        assert np.array_equal(fixed, (original == 255).astype(np.uint8))
    # A second run refuses to write into the now non-empty folder unless forced.
    with pytest.raises(UserError, match="already exists"):
        run(root, "--num-classes", "2", "--fix-binary")
    assert run(root, "--num-classes", "2", "--fix-binary", "--force") == 0


def test_fix_binary_refuses_non_binary_labels(voc_dataset_factory):
    root = voc_dataset_factory(splits={})
    with pytest.raises(UserError, match="only applies"):
        run(root, "--num-classes", "3", "--fix-binary")
    assert not (root / "SegmentationClass_fixed").exists()


def _rgb_dataset(factory, colours):
    root = factory(splits={})
    for i, path in enumerate(sorted((root / "SegmentationClass").iterdir())):
        h, w = load_label(path).shape
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, : w // 2] = colours[i % len(colours)]
        Image.fromarray(rgb).save(path)
    return root


def test_voc_palette_rgb_labels_are_explained_and_converted(voc_dataset_factory, capsys):
    palette = np.array(voc_palette(), np.uint8).reshape(256, 3)
    root = _rgb_dataset(voc_dataset_factory, [palette[1], palette[2], palette[255]])
    before = _digests(root / "SegmentationClass")
    assert run(root, "--num-classes", "3") == 1
    out = capsys.readouterr().out
    assert "colour (RGB) images" in out and "VOC palette" in out and "--convert-rgb" in out
    assert run(root, "--num-classes", "3", "--convert-rgb") == 0
    assert _digests(root / "SegmentationClass") == before
    converted = load_label(root / "SegmentationClass_converted/img_00.png")
    w = converted.shape[1]
    assert (converted[:, : w // 2] == 1).all() and (converted[:, w // 2:] == 0).all()
    assert (load_label(root / "SegmentationClass_converted/img_02.png")[:, 0] == 255).all()


def test_unknown_rgb_colours_cannot_be_converted(voc_dataset_factory, capsys):
    root = _rgb_dataset(voc_dataset_factory, [(12, 200, 3)])
    assert run(root, "--num-classes", "3") == 1
    assert "not VOC palette colours" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"img_00\.png.*\(12, 200, 3\)"):
        run(root, "--num-classes", "3", "--convert-rgb")


def test_missing_folder_shows_tree(tmp_path):
    with pytest.raises(UserError, match="JPEGImages/"):
        run(tmp_path / "absent")


def test_classes_and_num_classes_must_agree(voc_dataset_factory, tmp_path):
    root = voc_dataset_factory(splits={})
    (tmp_path / "c.txt").write_text("background\nthing\n")
    with pytest.raises(UserError, match="disagrees"):
        run(root, "--classes", str(tmp_path / "c.txt"), "--num-classes", "3")


def test_subprocess_exit_codes_and_no_traceback(voc_dataset_factory, tmp_path):
    root = _binary_dataset(voc_dataset_factory)
    script = [sys.executable, "voc_annotation.py"]
    problem = subprocess.run([*script, "--data-root", str(root), "--num-classes", "2"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert problem.returncode == 1 and "--fix-binary" in problem.stdout
    assert "Traceback" not in problem.stderr
    missing = subprocess.run([*script, "--data-root", str(tmp_path / "nope")], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert "SegmentationClass/" in missing.stderr and "Traceback" not in missing.stderr


def test_split_lines_with_an_image_extension_are_not_missing(voc_dataset_factory, capsys):
    root = voc_dataset_factory()
    (root / "ImageSets/Segmentation/train.txt").write_text("img_00.png\nimg_01 1\n")
    assert run(root, "--num-classes", "3") == 0
    assert "without an image or a label" not in capsys.readouterr().out


def test_convert_rgb_names_an_unreadable_label(voc_dataset_factory):
    palette = np.array(voc_palette(), np.uint8).reshape(256, 3)
    root = _rgb_dataset(voc_dataset_factory, [palette[1]])
    (root / "SegmentationClass/img_03.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    before = _digests(root / "SegmentationClass")
    with pytest.raises(UserError, match=r"cannot read label .*img_03\.png"):
        run(root, "--num-classes", "3", "--convert-rgb")
    assert _digests(root / "SegmentationClass") == before
    assert not (root / "SegmentationClass_converted").exists()


def test_binary_masks_offer_the_label_map_and_pass_through_it(voc_dataset_factory, capsys):
    root = _binary_dataset(voc_dataset_factory)
    before = _digests(root / "SegmentationClass")
    assert run(root, "--num-classes", "2") == 1
    assert "--task binary --label-map 255:1" in capsys.readouterr().out
    assert run(root, "--num-classes", "2", "--label-map", "255:1") == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "only the values 0 and 255" not in out
    assert _digests(root / "SegmentationClass") == before  # read remapped, never rewritten
    # A map that leaves a value outside the classes is reported like any stray label value.
    assert run(root, "--num-classes", "2", "--label-map", "255:7") == 1
    assert "7" in capsys.readouterr().out
    with pytest.raises(UserError, match="SRC:DST"):
        run(root, "--num-classes", "2", "--label-map", "255=1")
