"""Fixtures of the service tests: predictors around tiny checkpoints, a started app, encoded test images."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench.common import vary_batchnorm
from nets.deeplabv3_plus import DeepLab
from nets.spec import ModelSpec
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.serving.app import create_app
from utils.serving.options import ServeOptions


class CountingBackend:
    """Wraps a predictor's backend: records the batch size of every forward pass; ``gate``, when set, is
    waited on before each pass (to hold the worker busy)."""

    def __init__(self, backend: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.backend = backend
        self.sizes: list[int] = []
        self.gate = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            self.gate.wait(30)
        self.sizes.append(int(batch.shape[0]))
        return self.backend(batch)

    def __getattr__(self, name: str):
        return getattr(self.backend, name)


def counted(predictor: Predictor) -> CountingBackend:
    """Put a :class:`CountingBackend` in front of ``predictor``'s backend and return it."""
    counter = CountingBackend(predictor.engine.backend)
    predictor.engine.backend = counter
    return counter


@pytest.fixture
def predictor(predict_checkpoints) -> Predictor:
    """A fresh CPU predictor of the 3-class test checkpoint (masks hold background and objects)."""
    return Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu", batch_size=4))


@pytest.fixture
def binary_predictor() -> Predictor:
    """A random binary MobileNet DeepLab (one sigmoid channel), 64x64 input, default threshold 0.5."""
    torch.manual_seed(5)
    model = DeepLab(num_classes=1, backbone="mobilenet").eval()
    vary_batchnorm(model)
    spec = ModelSpec(num_classes=2, task="binary", class_names=["background", "road"], input_size=(64, 64))
    return Predictor(model, spec, InferenceOptions(device="cpu", batch_size=4))


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the service did not warm up"
        time.sleep(0.02)


@pytest.fixture
def serve() -> Iterator[Callable[..., TestClient]]:
    """``serve(predictor, **options)`` -> a started, warmed-up TestClient; all are shut down after the test."""
    clients: list[TestClient] = []

    def start(predictor: Predictor, **options) -> TestClient:
        client = TestClient(create_app(predictor, ServeOptions(**options)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def encode(image: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def picture(height: int = 50, width: int = 70, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture with a few shapes (so masks are not uniform), uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                      np.full_like(x, int(rng.integers(0, 256)))], axis=2).astype(np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, max(5, height // 3))
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image

