"""The micro-batching queue: one worker thread runs the model; requests that arrive together share a batch.

Requests wait in one queue (at most ``max_queue``; :class:`QueueFullError` beyond, which the app answers 503).
The worker takes the oldest request, then waits up to ``wait_s`` for others **with the same key** (the
request's model settings: threshold, windows, TTA) until ``max_batch`` have gathered, and runs them in
one call. Requests with another key keep their place for a later batch, so a batch never mixes settings
and the worker can apply a batch's settings to the model before running it: nothing else touches the
model. Results come back as :class:`concurrent.futures.Future` objects, which an event loop awaits
without blocking (``asyncio.wrap_future``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests already; try again later."""


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)


class Batcher:
    """A queue in front of ``run(key, payloads) -> results`` (one result per payload, in order), called from
    one worker thread with at most ``max_batch`` payloads that share ``key``.

    Args:
        run: the model call; an exception it raises is set on every future of the batch.
        max_batch: payloads per call at most.
        wait_s: how long to wait for a batch to fill once its first request is taken.
        max_queue: requests waiting (not yet in a call) at most.
    """

    def __init__(self, run: Callable[[Hashable, Sequence[Any]], Sequence[Any]], max_batch: int = 4,
                 wait_s: float = 0.01, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or wait_s < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and wait_s at least 0; got "
                             f"{max_batch}, {max_queue}, {wait_s}")
        self._run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="model-worker", daemon=True)
        self.calls = 0  # model calls so far
        self.served = 0  # payloads in them

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, key: Hashable, payload: Any) -> Future:
        """Queue one payload; its future gets the result. Raises :class:`QueueFullError` (or RuntimeError once
        stopped)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model worker is stopping")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests are waiting for the model already")
            item = _Item(key, payload)
            self._pending.append(item)
            self._cond.notify_all()
        return item.future

    def _take(self) -> list[_Item] | None:
        """The next batch (None once stopped and drained): the oldest item and, within the wait, up to
        ``max_batch - 1`` more of its key."""
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            key = self._pending[0].key
            deadline = time.monotonic() + self.wait_s
            while not self._stopping:
                same = sum(1 for item in self._pending if item.key == key)
                remaining = deadline - time.monotonic()
                if same >= self.max_batch or remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, rest = [], deque()
            for item in self._pending:
                (batch if item.key == key and len(batch) < self.max_batch else rest).append(item)
            self._pending = rest
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.calls += 1
            self.served += len(live)
            try:
                results = self._run(live[0].key, [item.payload for item in live])
            except Exception as exc:  # handed to each request, which answers with it
                for item in live:
                    item.future.set_exception(exc)
                continue
            for item, result in zip(live, results, strict=True):
                item.future.set_result(result)
