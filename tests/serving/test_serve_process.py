"""``python serve.py`` as users run it: a real process on a loopback port, SIGTERM mid-request, and the
command line's one-line errors."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import serve
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor

from .conftest import encode, picture

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_server_answers_and_finishes_a_request_in_flight_on_sigterm(predict_checkpoints, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    # A long batch wait keeps a lone request waiting in the queue: SIGTERM lands while it is in flight.
    process = subprocess.Popen([sys.executable, "serve.py", "--weights", str(predict_checkpoints["ckpt"]),
                                "--port", str(port), "--device", "cpu", "--batch-wait-ms", "2500"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no /health 200 within 3 minutes"
            time.sleep(0.2)
        image = picture(45, 61, seed=9)
        expected = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu")).predict([image])
        response = httpx.post(f"{url}/v1/segment", files={"image": ("x.png", encode(image), "image/png")}, timeout=60)
        assert response.status_code == 200
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(response.content))), expected[0])

        in_flight: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: in_flight.append(httpx.post(
            f"{url}/v1/segment?format=json", content=encode(image), headers={"content-type": "image/png"},
            timeout=60)))
        started = time.monotonic()
        sender.start()
        time.sleep(1.0)  # the request now waits in the batch (2.5 s)
        process.send_signal(signal.SIGTERM)
        sender.join(60)
        assert process.wait(60) == 0
        assert in_flight and in_flight[0].status_code == 200
        assert time.monotonic() - started >= 2.0  # it was answered after its wait, not cut short
        counts = {entry["id"]: entry["pixels"] for entry in in_flight[0].json()["classes"]}
        assert counts == {int(c): int((expected[0] == c).sum()) for c in np.unique(expected[0])}
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert "serving" in (tmp_path / "serve.log").read_text()


def run_serve(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        serve.run_cli(lambda args: serve.main(serve.parse_args(args)), argv)
    return caught.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["--weights", "missing.pth"], "missing.pth"),
    (["--weights", "x.pth", "--max-batch", "0"], "--max-batch"),
    (["--weights", "x.pth", "--max-upload-mb", "-1"], "--max-upload-mb"),
    (["--weights", "x.pth", "--port", "70000"], "--port"),
    ([], "--weights"),
    (["--weights", "x.pth", "--onnx", "y.onnx"], "not allowed with"),
])
def test_command_line_errors_are_one_line(argv, words, capsys):
    code, err = run_serve(argv, capsys)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1 and words in err


def test_a_taken_port_is_a_one_line_error(predict_checkpoints, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_serve(["--weights", str(predict_checkpoints["ckpt"]), "--port", str(port)], capsys)
    assert code == 2 and f"127.0.0.1:{port}" in err and "--port" in err
