"""Tests for the labelme import (utils/data/labelme.py, voc_annotation.py --from-labelme)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.data.io import load_image, load_label
from utils.data.labelme import convert_labelme
from utils.errors import UserError
from voc_annotation import main, parse_args

CLASSES = ["background", "cat", "dog"]


def _png_bytes(width: int = 40, height: int = 30) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_json(folder: Path, stem: str, shapes: list[dict], embed: bool = True, width: int = 40,
                height: int = 30) -> None:
    data = _png_bytes(width, height)
    record = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imageHeight": height, "imageWidth": width}
    if embed:
        record.update(imagePath=f"{stem}.png", imageData=base64.b64encode(data).decode())
    else:
        (folder / "pics").mkdir(exist_ok=True)
        (folder / "pics" / f"{stem}.png").write_bytes(data)
        record.update(imagePath=f"pics/{stem}.png", imageData=None)
    (folder / f"{stem}.json").write_text(json.dumps(record))


def _shape(label: str, kind: str, points: list[list[float]]) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def test_shapes_are_rasterised_where_they_should_be(tmp_path):
    src = tmp_path / "json"
    src.mkdir()
    _write_json(src, "a", [
        _shape("cat", "polygon", [[2, 2], [18, 2], [18, 12], [2, 12]]),
        _shape("dog", "rectangle", [[30, 20], [24, 14]]),
        _shape("cat", "circle", [[30, 6], [34, 6]]),
        _shape("dog", "polygon", [[10, 8], [16, 8], [16, 11], [10, 11]]),  # paints over the cat polygon
        _shape("cat", "line", [[0, 29], [39, 29]]),
    ])
    result = convert_labelme(src, tmp_path / "out", CLASSES)
    assert result.written == 1 and any("line" in note for note in result.notes)
    label = load_label(tmp_path / "out/SegmentationClass/a.png")
    assert label.shape == (30, 40)
    assert label[5, 5] == 1 and label[2, 2] == 1 and label[12, 18] == 1  # polygon incl. its outline
    assert label[1, 5] == 0 and label[13, 5] == 0 and label[5, 19] == 0
    assert label[9, 12] == 2  # later shape wins
    assert label[17, 27] == 2 and label[14, 24] == 2 and label[21, 27] == 0  # rectangle from any two corners
    assert label[6, 30] == 1 and label[6, 33] == 1 and label[6, 36] == 0  # circle of radius 4
    assert (label[29] == 0).all()  # lines have no area
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    image = load_image(tmp_path / "out/JPEGImages/a.png")
    assert image.shape == (30, 40, 3)
    assert (tmp_path / "out/JPEGImages/a.png").read_bytes() == _png_bytes()  # copied, not re-encoded


def test_image_path_instead_of_embedded_data(tmp_path):
    src = tmp_path / "json"
    src.mkdir()
    _write_json(src, "b", [_shape("dog", "polygon", [[0, 0], [10, 0], [0, 10]])], embed=False)
    convert_labelme(src, tmp_path / "out", CLASSES)
    label = load_label(tmp_path / "out/SegmentationClass/b.png")
    assert label[1, 1] == 2 and label[9, 9] == 0


def test_unknown_label_names_file_and_label(tmp_path):
    src = tmp_path / "json"
    src.mkdir()
    _write_json(src, "c", [_shape("horse", "polygon", [[0, 0], [10, 0], [0, 10]])])
    with pytest.raises(UserError, match=r"c\.json.*'horse'"):
        convert_labelme(src, tmp_path / "out", CLASSES)
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_missing_image_and_bad_json(tmp_path):
    src = tmp_path / "json"
    src.mkdir()
    (src / "d.json").write_text(json.dumps({"shapes": [], "imagePath": "nowhere.jpg", "imageData": None}))
    with pytest.raises(UserError, match="nowhere.jpg"):
        convert_labelme(src, tmp_path / "out", CLASSES)
    (src / "d.json").write_text("{broken")
    with pytest.raises(UserError, match=r"d\.json"):
        convert_labelme(src, tmp_path / "out", CLASSES)


def test_existing_output_is_not_overwritten(tmp_path):
    src = tmp_path / "json"
    src.mkdir()
    _write_json(src, "e", [])
    convert_labelme(src, tmp_path / "out", CLASSES)
    with pytest.raises(UserError, match="already exist"):
        convert_labelme(src, tmp_path / "out", CLASSES)
    assert convert_labelme(src, tmp_path / "out", CLASSES, force=True).written == 1


def test_voc_annotation_from_labelme(tmp_path, capsys):
    src = tmp_path / "json"
    src.mkdir()
    for i in range(3):
        _write_json(src, f"s{i}", [_shape("cat", "polygon", [[2, 2], [20, 2], [20, 20]]),
                                   _shape("dog", "rectangle", [[25, 5], [35, 25]])])
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    root = tmp_path / "voc"
    assert main(parse_args(["--from-labelme", str(src), "--data-root", str(root),
                            "--classes", str(tmp_path / "classes.txt")])) == 0
    out = capsys.readouterr().out
    assert "imported 3 labelme file(s)" in out and "no problems found" in out
    assert len((root / "ImageSets/Segmentation/trainval.txt").read_text().split()) == 3
    with pytest.raises(UserError, match="--classes"):
        main(parse_args(["--from-labelme", str(src), "--data-root", str(root)]))
