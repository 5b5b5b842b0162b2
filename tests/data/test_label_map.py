"""--label-map parsing and application: inline pairs, files, the '*' default, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from utils.data.label_map import parse_label_map
from utils.errors import UserError


def test_inline_pairs_remap_only_named_values():
    label_map = parse_label_map("255:1, 3:2")
    label = np.array([[0, 255], [3, 7]], dtype=np.uint8)
    assert label_map.apply(label).tolist() == [[0, 1], [2, 7]]
    assert label_map.spec() == "255:1,3:2"


def test_star_sets_every_other_value():
    label_map = parse_label_map("3:1,*:0")
    values = np.arange(256, dtype=np.uint8)
    expected = np.where(values == 3, 1, 0)
    assert np.array_equal(label_map.apply(values), expected)


def test_file_of_pairs_with_comments(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# cityscapes-like\n7 0\n8 1  # sidewalk\n\n* 255\n", encoding="utf-8")
    label_map = parse_label_map(str(path))
    table = label_map.lut
    assert table[7] == 0 and table[8] == 1
    assert (np.delete(table, [7, 8]) == 255).all()


def test_none_and_empty_mean_no_map():
    assert parse_label_map(None) is None
    assert parse_label_map("  ") is None


@pytest.mark.parametrize(("spec", "words"), [
    ("256:1", "not a label value"),
    ("1:2:3", "not a SRC:DST pair"),
    ("1:2,1:3", "mapped twice"),
    ("missing_file.txt", "no such file"),
    ("a:1", "not a label value"),
])
def test_bad_maps_name_the_problem(spec, words):
    with pytest.raises(UserError, match=words):
        parse_label_map(spec)


def test_bad_line_in_file_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1 2\n3\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        parse_label_map(path)
