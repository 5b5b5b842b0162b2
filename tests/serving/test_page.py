"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` package) driven by
Playwright uploads an image; the overlay, the legend and the mask download must appear, and a screenshot
is saved (``SERVE_SCREENSHOT=docs/img/serve.png`` also writes it there; ``SERVE_WEIGHTS`` serves another
checkpoint, e.g. the demo's ``logs/demo/best.pth``, for the documentation's picture)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.serving.app import create_app
from utils.serving.options import ServeOptions

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} not found: install Debian's chromium package "
                                "(apt-get install chromium)")


def started_server(predictor: Predictor) -> tuple[uvicorn.Server, threading.Thread, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, ServeOptions(port=port)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and predictor_ready(server)):
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def predictor_ready(server: uvicorn.Server) -> bool:
    return server.config.loaded_app is not None and server.config.app.state.ready.is_set()


def test_page_uploads_an_image_and_shows_overlay_legend_and_download(predict_checkpoints, demo_dataset_root,
                                                                      tmp_path):
    weights = os.environ.get("SERVE_WEIGHTS") or predict_checkpoints["ckpt"]
    predictor = Predictor.from_weights(weights, InferenceOptions(device="cpu"))
    # The demo image whose mask holds the most classes: the richest legend.
    candidates = sorted((demo_dataset_root / "JPEGImages").glob("*.jpg"))[-4:]
    images = [np.array(Image.open(path).convert("RGB")) for path in candidates]
    masks = predictor.predict(images)
    best = max(range(len(masks)), key=lambda i: (len(np.unique(masks[i])), -i))
    source, image, expected = candidates[best], images[best], masks[best]
    server, thread, url = started_server(predictor)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox"] if os.geteuid() == 0 else [])
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.set_input_files("#file", str(source))
            page.wait_for_selector("#legend li", timeout=60_000)
            size = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight]")
            assert size == [image.shape[1], image.shape[0]]
            # The legend: the classes present, with their shares, as counted here.
            shown = [item.inner_text().split("\n") for item in page.query_selector_all("#legend li")]
            counts = np.bincount(expected.ravel(), minlength=predictor.num_classes)
            assert [(name.strip(), share.strip()) for name, share in shown] == [
                (predictor.class_names[c], f"{100 * counts[c] / expected.size:.1f}%") for c in np.flatnonzero(counts)]
            page.locator("#opacity").fill("35")
            assert page.eval_on_selector("#overlay", "img => img.style.opacity") == "0.35"
            with page.expect_download() as download:
                page.click("#download")
            mask = np.array(Image.open(io.BytesIO(Path(download.value.path()).read_bytes())))
            np.testing.assert_array_equal(mask, expected)
            page.locator("#opacity").fill("60")
            screenshot = tmp_path / "serve.png"
            page.screenshot(path=str(screenshot))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("SERVE_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["SERVE_SCREENSHOT"])
