"""predict.py on raster scenes: outputs, exit codes and messages; 4-band uint16 scenes (need part A's spec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from nets.spec import ModelSpec
from predict import main, parse_args
from tests.geo.conftest import lively_model, save_model, smooth_bands, write_scene
from tests.geo.test_scene import corrupt_first_tile, hwc
from utils.errors import UserError
from utils.geo.scene import SceneOptions, predict_scene
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str]) -> int:
    return main(parse_args(argv))


def test_predict_py_writes_the_scene_outputs(scene_models, tmp_path):
    samples = smooth_bands(3, 90, 130, seed=11)
    write_scene(tmp_path / "in" / "a" / "scene.tif", samples)
    weights = str(scene_models["binary"][2])
    assert run(["--weights", weights, str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--save-prob",
                "--polygons", "--precision", "fp32", "--batch-size", "1", "--device", "cpu"]) == 0
    names = sorted(p.name for p in (tmp_path / "o" / "a").iterdir())
    assert names == ["scene.geojson", "scene.tif", "scene_preview.png", "scene_prob.tif"]
    model, spec, _ = scene_models["binary"]
    predictor = Predictor(model, spec, InferenceOptions(device="cpu", precision="fp32", mode="slide", batch_size=1))
    with rasterio.open(tmp_path / "o" / "a" / "scene.tif") as out:
        np.testing.assert_array_equal(out.read(1), predictor.predict([hwc(samples)])[0])


def test_the_input_is_never_overwritten(scene_models, tmp_path):
    source = write_scene(tmp_path / "scene.tif", smooth_bands(3, 40, 40))
    before = source.read_bytes()
    with pytest.raises(UserError, match="refusing to overwrite the input"):
        run(["--weights", str(scene_models["multi"][2]), str(source), "--out", str(tmp_path)])
    assert source.read_bytes() == before


def test_corrupt_scene_exit_codes(scene_models, tmp_path):
    bad = write_scene(tmp_path / "in" / "bad.tif", smooth_bands(3, 128, 128, seed=12), tiled=True)
    corrupt_first_tile(bad)
    write_scene(tmp_path / "in" / "good.tif", smooth_bands(3, 70, 90, seed=13))
    command = [sys.executable, "predict.py", "--weights", str(scene_models["multi"][2])]
    alone = subprocess.run([*command, str(bad), "--out", str(tmp_path / "o1")], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    lines = alone.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.tif" in lines[0]
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())
    # In a folder run the other scenes go on; the failure is reported and the exit status is 1.
    folder = subprocess.run([*command, str(tmp_path / "in"), "--out", str(tmp_path / "o2")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert folder.returncode == 1 and "bad.tif" in folder.stderr and "Traceback" not in folder.stderr
    assert (tmp_path / "o2" / "good.tif").is_file() and not (tmp_path / "o2" / "bad.tif").exists()


# The tests below need part A's spec (ModelSpec.bands, mean, std) and uint16 normalisation.

def four_band_model(tmp_path, bands=None):
    spec = ModelSpec(num_classes=3, in_channels=4 if bands is None else len(bands), input_size=(64, 64),
                     bands=bands, mean=(900.0, 1100.0, 1000.0, 2500.0)[:4 if bands is None else len(bands)],
                     std=(300.0, 350.0, 320.0, 800.0)[:4 if bands is None else len(bands)])
    model = lively_model(spec, seed=3)
    return model, spec, save_model(model, spec, tmp_path / "four.pth")


def test_four_band_uint16_scene_equals_the_in_memory_prediction(tmp_path):
    samples = smooth_bands(4, 140, 170, seed=14, dtype="uint16", top=5700)
    source = write_scene(tmp_path / "s2.tif", samples, tiled=True)
    model, spec, _ = four_band_model(tmp_path)
    predictor = Predictor(model, spec, InferenceOptions(device="cpu", precision="fp32", mode="slide", batch_size=1))
    predict_scene(predictor, source, tmp_path / "o" / "s2.tif", SceneOptions(strip=64, progress=False))
    with rasterio.open(tmp_path / "o" / "s2.tif") as out:
        np.testing.assert_array_equal(out.read(1), predictor.predict([hwc(samples)])[0])


def test_band_selection_and_band_out_of_range(tmp_path):
    samples = smooth_bands(4, 80, 90, seed=15, dtype="uint16", top=5700)
    source = write_scene(tmp_path / "s2.tif", samples)
    model, spec, weights = four_band_model(tmp_path, bands=(4, 3, 2))
    predictor = Predictor(model, spec, InferenceOptions(device="cpu", precision="fp32", mode="slide", batch_size=1))
    predict_scene(predictor, source, tmp_path / "o" / "s2.tif", SceneOptions(progress=False))
    with rasterio.open(tmp_path / "o" / "s2.tif") as out:
        np.testing.assert_array_equal(out.read(1), predictor.predict([hwc(samples[[3, 2, 1]])])[0])
    three = write_scene(tmp_path / "three.tif", samples[:3])
    result = subprocess.run([sys.executable, "predict.py", "--weights", str(weights), str(three), "--out",
                             str(tmp_path / "o3")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "three.tif: band 4 is out of range" in result.stderr
