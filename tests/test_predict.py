"""predict.py: images, nested folders, video, mix modes, counts, masks, prompts and bad input (issue 5)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from predict import main, parse_args
from utils.errors import UserError
from utils.inference.visualize import make_palette

REPO = Path(__file__).resolve().parents[1]


def write_photo(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image saved losslessly (PNG) unless the suffix says otherwise; returns it."""
    small = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def run(argv: list[str]) -> int:
    return main(parse_args(argv))


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_single_image_and_mix_modes(predict_checkpoints, tmp_path):
    image = write_photo(tmp_path / "in" / "street.png", 64, 96)
    outs = {}
    for mode in ("blend", "mask", "cutout"):
        out = tmp_path / mode
        assert run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "in" / "street.png"),
                    "--out", str(out), "--mix", mode, "--save-mask", "--device", "cpu"]) == 0
        outs[mode] = read_rgb(out / "street.png")
        assert outs[mode].shape == (64, 96, 3)
    with Image.open(tmp_path / "blend" / "street_mask.png") as saved:
        assert saved.mode == "P"
        mask = np.asarray(saved)
    assert mask.shape == (64, 96)
    assert (mask == 0).any() and (mask != 0).any(), "fixture model should predict background and objects"
    colour = make_palette(3)[mask]
    np.testing.assert_array_equal(outs["mask"], colour)
    expected_blend = image * 0.3 + colour * 0.7
    assert np.abs(outs["blend"] - expected_blend).max() <= 1.0
    np.testing.assert_array_equal(outs["cutout"][mask != 0], image[mask != 0])
    assert (outs["cutout"][mask == 0] == 0).all()


def test_alpha_changes_blend(predict_checkpoints, tmp_path):
    image = write_photo(tmp_path / "a.png", 64, 64)
    assert run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "a.png"), "--out",
                str(tmp_path / "o"), "--alpha", "0"]) == 0
    np.testing.assert_array_equal(read_rgb(tmp_path / "o" / "a.png"), image)


def test_nested_folder_keeps_structure_and_counts(predict_checkpoints, tmp_path, capsys):
    src = tmp_path / "photos"
    sizes = {"a.png": (64, 96), "sub/b.png": (50, 40), "sub/deeper/c.jpg": (72, 72)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        write_photo(src / name, h, w, i)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert run(["--weights", str(predict_checkpoints["ckpt"]), str(src), "--out", str(out), "--count",
                "--save-mask", "--batch-size", "2"]) == 0
    for name, (h, w) in sizes.items():
        assert read_rgb(out / name).shape == (h, w, 3)
        assert np.asarray(Image.open((out / name).with_name(Path(name).stem + "_mask.png"))).shape == (h, w)
    images = sorted(p for p in out.rglob("*") if p.suffix in (".png", ".jpg") and "_mask" not in p.name)
    assert len(images) == 3
    rows = (out / "counts.csv").read_text().splitlines()[1:]
    total = sum(h * w for h, w in sizes.values())
    assert sum(int(r.split(",")[2]) for r in rows) == total
    assert abs(sum(float(r.split(",")[3]) for r in rows) - 1.0) < 1e-5
    printed = capsys.readouterr().out
    assert any(line.split()[:2] == ["total", str(total)] for line in printed.splitlines())
    assert len((out / "counts_per_image.csv").read_text().splitlines()) == 4


def test_bare_state_dict_gives_the_same_masks(predict_checkpoints, tmp_path):
    write_photo(tmp_path / "x.png", 64, 96, 3)
    for name in ("ckpt", "bare"):
        assert run(["--weights", str(predict_checkpoints[name]), str(tmp_path / "x.png"), "--out",
                    str(tmp_path / name), "--save-mask", "--input-size", "64"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "ckpt" / "x_mask.png")),
                                  np.asarray(Image.open(tmp_path / "bare" / "x_mask.png")))


