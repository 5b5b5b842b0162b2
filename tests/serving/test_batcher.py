"""The micro-batching queue on its own: batch sizes, keys kept apart, the queue limit, draining on stop."""

from __future__ import annotations

import threading

import pytest

from utils.serving.batcher import Batcher, QueueFullError


class Recorder:
    """A model call that records (key, payloads) and answers each payload with (key, payload * 10)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key, payloads):
        self.gate.wait(10)
        self.calls.append((key, list(payloads)))
        return [(key, payload * 10) for payload in payloads]


def test_waiting_requests_form_batches_of_at_most_max_batch_and_of_one_key():
    run = Recorder()
    batcher = Batcher(run, max_batch=3, wait_s=0.05, max_queue=20)
    keys = ["a", "a", "b", "a", "b", "a", "a", "b"]
    futures = [batcher.submit(key, i) for i, key in enumerate(keys)]  # all waiting before the worker starts
    batcher.start()
    results = [future.result(10) for future in futures]
    batcher.stop()
    assert results == [(key, i * 10) for i, key in enumerate(keys)]
    # The oldest request's key first, up to three of it; the other key keeps its place.
    assert run.calls == [("a", [0, 1, 3]), ("b", [2, 4, 7]), ("a", [5, 6])]
    assert (batcher.calls, batcher.served) == (3, 8)


def test_a_lone_request_runs_after_the_wait():
    run = Recorder()
    batcher = Batcher(run, max_batch=4, wait_s=0.01, max_queue=4)
    batcher.start()
    assert batcher.submit("k", 7).result(10) == ("k", 70)
    batcher.stop()
    assert run.calls == [("k", [7])]


def test_the_queue_limit():
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, max_batch=1, wait_s=0, max_queue=2)
    batcher.start()
    first = batcher.submit("k", 0)
    while batcher.queued:  # the worker took it and waits at the gate
        threading.Event().wait(0.005)
    queued = [batcher.submit("k", 1), batcher.submit("k", 2)]
    with pytest.raises(QueueFullError):
        batcher.submit("k", 3)
    run.gate.set()
    assert [f.result(10)[1] for f in (first, *queued)] == [0, 10, 20]
    assert batcher.submit("k", 4).result(10) == ("k", 40)  # room again
    batcher.stop()


def test_stop_finishes_what_is_queued_then_refuses():
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, max_batch=2, wait_s=0, max_queue=10)
    batcher.start()
    futures = [batcher.submit("k", i) for i in range(5)]
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    run.gate.set()
    stopper.join(10)
    assert [f.result(0) for f in futures] == [("k", i * 10) for i in range(5)]
    with pytest.raises(RuntimeError):
        batcher.submit("k", 9)


def test_an_error_in_the_call_reaches_each_request_of_the_batch_and_the_worker_goes_on():
    def run(key, payloads):
        if key == "bad":
            raise ValueError("no")
        return payloads

    batcher = Batcher(run, max_batch=4, wait_s=0.05, max_queue=10)
    batcher.start()
    bad = [batcher.submit("bad", i) for i in range(2)]
    for future in bad:
        with pytest.raises(ValueError, match="no"):
            future.result(10)
    assert batcher.submit("good", 5).result(10) == 5
    batcher.stop()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(lambda key, payloads: payloads, max_batch=0)
