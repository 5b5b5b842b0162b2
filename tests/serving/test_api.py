"""The HTTP API through FastAPI's test client: values against the predictor, every refusal with its status,
the queue limit, batching, and that nothing in a request reaches the file system."""

from __future__ import annotations

import io
import struct
import sys
import threading
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.inference.visualize import make_palette
from utils.serving.app import create_app
from utils.serving.options import ServeOptions

from .conftest import counted, encode, picture, wait_ready


def post(client, body: bytes, query: str = "", content_type: str = "image/png"):
    return client.post(f"/v1/segment{query}", content=body, headers={"content-type": content_type})


def read_png(content: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(content)))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` RGB pixels, followed by a few bytes of data: only
    a check of the header can refuse it without trying to decode gigabytes."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + chunk(b"IEND", b""))


def test_png_mask_is_the_predictors_mask_with_the_palette(predictor, serve):
    client = serve(predictor)
    image = picture(50, 70)
    expected = predictor.predict([image])[0]
    assert len(np.unique(expected)) > 1  # a mask worth comparing
    for response in (post(client, encode(image)),
                     client.post("/v1/segment", files={"image": ("p.png", encode(image), "image/png")})):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        returned = Image.open(io.BytesIO(response.content))
        assert returned.mode == "P" and returned.size == (70, 50)
        np.testing.assert_array_equal(np.array(returned), expected)
        palette = np.array(returned.getpalette()[:9], dtype=np.uint8).reshape(3, 3)
        np.testing.assert_array_equal(palette, make_palette(3))


def test_json_counts_the_mask_pixels(predictor, serve):
    client = serve(predictor)
    image = picture(41, 67, seed=3)
    mask = predictor.predict([image])[0]
    response = post(client, encode(image, "JPEG", quality=95), "?format=json", "image/jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (67, 41)
    # The mask of the JPEG's decoded pixels, counted here independently.
    decoded = np.array(Image.open(io.BytesIO(encode(image, "JPEG", quality=95))).convert("RGB"))
    expected_mask = predictor.predict([decoded])[0]
    counts = {int(c): int((expected_mask == c).sum()) for c in np.unique(expected_mask)}
    assert {entry["id"]: entry["pixels"] for entry in body["classes"]} == counts
    assert [entry["name"] for entry in body["classes"]] == [["background", "cat", "dog"][c] for c in sorted(counts)]
    assert sum(entry["share"] for entry in body["classes"]) == pytest.approx(1.0)
    for entry in body["classes"]:
        assert entry["share"] == pytest.approx(entry["pixels"] / (67 * 41))
    assert mask.shape == (41, 67)


def test_overlay_is_a_jpeg_blend_at_the_input_size(predictor, serve):
    client = serve(predictor)
    image = picture(48, 64, seed=1)
    mask = predictor.predict([image])[0]
    response = post(client, encode(image), "?format=overlay&alpha=1")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    overlay = np.array(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    # alpha=1: the colours alone, up to JPEG's loss.
    assert np.abs(overlay - make_palette(3)[mask].astype(int)).mean() < 6
    zero = np.array(Image.open(io.BytesIO(post(client, encode(image), "?format=overlay&alpha=0").content)))
    assert np.abs(zero.astype(int) - image.astype(int)).mean() < 6


def test_prob_of_a_binary_model_and_per_request_thresholds(binary_predictor, serve):
    reference = Predictor(None, binary_predictor.spec, InferenceOptions(device="cpu"),
                          backend=binary_predictor.engine.backend)
    image = picture(60, 60, seed=2)
    [(_, prob)] = reference.predict_with_prob([image])
    client = serve(binary_predictor)
    response = post(client, encode(image), "?format=prob")
    assert response.status_code == 200
    np.testing.assert_array_equal(read_png(response.content), (prob * 255).round().clamp(0, 255).byte().numpy())
    masks = []
    for threshold in (float(level) for level in np.quantile(prob.numpy(), [0.3, 0.7])):
        masks.append(read_png(post(client, encode(image), f"?threshold={threshold!r}").content))
        reference.threshold = threshold
        np.testing.assert_array_equal(masks[-1], reference.predict([image])[0])
        # The foreground share follows the quantile the threshold was taken at (up to the resize of labels).
        assert masks[-1].mean() == pytest.approx((prob.numpy() >= threshold).mean(), abs=0.05)
    assert masks[0].sum() > masks[1].sum()
    assert client.get("/v1/model").json()["threshold"] == 0.5  # a request's threshold is its own


def test_requests_arriving_together_share_one_forward_pass(predictor, serve):
    client = serve(predictor, max_batch=4, batch_wait_ms=3000)
    counter = counted(predictor)
    images = [picture(30 + 7 * i, 40 + 5 * i, seed=i) for i in range(4)]
    expected = predictor.predict(images)
    counter.sizes.clear()
    responses = [None] * 4

    def send(i):
        responses[i] = post(client, encode(images[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.sizes == [4]  # one forward pass of four images (the 3 s wait ends when the batch is full)
    for response, mask in zip(responses, expected, strict=True):
        np.testing.assert_array_equal(read_png(response.content), mask)


def test_requests_with_other_settings_are_not_batched_together(binary_predictor, serve):
    client = serve(binary_predictor, max_batch=4, batch_wait_ms=1500)
    counter = counted(binary_predictor)
    image = picture(40, 40, seed=4)
    queries = ["?threshold=0.2", "?threshold=0.8", "?threshold=0.2", "?threshold=0.8"]
    responses = [None] * 4

    def send(i):
        responses[i] = post(client, encode(image), queries[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counter.sizes) == [2, 2]
    masks = [read_png(response.content) for response in responses]
    np.testing.assert_array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[1], masks[3])
    assert masks[0].sum() >= masks[1].sum()  # a lower threshold keeps at least the same foreground


@pytest.mark.parametrize(("body", "content_type", "query", "status", "words"), [
    (b"not an image at all", "image/png", "", 415, "not an image"),
    ("TRUNCATED_JPEG", "image/jpeg", "", 400, "truncated"),
    ("TRUNCATED_PNG", "image/png", "", 400, "truncated"),
    ("GOOD", "text/plain", "", 415, "multipart field 'image'"),
    ("GOOD", "", "", 415, "Content-Type"),
    (b"", "image/png", "", 400, "empty"),
    ("HUGE_HEADER", "image/png", "", 413, "--max-pixels"),
    ("TOO_LARGE", "image/png", "", 413, "--max-upload-mb"),
    ("GOOD", "image/png", "?format=tiff", 422, "format"),
    ("GOOD", "image/png", "?alpha=1.5", 422, "alpha"),
    ("GOOD", "image/png", "?alpha=abc", 422, "alpha"),
    ("GOOD", "image/png", "?threshold=0", 422, "threshold"),
    ("GOOD", "image/png", "?slide=perhaps", 422, "slide"),
    ("GOOD", "image/png", "?tta=true&slide=true", 422, "sliding windows"),
    ("NO_FIELD", "MULTIPART", "", 400, "no field 'image'"),
    ("BROKEN_MULTIPART", "multipart/form-data", "", 400, "boundary"),
])
def test_bad_input_gets_its_status_and_the_service_keeps_serving(predictor, serve, body, content_type, query,
                                                                 status, words):
    client = serve(predictor, max_upload_mb=0.5)
    good = encode(picture(40, 40))
    # Large enough that a cut falls in the pixel data, past the headers.
    jpeg, png = encode(picture(200, 300), "JPEG"), encode(picture(200, 300))
    bodies = {"GOOD": good, "TRUNCATED_JPEG": jpeg[:len(jpeg) // 2], "TRUNCATED_PNG": png[:len(png) // 2],
              "HUGE_HEADER": huge_png_header(40000, 40000), "TOO_LARGE": good + b"\x00" * 600_000}
    if body == "NO_FIELD":
        response = client.post(f"/v1/segment{query}", files={"picture": ("p.png", good, "image/png")})
    else:
        response = post(client, bodies.get(body, body), query, content_type)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert post(client, good).status_code == 200  # still serving


def test_the_pixel_limit_comes_from_the_header(predictor, serve):
    client = serve(predictor, max_pixels=1000)
    response = post(client, encode(picture(40, 30)))  # 1200 pixels
    assert response.status_code == 413 and "1200 pixels" in response.json()["error"]
    assert post(client, encode(picture(40, 25))).status_code == 200  # 1000 pixels


def test_unknown_paths_and_methods_answer_json(predictor, serve):
    client = serve(predictor)
    assert client.get("/v2/nothing").json() == {"error": "Not Found"}
    response = client.get("/v1/segment")
    assert response.status_code == 405 and "error" in response.json()


def test_a_full_queue_answers_503_with_retry_after(predictor, serve):
    client = serve(predictor, max_batch=1, max_queue=1, batch_wait_ms=0)
    counter = counted(predictor)
    counter.gate = threading.Event()
    batcher = client.app.state.batcher
    image = picture(32, 32)
    first = []
    worker_busy = threading.Thread(target=lambda: first.append(post(client, encode(image))))
    worker_busy.start()
    while batcher.calls < 2:  # the warm-up batch, then the held request
        threading.Event().wait(0.01)
    assert batcher.queued == 0
    queued = batcher.submit(client.app.state.runner.settings(None, None, None), image)  # fills the queue
    response = post(client, encode(image))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "queue is full" in response.json()["error"]
    counter.gate.set()
    worker_busy.join()
    assert first[0].status_code == 200
    np.testing.assert_array_equal(queued.result(10)[0], predictor.predict([image])[0])
    assert post(client, encode(image)).status_code == 200


def test_health_and_model(predictor, serve):
    client = serve(predictor)
    assert client.get("/health").json()["status"] == "ok"
    model = client.get("/v1/model").json()
    assert model["classes"] == ["background", "cat", "dog"]
    assert model["palette"] == make_palette(3).tolist()
    assert (model["task"], model["input_size"], model["backbone"], model["head"]) == (
        "multiclass", [64, 64], "mobilenet", "standard")
    page = client.get("/")
    assert page.status_code == 200 and "<title>DeepLabV3+ segmentation</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere: works offline
    assert client.get("/docs").status_code == 200
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]


def test_nothing_in_a_request_reaches_the_file_system(predictor, serve):
    client = serve(predictor)
    big = encode(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8))
    assert len(big) > 1024 * 1024  # larger than the size at which form parsers spool uploads to files
    client.post("/v1/segment", files={"image": ("a.png", big, "image/png")})  # imports done before watching
    opened: list[str] = []
    watching = threading.Event()

    def audit(event: str, args: tuple) -> None:
        if watching.is_set() and event in ("open", "os.mkdir", "tempfile.mkstemp", "tempfile.mkdtemp"):
            opened.append(f"{event} {args[0]!r}")

    sys.addaudithook(audit)  # hooks cannot be removed: this one only records while ``watching`` is set
    watching.set()
    try:
        responses = [client.post("/v1/segment?format=json", files={"image": ("a.png", big, "image/png")}),
                     post(client, big, "?format=overlay"), post(client, big[:-100])]
    finally:
        watching.clear()
    assert [r.status_code for r in responses] == [200, 200, 400]
    assert opened == []


def test_health_is_503_until_the_warm_up_batch_has_run(predictor):
    counter = counted(predictor)
    counter.gate = threading.Event()  # holds the warm-up's forward pass
    with TestClient(create_app(predictor, ServeOptions(max_batch=4, max_queue=2))) as client:
        response = client.get("/health")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "warming up" in response.json()["error"]
        counter.gate.set()
        wait_ready(client)
        assert counter.sizes == [2]  # the warm-up batch: max_batch, capped by the queue's room
        assert post(client, encode(picture(20, 20))).status_code == 200
