"""Serving benchmark: ``serve.py`` on a loopback port against predict.py's folder loop, on the same 1080p JPEGs
in the same run.

The server runs as a subprocess (``python serve.py``, its default flags but ``--device``), with a random
MobileNetV2 DeepLabV3+ checkpoint (21 classes, 512x512 input, varied BatchNorm statistics so masks hold
several classes). Clients post ``--requests`` JPEGs (cycling over ``--images`` distinct ones) at each
``--concurrency`` (default 1, 4 and 8) with ``format=overlay`` by default: a blended JPEG back, what
predict.py writes. Reported per concurrency: images/s, p50 and p99 latency, and ``/health`` latency
polled during the run (the event loop's responsiveness under load) and the server's RSS at the end of
each phase; then the server's peak RSS (VmHWM) and its RSS growth between the end of the first and of the
last 100 requests (over all phases, after a warm-up round at the highest concurrency).

The baseline is predict.py's own folder loop (:func:`utils.inference.app.predict_jobs`, predict.py's default
flags, batch 4) in this process over the same images (while the server is idle), images/s; the ratio is
the server's images/s at each concurrency over it.

Run: ``.venv/bin/python -m bench.bench_serve [--requests 300] [--source ../shared/datasets/camvid/JPEGImages]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import torch

import predict as predict_cli
from bench.common import machine_description, vary_batchnorm
from nets.spec import ModelSpec, build_model
from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from utils.inference.app import predict_jobs
from utils.inference.cli import build_predictor, output_options
from utils.inference.inputs import find_images
from utils.inference.outputs import Run

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="default: 1 4 8")
    parser.add_argument("--images", type=int, default=24, help="distinct images (default: %(default)s)")
    parser.add_argument("--size", default="1920x1080", metavar="WxH", help="default: %(default)s")
    parser.add_argument("--source", type=Path, help="a folder of photos to upscale to --size (e.g. CamVid's "
                        "JPEGImages); default: synthetic smooth photos")
    parser.add_argument("--format", choices=("png", "overlay", "json"), default="overlay",
                        help="what the server returns (default: %(default)s, a blended JPEG like predict.py's)")
    parser.add_argument("--device", default="cpu", help="serve.py and predict.py --device (default: %(default)s)")
    args = parser.parse_args(argv)
    width, height = (int(part) for part in args.size.lower().split("x"))
    args.size = (width, height)
    return args


def write_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(backbone="mobilenet", num_classes=21, input_size=(512, 512))
    model = build_model(spec, init="pytorch").eval()
    vary_batchnorm(model)
    save_checkpoint({"model": model.state_dict(), "spec": spec.to_dict(), "epoch": 1,
                     "format": CHECKPOINT_FORMAT}, path)


def write_photos(folder: Path, count: int, size: tuple[int, int], source: Path | None) -> list[Path]:
    """``count`` JPEGs (quality 95) of ``size``: ``source``'s photos upscaled, or smooth synthetic ones."""
    folder.mkdir(parents=True)
    sources = sorted(source.glob("*.[jp][pn]g"))[:count] if source else []
    if source and not sources:
        raise SystemExit(f"--source {source}: no .jpg/.png photos there")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        if sources:
            image = cv2.resize(cv2.imread(str(sources[index % len(sources)])), size, interpolation=cv2.INTER_CUBIC)
        else:
            small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
            image = cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)
        path = folder / f"{index:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


