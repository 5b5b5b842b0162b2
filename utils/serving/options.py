"""Typed options of the HTTP service: where it listens, how it batches, what uploads it accepts.

``serve.py`` maps its flags to :class:`ServeOptions` in one place; :func:`utils.serving.app.create_app`
and :class:`utils.serving.batcher.Batcher` take it (or its fields), never a parsed command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeOptions:
    """How ``serve.py`` serves a predictor.

    Args:
        host: the address to bind (loopback by default: exposing a model is a choice).
        port: the TCP port (0: any free port).
        max_batch: images per forward pass at most; requests that arrive together share one.
        batch_wait_ms: how long the worker waits for more requests to fill a batch.
        max_queue: requests waiting for the model at most; one more is answered 503.
        max_upload_mb: the largest request body, in MiB (413 beyond).
        max_pixels: the largest image, width x height, read from its header before decoding (413 beyond).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 4
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port}: must lie in 0..65535")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {self.max_batch}")
        if not self.batch_wait_ms >= 0:
            raise ValueError(f"batch_wait_ms must be 0 or more; got {self.batch_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1; got {self.max_queue}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be positive; got {self.max_upload_mb}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1; got {self.max_pixels}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
