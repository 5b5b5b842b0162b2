"""Benchmark scripts stay runnable: every module imports, and the forward bench prints its table."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH_MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py")
                       if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_bench_module_imports(name):
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__


def test_forward_bench_prints_a_row_per_output_stride(capsys):
    from bench import bench_forward

    bench_forward.main(bench_forward.parse_args(["--size", "64", "--repeats", "1", "--backbones", "mobilenet",
                                                  "--device", "cpu"]))
    out = capsys.readouterr().out
    assert "matmul ceiling" in out
    rows = [line for line in out.splitlines() if line.startswith("| mobilenet |")]
    assert [row.split("|")[2].strip() for row in rows] == ["16", "8"]
