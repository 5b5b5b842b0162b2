"""Benchmark scripts stay runnable: every module imports, and the forward bench prints its table."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import peak_rss_mib

BENCH_MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py")
                       if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_bench_module_imports(name):
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__


def test_forward_bench_prints_a_row_per_output_stride_and_head(capsys):
    from bench import bench_forward

    bench_forward.main(bench_forward.parse_args(["--size", "64", "--repeats", "1", "--backbones", "mobilenet",
                                                  "--device", "cpu", "--heads", "standard", "separable"]))
    out = capsys.readouterr().out
    assert "matmul ceiling" in out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| mobilenet |")]
    assert [(row[1], row[2]) for row in rows] == [("16", "standard"), ("16", "separable"),
                                                  ("8", "standard"), ("8", "separable")]
    # Columns: ... FLOPs vs standard, time vs standard, predictor fp32 ms, predictor time vs standard.
    assert [rows[0][i] for i in (-4, -3, -1)] == ["1.00x", "1.00x", "1.00x"]
    assert float(rows[1][-4].removesuffix("x")) < 0.5  # separable head: far fewer FLOPs
    assert float(rows[1][-2]) > 0 and rows[1][-1].endswith("x")


def test_gpu_check_prepares_its_dataset_and_commands_without_a_gpu(tmp_path, capsys):
    from bench import bench_gpu

    assert bench_gpu.main(["--dry-run", "--out", str(tmp_path), "--images", "8", "--size", "64", "--gpus", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert "bench/bench_train.py --device cuda" in lines[0]
    for line in lines[1:]:
        assert "--nproc_per_node=4 train.py" in line and "--sync-bn --amp" in line
        assert "--freeze-epochs 1" in line and "--batch-size 64" in line and f"--weights {tmp_path}" in line
    train = (tmp_path / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert len(train) == 8 and (tmp_path / "init.pth").is_file()
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--size", "16"])

def test_predict_bench_compares_with_the_original_on_every_size(capsys, monkeypatch):
    from bench import bench_predict

    monkeypatch.setattr(bench_predict, "SIZE", 64)  # a small network input keeps this quick
    bench_predict.main(bench_predict.parse_args(["--rounds", "1", "--sizes", "90x70", "61x130", "--no-rss"]))
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip()[:1].isdigit()]
    assert [(row[0], row[1]) for row in rows][:2] == [("90x70", "original"), ("90x70", "ours default")]
    assert {row[0] for row in rows} == {"90x70", "61x130"}
    for row in rows:
        assert float(row[2]) > 0 and 0 <= float(row[5].rstrip("%")) <= 100
        assert float(row[6].rstrip("%")) < 1.0  # ours and the original's masks agree
    assert rows[0][4] == "1.00x"


def test_peak_rss_of_a_child_is_its_own_not_its_parents():
    """ru_maxrss survives exec on Linux: a child of a parent holding 1 GiB must not report it as its own."""
    held = bytearray(1024 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page, so that it is resident
    child = subprocess.run([sys.executable, "-c", "from bench.common import peak_rss_mib; print(peak_rss_mib())"],
                           cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)

    assert peak_rss_mib() > 1024
    assert 10 < float(child.stdout) < peak_rss_mib() - 512


def test_eval_bench_agrees_with_the_original(tmp_path):
    from bench import bench_eval

    for writer in ("pil", "cv2"):
        result = bench_eval.marginal(tmp_path / writer, writer, pairs=4, rounds=1, workers=2)
        assert result["same"] is True
        assert set(result) == {"original", "ours", "same"}


ORIGINAL_TRAIN = '''import os
if __name__ == "__main__":
    Cuda            = True
    num_classes     = 21
    Freeze_Train    = True  # freeze first
    optimizer_type  = "sgd"
    seed_everything(seed)
    fit(Cuda=Cuda)
'''


def test_accuracy_bench_patches_only_the_original_settings_block():
    from bench import bench_accuracy

    source, changes = bench_accuracy.patch_settings(
        ORIGINAL_TRAIN, {"Cuda": "False", "num_classes": "11", "Freeze_Train": "False", "optimizer_type": "'sgd'"})
    assert changes == ["Cuda: True -> False", "num_classes: 21 -> 11", "Freeze_Train: True -> False"]
    assert "    num_classes     = 11\n" in source and "    Freeze_Train    = False  # freeze first\n" in source
    assert source.endswith("    seed_everything(seed)\n    fit(Cuda=Cuda)\n")  # the call after the block is untouched
    with pytest.raises(SystemExit, match="'epochs = ...' lines, expected 1"):
        bench_accuracy.patch_settings(ORIGINAL_TRAIN, {"epochs": "8"})


def test_accuracy_bench_scores_finished_runs_resumes_ours_and_restarts_the_original(tmp_path, monkeypatch):
    from bench import bench_accuracy

    data = tmp_path / "camvid"
    data.mkdir()
    (data / "classes.txt").write_text("sky\nroad\n")
    out = tmp_path / "acc"
    finished = out / "ours_normal_standard_e8_s11"
    unfinished_ours = out / "ours_normal_standard_e8_s5"
    unfinished_original = out / "original_e8_s11"
    for folder in (finished, unfinished_ours, unfinished_original):
        folder.mkdir(parents=True)
    (finished / "last.pth").write_bytes(b"w")
    (finished / "train_seconds.json").write_text("600.0")
    (unfinished_ours / "last.pth").write_bytes(b"w")
    (unfinished_original / "last_epoch_weights.pth").write_bytes(b"w")

    trained = []

    def fake_run(command, log, cwd=bench_accuracy.REPO, append=False):
        trained.append((command, append))
        return 120.0

    def fake_original(args, run, save_dir, log):
        assert not save_dir.exists()  # the interrupted run's folder was cleared first
        save_dir.mkdir()
        trained.append((run.name, False))
        return 300.0

    monkeypatch.setattr(bench_accuracy, "run_command", fake_run)
    monkeypatch.setattr(bench_accuracy, "train_original", fake_original)
    monkeypatch.setattr(bench_accuracy, "score", lambda args, weights, report, log: {"miou": 0.25, "accuracy": 0.5})
    args = bench_accuracy.parse_args(["--data-root", str(data), "--original", str(tmp_path), "--inits", "normal",
                                      "--epochs", "8", "--seeds", "11", "5", "--out", str(out)])
    assert bench_accuracy.main(args) == 0

    original_s11, ours_s5, original_s5 = trained
    assert original_s11 == ("original_e8_s11", False) and original_s5 == ("original_e8_s5", False)
    assert ours_s5[1] is True and ours_s5[0][-2:] == ["--resume", str(unfinished_ours / "last.pth")]
    minutes = {r["name"]: r["train_s"] for r in json.loads((out / "results.json").read_text())}
    assert minutes["ours_normal_standard_e8_s11"] == 600.0 and minutes["original_e8_s11"] == 300.0
    table = (out / "results.md").read_text()
    assert "| 8 | 5 | ours | normal | standard | 25.00 | 50.00 | n/a (resumed) |" in table
    assert "| 8 | 11 | ours | normal | standard | 25.00 | 50.00 | 10.0 |" in table


def test_machine_line_names_the_cpu_and_the_features_that_change_speeds(tmp_path, monkeypatch):
    from bench import common
    from utils.device import cpu_info

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\n"
                       "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n")
    assert cpu_info(cpuinfo) == ("AMD EPYC 9R14", {"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    assert cpu_info(tmp_path / "missing") is None
    monkeypatch.setattr(common, "cpu_info", lambda: cpu_info(cpuinfo))
    assert common.machine_description("cpu").startswith("AMD EPYC 9R14 (AVX2, AVX-512, AVX512-BF16, VNNI), ")
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse4_2\n")
    assert common.machine_description("cpu").startswith("Old CPU (no AVX2), ")
