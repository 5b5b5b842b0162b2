"""Several processes on the CPU (gloo): a SIGTERM to one rank under torchrun stops every rank at the same
iteration with last.pth saved; ``--resume`` is decided on rank 0; the ImageNet file is fetched once per node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.data.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[2]


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (children of ``launcher`` with RANK in their environment)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            pids[int(env["RANK"])] = int(entry.name)
    return pids


def epoch_of(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_sigterm_to_one_rank_stops_all_ranks_saves_and_resumes(tmp_path):
    root = make_demo_dataset(tmp_path / "data", seed=2, num_train=32, num_val=2, size=(64, 64))
    save_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
            "--data-root", str(root), "--classes", str(root / "classes.txt"), "--input-size", "64",
            "--epochs", "3", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--eval-period", "9",
            "--save-dir", str(save_dir)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while (epoch_of(save_dir / "last.pth") or 0) < 1:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2 (8 iterations per rank)
        pids = rank_pids(proc.pid)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted: saved" in stderr, stderr[-3000:]
    assert "--resume auto" in stderr
    stopped = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert stopped["epoch"] in (1, 2)  # inside epoch 2, or right after it when the signal came late
    assert not any(key.startswith("module.") for key in stopped["model"])

    result = subprocess.run([*argv, "--resume", "auto"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 3
    assert [int(row["epoch"]) for row in resumed["history"]] == [1, 2, 3]


def _rank_main(rank: int, world: int, port: int, base: str, results: str) -> None:
    """Each rank works in its own folder, as nodes without a shared filesystem would."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from utils.errors import UserError
    from utils.training import builder
    from utils.training.distributed import DistContext
    from utils.training.options import TrainOptions
    from utils.training.resume import resolve_resume

    node = Path(base) / f"node{rank}"
    os.chdir(node)
    ctx = DistContext(rank=rank, local_rank=0, world_size=world)
    out: list[str] = []

    def attempt(**flags) -> None:
        options = TrainOptions(save_dir="run", **flags)
        try:
            resolve_resume(options, ctx)
            out.append(f"resume={options.resume}")
        except UserError as exc:
            out.append(f"error={exc}")

    attempt(resume="auto")  # only rank 0 has run/last.pth: rank 1 cannot read it
    attempt(resume="other/last.pth")  # present on rank 1 only: rank 0's view decides
    (node / "run" / "last.pth").unlink(missing_ok=True)
    (Path(base) / "node1" / "run" / "last.pth").write_bytes(b"x")  # a stale file on rank 1 only
    dist.barrier()
    attempt(resume="auto")  # nothing on rank 0: a new run everywhere

    # Both ranks on one node now (local ranks 0 and 1) sharing one model_data/ file.
    shared = Path(base) / "model_data.txt"

    def fetch(backbone: str) -> Path:
        with shared.open("a") as handle:
            handle.write(f"{backbone} by rank {rank}\n")
        return shared

    builder.fetch_backbone_file = fetch
    builder.backbone_weights_path = lambda backbone: shared
    same_node = DistContext(rank=rank, local_rank=rank, world_size=world)
    builder.fetch_pretrained(TrainOptions(pretrained=True, backbone="mobilenet"), same_node)
    out.append("fetch done")
    (Path(results) / f"rank{rank}.txt").write_text("\n".join(out))
    dist.destroy_process_group()


def test_resume_is_decided_on_rank_0_and_download_happens_once_per_node(tmp_path):
    for rank in (0, 1):
        (tmp_path / f"node{rank}" / "run").mkdir(parents=True)
    (tmp_path / "node0" / "run" / "last.pth").write_bytes(b"x")
    (tmp_path / "node1" / "other").mkdir()
    (tmp_path / "node1" / "other" / "last.pth").write_bytes(b"x")
    port = 29000 + os.getpid() % 1000
    mp.spawn(_rank_main, args=(2, port, str(tmp_path), str(tmp_path)), nprocs=2, join=True)
    rank0 = (tmp_path / "rank0.txt").read_text().splitlines()
    rank1 = (tmp_path / "rank1.txt").read_text().splitlines()
    unreadable = ("error=--resume run/last.pth: rank(s) 1 cannot read this file. Without a filesystem shared by "
                  "every node, copy the checkpoint to the same path on each node first")
    missing = "error=--resume other/last.pth: file not found (use auto for run/last.pth)"
    assert rank0[:3] == rank1[:3] == [unreadable, missing, "resume=None"]
    # Local rank 0 fetched the file once; the other rank waited for it at the barrier.
    assert rank0[3] == rank1[3] == "fetch done"
    assert (tmp_path / "model_data.txt").read_text() == "mobilenet by rank 0\n"
