"""``train.py --head separable`` end to end: the checkpoint records the head, and load_model, the Predictor and
ONNX export rebuild it with no other flag; files without a head entry load with the standard head."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import predict
from nets.deeplabv3_plus import DeepLab
from train import main, parse_args
from utils.checkpoint import load_model
from utils.data.io import load_image
from utils.errors import UserError
from utils.inference.onnx_export import make_session
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor


@pytest.fixture(scope="module")
def separable_run(train_data_root, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("separable") / "run"
    argv = ["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
            "--head", "separable", "--input-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--eval-period", "9", "--save-dir", str(save_dir)]
    assert main(parse_args(argv)) == 0
    return save_dir


def test_checkpoint_records_and_rebuilds_the_separable_head(separable_run, train_data_root, tmp_path):
    ckpt = torch.load(separable_run / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["spec"]["head"] == "separable"
    model, config = load_model(separable_run / "last.pth")
    assert model.head == "separable" and config.head == "separable"
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key

    # A bare state dict of it (no config): the head is read from the key names.
    torch.save(ckpt["model"], tmp_path / "bare.pth")
    bare, bare_config = load_model(tmp_path / "bare.pth")
    assert bare.head == "separable" and bare_config.head == "separable"

    image = load_image(next((train_data_root / "JPEGImages").iterdir()))
    predictor = Predictor.from_weights(separable_run / "last.pth", InferenceOptions(device="cpu", precision="fp32"))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(predictor.backend(x), model(x), atol=1e-4)
    mask = predictor.predict([image])[0]
    assert mask.shape == image.shape[:2] and mask.max() < 4


def test_onnx_export_of_the_separable_head(separable_run, tmp_path, capsys):
    path = tmp_path / "separable.onnx"
    assert predict.main(predict.parse_args(["--weights", str(separable_run / "last.pth"), "--export-onnx",
                                            str(path)])) == 0
    assert "max |ORT - PyTorch| =" in capsys.readouterr().out
    names = {node.name for node in onnx.load(str(path)).graph.initializer}
    model, _ = load_model(separable_run / "last.pth")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = make_session(path).run(None, {"images": x.numpy()})
    assert names and np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_files_without_a_head_entry_load_the_standard_head(tiny_checkpoint, tmp_path):
    model, config = load_model(tiny_checkpoint)  # written before --head existed
    assert model.head == "standard" and config.head == "standard"
    torch.save(DeepLab(3).state_dict(), tmp_path / "original.pth")  # the original release's bare layout
    model, config = load_model(tmp_path / "original.pth")
    assert model.head == "standard" and config.head == "standard"


def test_resuming_with_another_head_is_explained(separable_run, train_data_root, tmp_path):
    argv = ["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
            "--input-size", "64", "--epochs", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--save-dir", str(tmp_path / "x"), "--resume", str(separable_run / "last.pth")]
    with pytest.raises(UserError, match="trained with the separable head, but this run has the standard head: "
                                        "pass --head separable"):
        main(parse_args(argv))