def test_video_file(predict_checkpoints, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for i in range(4):
        writer.write(cv2.cvtColor(write_photo(tmp_path / f"f{i}.png", 64, 96, i), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "result.mp4"
    assert run(["--weights", str(predict_checkpoints["ckpt"]), "--video", str(video), "--save", str(out)]) == 0
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3)
    # Without --save a video file goes to --out/<stem>.mp4.
    assert run(["--weights", str(predict_checkpoints["ckpt"]), "--video", str(video), "--out",
                str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "clip.mp4").stat().st_size > 0


def write_clip(path: Path, frames: int = 3) -> bytes:
    """A small MJPG video; returns its bytes, to check later that it was left untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for i in range(frames):
        writer.write(np.full((64, 96, 3), 40 * i, dtype=np.uint8))
    writer.release()
    return path.read_bytes()


def test_a_video_is_never_written_over_itself(predict_checkpoints, tmp_path, monkeypatch):
    """Defect 1 of issue 19: both commands used to truncate the input while it was still being read."""
    clip = tmp_path / "clip.avi"
    before = write_clip(clip)
    with pytest.raises(UserError, match="is the input video"):
        run(["--weights", str(predict_checkpoints["ckpt"]), "--video", str(clip), "--save", str(clip)])
    # Through a symbolic link the output is still the input.
    (tmp_path / "link.avi").symlink_to(clip)
    with pytest.raises(UserError, match="is the input video"):
        run(["--weights", str(predict_checkpoints["ckpt"]), "--video", str(clip), "--save", str(tmp_path / "link.avi")])
    # The default output <out>/<stem>.mp4 of a video that already lies there, with the default --out.
    monkeypatch.chdir(tmp_path)
    inside = Path("img_out") / "clip.mp4"
    inside_bytes = write_clip(inside)
    with pytest.raises(UserError, match="is the input video"):
        run(["--weights", str(predict_checkpoints["ckpt"]), "--video", str(inside)])
    assert clip.read_bytes() == before and inside.read_bytes() == inside_bytes
    result = subprocess.run([sys.executable, str(REPO / "predict.py"), "--weights", str(predict_checkpoints["ckpt"]),
                             "--video", str(inside)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "is the input video" in result.stderr


def test_interactive_prompt(predict_checkpoints, tmp_path, monkeypatch, capsys):
    write_photo(tmp_path / "p.png", 64, 64)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{tmp_path / 'missing.png'}\n{tmp_path / 'p.png'}\n\n"))
    assert run(["--weights", str(predict_checkpoints["ckpt"]), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "o" / "p.png").is_file()
    assert "missing.png not found" in captured.err
    # End of input also ends the prompt.
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert run(["--weights", str(predict_checkpoints["ckpt"]), "--out", str(tmp_path / "o2")]) == 0


def test_fps_benchmark(predict_checkpoints, capsys):
    assert run(["--weights", str(predict_checkpoints["ckpt"]), "--fps", "2"]) == 0
    out = capsys.readouterr().out
    assert "ms per image" in out and "FPS" in out and "parameters: " in out and "FLOPs: " in out


def test_fps_benchmark_counts_a_binary_model_with_one_output_channel(tmp_path, monkeypatch):
    import torch

    from nets.deeplabv3_plus import DeepLab
    from utils import summary
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(0)
    model = DeepLab(1, "mobilenet").eval()
    config = {"backbone": "mobilenet", "task": "binary", "num_classes": 2, "downsample_factor": 16,
              "input_size": [32, 32]}
    save_checkpoint({"model": model.state_dict(), "config": config, "format": CHECKPOINT_FORMAT},
                    tmp_path / "binary.pth")
    counted = []
    real_count = summary.count_parameters

    def spy(net):
        counted.append(net)
        return real_count(net)

    # One output channel changes the count by 257 parameters, below the printed precision: check the model.
    monkeypatch.setattr(summary, "count_parameters", spy)
    assert run(["--weights", str(tmp_path / "binary.pth"), "--fps", "1", "--device", "cpu"]) == 0
    (net,) = counted
    assert net.cls_conv.out_channels == 1
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("argv, message", [
    (["{missing_img}"], "not found"),
    (["{bad_ext}"], "unknown image extension"),
    (["{empty_dir}"], "holds no images"),
    (["--video", "{missing_video}"], "video file"),
    (["--video", "{broken_video}"], "cannot open video"),
    (["--video", "57", "--save", "x.mp4"], "camera 57 does not exist"),
    (["{image}", "--classes", "{classes4}"], "3 classes"),
])
def test_bad_input_is_one_clear_error(predict_checkpoints, tmp_path, argv, message):
    paths = {"missing_img": tmp_path / "nope.jpg", "bad_ext": tmp_path / "x.gif", "empty_dir": tmp_path / "empty",
             "missing_video": tmp_path / "nope.mp4", "broken_video": tmp_path / "broken.mp4",
             "image": tmp_path / "ok.png", "classes4": tmp_path / "classes.txt"}
    paths["bad_ext"].write_bytes(b"GIF89a")
    paths["empty_dir"].mkdir()
    paths["broken_video"].write_bytes(b"\x00" * 100)
    paths["classes4"].write_text("background\na\nb\nc\n")
    write_photo(paths["image"], 64, 64)
    argv = [a.format(**paths) for a in argv]
    with pytest.raises(UserError, match=message):
        run(["--weights", str(predict_checkpoints["ckpt"]), "--out", str(tmp_path / "o"), *argv])


def test_weights_errors(tmp_path):
    write_photo(tmp_path / "a.png", 64, 64)
    with pytest.raises(UserError, match="weights file not found"):
        run(["--weights", str(tmp_path / "none.pth"), str(tmp_path / "a.png")])
    (tmp_path / "junk.pth").write_text("this is not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        run(["--weights", str(tmp_path / "junk.pth"), str(tmp_path / "a.png")])


def test_folder_keeps_going_past_bad_files(predict_checkpoints, tmp_path, capsys):
    write_photo(tmp_path / "in" / "good1.png", 64, 64)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    write_photo(tmp_path / "in" / "z" / "good2.png", 48, 64)
    status = run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "in"), str(tmp_path / "gone.png"),
                  "--out", str(tmp_path / "o")])
    assert status == 1
    assert (tmp_path / "o" / "good1.png").is_file() and (tmp_path / "o" / "z" / "good2.png").is_file()
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "gone.png not found" in err and "2 input(s) failed" in err


def test_show_without_display(predict_checkpoints, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(UserError, match="--show needs a display"):
        run(["--weights", str(predict_checkpoints["ckpt"]), "--video", "0", "--show"])


def test_subprocess_exit_codes_and_no_traceback(predict_checkpoints, tmp_path):
    write_photo(tmp_path / "in" / "ok.png", 64, 64)
    (tmp_path / "in" / "bad.png").write_bytes(b"garbage")
    cases = [
        (["--weights", str(tmp_path / "missing.pth"), str(tmp_path / "in" / "ok.png")], 2, "weights file not found"),
        (["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "in"), "--out", str(tmp_path / "o")],
         1, "bad.png"),
        (["--weights", str(predict_checkpoints["ckpt"]), "--video", "9", "--save", str(tmp_path / "c.mp4")],
         2, "camera 9"),
    ]
    for argv, code, message in cases:
        result = subprocess.run([sys.executable, "predict.py", *argv], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == code, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert (tmp_path / "o" / "ok.png").is_file()


def test_two_inputs_for_one_output_are_refused(predict_checkpoints, tmp_path):
    write_photo(tmp_path / "a" / "x.png", 64, 64, seed=1)
    write_photo(tmp_path / "b" / "x.png", 64, 64, seed=2)
    with pytest.raises(UserError, match=r"a/x\.png and .*b/x\.png would both be written to .*o/x\.png"):
        run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "a" / "x.png"),
             str(tmp_path / "b" / "x.png"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    # x.png and x.jpg are two outputs, but with --save-mask they share x_mask.png.
    write_photo(tmp_path / "c" / "x.png", 64, 64)
    write_photo(tmp_path / "c" / "x.jpg", 64, 64)
    with pytest.raises(UserError, match="x_mask.png"):
        run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "c"), "--save-mask",
             "--out", str(tmp_path / "o")])
    assert run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 0


def test_counts_per_image_csv_quotes_names(predict_checkpoints, tmp_path):
    import csv

    write_photo(tmp_path / "in" / "a,b.png", 64, 64, seed=1)
    write_photo(tmp_path / "in" / 'say "hi".png', 64, 64, seed=2)
    assert run(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "in"), "--count",
                "--out", str(tmp_path / "o")]) == 0
    with open(tmp_path / "o" / "counts_per_image.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "background", "cat", "dog"]
    assert [Path(row[0]).name for row in rows[1:]] == ["a,b.png", 'say "hi".png']
    assert all(sum(int(v) for v in row[1:]) == 64 * 64 for row in rows[1:])


def test_folder_in_batches_gives_the_single_image_results(predict_checkpoints, tmp_path, capsys):
    """Batches of 2 with an unreadable file in the middle: every output is the single-image result,
    the failure is reported, and writing onto the inputs is refused with one error."""
    sources = {}
    for index in range(5):
        name = f"p{index}.png"
        if index == 2:
            (tmp_path / "in" / name).write_bytes(b"not a png")
        else:
            sources[name] = write_photo(tmp_path / "in" / name, 40 + 8 * index, 64, seed=index)
    weights = str(predict_checkpoints["ckpt"])
    assert run(["--weights", weights, str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--batch-size", "2",
                "--save-mask"]) == 1
    assert "p2.png" in capsys.readouterr().err
    for name in sources:
        assert run(["--weights", weights, str(tmp_path / "in" / name), "--out", str(tmp_path / "one"),
                    "--save-mask"]) == 0
        stem = name.removesuffix(".png")
        single = cv2.imread(str(tmp_path / "one" / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o" / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED),
                                      single)
    assert not (tmp_path / "o" / "p2.png").exists()
    # --out onto the inputs themselves: refused, inputs unchanged.
    before = (tmp_path / "in" / "p0.png").read_bytes()
    with pytest.raises(UserError, match="refusing to overwrite the input"):
        run(["--weights", weights, str(tmp_path / "in" / "p0.png"), str(tmp_path / "in" / "p1.png"),
             "--out", str(tmp_path / "in"), "--batch-size", "1"])
    assert (tmp_path / "in" / "p0.png").read_bytes() == before
