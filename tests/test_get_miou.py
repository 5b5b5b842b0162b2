"""Tests of get_miou.py: the three modes, --tta, the report files and every bad-input case."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from get_miou import main, parse_args
from tests.evaluation.test_confusion import (
    HAND_ACCURACY,
    HAND_F1,
    HAND_FWIOU,
    HAND_GT,
    HAND_IOU,
    HAND_MIOU,
    HAND_MPA,
    HAND_NAMES,
    HAND_PRECISION,
    HAND_PRED,
    HAND_RECALL,
)
from utils.data.io import load_image, load_label, save_label
from utils.errors import UserError
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
REPORT_FILES = ("metrics.json", "confusion_matrix.csv", "mIoU.png", "mPA.png", "Recall.png", "Precision.png",
                "confusion_matrix.png")


def run(*argv):
    return main(parse_args([str(a) for a in argv]))


@pytest.fixture
def hand_case(tmp_path):
    """Labels and prediction PNGs whose confusion matrix is the hand-worked one of tests/evaluation/test_confusion.py.

    ``a`` is the 2x5 example; ``b`` is all ignore (255) with arbitrary valid predictions, which
    must change nothing. Prediction ``a`` is a grey PNG, ``b`` a palette PNG.
    """
    root = tmp_path / "voc"
    for sub in ("SegmentationClass", "ImageSets/Segmentation", "JPEGImages"):
        (root / sub).mkdir(parents=True)
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    save_label(HAND_GT, root / "SegmentationClass" / "a.png")
    cv2.imwrite(str(pred_dir / "a.png"), HAND_PRED)
    save_label(np.full((3, 4), 255, np.uint8), root / "SegmentationClass" / "b.png")
    save_label(np.array([[0, 1, 2, 3]] * 3, np.uint8), pred_dir / "b.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(HAND_NAMES) + "\n")
    return root, pred_dir, classes


def test_eval_mode_gives_the_hand_computed_values(hand_case, tmp_path, capsys):
    root, pred_dir, classes = hand_case
    out = tmp_path / "out"
    assert run("--mode", "eval", "--data-root", root, "--pred-dir", pred_dir, "--classes", classes,
               "--out", out) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["miou"] == pytest.approx(HAND_MIOU, rel=1e-12)
    assert report["mpa"] == pytest.approx(HAND_MPA, rel=1e-12)
    assert report["accuracy"] == pytest.approx(HAND_ACCURACY, rel=1e-12)
    assert report["fwiou"] == pytest.approx(HAND_FWIOU, rel=1e-12)
    assert [c["name"] for c in report["per_class"]] == HAND_NAMES
    for key, expected in (("iou", HAND_IOU), ("recall", HAND_RECALL), ("precision", HAND_PRECISION),
                          ("f1", HAND_F1)):
        got = [c[key] for c in report["per_class"]]
        assert [None if np.isnan(e) else pytest.approx(e, rel=1e-12) for e in expected] == got, key
    assert [c["gt_pixels"] for c in report["per_class"]] == [4, 4, 0, 0]
    assert [c["pred_pixels"] for c in report["per_class"]] == [2, 4, 2, 0]
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "mIoU 36.67%" in printed and "n/a" in printed


def test_eval_mode_default_pred_dir_and_voc_classes(hand_case, tmp_path):
    root, pred_dir, _ = hand_case
    out = tmp_path / "out"
    (out / "detection-results").mkdir(parents=True)
    for png in pred_dir.iterdir():
        (out / "detection-results" / png.name).write_bytes(png.read_bytes())
    run("--mode", "eval", "--data-root", root, "--out", out)
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_classes"] == 21 and report["per_class"][15]["name"] == "person"
    assert report["miou"] == pytest.approx(HAND_MIOU, rel=1e-12)  # the 17 extra classes are n/a, not 0
    with pytest.raises(UserError, match="holds value"):
        run("--mode", "eval", "--data-root", root, "--out", out, "--num-classes", "3")


def test_eval_bad_inputs_name_the_file(hand_case, tmp_path):
    root, pred_dir, classes = hand_case
    base = ["--mode", "eval", "--data-root", root, "--pred-dir", pred_dir, "--classes", classes,
            "--out", tmp_path / "out"]
    with pytest.raises(UserError, match=r"prediction folder .*nothing not found"):
        run(*base[:4], "--pred-dir", tmp_path / "nothing", *base[6:])
    (pred_dir / "b.png").rename(tmp_path / "b.png")
    with pytest.raises(UserError, match=r"prediction\(s\) missing from .*preds: b\.png"):
        run(*base)
    cv2.imwrite(str(pred_dir / "b.png"), np.zeros((4, 3), np.uint8))
    with pytest.raises(UserError, match=r"preds/b\.png is 3x4 but its ground truth .*b\.png is 4x3"):
        run(*base)
    cv2.imwrite(str(pred_dir / "b.png"), np.full((3, 4), 4, np.uint8))
    with pytest.raises(UserError, match=r"prediction .*b\.png holds value\(s\) 4 but there are only 4 classes"):
        run(*base)
    cv2.imwrite(str(pred_dir / "b.png"), np.zeros((3, 4), np.uint8))
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match=r"ground-truth file\(s\) named by the split are missing .*c\.png"):
        run(*base)
    with pytest.raises(UserError, match="4 classes but --num-classes is 5"):
        run(*base, "--num-classes", "5")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_cli_exit_code_and_message_without_traceback(hand_case, tmp_path):
    root, _, classes = hand_case
    result = subprocess.run(
        [sys.executable, "get_miou.py", "--mode", "eval", "--data-root", str(root), "--classes", str(classes),
         "--pred-dir", str(tmp_path / "missing_preds"), "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: prediction folder" in result.stderr and "missing_preds" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def tiny_voc(voc_dataset_factory):
    """Six random 3-class pairs of varied sizes with 255 borders; val = the last two."""
    return voc_dataset_factory()


def _val_stems(root):
    return (root / "ImageSets/Segmentation/val.txt").read_text().split()


def test_all_predict_and_eval_modes_agree(tiny_voc, tiny_checkpoint, tmp_path):
    out_all, out_eval = tmp_path / "all", tmp_path / "eval"
    common = ["--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--no-progress"]
    assert run(*common, "--out", out_all, "--batch-size", "3") == 0
    for name in REPORT_FILES:
        assert (out_all / name).stat().st_size > 0, name
    report = json.loads((out_all / "metrics.json").read_text())
    assert [c["name"] for c in report["per_class"]] == ["background", "cat", "dog"]  # from the checkpoint
    labels = [load_label(tiny_voc / "SegmentationClass" / f"{s}.png") for s in _val_stems(tiny_voc)]
    assert sum(c["gt_pixels"] for c in report["per_class"]) == sum(int((lab != 255).sum()) for lab in labels)
    # all mode also leaves the PNGs, at the original size, with class-index values.
    for stem, label in zip(_val_stems(tiny_voc), labels, strict=True):
        mask = np.array(Image.open(out_all / "detection-results" / f"{stem}.png"))
        assert mask.shape == label.shape and mask.max() < 3

    pred_dir = tmp_path / "preds"
    assert run(*common, "--mode", "predict", "--pred-dir", pred_dir, "--out", tmp_path / "p") == 0
    assert sorted(p.name for p in pred_dir.iterdir()) == sorted(f"{s}.png" for s in _val_stems(tiny_voc))
    assert not (tmp_path / "p" / "metrics.json").exists()
    # eval with --weights: class names from the checkpoint; same numbers as the in-memory scoring.
    run("--mode", "eval", "--weights", tiny_checkpoint, "--data-root", tiny_voc, "--pred-dir", pred_dir,
        "--out", out_eval)
    assert json.loads((out_eval / "metrics.json").read_text()) == report
    assert (out_eval / "confusion_matrix.csv").read_text() == (out_all / "confusion_matrix.csv").read_text()


def test_tta_uses_flip_and_the_given_scales(tiny_voc, tiny_checkpoint, tmp_path):
    pred_dir = tmp_path / "preds"
    run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--mode", "predict",
        "--pred-dir", pred_dir, "--tta", "--tta-scales", "0.5,1.5", "--no-progress")
    predictor = Predictor.from_weights(tiny_checkpoint, InferenceOptions(device="cpu", tta=True, tta_scales=(0.5, 1.5)))
    for stem in _val_stems(tiny_voc):
        image = load_image(next((tiny_voc / "JPEGImages").glob(f"{stem}.*")))
        expected = predictor.predict([image])[0]
        np.testing.assert_array_equal(np.array(Image.open(pred_dir / f"{stem}.png")), expected)
    run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--tta",
        "--out", tmp_path / "out", "--no-progress")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_classes"] == 3


def test_model_modes_bad_inputs(tiny_voc, tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="--mode all needs --weights"):
        run("--data-root", tiny_voc, "--out", tmp_path / "out")
    with pytest.raises(UserError, match="trained for 3 classes, but 5"):
        run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--num-classes", "5", "--device", "cpu")
    stem = _val_stems(tiny_voc)[0]
    (tiny_voc / "SegmentationClass" / f"{stem}.png").unlink()
    with pytest.raises(UserError, match=f"{stem}.png does not exist"):
        run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--out", tmp_path / "o")
    # predict mode needs no labels, but it needs the images.
    run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--mode", "predict",
        "--pred-dir", tmp_path / "preds", "--no-progress")
    next((tiny_voc / "JPEGImages").glob(f"{stem}.*")).unlink()
    with pytest.raises(UserError, match=f"val.txt names 1 image.*: {stem}"):
        run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--mode", "predict",
            "--pred-dir", tmp_path / "preds")


@pytest.mark.parametrize("folder", ["SegmentationClass", "JPEGImages"])
def test_pred_dir_may_not_be_the_datasets_own_folder(tiny_voc, tiny_checkpoint, tmp_path, folder):
    before = {p.name: p.read_bytes() for p in (tiny_voc / folder).iterdir()}
    # A path that only resolves to the folder (via ..) is refused too.
    for pred_dir, mode in ((tiny_voc / folder, "predict"), (tiny_voc / "ImageSets" / ".." / folder, "all")):
        with pytest.raises(UserError, match=f"--pred-dir .* is the dataset's {folder} folder"):
            run("--weights", tiny_checkpoint, "--data-root", tiny_voc, "--device", "cpu", "--mode", mode,
                "--pred-dir", pred_dir, "--out", tmp_path / "out", "--no-progress")
    assert {p.name: p.read_bytes() for p in (tiny_voc / folder).iterdir()} == before


def test_flag_parsing():
    args = parse_args([])
    assert (args.mode, args.split, args.out, args.data_root, args.pred_dir) == (
        "all", "val", "miou_out", "VOCdevkit/VOC2007", None)
    assert args.tta_scales == (0.75, 1.0, 1.25) and args.tta is False
    assert parse_args(["--tta-scales", "0.5, 1"]).tta_scales == (0.5, 1.0)
    for bad in (["--tta-scales", "0,1"], ["--tta-scales", "x"], ["--batch-size", "0"], ["--mode", "both"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2


def test_input_size_and_output_stride_flags_reach_the_model(tiny_voc, predict_checkpoints, tmp_path, monkeypatch):
    """A bare state dict trained at another size is scored at its own size and output stride (issue 12, 8)."""
    from utils.inference.predictor import Predictor

    built = []
    real = Predictor.from_weights

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(Predictor, "from_weights", spy)
    common = ["--weights", predict_checkpoints["bare"], "--data-root", tiny_voc, "--device", "cpu", "--no-progress"]
    assert run(*common, "--out", tmp_path / "a", "--input-size", "48", "64", "--downsample-factor", "8") == 0
    assert built[-1].input_size == (48, 64) and built[-1].backend.model.downsample_factor == 8
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert run(*common, "--out", tmp_path / "b") == 0
    assert built[-1].input_size == (512, 512) and built[-1].backend.model.downsample_factor == 16
    with pytest.raises(UserError, match="--input-size 8: give H or H W, each at least 16"):
        run(*common, "--input-size", "8")


def test_binary_model_on_0_255_masks_without_a_label_map_stops(tmp_path):
    """Defect 2 of issue 19: a bare one-channel state dict scored on 0/255 masks printed mIoU 100% and
    exited 0. It must stop with train.py's one-line error naming --label-map 255:1, and score with it."""
    from nets.deeplabv3_plus import DeepLab
    from utils.data.demo import make_demo_dataset

    root = make_demo_dataset(tmp_path / "masks", seed=4, num_train=2, num_val=2, size=(48, 40), binary=True)
    torch.manual_seed(0)
    torch.save(DeepLab(1, "mobilenet").eval().state_dict(), tmp_path / "bare.pth")
    common = [sys.executable, str(REPO / "get_miou.py"), "--weights", str(tmp_path / "bare.pth"), "--data-root",
              str(root), "--input-size", "32", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]
    result = subprocess.run(common, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--label-map 255:1" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out" / "metrics.json").exists()
    mapped = subprocess.run([*common, "--label-map", "255:1"], capture_output=True, text=True)
    assert mapped.returncode == 0, mapped.stderr
    assert 0 <= json.loads((tmp_path / "out" / "metrics.json").read_text())["miou"] <= 1