def baseline_images_per_s(weights: Path, folder: Path, out: Path, device: str, minimum: int) -> float:
    """predict.py's folder loop over ``folder`` (passes until ``minimum`` images), after one warm-up pass."""
    flags = predict_cli.parse_args(["--weights", str(weights), "--device", device, str(folder), "--out", str(out)])
    predictor = build_predictor(flags)
    outputs = output_options(flags)
    jobs, _ = find_images(flags.inputs, outputs.out_dir)
    with contextlib.redirect_stderr(io.StringIO()):  # predict.py's progress bar
        predict_jobs(jobs, predictor, outputs, Run())
        done, start = 0, time.perf_counter()
        while done < minimum:
            predict_jobs(jobs, predictor, outputs, Run())
            done += len(jobs)
        return done / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class Phase:
    """One concurrency level: latencies, and /health latencies polled meanwhile."""

    def __init__(self, url: str, bodies: list[bytes], fmt: str, pid: int, rss_after: list[float]) -> None:
        self.url, self.bodies, self.fmt, self.pid, self.rss_after = url, bodies, fmt, pid, rss_after
        self.latencies: list[float] = []
        self.health: list[float] = []
        self.failures = 0
        self._local = threading.local()

    def _client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(timeout=300)
        return self._local.client

    def one(self, index: int, record: bool = True) -> None:
        start = time.perf_counter()
        response = self._client().post(f"{self.url}/v1/segment?format={self.fmt}",
                                       content=self.bodies[index % len(self.bodies)],
                                       headers={"content-type": "image/jpeg"})
        if not record:
            return
        self.latencies.append(time.perf_counter() - start)
        self.failures += response.status_code != 200
        self.rss_after.append(rss_mib(self.pid))

    def run(self, concurrency: int, requests: int) -> float:
        """Seconds for ``requests`` requests from ``concurrency`` clients, after one warm-up round."""
        stop = threading.Event()

        def poll_health() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.wait(0.1):
                    start = time.perf_counter()
                    client.get(f"{self.url}/health")
                    self.health.append(time.perf_counter() - start)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: self.one(i, record=False), range(concurrency)))
            poller = threading.Thread(target=poll_health)
            poller.start()
            start = time.perf_counter()
            list(pool.map(self.one, range(requests)))
            seconds = time.perf_counter() - start
            stop.set()
            poller.join()
        return seconds


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "model.pth"
        write_checkpoint(weights)
        photos = write_photos(tmp / "photos", args.images, args.size, args.source)
        bodies = [path.read_bytes() for path in photos]
        print(f"machine: {machine_description(args.device)}; {os.cpu_count()} CPUs")
        print(f"{len(photos)} JPEGs {args.size[0]}x{args.size[1]} ({statistics.mean(map(len, bodies)) / 1e3:.0f} kB "
              f"on average), {args.requests} requests per concurrency, format={args.format}")
        baseline = baseline_images_per_s(weights, tmp / "photos", tmp / "out", args.device,
                                         max(len(photos), min(args.requests, 96)))
        print(f"predict.py folder loop: {baseline:.2f} images/s")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (tmp / "serve.log").open("w")
        server = subprocess.Popen([sys.executable, "serve.py", "--weights", str(weights), "--port", str(port),
                                   "--device", args.device], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"serve.py exited:\n{(tmp / 'serve.log').read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("serve.py did not become healthy within 5 minutes")
                time.sleep(0.2)
            # One round at the highest concurrency first: full batches allocate their buffers once, so the
            # RSS series below shows growth per request (a leak), not the first full batch.
            Phase(url, bodies, args.format, server.pid, []).run(max(args.concurrency), 2 * max(args.concurrency))
            rss_after: list[float] = []
            rows = []
            for concurrency in args.concurrency:
                phase = Phase(url, bodies, args.format, server.pid, rss_after)
                seconds = phase.run(concurrency, args.requests)
                p50, p99 = np.percentile(phase.latencies, [50, 99]) * 1e3
                health = np.array(phase.health) * 1e3
                rows.append((concurrency, args.requests / seconds, p50, p99, float(np.median(health)),
                             float(health.max()), phase.failures, rss_after[-1]))
            peak = rss_mib(server.pid, "VmHWM")
            window = min(100, len(rss_after) // 2)
            first, last = rss_after[window - 1], rss_after[-1]
        finally:
            server.terminate()
            server.wait(60)
            log.close()
    print()
    print("| concurrency | images/s | ratio to predict.py | p50 ms | p99 ms | p99/p50 | /health median ms | "
          "/health max ms | failed | RSS at the end (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency, rate, p50, p99, health_median, health_max, failed, rss in rows:
        print(f"| {concurrency} | {rate:.2f} | {rate / baseline:.2f} | {p50:.0f} | {p99:.0f} | {p99 / p50:.2f} | "
              f"{health_median:.1f} | {health_max:.1f} | {failed} | {rss:.0f} |")
    print(f"\npredict.py folder loop: {baseline:.2f} images/s")
    print(f"server peak RSS (VmHWM): {peak:.0f} MiB; RSS after request {window}: {first:.0f} MiB, after the last "
          f"({len(rss_after)}): {last:.0f} MiB, growth {100 * (last - first) / first:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
